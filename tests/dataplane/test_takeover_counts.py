"""Counts that cannot lie: a publisher and its Wire driven through random partial writes,
acknowledgements, connection losses and reconnects (hypothesis), against a fake kernel that
records every byte it takes. Whatever happens, what the counts say matches those bytes:

- acked <= published <= scheduled, and at QoS 1 published = acked + failed at the end;
- every complete PUBLISH in the kernel is a first publication or a retransmission, once each;
- at QoS 0 no message is in the kernel twice (at most once), at QoS 1 every published
  message is a distinct one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from elf_async.dataplane.connections import Identity
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.schedule import ThingSchedule
from elf_async.dataplane.sender import Batch, Publisher, Shared
from elf_async.dataplane.takeover import Wire

TOTAL = 40  # messages due in the whole run


@dataclass
class FakeKernel:
    """The OpenSSL connection under a Wire: takes at most `budget` bytes, and keeps them."""

    budget: int = 0
    taken: bytearray = field(default_factory=bytearray)

    def write(self, data: bytes | memoryview) -> int:
        size = min(len(data), self.budget)
        if not size:
            raise ssl.SSLWantWriteError
        self.budget -= size
        self.taken += bytes(data[:size])
        return size

    def read(self, size: int, buffer: bytearray) -> int:
        raise ssl.SSLWantReadError

    def pending(self) -> int:
        return 0


def complete_publishes(stream: bytes, qos: int) -> list[tuple[int, int]]:
    """(mid, seq) of every PUBLISH entirely in `stream` (a cut one at the end is not)."""
    found, pos = [], 0
    while pos + 2 <= len(stream):
        length, shift, header = 0, 0, 1
        while True:
            if pos + header >= len(stream):
                return found
            digit = stream[pos + header]
            length |= (digit & 0x7F) << shift
            shift += 7
            header += 1
            if not digit & 0x80:
                break
        end = pos + header + length
        if end > len(stream):
            return found
        body = stream[pos + header : end]
        topic = int.from_bytes(body[:2], "big")
        mid = int.from_bytes(body[2 + topic : 4 + topic], "big") if qos else 0
        found.append((mid, json.loads(body[2 + topic + (2 if qos else 0) :])["seq"]))
        pos = end
    return found


@contextmanager
def connection(publisher: Publisher) -> Iterator[FakeKernel]:
    """A fresh connection for `publisher`: a paho client on a real (idle) TLS socket whose
    writes go to a fake kernel."""
    near, far = socket.socketpair()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(near, do_handshake_on_connect=False)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="counts")
    client._sock = tls
    kernel = FakeKernel()
    wire: Wire[Batch] = Wire(
        client,
        "elf/counts",
        publisher.qos,
        on_ack=publisher.acked_mid,
        on_sent=publisher._sent,
        on_drained=lambda: None,
    )
    wire._tls = kernel
    publisher.wire = wire
    try:
        yield kernel
    finally:
        asyncio.get_running_loop().remove_writer(tls.fileno())
        client._sock = None
        tls.close()
        far.close()


Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("due"), st.integers(0, 6)),
        st.tuples(st.just("kernel"), st.integers(0, 1500)),
        st.tuples(st.just("ack"), st.integers(0, 1000)),
        st.tuples(st.just("drop"), st.just(0)),
    ),
    max_size=60,
)


async def scenario(qos: int, plan: list[Step]) -> None:
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    publisher = Publisher(
        Identity("counts", 0, None, None),  # type: ignore[arg-type]  # never connects here
        "elf/counts",
        ThingSchedule(rate=10.0, phase=0.0, total=TOTAL),
        spec.encoder("counts"),
        qos=qos,
        window=8,
        shared=Shared(),
    )
    streams: list[bytes] = []
    acked_mids: set[int] = set()
    for_connection = iter(plan)
    while True:
        with connection(publisher) as kernel:
            acked_mids.clear()
            publisher.pump()
            for action, value in for_connection:
                if action == "due":
                    publisher.scheduled = min(TOTAL, publisher.scheduled + value)
                elif action == "kernel":
                    kernel.budget += value
                    assert publisher.wire is not None
                    if publisher.wire.busy:
                        publisher.wire.loop_write()
                elif action == "ack" and qos:
                    # The broker acknowledges only what it got whole, once.
                    got = [m for m, _ in complete_publishes(bytes(kernel.taken), qos)]
                    open_mids = [m for m in got if m in publisher.inflight and m not in acked_mids]
                    if open_mids:
                        mid = open_mids[value % len(open_mids)]
                        acked_mids.add(mid)
                        publisher.acked_mid(mid)
                elif action == "drop":
                    break
                publisher.pump()
            else:
                streams.append(bytes(kernel.taken))
                publisher.abandon()
                break
            streams.append(bytes(kernel.taken))
            publisher.connection_lost()

    complete = [seq for stream in streams for _, seq in complete_publishes(stream, qos)]
    assert publisher.acked <= publisher.published <= publisher.scheduled
    assert len(complete) == publisher.published + publisher.retransmitted
    assert len(set(complete)) == publisher.published
    if qos:
        assert publisher.published == publisher.acked + publisher.failed
    else:
        assert publisher.retransmitted == 0
        assert len(complete) == len(set(complete)), "QoS 0 sent a message twice"


@settings(max_examples=300, deadline=None)
@given(plan=steps)
def test_qos1_counts_match_the_bytes_the_kernel_took(plan: list[Step]) -> None:
    asyncio.run(scenario(1, plan))


@settings(max_examples=300, deadline=None)
@given(plan=steps)
def test_qos0_counts_match_the_bytes_and_nothing_is_sent_twice(plan: list[Step]) -> None:
    asyncio.run(scenario(0, plan))
