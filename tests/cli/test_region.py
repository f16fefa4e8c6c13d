"""The region rule on every command, against the local stack: a fleet's remembered region
applies when none is given, and only a different one given explicitly is refused."""

from __future__ import annotations

import json

from support.fixtures import assert_one_line_error
from support.local import LocalCli


def test_a_fleet_in_another_region_is_used_without_region_and_refused_with_another(
    local_cli: LocalCli,
) -> None:
    assert local_cli("local", "up").returncode == 0  # its region: us-west-2
    try:
        created = local_cli("--region", "eu-west-1", "--local", "create", "2")
        assert created.returncode == 0, created.stderr
        status = json.loads(local_cli("--local", "status", "--json").stdout)
        assert status["region"] == "eu-west-1"
        for command in (["send", "--count", "1"], ["subscribe", "--duration", "1"], ["clean"]):
            refused = local_cli("--region", "us-east-1", "--local", *command)
            assert_one_line_error(refused, 2, "lives in eu-west-1, not in us-east-1")
        sent = local_cli("--local", "send", "--count", "1")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        same = local_cli("--region", "eu-west-1", "--local", "send", "--count", "1")
        assert same.returncode == 0, same.stdout + same.stderr
        cleaned = local_cli("--local", "clean")
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert "nothing left" in cleaned.stdout
    finally:
        assert local_cli("local", "down").returncode == 0
