"""The send hot path leans on private paho-mqtt and aiomqtt internals: if an upgrade moves
them, these fail with a message saying what to adapt (elf_async/fastpath.py, elf_async/mqtt.py).
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from elf_async.dataplane.takeover import PAHO_INTERNALS, _in_packet

PAHO = f"paho-mqtt {version('paho-mqtt')}"
AIOMQTT = f"aiomqtt {version('aiomqtt')}"


def test_paho_still_has_every_private_attribute_the_wire_uses() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    missing = [name for name in PAHO_INTERNALS if not hasattr(client, name)]
    assert not missing, f"{PAHO} lacks {missing}: adapt elf_async/fastpath.py before upgrading"


def test_paho_reader_state_has_the_shape_the_wire_hands_packets_in() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    assert set(client._in_packet) == set(_in_packet(0, bytearray())), (
        f"{PAHO} changed its incoming packet state (_in_packet): adapt elf_async/fastpath.py"
    )


def test_paho_queued_packets_still_record_how_far_they_were_written() -> None:
    source = inspect.getsource(paho.Client._packet_write)
    assert "packet['pos']" in source or 'packet["pos"]' in source, (
        f"{PAHO} no longer tracks partly written packets by 'pos': the Wire uses it to "
        "avoid writing inside one of paho's packets (elf_async/fastpath.py)"
    )


def test_aiomqtt_writer_callback_calls_paho_loop_write_by_name() -> None:
    writer = inspect.getsource(aiomqtt.Client._on_socket_register_write)
    assert "client.loop_write()" in writer, (
        f"{AIOMQTT} no longer calls paho's loop_write from its writer callback: the Wire "
        "installed on the paho client would never finish a refused write (elf_async/fastpath.py)"
    )


def test_aiomqtt_removes_the_reader_by_file_descriptor_when_paho_closes_the_socket() -> None:
    closer = inspect.getsource(aiomqtt.Client._on_socket_close)
    assert "remove_reader(fileno)" in closer, (
        f"{AIOMQTT} no longer removes the socket's reader by file descriptor on close: the "
        "reader would then read a socket that `Readers` (elf_async/fastpath.py) reads"
    )


async def test_aiomqtt_still_exposes_its_paho_client_and_disconnected_future() -> None:
    client = aiomqtt.Client("127.0.0.1")  # needs a running loop
    assert isinstance(getattr(client, "_client", None), paho.Client), (
        f"{AIOMQTT} has no paho client at `_client`: adapt elf_async/mqtt.py (Link.paho)"
    )
    assert hasattr(client, "_disconnected"), (
        f"{AIOMQTT} has no `_disconnected` future: adapt elf_async/mqtt.py (_collect)"
    )
    assert hasattr(client, "_misc_task"), (
        f"{AIOMQTT} has no `_misc_task`: adapt elf_async/sender.py (Sender._attach), which "
        "replaces each publisher's keep-alive task with one pass for all"
    )


def test_paho_wraps_its_socket_through_the_context_it_was_given() -> None:
    source = inspect.getsource(paho.Client._ssl_wrap_socket)
    for needed in ("self._ssl_context.wrap_socket(", "check_hostname"):
        assert needed in source, (
            f"{PAHO}'s _ssl_wrap_socket no longer uses {needed!r}: elf_async.mqtt.ThingTls, "
            "handed to paho as its TLS context, relies on it"
        )
