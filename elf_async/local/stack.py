"""The embedded local stack: moto (control plane) and mosquitto with mutual TLS (data plane).

`up` starts both on free 127.0.0.1 ports, each in its own session so they outlive the
command, makes a local CA in ``<state-dir>/local/`` and registers it in moto. What runs is
recorded in ``<state-dir>/local/stack.json`` with each process's start time, so `down`
signals exactly those processes and never a recycled PID (elf_async.local.processes). With
`--local`, commands call `resolve` to aim at the running stack instead of AWS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elf_async import statelock
from elf_async.config import DEFAULT_REGION, Settings, Target
from elf_async.controlplane.aws import connect
from elf_async.controlplane.certs import CertificateAuthority, key_pem
from elf_async.controlplane.create import CreateRequest, register_ca
from elf_async.errors import LocalStackError, UsageError
from elf_async.files import ensure_private_dir, write_private, write_public
from elf_async.local import processes
from elf_async.local.mosquitto import (
    MOSQUITTO_COMMAND,
    Mosquitto,
    _accepts,
    _free_port,
    _tail,
    find_mosquitto,
)
from elf_async.local.processes import Owned, is_ours

HOST = "127.0.0.1"
STACK_DIR = "local"
RECORD = "stack.json"
RECORD_VERSION = 1
MOTO_COMMAND = "moto.server"  # in moto's command line: how its recorded PID is known again
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# moto accepts any credentials; these never leave the machine, unlike a real key id would.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "elf-local", "AWS_SECRET_ACCESS_KEY": "elf-local"}
_AWS_IDENTITY_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


def stack_dir(state_dir: Path) -> Path:
    return state_dir / STACK_DIR


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A process the stack started: who it is (elf_async.local.processes) and its port.

    On disk as ``{"pid", "port", "started"}``; the command word it is known by again follows
    from its role (`MOTO_COMMAND`, `MOSQUITTO_COMMAND`), so it is not stored."""

    process: Owned
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """Still the very process we started (not just some process with its PID)."""
        return is_ours(self.process)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.process.pid, "port": self.port, "started": self.process.started}

    @classmethod
    def from_json(cls, data: dict[str, Any], command: str) -> ProcessRecord:
        return cls(Owned(int(data["pid"]), str(data["started"]), command), int(data["port"]))


@dataclass(frozen=True, slots=True)
class LocalStack:
    """What `local up` started, as recorded in ``stack.json``."""

    directory: Path
    region: str
    moto: ProcessRecord
    mosquitto: ProcessRecord
    ca_certificate_id: str
    started_at: str

    @property
    def endpoint_url(self) -> str:
        """The control-plane endpoint: moto."""
        return f"http://{HOST}:{self.moto.port}"

    @property
    def mqtt_host(self) -> str:
        return HOST

    @property
    def mqtt_port(self) -> int:
        return self.mosquitto.port

    @property
    def ca_cert(self) -> Path:
        """The local CA: it signs device certificates (cert mode `ca`) and the broker's own."""
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_file(self) -> Path:
        """What MQTT clients trust for the broker: the same local CA."""
        return self.ca_cert

    @property
    def broker_dir(self) -> Path:
        return self.directory / "mosquitto"

    def running(self) -> bool:
        return self.moto.alive() and self.mosquitto.alive()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "region": self.region,
            "started_at": self.started_at,
            "moto": self.moto.to_json(),
            "mosquitto": self.mosquitto.to_json(),
            "ca_certificate_id": self.ca_certificate_id,
            "endpoint_url": self.endpoint_url,
            "mqtt_endpoint": f"{self.mqtt_host}:{self.mqtt_port}",
            "ca_cert": str(self.ca_cert),
            "ca_key": str(self.ca_key),
        }

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> LocalStack:
        return cls(
            directory=directory,
            region=str(data["region"]),
            moto=ProcessRecord.from_json(data["moto"], MOTO_COMMAND),
            mosquitto=ProcessRecord.from_json(data["mosquitto"], MOSQUITTO_COMMAND),
            ca_certificate_id=str(data["ca_certificate_id"]),
            started_at=str(data["started_at"]),
        )


