"""`create` and `clean` against a real moto server over HTTP, checked with plain boto3."""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.fixtures import (
    Cli,
    MotoServer,
    assert_one_line_error,
    free_port,
    stop_process,
    wait_for_port,
)
from support.wait import wait_until

from elf_async.controlplane.certs import CertificateAuthority, key_pem, make_csr
from elf_async.controlplane.fleet import policy_document
from elf_async.files import write_private, write_public

PROXY = Path(__file__).parents[1] / "support" / "throttle_proxy.py"


def fleet_things(iot: Any) -> list[dict[str, Any]]:
    things: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {}
    while True:
        page = iot.list_things(**kwargs)
        things += page["things"]
        if not page.get("nextToken"):
            return things
        kwargs["nextToken"] = page["nextToken"]


def assert_nothing_left(iot: Any) -> None:
    assert fleet_things(iot) == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def status(cli: Cli) -> dict[str, Any]:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_create_50_then_clean_leaves_nothing(cli: Cli, iot: Any) -> None:
    result = cli("create", "50", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["created"] == 50
    fleet_id = summary["fleet_id"]

    things = fleet_things(iot)
    assert len(things) == 50
    policy = f"elf-{fleet_id}-policy"
    for thing in things:
        assert thing["thingName"].startswith(f"elf-{fleet_id}-")
        assert thing["attributes"] == {"elf_fleet": fleet_id}
        principals = iot.list_thing_principals(thingName=thing["thingName"])["principals"]
        assert len(principals) == 1
        cert_id = principals[0].rsplit("/", 1)[1]
        description = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
        assert description["status"] == "ACTIVE"
        policies = iot.list_attached_policies(target=principals[0])["policies"]
        assert [p["policyName"] for p in policies] == [policy]
    assert len(iot.list_certificates()["certificates"]) == 50

    document = json.loads(iot.get_policy(policyName=policy)["policyDocument"])
    per_thing = policy_document(
        region="us-west-2",
        account="123456789012",
        topic_root="elf",
        shared_topics=False,
        prefix=f"elf-{fleet_id}",
    )
    assert document == json.loads(per_thing)
    assert status(cli)["topic_scope"] == "thing"

    # keys: 0600 in a 0700 directory, never printed
    certs_dir = cli.state_dir / "certs"
    assert stat.S_IMODE(certs_dir.stat().st_mode) == 0o700
    keys = sorted(certs_dir.glob("*.key"))
    assert len(keys) == 50
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    result = cli("clean")
    assert result.returncode == 0, result.stderr
    assert_nothing_left(iot)
    assert not (cli.state_dir / "certs").exists()
    # idempotent: a second clean has nothing to do and says so
    again = cli("clean")
    assert again.returncode == 0
    assert "nothing to clean" in again.stdout


def test_second_create_adds_to_the_same_fleet(cli: Cli, iot: Any) -> None:
    first = json.loads(cli("create", "2", "--json").stdout)
    second = json.loads(cli("create", "3", "--json").stdout)
    assert first["fleet_id"] == second["fleet_id"]
    names = sorted(t["thingName"] for t in fleet_things(iot))
    prefix = f"elf-{first['fleet_id']}"
    assert names == [f"{prefix}-{i:05d}" for i in range(5)]
    assert status(cli)["things"]["by_state"] == {"ready": 5}
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)


def test_shared_topics_are_an_opt_in_the_fleet_keeps(cli: Cli, iot: Any) -> None:
    fleet_id = json.loads(cli("create", "1", "--shared-topics", "--json").stdout)["fleet_id"]
    policy = iot.get_policy(policyName=f"elf-{fleet_id}-policy")["policyDocument"]
    shared = policy_document(
        region="us-west-2",
        account="123456789012",
        topic_root="elf",
        shared_topics=True,
        prefix=f"elf-{fleet_id}",
    )
    assert json.loads(policy) == json.loads(shared)
    assert cli("create", "1").returncode == 0  # a fleet keeps its scope
    assert status(cli)["topic_scope"] == "shared"
    assert cli("clean").returncode == 0
    assert cli("create", "1").returncode == 0
    assert_one_line_error(cli("create", "1", "--shared-topics"), 2, "per thing")
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)


