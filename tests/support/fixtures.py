"""Shared fixtures and helpers: a real moto server over HTTP, plain boto3 to check AWS, the CLI
as a subprocess, one-line errors, a guard against blocking calls in the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-west-2",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 20.0, process: subprocess.Popen[Any] | None = None
) -> None:
    def listening() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(listening, what=f"something to listen on 127.0.0.1:{port}", timeout=timeout)


def stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto in server mode, a separate process on a free loopback port."""
    port = free_port()
    env = {**os.environ, **FAKE_AWS_ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for_port(port, process=process)
        server = MotoServer(f"http://127.0.0.1:{port}", process)
        # moto builds its URL router lazily and has failed on concurrent first requests.
        iot_client(server.url).list_things()
        yield server
    finally:
        stop_process(process)


@pytest.fixture
def moto(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A moto server emptied for this test, with fake credentials in the environment."""
    moto_server.reset()
    for key, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "ELF_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return moto_server


def iot_client(url: str) -> Any:
    """Plain boto3, not elf-async code: the independent view of what exists in 'AWS'."""
    return boto3.client(
        "iot",
        endpoint_url=url,
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def iot(moto: MotoServer) -> Any:
    return iot_client(moto.url)


@dataclass
class Cli:
    """Runs `python -m elf_async` as a user would, against the moto server."""

    state_dir: Path
    endpoint_url: str
    cwd: Path | None = None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **FAKE_AWS_ENV, "NO_COLOR": "1", **(extra or {})}

    def args(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "elf_async",
            "--state-dir",
            str(self.state_dir),
            "--endpoint-url",
            self.endpoint_url,
            *args,
        ]

    def __call__(
        self,
        *args: str,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.args(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            input=input,
            cwd=self.cwd or self.state_dir.parent,
        )
        assert UNRETRIEVED not in result.stderr, result.stderr
        return result

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
            cwd=self.cwd or self.state_dir.parent,
        )


@pytest.fixture
def cli(moto: MotoServer, tmp_path: Path) -> Cli:
    return Cli(state_dir=tmp_path / "state", endpoint_url=moto.url)


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    """A failure is one line on stderr, a documented exit code, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BLOCKING_LIMIT_S = 0.1


@contextlib.contextmanager
def blocking_guard(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Raise if any callback held the running event loop longer than BLOCKING_LIMIT_S
    (asyncio's and uvloop's debug mode both report slow callbacks)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = BLOCKING_LIMIT_S
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    slow = [
        r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()
    ]
    assert not slow, f"blocking calls in the event loop: {slow}"


@pytest.fixture
async def no_blocking_calls(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Fails the test if anything blocked the event loop."""
    with blocking_guard(caplog):
        yield


UNRETRIEVED = "never retrieved"  # asyncio's words for an exception nobody looked at


@pytest.fixture(autouse=True)
def no_unretrieved_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test after which asyncio logged a task's or future's exception that nobody
    retrieved: users must never see that noise (it is logged when the object is collected)."""
    yield
    gc.collect()
    noise = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and UNRETRIEVED in r.getMessage()
    ]
    assert not noise, noise
