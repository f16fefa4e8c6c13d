"""A real mosquitto with mutual TLS on the loopback, started and stopped by PID (and known
again by its start time and command line: elf_async.local.processes).

The local stack and the tests use it as the stand-in for the AWS IoT message broker:
every client must present a certificate signed by the CA it trusts, as in AWS.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elf_async.controlplane.certs import CertificateAuthority, generate_key, key_pem
from elf_async.errors import LocalStackError
from elf_async.fdlimit import raise_to_hard
from elf_async.files import write_private, write_public
from elf_async.local import processes
from elf_async.local.processes import Owned

_INSTALL_HINT = (
    "mosquitto is not installed: sudo apt-get install mosquitto (Debian/Ubuntu) "
    "or brew install mosquitto"
)
_START_TIMEOUT = 15.0
MOSQUITTO_COMMAND = "mosquitto"  # in its command line: how a recorded PID is known again
CONFIG = "mosquitto.conf"
PASSWORDS = "passwords"
# The local stand-in of a custom authorizer (--auth custom:NAME): mosquitto checks the MQTT
# username (with the authorizer's name in its query, as AWS IoT takes it) and the password.
LOCAL_AUTHORIZER = "elf-local"
LOCAL_USERNAME = "elf"
LOCAL_PASSWORD = "elf-local-secret"


@dataclass(frozen=True, slots=True)
class Listeners:
    """The listeners besides mutual TLS: MQTT over WebSocket with TLS (no client certificate:
    AWS checks a SigV4 signature, mosquitto checks none) and TLS with a username and password
    (the stand-in of a custom authorizer), each on its own port."""

    websocket: int
    password: int


def find_mosquitto() -> str:
    """The mosquitto binary: on PATH, else where Debian and Homebrew put it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in (
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise LocalStackError(_INSTALL_HINT)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """Whether a server could not bind `host:port` now. With SO_REUSEADDR, as mosquitto and
    moto bind: the TIME_WAIT of a connection a killed server left behind does not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _server_names(host: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((host, "127.0.0.1", "localhost")))


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _listening(conf: Path, port: int) -> list[int]:
    """`port` first, then every other listener's port in the config."""
    try:
        text = conf.read_text()
    except OSError:
        return [port]
    others = [int(m) for m in re.findall(r"^listener (\d+) ", text, flags=re.MULTILINE)]
    return [port, *(other for other in others if other != port)]


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _config(
    *,
    host: str,
    port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    max_inflight: int,
    persistence: bool,
    log_types: Sequence[str],
    extra: Sequence[str] = (),
    listeners: Listeners | None = None,
) -> str:
    lines = [
        # allow_anonymous and password_file belong to each listener, not to all of them
        "per_listener_settings true",
        f"listener {port} {host}",
        # No cap on connections (the listener's default, said here): a fleet of 20,000 on one
        # machine is bounded by the file-descriptor limit, which `_launch` raises to the hard one.
        "max_connections -1",
        f"cafile {ca_file}",
        f"certfile {cert_file}",
        f"keyfile {key_file}",
        "require_certificate true",
        # The certificate's CN (the thing name) becomes the username, as AWS ties a
        # connection to its certificate; no client can connect without one.
        "use_identity_as_username true",
        "allow_anonymous false",
        # Without it every mTLS connect stalls ~40 ms (Nagle + delayed ACK).
        "set_tcp_nodelay true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {ca_file.parent}/",
        f"max_inflight_messages {max_inflight}",
        "max_queued_messages 100000",
        "max_keepalive 1200",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        *(f"log_type {kind}" for kind in log_types),
        "connection_messages true",
        *extra,
    ]
    if listeners is not None:
        tls = [f"cafile {ca_file}", f"certfile {cert_file}", f"keyfile {key_file}"]
        lines += [
            f"listener {listeners.websocket} {host}",
            "protocol websockets",
            *tls,
            "require_certificate false",
            "allow_anonymous true",
            f"listener {listeners.password} {host}",
            *tls,
            "require_certificate false",
            "allow_anonymous false",
            f"password_file {ca_file.parent / PASSWORDS}",
        ]
    if os.geteuid() == 0:
        # As root mosquitto drops to the `mosquitto` user, which cannot read our 0600 key.
        lines.append("user root")
    return "\n".join(lines) + "\n"


@dataclass
class Mosquitto:
    """A mosquitto process with mutual TLS, started and stopped by PID."""

    process: Owned
    port: int
    directory: Path
    host: str = "127.0.0.1"
    listeners: Listeners | None = None
    _child: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ca_file(self) -> Path:
        """The CAs the broker trusts for client certificates (and that signed its own)."""
        return self.directory / "ca.crt"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    @classmethod
    def start(
        cls,
        *,
        directory: Path,
        ca: CertificateAuthority,
        port: int | None = None,
        host: str = "127.0.0.1",
        extra_ca_files: Sequence[Path] = (),
        max_inflight: int = 100,
        log_file: Path | None = None,
        persistence: bool = False,
        log_types: Sequence[str] = (),
        extra_config: Sequence[str] = (),
        listeners: bool = False,
    ) -> Mosquitto:
        """Write a server certificate signed by `ca` and the config, then start mosquitto.

        Returns once the TLS port accepts connections; raises `LocalStackError` with the
        end of mosquitto's log if it exits first. With no `port`, a free one is chosen
        (and another one tried if it was taken in between). With `persistence`, sessions
        and queued messages survive a SIGTERM restart (saved in `directory`). `log_types` adds
        mosquitto log types, e.g. "debug" to log every packet: tests wait for those lines.
        `extra_config`: more lines of its config (e.g. a test's ``acl_file``).
        With `listeners`, a WebSocket and a password listener too (`Listeners`, free ports).
        """
        binary = find_mosquitto()
        directory.mkdir(parents=True, exist_ok=True)
        key = generate_key("ec")
        key_file, cert_file = directory / "server.key", directory / "server.crt"
        write_private(key_file, key_pem(key))
        write_public(
            cert_file,
            ca.sign(key.public_key(), host, server_names=_server_names(host)),
        )
        trusted = [ca.cert_pem] + [Path(extra).read_text() for extra in extra_ca_files]
        write_public(directory / "ca.crt", "".join(pem.rstrip("\n") + "\n" for pem in trusted))
        extra = None
        if listeners:
            write_passwords(directory / PASSWORDS)
            extra = Listeners(websocket=_free_port(host), password=_free_port(host))
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            chosen = port if port is not None else _free_port(host)
            (directory / CONFIG).write_text(
                _config(
                    host=host,
                    port=chosen,
                    ca_file=directory / "ca.crt",
                    cert_file=directory / "server.crt",
                    key_file=directory / "server.key",
                    max_inflight=max_inflight,
                    persistence=persistence,
                    log_types=log_types,
                    extra=extra_config,
                    listeners=extra,
                )
            )
            broker = cls._launch(
                binary,
                directory=directory,
                host=host,
                port=chosen,
                log_file=log_file or directory / "mosquitto.log",
                last_attempt=attempt == attempts - 1,
            )
            if broker is not None:
                broker.listeners = extra
                return broker
        raise AssertionError("unreachable")  # _launch raises on the last attempt

    @classmethod
    def restart(cls, *, directory: Path, port: int, host: str = "127.0.0.1") -> Mosquitto:
        """mosquitto again from the config `start` wrote in `directory`: the same port, server
        certificate, CA file and persistence, so a client that trusted it trusts it again and
        a persistent broker takes its saved sessions back. Its log goes on where it was."""
        conf = directory / CONFIG
        try:
            listens = f"listener {port} {host}\n" in conf.read_text()
        except OSError as exc:
            raise LocalStackError(f"cannot restart mosquitto: {conf}: {exc.strerror}") from exc
        if not listens:
            raise LocalStackError(
                f"cannot restart mosquitto on {host}:{port}: {conf} configures another listener"
            )
        broker = cls._launch(
            find_mosquitto(),
            directory=directory,
            host=host,
            port=port,
            log_file=directory / "mosquitto.log",  # a link to the log `start` was given, if any
            last_attempt=True,
        )
        assert broker is not None  # _launch raises on the last attempt
        return broker

    @classmethod
    def _launch(
        cls,
        binary: str,
        *,
        directory: Path,
        host: str,
        port: int,
        log_file: Path,
        last_attempt: bool,
    ) -> Mosquitto | None:
        """Start mosquitto with the config in `directory`; None when another process took
        `port` first and this is not the `last_attempt`."""
        conf = directory / CONFIG
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=raise_to_hard,  # one descriptor per connection: soft limit = hard
            )
        # Popen returns once the child has exec'd: the command line is mosquitto's already.
        # None: it exited already (then never ours again; poll() below tells why).
        owned = processes.own(process.pid, MOSQUITTO_COMMAND) or Owned(process.pid, "exited")
        broker = cls(process=owned, port=port, directory=directory, host=host, _child=process)
        if log_file != broker.log_file:
            with contextlib.suppress(OSError):
                broker.log_file.unlink(missing_ok=True)
                broker.log_file.symlink_to(log_file)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = _tail(log_file)
                if "Address already in use" in tail and not last_attempt:
                    return None
                raise LocalStackError(
                    f"mosquitto exited with code {process.returncode} on port {port}: {tail}"
                )
            # Every listener: the WebSocket one opens a moment after the others.
            if all(_accepts(host, each) for each in _listening(conf, port)):
                return broker
            time.sleep(0.05)
        broker.stop()
        raise LocalStackError(
            f"mosquitto did not listen on {host}:{port} within {_START_TIMEOUT:.0f}s: "
            f"{_tail(log_file)}"
        )

    @classmethod
    def attach(cls, *, process: Owned, port: int, directory: Path) -> Mosquitto:
        """A mosquitto started earlier (by another process) that the caller recorded."""
        return cls(process=process, port=port, directory=directory)

    def alive(self) -> bool:
        if self._child is not None:
            return self._child.poll() is None
        return processes.is_ours(self.process)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM by PID, SIGKILL after `timeout`: each only while it is still our mosquitto
        (elf_async.local.processes.stop); nothing if it is gone."""
        if self.alive():
            processes.stop(self.process, timeout)
        if self._child is not None:
            self._child.poll()  # reaped by `stop` already, or now


def write_passwords(path: Path) -> None:
    """The password file of the custom-authorizer stand-in: the local username, as a client
    sends it for `LOCAL_AUTHORIZER`, and `LOCAL_PASSWORD` (hashed by mosquitto_passwd)."""
    tool = shutil.which("mosquitto_passwd") or str(
        Path(find_mosquitto()).parent / "mosquitto_passwd"
    )
    username = f"{LOCAL_USERNAME}?x-amz-customauthorizer-name={LOCAL_AUTHORIZER}"
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    try:
        subprocess.run(
            [tool, "-b", str(path), username, LOCAL_PASSWORD],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LocalStackError(f"cannot write mosquitto's password file with {tool}: {exc}") from exc