def test_two_users_in_one_account_do_not_collide(cli: Cli, iot: Any, tmp_path: Path) -> None:
    other = Cli(state_dir=tmp_path / "other", endpoint_url=cli.endpoint_url)
    assert cli("create", "2").returncode == 0
    assert other("create", "2").returncode == 0
    assert len(fleet_things(iot)) == 4
    assert other("clean").returncode == 0
    assert len(fleet_things(iot)) == 2  # the first user's fleet is untouched
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)


@pytest.fixture
def ca_files(tmp_path: Path) -> tuple[Path, Path]:
    ca = CertificateAuthority.create("elf-test-ca")
    cert, key = tmp_path / "ca.crt", tmp_path / "ca.key"
    write_public(cert, ca.cert_pem)
    write_private(key, key_pem(ca.key))
    return cert, key


@pytest.mark.parametrize("key_type", ["rsa", "ec", None])
def test_ca_mode_registers_locally_signed_certificates(
    cli: Cli, iot: Any, ca_files: tuple[Path, Path], key_type: str | None
) -> None:
    """Without --key-type, keys made here are EC P-256 (cheaper connects)."""
    ca_cert, ca_key = ca_files
    chosen = ["--key-type", key_type] if key_type else []
    result = cli(
        "create", "3", "--cert-mode", "ca", *chosen,
        "--ca-cert", str(ca_cert), "--ca-key", str(ca_key), "--register-ca",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # moto's ListCACertificates answers 500: look the CA up by the id the ledger recorded
    [ca_record] = [r for r in status(cli)["fleet_resources"] if r["kind"] == "ca"]
    ca_id = ca_record["arn"].rsplit("/", 1)[1]
    assert (
        iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]["status"]
        == "ACTIVE"
    )
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    for thing in fleet_things(iot):
        name = thing["thingName"]
        arn = iot.list_thing_principals(thingName=name)["principals"][0]
        pem = iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])[
            "certificateDescription"
        ]["certificatePem"]
        local = (cli.state_dir / "certs" / f"{name}.crt").read_text()
        assert pem.strip() == local.strip()
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert cert.issuer == ca.subject
        key = serialization.load_pem_private_key(
            (cli.state_dir / "certs" / f"{name}.key").read_bytes(), password=None
        )
        assert key.public_key() == cert.public_key()
        assert isinstance(key, ec.EllipticCurvePrivateKey) == (key_type != "rsa")
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):  # ours, so clean removed it
        iot.describe_ca_certificate(certificateId=ca_id)


def test_csr_mode_keeps_the_key_local(cli: Cli, iot: Any) -> None:
    result = cli("create", "2", "--cert-mode", "csr", "--key-type", "ec")
    assert result.returncode == 0, result.stderr
    for thing in fleet_things(iot):
        name = thing["thingName"]
        assert (cli.state_dir / "certs" / f"{name}.key").is_file()
        arn = iot.list_thing_principals(thingName=name)["principals"][0]
        assert (
            iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])["certificateDescription"][
                "status"
            ]
            == "ACTIVE"
        )
    # moto's CreateCertificateFromCsr ignores the CSR's key, so only the calls are checked here.
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)


