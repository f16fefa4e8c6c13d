"""The command-line options `send`, `subscribe` and `run` share, declared once (parsed in
elf_async.cli._options)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MqttEndpoint = Annotated[
    str | None,
    typer.Option(
        "--mqtt-endpoint",
        help="Broker HOST[:PORT] [default: the local stack, else DescribeEndpoint iot:Data-ATS, "
        "cached with the fleet].",
        show_default=False,
    ),
]
Port = Annotated[
    int | None,
    typer.Option(help="8883, or 443 (ALPN x-amzn-mqtt-ca). [default: 8883]", show_default=False),
]
CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        "--root-cert",
        help="CAs that vouch for the broker [default: Amazon Root CA 1 and 3, shipped].",
        show_default=False,
    ),
]
ConnectRate = Annotated[
    str, typer.Option(help="New connections per second (AWS: 500/s per account).")
]
ConnectTimeout = Annotated[str, typer.Option(help="Time for one connect (TCP, TLS, CONNACK).")]
Keepalive = Annotated[
    str,
    typer.Option(help="MQTT keep-alive: a PINGREQ after this long without traffic (AWS: 30s-20m)."),
]
ConnectRetries = Annotated[
    int, typer.Option(min=0, help="Extra attempts for a thing's first connection.")
]
AllowOverLimits = Annotated[
    bool,
    typer.Option(
        "--allow-over-aws-limits",
        help="Permit rates and windows above AWS IoT's per-connection limits.",
    ),
]
Things = Annotated[
    int | None,
    typer.Option(min=1, help="Use the first N ready things [default: all].", show_default=False),
]
Qos = Annotated[int, typer.Option(help="MQTT QoS: 0 or 1 (AWS IoT has no QoS 2).")]
Report = Annotated[
    Path | None, typer.Option(help="Write the JSON report (schema elf-async/report/1) here.")
]
