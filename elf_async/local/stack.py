"""The embedded local stack: moto (control plane) and mosquitto with mutual TLS (data plane).

`up` starts both on free 127.0.0.1 ports, each in its own session so they outlive the
command, makes a local CA in ``<state-dir>/local/`` and registers it in moto. What runs is
recorded in ``<state-dir>/local/stack.json`` with each process's start time, so `down`
signals exactly those processes and never a recycled PID (elf_async.local.processes). With
`--local`, commands call `resolve` to aim at the running stack instead of AWS.

The stack keeps its ports and its state: the ledger records moto's endpoint, and a running
send reconnects to the broker's port. So `up` on a stack with a dead part restarts only that
part, on its recorded port: mosquitto from its own config and certificates, moto with every
request the old one served replayed into it (moto's recorder writes them to
``moto-recording.jsonl`` from the first `up` on; the stack signs in cert mode `ca`, so the
replayed registrations give the same certificate ids). Where that cannot be done (a port
another process took, no recording) `up` refuses and says what would be lost.
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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elf_async import statelock
from elf_async.config import DEFAULT_REGION, Settings, Target
from elf_async.controlplane.aws import connect
from elf_async.controlplane.certs import CertificateAuthority, key_pem
from elf_async.controlplane.create import CreateRequest, register_ca
from elf_async.errors import AwsError, LocalStackError, UsageError
from elf_async.files import ensure_private_dir, write_private, write_public
from elf_async.local import processes
from elf_async.local.mosquitto import (
    MOSQUITTO_COMMAND,
    Listeners,
    Mosquitto,
    _accepts,
    _free_port,
    _tail,
    find_mosquitto,
    port_taken,
)
from elf_async.local.processes import Owned, is_ours

HOST = "127.0.0.1"
STACK_DIR = "local"
RECORD = "stack.json"
RECORD_VERSION = 1
RECORDING = "moto-recording.jsonl"  # what moto served since `up` started it, replayed on restart
MOTO_COMMAND = "moto.server"  # in moto's command line: how its recorded PID is known again
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# moto accepts any credentials; these never leave the machine, unlike a real key id would.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "elf-local", "AWS_SECRET_ACCESS_KEY": "elf-local"}
_AWS_IDENTITY_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


def stack_dir(state_dir: Path) -> Path:
    return state_dir / STACK_DIR


def command(state_dir: Path, args: str) -> str:
    """How a user runs `elf-async ARGS` on `state_dir`, quoted for a message."""
    hint = "" if state_dir == Path(".elf") else f" --state-dir {state_dir}"
    return f"`elf-async{hint} {args}`"


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
    # mosquitto's other listeners (None: a stack recorded before they existed)
    listeners: Listeners | None = None

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

    @property
    def recording(self) -> Path:
        """Every request moto served, in order: replayed into a restarted moto."""
        return self.directory / RECORDING

    def parts(self) -> tuple[tuple[str, ProcessRecord], ...]:
        return (("moto", self.moto), ("mosquitto", self.mosquitto))

    def dead(self) -> tuple[str, ...]:
        """The parts that no longer run."""
        return tuple(name for name, part in self.parts() if not part.alive())

    def running(self) -> bool:
        return not self.dead()

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
            **(
                {}
                if self.listeners is None
                else {
                    "wss_port": self.listeners.websocket,
                    "password_port": self.listeners.password,
                }
            ),
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
            listeners=Listeners(int(data["wss_port"]), int(data["password_port"]))
            if "wss_port" in data and "password_port" in data
            else None,
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
        raise LocalStackError(
            f"no local stack is running for state dir {state_dir}: "
            f"start one with {command(state_dir, 'local up')}"
        )
    return stack


def stack_home(state_dir: Path) -> Path:
    """The state dir whose local stack a command uses: its own, else its parent's, so that
    shards on one machine (`--state-dir .elf/shard-0`, `.elf/shard-1`: a ledger each) share
    the stack of `.elf`."""
    if load(state_dir) is None and load(state_dir.parent) is not None:
        return state_dir.parent
    return state_dir


def use_local_credentials() -> None:
    """Point botocore at dummy credentials: moto needs some, and a user's real ones (or an
    SSO profile that needs a login) have no business being used against a local stack."""
    for name in _AWS_IDENTITY_ENV:
        os.environ.pop(name, None)
    os.environ.update(LOCAL_CREDENTIALS)


def aimed_at(settings: Settings, stack: LocalStack) -> Settings:
    """`settings` with the control plane at the stack's moto, whose region applies when
    neither --region nor the fleet names one (elf_async.config.resolve_target)."""
    if settings.endpoint_url and settings.endpoint_url != stack.endpoint_url:
        raise UsageError(
            f"--local targets {stack.endpoint_url}; drop --endpoint-url {settings.endpoint_url}"
        )
    if settings.profile:
        raise UsageError("--local uses no AWS profile; drop --profile")
    return dataclasses.replace(
        settings, endpoint_url=stack.endpoint_url, default_region=stack.region
    )


def resolve(settings: Settings) -> tuple[Settings, LocalStack | None]:
    """The hook every command calls first: with `--local`, the settings aimed at the running
    stack and its record (CA files, MQTT host and port); otherwise `settings` and None."""
    if not settings.local:
        return settings, None
    stack = running(stack_home(settings.state_dir))
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


def _start_moto(directory: Path, port: int | None = None) -> ProcessRecord:
    """moto in server mode on `port` (else a free one), in its own session, logging to
    ``moto.log``. Its recorder writes to the stack's recording once `_recorder` starts it:
    not before, so that a replay is not recorded again."""
    _require_moto()
    log_file = directory / "moto.log"
    env = {name: value for name, value in os.environ.items() if name != "MOTO_ENABLE_RECORDING"}
    env["MOTO_RECORDER_FILEPATH"] = str(directory / RECORDING)
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else _free_port(HOST)
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(chosen)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=env,
            )
        owned = processes.own(process.pid, MOTO_COMMAND)
        deadline = time.monotonic() + START_TIMEOUT_S
        while owned is not None and time.monotonic() < deadline and process.poll() is None:
            if _accepts(HOST, chosen):
                return ProcessRecord(owned, chosen)
            time.sleep(0.05)
        if owned is not None and process.poll() is None:
            processes.stop(owned, STOP_TIMEOUT_S)
            raise LocalStackError(
                f"moto did not listen on {HOST}:{chosen} within {START_TIMEOUT_S:.0f}s: "
                f"{_tail(log_file)}"
            )
        process.wait()
        if "in use" not in _tail(log_file) or attempt == attempts - 1:
            raise LocalStackError(f"moto exited with code {process.returncode}: {_tail(log_file)}")
    raise AssertionError("unreachable")


def _recorder(
    directory: Path, endpoint_url: str, action: str, timeout: float | None = START_TIMEOUT_S
) -> None:
    """POST to moto's recorder (``/moto-api/recorder/<action>``), never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"{endpoint_url}/moto-api/recorder/{action}"
    try:
        with opener.open(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout):
            pass
    except OSError as exc:  # URLError, HTTPError and timeouts alike
        raise LocalStackError(
            f"moto's recorder failed to {action.replace('-', ' ')}: {exc} "
            f"(see {directory / 'moto.log'})"
        ) from exc