def test_fleet_discovery_cleans_only_that_fleet(cli: Cli, iot: Any) -> None:
    fleet_id = json.loads(cli("create", "3", "--json").stdout)["fleet_id"]
    iot.create_thing(thingName="not-ours")  # no elf_fleet attribute: must survive
    iot.create_thing(thingName="other-fleet", attributePayload={"attributes": {"elf_fleet": "zzz"}})
    forget = cli("clean", "--only-local", "--yes")
    assert forget.returncode == 0, forget.stderr
    assert "3 things" in forget.stdout
    assert "stay in AWS" in forget.stdout

    result = cli("clean", "--fleet", fleet_id)
    assert result.returncode == 0, result.stderr
    assert sorted(t["thingName"] for t in fleet_things(iot)) == ["not-ours", "other-fleet"]
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def test_clean_fleet_with_an_unknown_id_fails_and_names_the_fleets_found(
    cli: Cli, iot: Any, tmp_path: Path
) -> None:
    """A typo'd --fleet must not read as a fleet cleaned of nothing."""
    fleet_id = json.loads(cli("create", "1", "--json").stdout)["fleet_id"]
    iot.create_thing(thingName="other-fleet", attributePayload={"attributes": {"elf_fleet": "qqq"}})
    elsewhere = Cli(state_dir=tmp_path / "elsewhere", endpoint_url=cli.endpoint_url)
    result = elsewhere("clean", "--fleet", "zzzzzzzz")
    found = ", ".join(sorted([fleet_id, "qqq"]))
    assert_one_line_error(
        result, 1, "no thing in us-west-2 carries elf_fleet=zzzzzzzz", f"fleet ids found: {found}"
    )
    assert not (elsewhere.state_dir / "ledger.sqlite3").exists()
    assert cli("clean").returncode == 0


def test_fleet_discovery_leaves_a_certificate_that_others_hold(cli: Cli, iot: Any) -> None:
    """A thing carrying the fleet attribute whose certificate is also attached to a thing
    outside the fleet: the certificate only lets go of our thing and stays."""
    fleet_id = json.loads(cli("create", "2", "--json").stdout)["fleet_id"]
    tagged = {"attributes": {"elf_fleet": fleet_id}}
    iot.create_thing(thingName="tagged-by-hand", attributePayload=tagged)
    iot.create_thing(thingName="not-ours")
    shared = iot.create_keys_and_certificate(setAsActive=True)
    for thing in ("tagged-by-hand", "not-ours"):
        iot.attach_thing_principal(thingName=thing, principal=shared["certificateArn"])
    assert cli("clean", "--only-local", "--yes").returncode == 0

    result = cli("clean", "--fleet", fleet_id)
    assert result.returncode == 0, result.stderr
    assert [t["thingName"] for t in fleet_things(iot)] == ["not-ours"]
    assert cert_ids(iot) == [shared["certificateId"]]
    assert iot.list_principal_things(principal=shared["certificateArn"])["things"] == ["not-ours"]
    [warning] = [line for line in result.stdout.splitlines() if "warning" in line]
    assert "tagged-by-hand" in warning
    assert "also held by not-ours" in warning
    assert "left in AWS" in warning


def test_only_local_without_yes_refuses_when_not_interactive(cli: Cli, iot: Any) -> None:
    assert cli("create", "1").returncode == 0
    result = cli("clean", "--only-local")
    assert_one_line_error(result, 2, "--yes")
    assert status(cli)["exists"] is True
    assert cli("clean").returncode == 0


def test_region_mismatch_is_refused(cli: Cli, iot: Any) -> None:
    assert cli("--region", "us-west-2", "create", "1").returncode == 0
    result = cli("--region", "eu-west-1", "clean")
    assert_one_line_error(result, 2, "us-west-2", "eu-west-1")
    assert cli("clean").returncode == 0  # the stored region is used without being told


def test_account_mismatch_is_refused(cli: Cli, iot: Any) -> None:
    assert cli("create", "1").returncode == 0
    db = sqlite3.connect(cli.state_dir / "ledger.sqlite3")
    db.execute("UPDATE meta SET value='999999999999' WHERE key='account'")
    db.commit()
    db.close()
    assert_one_line_error(cli("clean"), 2, "999999999999", "123456789012")


# --- interruption -------------------------------------------------------------------


def test_sigkill_mid_create_then_clean_leaves_nothing(cli: Cli, iot: Any) -> None:
    process = cli.popen("create", "200")
    try:
        wait_until(lambda: len(fleet_things(iot)) >= 15, what="15 things", timeout=120)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        stop_process(process)
    assert 0 < len(fleet_things(iot)) < 200

    result = cli("clean")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_nothing_left(iot)


