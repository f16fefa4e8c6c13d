"""The paho-mqtt and aiomqtt versions the send hot path is verified against.

The hot path (elf_async.dataplane.takeover) takes over private parts of paho's and aiomqtt's
clients, so another release can break it silently (paho 2.1 names ``_last_msg_in`` what 2.2 names
``_last_bytes_received``: the keep-alive would break without an error). The CLI checks the
installed versions first and refuses with one line; tests/test_fastpath_contract.py checks
the behaviour on what is installed. Keep these ranges and pyproject.toml's pins in step.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

VERIFIED = {"paho-mqtt": ((2, 2), (2, 3)), "aiomqtt": ((2, 5, 1), (2, 6))}
"""Distribution -> (lowest verified release, first release not verified)."""


def _release(text: str) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def unverified_versions() -> str | None:
    """One line naming every installed version outside its verified range, or None."""
    problems = []
    for name, (low, high) in VERIFIED.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if not low <= _release(installed) < high:
            problems.append(f"{name} {installed} (needs >={_dotted(low)},<{_dotted(high)})")
    if not problems:
        return None
    return (
        "elf-async's send path is verified only against other versions of "
        + "; ".join(problems)
        + ": reinstall elf-async (in a checkout: pip install -e .) to get the pinned versions"
    )
