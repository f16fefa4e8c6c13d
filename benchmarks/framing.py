"""The Wire's CPU cost of framing one PUBLISH: MQTT 3.1.1 against MQTT 5 (an empty properties
block, and a user property with the topic alias), in-process, without the network.

Each variant frames 1,000 QoS 1 messages of 100 bytes on a Wire over a TLS socket pair (nothing
is written); the variants alternate 40 times so that machine noise hits each alike, and the
minimum is the cost. JSON on stdout.

    .venv/bin/python benchmarks/framing.py
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from elf_async.dataplane.mqtt5 import Publish5
from elf_async.dataplane.takeover import Wire

TOPIC = "elf/elf-abcdefgh-00001"
PAYLOAD = b"x" * 100
MESSAGES = 1000
ROUNDS = 40


def _contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway self-signed server and a client that does not check it (framing only)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(directory / "k"), "-out", str(directory / "c"), "-subj", "/CN=x",
         "-days", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "c", directory / "k")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


def _wire(server: ssl.SSLContext, client: ssl.SSLContext, spec: Publish5 | None) -> Wire[int]:
    near, far = socket.socketpair()
    accepted: list[ssl.SSLSocket] = []
    handshake = threading.Thread(
        target=lambda: accepted.append(server.wrap_socket(far, server_side=True))
    )
    handshake.start()
    tls = client.wrap_socket(near)
    handshake.join()
    paho_client = paho.Client(CallbackAPIVersion.VERSION2, client_id="framing")
    paho_client._sock = tls  # noqa: SLF001 - a connected client, as paho's connect leaves it
    aliased = spec is not None and spec.topic_alias
    return Wire(
        paho_client,
        TOPIC,
        1,
        on_ack=lambda mid: None,
        on_sent=lambda batch, start, stop: None,
        on_drained=lambda: None,
        properties=None if spec is None else spec.block(alias=aliased),
        aliased=aliased,
    )


def _framing(wire: Wire[int]) -> Callable[[], None]:
    publish = wire.publish

    def run() -> None:
        for mid in range(1, MESSAGES + 1):
            publish(PAYLOAD, mid)
        wire._parts.clear()  # noqa: SLF001 - what was framed, dropped unsent
        wire._ends.clear()  # noqa: SLF001
        wire.size = wire.outstanding = 0

    return run


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        server, client = _contexts(Path(directory))
        variants = {
            "3.1.1": None,
            "5": Publish5(),
            "5 user property + topic alias": Publish5(
                user_properties=(("run", "bench"),), topic_alias=True
            ),
        }
        wires = {name: _wire(server, client, spec) for name, spec in variants.items()}
    best = dict.fromkeys(wires, float("inf"))
    for _ in range(ROUNDS):
        for name, wire in wires.items():
            seconds = timeit.timeit(_framing(wire), number=5) / 5 / MESSAGES
            best[name] = min(best[name], seconds)
    return {
        "benchmark": "elf-async/framing/1",
        "what": f"ns of CPU to frame one QoS 1 PUBLISH of {len(PAYLOAD)} bytes on {TOPIC}",
        "ns_per_message": {name: round(seconds * 1e9, 1) for name, seconds in best.items()},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=1))