def _whole_lines(recording: Path) -> None:
    """Drop a request moto was still writing when it died (a full disk): a replay stops at the
    first line it cannot read. Its caller never got an answer to it."""
    data = recording.read_bytes()
    if data and not data.endswith(b"\n"):
        with recording.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


async def _register_ca(endpoint_url: str, region: str, ca: CertificateAuthority) -> str:
    target = Target(region=region, profile=None, endpoint_url=endpoint_url)
    async with connect(target, concurrency=1) as plane:
        # moto builds its URL router lazily: one plain request before anything else.
        await plane.call("ListThings", maxResults=1)
        response = await register_ca(plane, ca)
    return str(response["certificateId"])


async def _knows_ca(stack: LocalStack) -> bool:
    """Whether moto has the stack's CA: the first thing `up` registered, so the first a replay
    brings back."""
    target = Target(region=stack.region, profile=None, endpoint_url=stack.endpoint_url)
    async with connect(target, concurrency=1) as plane:
        try:
            await plane.call("DescribeCACertificate", certificateId=stack.ca_certificate_id)
        except AwsError as exc:
            if exc.code != "ResourceNotFoundException":
                raise
            return False
    return True


def _replay(stack: LocalStack) -> None:
    """Replay the stack's recording into its restarted (empty) moto, then record again."""
    _whole_lines(stack.recording)
    lost = f"replaying {stack.recording} did not bring moto's state back"
    try:
        # One request after the other, ~10 ms each (~4 per thing): as long as it takes.
        # Ctrl-C stops it, and the new moto with it.
        _recorder(stack.directory, stack.endpoint_url, "replay-recording", timeout=None)
    except LocalStackError as exc:
        raise LocalStackError(f"{lost} ({exc}); {_afresh(stack.directory.parent)}") from exc
    _recorder(stack.directory, stack.endpoint_url, "start-recording")
    use_local_credentials()
    if not asyncio.run(_knows_ca(stack)):
        raise LocalStackError(
            f"{lost} (the local CA {stack.ca_certificate_id} is missing); "
            + _afresh(stack.directory.parent)
        )


def _afresh(state_dir: Path) -> str:
    """The way out when the stack's state cannot be kept."""
    return (
        f"to start afresh without it: {command(state_dir, 'local down')}, "
        f"{command(state_dir, 'clean --only-local --yes')} (forgets the fleet it held), "
        f"{command(state_dir, 'local up')}"
    )