def load(state_dir: Path) -> LocalStack | None:
    """The recorded stack, running or not; None when none is recorded."""
    directory = stack_dir(state_dir)
    path = directory / RECORD
    try:
        data = json.loads(path.read_text())
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"version {data.get('version')}")
        return LocalStack.from_json(directory, data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalStackError(f"{path} is unreadable ({exc}): delete it and run local up") from exc


def running(state_dir: Path) -> LocalStack:
    """The running stack, or a `LocalStackError` telling how to start one."""
    stack = load(state_dir)
    if stack is None or not stack.running():
        hint = "" if state_dir == Path(".elf") else f" --state-dir {state_dir}"
        raise LocalStackError(
            f"no local stack is running for state dir {state_dir}: "
            f"start one with `elf-async{hint} local up`"
        )
    return stack


def use_local_credentials() -> None:
    """Point botocore at dummy credentials: moto needs some, and a user's real ones (or an
    SSO profile that needs a login) have no business being used against a local stack."""
    for name in _AWS_IDENTITY_ENV:
        os.environ.pop(name, None)
    os.environ.update(LOCAL_CREDENTIALS)


def aimed_at(settings: Settings, stack: LocalStack) -> Settings:
    """`settings` with the control plane at the stack's moto."""
    if settings.endpoint_url and settings.endpoint_url != stack.endpoint_url:
        raise UsageError(
            f"--local targets {stack.endpoint_url}; drop --endpoint-url {settings.endpoint_url}"
        )
    if settings.profile:
        raise UsageError("--local uses no AWS profile; drop --profile")
    return dataclasses.replace(
        settings, endpoint_url=stack.endpoint_url, region=settings.region or stack.region
    )


def resolve(settings: Settings) -> tuple[Settings, LocalStack | None]:
    """The hook every command calls first: with `--local`, the settings aimed at the running
    stack and its record (CA files, MQTT host and port); otherwise `settings` and None."""
    if not settings.local:
        return settings, None
    stack = running(settings.state_dir)
    use_local_credentials()
    return aimed_at(settings, stack), stack


def for_create(request: CreateRequest, stack: LocalStack) -> CreateRequest:
    """Cert mode `ca` with the stack's CA: the local broker trusts only what that CA signed.
    Keys default to EC, which are made in a fraction of an RSA key's time."""
    if request.cert_mode not in (None, "ca"):
        raise UsageError(
            f"--local creates things with --cert-mode ca, not {request.cert_mode}: "
            "the local broker trusts only the local CA"
        )
    for given, own, flag in (
        (request.ca_cert, stack.ca_cert, "--ca-cert"),
        (request.ca_key, stack.ca_key, "--ca-key"),
    ):
        if given is not None and given.resolve() != own.resolve():
            raise UsageError(f"--local signs with the local CA {own}: drop {flag}")
    return dataclasses.replace(
        request,
        cert_mode="ca",
        key_type=request.key_type or "ec",
        ca_cert=stack.ca_cert,
        ca_key=stack.ca_key,
        register_ca=False,
    )


def _local_ca(directory: Path) -> CertificateAuthority:
    """The stack's CA, made on the first `up` and kept (key 0600 in the 0700 directory)."""
    cert_file, key_file = directory / "ca.crt", directory / "ca.key"
    if cert_file.is_file() and key_file.is_file():
        return CertificateAuthority.load(cert_file, key_file)
    ca = CertificateAuthority.create("elf-async local CA")
    write_private(key_file, key_pem(ca.key))
    write_public(cert_file, ca.cert_pem)
    return ca


def _require_moto() -> None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise LocalStackError(
            "moto's server mode is not installed: pip install 'moto[server]' "
            "(`make demo` installs it)"
        )


def _start_moto(directory: Path) -> ProcessRecord:
    """moto in server mode on a free port, in its own session, logging to ``moto.log``."""
    _require_moto()
    log_file = directory / "moto.log"
    for attempt in range(3):
        port = _free_port(HOST)
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        owned = processes.own(process.pid, MOTO_COMMAND)
        deadline = time.monotonic() + START_TIMEOUT_S
        while owned is not None and time.monotonic() < deadline and process.poll() is None:
            if _accepts(HOST, port):
                return ProcessRecord(owned, port)
            time.sleep(0.05)
        if owned is not None and process.poll() is None:
            processes.stop(owned, STOP_TIMEOUT_S)
            raise LocalStackError(
                f"moto did not listen on {HOST}:{port} within {START_TIMEOUT_S:.0f}s: "
                f"{_tail(log_file)}"
            )
        process.wait()
        if "in use" not in _tail(log_file) or attempt == 2:
            raise LocalStackError(f"moto exited with code {process.returncode}: {_tail(log_file)}")
    raise AssertionError("unreachable")


async def _register_ca(endpoint_url: str, region: str, ca: CertificateAuthority) -> str:
    target = Target(region=region, profile=None, endpoint_url=endpoint_url)
    async with connect(target, concurrency=1) as plane:
        # moto builds its URL router lazily: one plain request before anything else.
        await plane.call("ListThings", maxResults=1)
        response = await register_ca(plane, ca)
    return str(response["certificateId"])


def up(state_dir: Path, *, region: str | None = None) -> tuple[LocalStack, bool]:
    """Start the stack unless it already runs. Returns the stack and whether it was started.

    A half-dead stack (one process gone) is stopped and started afresh. Whatever this call
    started is stopped again if it fails or is interrupted.
    """
    find_mosquitto()
    directory = ensure_private_dir(stack_dir(state_dir))
    with statelock.hold(state_dir):
        existing = load(state_dir)
        if existing is not None:
            if existing.running():
                return existing, False
            _stop(existing)
        ca = _local_ca(directory)
        region = region or DEFAULT_REGION
        moto: ProcessRecord | None = None
        broker: Mosquitto | None = None
        try:
            moto = _start_moto(directory)
            broker = Mosquitto.start(directory=directory / "mosquitto", ca=ca, host=HOST)
            endpoint = f"http://{HOST}:{moto.port}"
            use_local_credentials()
            ca_id = asyncio.run(_register_ca(endpoint, region, ca))
            stack = LocalStack(
                directory=directory,
                region=region,
                moto=moto,
                mosquitto=ProcessRecord(broker.process, broker.port),
                ca_certificate_id=ca_id,
                started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            )
            write_public(directory / RECORD, json.dumps(stack.to_json(), indent=2) + "\n")
        except BaseException:
            if broker is not None:
                broker.stop()
            if moto is not None:
                processes.stop(moto.process, STOP_TIMEOUT_S)
            raise
    return stack, True


def _stop(stack: LocalStack) -> None:
    Mosquitto.attach(
        process=stack.mosquitto.process, port=stack.mosquitto.port, directory=stack.broker_dir
    ).stop(STOP_TIMEOUT_S)
    processes.stop(stack.moto.process, STOP_TIMEOUT_S)
    record = stack.directory / RECORD
    try:
        record.unlink(missing_ok=True)
    except OSError as exc:  # stopped all the same: what runs can always be stopped
        raise LocalStackError(
            f"the local stack is stopped (moto pid {stack.moto.pid}, mosquitto pid "
            f"{stack.mosquitto.pid}), but its record {record} could not be removed "
            f"({exc.strerror}): run `local down` again once the state dir is writable"
        ) from exc


def down(state_dir: Path) -> LocalStack | None:
    """Stop exactly the recorded processes; None (and nothing done) when no stack is recorded."""
    directory = stack_dir(state_dir)
    if not (directory / RECORD).is_file():
        return None
    with statelock.hold(state_dir):
        stack = load(state_dir)
        if stack is not None:
            _stop(stack)
    return stack