def test_create_again_finishes_an_interrupted_create(cli: Cli, iot: Any) -> None:
    process = cli.popen("create", "40", "--cert-mode", "csr")
    try:
        wait_until(lambda: len(fleet_things(iot)) >= 10, what="10 things", timeout=120)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        stop_process(process)
    result = cli("create", "40", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed"] is True
    assert summary["things_in_fleet"] == 40
    assert len(fleet_things(iot)) == 40
    assert status(cli)["things"]["by_state"] == {"ready": 40}
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)


def interrupted_thing(cli: Cli, index: int) -> str:
    """The state a kill leaves: a thing whose certificate call may have run but was never
    recorded. Returns its name."""
    db = sqlite3.connect(cli.state_dir / "ledger.sqlite3")
    last = db.execute("SELECT name FROM things ORDER BY idx DESC LIMIT 1").fetchone()[0]
    name = f"{last[:-5]}{index:05d}"
    db.execute(
        "INSERT INTO things (idx, name, cert_state, cert_intent_at) VALUES (?, ?, 'intended', ?)",
        (index, name, time.time()),
    )
    db.commit()
    db.close()
    return name


def cert_ids(iot: Any) -> list[str]:
    return [c["certificateId"] for c in iot.list_certificates()["certificates"]]


def test_unprovable_certificate_is_listed_not_deleted(cli: Cli, iot: Any) -> None:
    """aws mode: a certificate made at that moment by someone else looks just like the one a
    killed create may have made. Nothing proves it ours, so clean lists it and leaves it."""
    assert cli("create", "2", "--cert-mode", "aws").returncode == 0
    interrupted_thing(cli, 99)
    someone_elses = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    result = cli("clean")
    assert result.returncode == 0, result.stderr
    assert cert_ids(iot) == [someone_elses]
    assert (
        f"aws iot update-certificate --certificate-id {someone_elses} --region us-west-2 "
        f"--endpoint-url {cli.endpoint_url} --new-status INACTIVE && aws iot delete-certificate "
        f"--certificate-id {someone_elses}" in result.stdout
    )
    iot.update_certificate(certificateId=someone_elses, newStatus="INACTIVE")
    iot.delete_certificate(certificateId=someone_elses)
    assert_nothing_left(iot)