def restart_refusal(stack: LocalStack) -> str | None:
    """Why `up` cannot bring the dead parts of `stack` back as they were; None when it can."""
    state_dir = stack.directory.parent
    for name, part in stack.parts():
        if not part.alive() and port_taken(HOST, part.port):
            holder = processes.listener(part.port)
            who = "another process" if holder is None else f"pid {holder[0]} ({holder[1]})"
            return (
                f"{name}'s port {part.port} is taken by {who}; the ledger and running sends "
                f"know that port, so {name} is not moved: free it and run "
                f"{command(state_dir, 'local up')} again"
            )
    if not stack.moto.alive() and not stack.recording.is_file():
        return (
            f"moto is gone and nothing recorded its state ({stack.recording} is missing): a new "
            "one would hold none of the things, certificates, policies and CA it held; "
            + _afresh(state_dir)
        )
    return None


def advice(stack: LocalStack) -> str:
    """For `local status` on a broken stack: which part is gone, what `up` does about it."""
    dead = stack.dead()
    gone = " and ".join(
        f"{name} (pid {part.pid}, port {part.port})" for name, part in stack.parts() if name in dead
    ) + (" is gone" if len(dead) == 1 else " are gone")
    up_command = command(stack.directory.parent, "local up")
    refusal = restart_refusal(stack)
    if refusal is not None:
        return f"{gone}, and {up_command} would refuse to restart it: {refusal}"
    does = {
        "moto": "restarts moto on its port and replays its recorded state into it",
        "mosquitto": "restarts mosquitto on its port",
    }
    kept = "".join(f"; {name} runs on untouched" for name, _ in stack.parts() if name not in dead)
    return f"{gone}: {up_command} " + " and ".join(does[name] for name in dead) + kept


@dataclass(frozen=True, slots=True)
class Up:
    """What `up` did: started a new stack, restarted the dead parts of one, or nothing."""

    stack: LocalStack
    started: bool  # a new stack: new ports, an empty moto
    restarted: tuple[str, ...] = ()  # parts started again on their ports, moto with its state


def up(state_dir: Path, *, region: str | None = None) -> Up:
    """Start the stack, or only its dead parts (`_restart`), or nothing when it runs.

    Whatever this call started is stopped again if it fails or is interrupted.
    """
    find_mosquitto()
    directory = ensure_private_dir(stack_dir(state_dir))
    with statelock.hold(state_dir):
        existing = load(state_dir)
        if existing is None:
            return Up(_start(directory, region or DEFAULT_REGION), started=True)
        dead = existing.dead()
        if not dead:
            return Up(existing, started=False)
        return Up(_restart(existing), started=False, restarted=dead)


def _start(directory: Path, region: str) -> LocalStack:
    """A new stack on free ports: moto empty and recording from its first request on."""
    ca = _local_ca(directory)
    write_private(directory / RECORDING, "")
    moto: ProcessRecord | None = None
    broker: Mosquitto | None = None
    try:
        moto = _start_moto(directory)
        endpoint = f"http://{HOST}:{moto.port}"
        _recorder(directory, endpoint, "start-recording")
        broker = Mosquitto.start(
            directory=directory / "mosquitto", ca=ca, host=HOST, listeners=True
        )
        use_local_credentials()
        ca_id = asyncio.run(_register_ca(endpoint, region, ca))
        stack = LocalStack(
            directory=directory,
            region=region,
            moto=moto,
            mosquitto=ProcessRecord(broker.process, broker.port),
            listeners=broker.listeners,
            ca_certificate_id=ca_id,
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        _write_record(stack)
    except BaseException:
        if broker is not None:
            broker.stop()
        if moto is not None:
            processes.stop(moto.process, STOP_TIMEOUT_S)
        raise
    return stack


def _restart(stack: LocalStack) -> LocalStack:
    """`stack` with its dead parts started again on their recorded ports: mosquitto from its
    config, moto with its recording replayed. Refuses (`restart_refusal`) rather than move a
    port or lose moto's state; what this started is stopped again if it fails."""
    refusal = restart_refusal(stack)
    if refusal is not None:
        raise LocalStackError(f"cannot restart the local stack: {refusal}")
    moto, broker = stack.moto, stack.mosquitto
    started: list[Owned] = []
    try:
        if not moto.alive():
            moto = _start_moto(stack.directory, moto.port)
            started.append(moto.process)
            _replay(stack)
        if not broker.alive():
            restarted = Mosquitto.restart(directory=stack.broker_dir, port=broker.port, host=HOST)
            broker = ProcessRecord(restarted.process, restarted.port)
            started.append(broker.process)
        stack = dataclasses.replace(stack, moto=moto, mosquitto=broker)
        _write_record(stack)
    except BaseException:
        for process in started:
            processes.stop(process, STOP_TIMEOUT_S)
        raise
    return stack


def _write_record(stack: LocalStack) -> None:
    write_public(stack.directory / RECORD, json.dumps(stack.to_json(), indent=2) + "\n")


def _stop(stack: LocalStack) -> None:
    Mosquitto.attach(
        process=stack.mosquitto.process, port=stack.mosquitto.port, directory=stack.broker_dir
    ).stop(STOP_TIMEOUT_S)
    processes.stop(stack.moto.process, STOP_TIMEOUT_S)
    record = stack.directory / RECORD
    try:
        record.unlink(missing_ok=True)
        stack.recording.unlink(missing_ok=True)  # moto's state ends with it
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
