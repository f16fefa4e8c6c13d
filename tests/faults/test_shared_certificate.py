"""`clean --fleet` and a certificate the fleet made that someone also attached to a thing
outside the fleet (issue 11, item 8): the certificate is not the fleet's any more, so it
stays ACTIVE with that thing and that thing's own policy, and the summary lists it."""

from __future__ import annotations

import json
from typing import Any

from support.fixtures import Cli


def test_clean_fleet_leaves_a_certificate_an_untagged_thing_shares(cli: Cli, iot: Any) -> None:
    created = json.loads(cli("create", "2", "--key-type", "ec", "--json").stdout)
    fleet_id, prefix = created["fleet_id"], created["prefix"]
    shared = iot.list_thing_principals(thingName=f"{prefix}-00000")["principals"][0]
    shared_id = shared.rsplit("/", 1)[1]
    iot.create_thing(thingName="not-ours")  # no elf_fleet attribute
    iot.attach_thing_principal(thingName="not-ours", principal=shared)
    iot.create_policy(policyName="theirs", policyDocument=json.dumps(_ANY_CONNECT))
    iot.attach_policy(policyName="theirs", target=shared)
    assert cli("clean", "--only-local", "--yes").returncode == 0

    result = cli("clean", "--fleet", fleet_id)
    assert result.returncode == 0, result.stderr
    status = iot.describe_certificate(certificateId=shared_id)["certificateDescription"]["status"]
    assert status == "ACTIVE"
    assert iot.list_principal_things(principal=shared)["things"] == ["not-ours"]
    policies = iot.list_attached_policies(target=shared)["policies"]
    assert [p["policyName"] for p in policies] == ["theirs"]
    assert [t["thingName"] for t in iot.list_things()["things"]] == ["not-ours"]
    assert [c["certificateId"] for c in iot.list_certificates()["certificates"]] == [shared_id]
    assert [p["policyName"] for p in iot.list_policies()["policies"]] == ["theirs"]
    [warning] = [line for line in result.stdout.splitlines() if "warning" in line]
    assert f"{prefix}-00000" in warning
    assert "not-ours" in warning
    assert "left in AWS" in warning


_ANY_CONNECT = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
}