def test_interrupted_csr_certificate_is_proven_ours_and_cleaned(cli: Cli, iot: Any) -> None:
    """csr mode (the default): the certificate carries our key (AWS) or, on moto, which ignores
    the CSR's key, our thing's name and the fleet id. A certificate with only the name is not
    proof: it is listed and left."""
    fleet_id = json.loads(cli("create", "2", "--prefix", "dev", "--json").stdout)["fleet_id"]
    unproven, proven = interrupted_thing(cli, 98), interrupted_thing(cli, 99)
    for name in (unproven, proven):
        write_private(cli.state_dir / "certs" / f"{name}.key", key_pem(new_key()))

    def from_csr(name: str, unit: str | None = None) -> str:
        csr = make_csr(new_key(), name, unit=unit)
        response = iot.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=True)
        return str(response["certificateId"])

    ours = from_csr(proven, unit=f"elf-async {fleet_id}")
    same_name = from_csr(unproven)
    result = cli("clean")
    assert result.returncode == 0, result.stderr
    assert cert_ids(iot) == [same_name]
    assert ours not in result.stdout
    [line] = [line for line in result.stdout.splitlines() if "nothing proves it is ours" in line]
    assert f"certificate {same_name}" in line
    assert unproven in line


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- AWS pushing back ----------------------------------------------------------------


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[Any]:
    """Starts the throttling proxy in front of moto; yields a function that starts it."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                str(PROXY),
                "--target",
                moto.url,
                "--port",
                str(port),
                "--max-seconds",
                "600",
                *args,
            ]
        )
        processes.append(process)
        wait_for_port(port, process=process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        stop_process(process)


def test_throttling_slows_create_but_fails_nothing(cli: Cli, iot: Any, proxy: Any) -> None:
    url = proxy("--rate", "6", "--burst", "0.2")  # far below our default pacing of ~14/s
    throttled = Cli(state_dir=cli.state_dir, endpoint_url=url)
    result = throttled("create", "30", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["created"] == 30
    assert summary["failed"] == 0
    assert sum(api["throttled"] for api in summary["api"].values()) > 0
    assert summary["api"]["CreateThing"]["achieved_per_s"] > 0  # the achieved rate is reported
    assert len(fleet_things(iot)) == 30
    clean = throttled("clean", "--json")
    assert clean.returncode == 0, clean.stderr
    assert_nothing_left(iot)


def test_access_denied_names_the_missing_action(cli: Cli, iot: Any, proxy: Any) -> None:
    url = proxy("--deny", "POST /things")
    denied = Cli(state_dir=cli.state_dir, endpoint_url=url)
    result = denied("create", "5")
    assert result.returncode == 1
    assert "iot:CreateThing" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # what was created before the denial is in the ledger and cleaned through the real endpoint
    assert cli("clean").returncode == 0
    assert_nothing_left(iot)


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["create", "0"], "at least 1"),
        (["create", "-3"], "negative"),
        (["create", "many"], "whole number"),
        (["create", "20000"], "--max-things"),
        (["create", "1", "--cert-mode", "magic"], "--cert-mode"),
        (["create", "1", "--key-type", "dsa"], "--key-type"),
        (["create", "1", "--cert-mode", "ca"], "--ca-cert"),
        (
            ["create", "1", "--cert-mode", "ca", "--ca-cert", "/nonexistent.crt", "--ca-key", "/x"],
            "no such file",
        ),
        (["create", "1", "--prefix", "bad name!"], "--prefix"),
        (["create", "1", "--api-rate", "CreateThing"], "--api-rate"),
        (["create", "1", "--api-rate", "CreateThing=fast"], "not a rate"),
        (["create", "1", "--concurrency", "0"], "concurrency"),
        (["create", "1", "--bogus"], "--bogus"),
        (["clean", "--fleet", "../x"], "--fleet"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli: Cli, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli(*args), 2, fragment)


def test_corrupt_ledger_is_a_usage_error(cli: Cli) -> None:
    cli.state_dir.mkdir()
    (cli.state_dir / "ledger.sqlite3").write_bytes(b"this is not a database" * 100)
    assert_one_line_error(cli("status"), 2, "corrupt")


def test_newer_ledger_is_refused(cli: Cli, iot: Any) -> None:
    assert cli("create", "1").returncode == 0
    db = sqlite3.connect(cli.state_dir / "ledger.sqlite3")
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    assert_one_line_error(cli("status"), 2, "newer")


def test_unwritable_state_dir(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    other = Cli(state_dir=blocker / "state", endpoint_url=cli.endpoint_url, cwd=tmp_path)
    assert_one_line_error(
        other("create", "1"), 2, f"the state dir must be a directory, {blocker} is a file"
    )
    in_place = Cli(state_dir=blocker, endpoint_url=cli.endpoint_url, cwd=tmp_path)
    for command in (["--local", "create", "1"], ["status"]):
        assert_one_line_error(in_place(*command), 2, "the state dir must be a directory, it is a")


def test_missing_credentials(cli: Cli) -> None:
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    result = subprocess.run(
        cli.args("create", "1"),
        capture_output=True,
        text=True,
        env={k: v for k, v in cli.env().items() if k not in env},
        timeout=60,
    )
    assert_one_line_error(result, 1, "credentials")
    assert not (cli.state_dir / "ledger.sqlite3").exists()  # nothing recorded: no ledger
    assert cli("status").stdout == f"no fleet in {cli.state_dir}\n"


def test_verbose_shows_the_traceback(cli: Cli) -> None:
    result = cli("-v", "create", "0")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
