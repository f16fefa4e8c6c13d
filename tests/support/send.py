"""`send` through the CLI on a fleet the broker trusts: the fixture and helpers the send,
send-big and workers tests share."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from elf_async.local.mosquitto import Mosquitto
from elf_async.report.model import SCHEMA, SendReport
from support.fixtures import Cli
from support.mqtt import FixtureCA
from support.report import assert_conforms


def created(cli: Cli, test_ca: FixtureCA, count: int) -> Cli:
    """`cli`'s state dir with `count` ready things signed by the test CA."""
    result = cli(
        "create", str(count), "--cert-mode", "ca", "--ca-cert", str(test_ca.cert_file),
        "--ca-key", str(test_ca.key_file), "--key-type", "ec",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return cli


@pytest.fixture
def fleet(cli: Cli, test_ca: FixtureCA) -> Cli:
    """Three ready things signed by the test CA."""
    return created(cli, test_ca, 3)


@pytest.fixture
def fleet4(cli: Cli, test_ca: FixtureCA) -> Cli:
    """Four ready things signed by the test CA: two per worker."""
    return created(cli, test_ca, 4)


def things_of(cli: Cli) -> list[str]:
    return sorted(p.stem for p in (cli.state_dir / "certs").glob("*.crt"))


def send(
    cli: Cli, broker: Mosquitto, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return cli(
        "send", "--mqtt-endpoint", f"127.0.0.1:{broker.port}", "--ca-file", str(broker.ca_file),
        *args, timeout=timeout,
    )  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    """A send report, which must have exactly the fields of the model."""
    report: dict[str, Any] = json.loads(path.read_text())
    assert report["schema"] == SCHEMA
    assert_conforms(report, SendReport)
    return report
