"""`connect` with MQTT 5 against a real mosquitto: the CONNACK's Topic Alias Maximum reaches the
Link (the Wire's topic alias depends on it); MQTT 3.1.1 has none."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as paho
import pytest
from support.mqtt import FixtureCA

from elf_async.dataplane.mqtt import ClientTls, connect
from elf_async.local.mosquitto import Mosquitto


@pytest.mark.parametrize(("protocol", "aliases"), [(paho.MQTTv5, 10), (paho.MQTTv311, 0)])
async def test_the_connack_s_topic_alias_maximum_reaches_the_link(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path, protocol: int, aliases: int
) -> None:
    key_file, cert_file = test_ca.client_cert(tmp_path, "v5-thing")
    tls = ClientTls(ca_pem=mosquitto.ca_file.read_text(), alpn=False)
    link = await connect(
        host="127.0.0.1",
        port=mosquitto.port,
        client_id="v5-thing",
        tls=tls.identity(cert_file=cert_file, key_file=key_file),
        within=10,
        protocol=protocol,
    )
    try:
        assert link.topic_alias_maximum == aliases  # mosquitto's max_topic_alias: 10
        assert link.paho.protocol == protocol
    finally:
        await link.close()
