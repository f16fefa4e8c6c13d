"""The CLI refuses, in one line, to run on paho-mqtt or aiomqtt releases its send path was not
verified against (elf_async/compat.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.fixtures import assert_one_line_error

from elf_async.compat import unverified_versions


def test_the_installed_versions_are_the_verified_ones() -> None:
    assert unverified_versions() is None


def test_the_cli_refuses_an_unverified_paho_in_one_line(tmp_path: Path) -> None:
    """paho-mqtt 2.1 (which aiomqtt 2.x accepts) made `elf-async --help` die with a traceback.
    Its metadata, first on the path, is what the check reads."""
    info = tmp_path / "paho_mqtt-2.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: paho-mqtt\nVersion: 2.1.0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "elf_async", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert_one_line_error(result, 2, "paho-mqtt 2.1.0", ">=2.2,<2.3")
