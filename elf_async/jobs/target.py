"""Where a command's calls go, and what `send` and `subscribe` share before any MQTT.

`aim` is the one place `--local` is resolved: every command calls it once and hands the
result to its phases. Then the fleet's ready things as MQTT identities, and the broker
endpoint (flag, local stack, cached, else DescribeEndpoint) with its trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elf_async.config import Settings, resolve_target
from elf_async.controlplane.aws import configured_region, connect
from elf_async.controlplane.certs import thing_files
from elf_async.controlplane.create import CreateRequest
from elf_async.controlplane.fleet import (
    DEVICES_KEY,
    SHARED_IDENTITY,
    device_name,
    identity_mode,
    shared_identity_name,
)
from elf_async.controlplane.ledger import SHARED_STEPS, Ledger
from elf_async.dataplane.auth import Auth, SigV4
from elf_async.dataplane.connections import Endpoint, Identity
from elf_async.dataplane.mqtt import ALPN_PORT, DEFAULT_PORT, default_ca_file, read_ca
from elf_async.dataplane.options import ConnectOptions
from elf_async.errors import RuntimeFailure, UsageError
from elf_async.jobs.signing import AwsKeys, signing_region
from elf_async.local import stack as localstack


@dataclass(frozen=True, slots=True)
class Aim:
    """A command's destinations, `--local` resolved: the settings its control-plane calls use
    (aimed at the local stack's moto with `--local`) and the local stack, if any."""

    settings: Settings
    stack: localstack.LocalStack | None = None

    def create_request(self, request: CreateRequest) -> CreateRequest:
        """`request` as the local stack needs it (its CA signs); unchanged without `--local`."""
        return request if self.stack is None else localstack.for_create(request, self.stack)


def aim(settings: Settings) -> Aim:
    """Resolve `--local` (once per command): the running stack, or a clear error."""
    aimed, stack = localstack.resolve(settings)
    return Aim(aimed, stack)


def ready_identities(
    ledger: Ledger, state_dir: Path, *, count: int | None, offset: int = 0
) -> list[Identity]:
    """The first `count` ready things after `offset` (all ready things without `count`); in a
    shared-identity fleet, its virtual devices, each with its own client id and all with the
    fleet's one key and certificate."""
    meta = ledger.meta()
    if identity_mode(meta) == SHARED_IDENTITY:
        return _shared_identities(ledger, meta, state_dir, count=count, offset=offset)
    things = [record for record in ledger.things() if record.ready]
    wanted = _wanted(len(things), state_dir, count=count, offset=offset)
    identities = [
        Identity(record.name, record.index, *thing_files(state_dir, record.name))
        for record in things[offset : offset + wanted]
    ]
    _check_files(identities, state_dir)
    return identities


def _shared_identities(
    ledger: Ledger, meta: dict[str, str], state_dir: Path, *, count: int | None, offset: int
) -> list[Identity]:
    """A shared-identity fleet's devices: one key and certificate, checked once, for all."""
    prefix = meta["prefix"]
    try:
        certificate = ledger.thing(shared_identity_name(prefix))
    except KeyError:  # a create that stopped before it recorded the certificate
        ready = 0
    else:
        ready = int(meta.get(DEVICES_KEY, "0")) if certificate.ready_for(SHARED_STEPS) else 0
    wanted = _wanted(ready, state_dir, count=count, offset=offset)
    key_file, cert_file = thing_files(state_dir, shared_identity_name(prefix))
    _check_files([Identity(shared_identity_name(prefix), -1, key_file, cert_file)], state_dir)
    return [
        Identity(device_name(prefix, index), index, key_file, cert_file, shared=True)
        for index in range(offset, offset + wanted)
    ]


def _wanted(ready: int, state_dir: Path, *, count: int | None, offset: int) -> int:
    """How many identities after `offset` a command takes of the `ready` ones."""
    if not ready:
        raise UsageError(f"no ready things in {state_dir} (run `elf-async create` first)")
    wanted = ready - offset if count is None else count
    if wanted <= 0 or offset + wanted > ready:
        raise UsageError(
            f"{offset + max(wanted, 1)} ready things needed, the fleet has {ready}"
            + (f" (--things {count})" if count is not None else "")
        )
    return wanted


def _check_files(identities: list[Identity], state_dir: Path) -> None:
    missing = [i.name for i in identities if not (i.key_file.is_file() and i.cert_file.is_file())]
    if missing:
        raise UsageError(
            f"the key or certificate of {missing[0]} is missing from {state_dir / 'certs'}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


async def resolve_endpoint(aimed: Aim, ledger: Ledger, options: ConnectOptions) -> Endpoint:
    """Host, port and trusted CAs of the broker.

    The host comes from --mqtt-endpoint, else the local stack, else the ledger's cache, else
    DescribeEndpoint(iot:Data-ATS), whose answer is cached with the fleet.
    """
    ca_file, port = options.ca_file, options.port
    if options.mqtt_host is not None:
        host = options.mqtt_host
    elif aimed.stack is not None:
        host, port = aimed.stack.mqtt_host, port or aimed.stack.mqtt_port
        ca_file = ca_file or aimed.stack.ca_file
    else:
        meta = ledger.meta()
        cached = meta.get("mqtt_endpoint")
        if cached:
            host = cached
        else:
            host = await _describe_endpoint(aimed.settings, meta)
            ledger.set_meta(mqtt_endpoint=host)
    ca_pem = read_ca(ca_file or default_ca_file())
    if options.transport == "mqtts" and options.auth == "x509":
        return Endpoint(host=host, port=port or DEFAULT_PORT, ca_pem=ca_pem)
    if aimed.stack is not None and options.port is None:
        port = _local_listener(aimed.stack, options)
    auth: Auth = options.custom
    if options.auth == "sigv4":
        target = resolve_target(
            aimed.settings,
            ledger.meta(),
            configured_region=configured_region(aimed.settings.profile),
        )
        keys = AwsKeys(target.profile)
        keys.keys()  # no credentials: one clear line now, not a failed connect per thing
        auth = SigV4(region=signing_region(host, target.region), keys=keys)
    return Endpoint(
        host=host,
        port=port or ALPN_PORT,
        ca_pem=ca_pem,
        transport=options.transport,
        auth=auth,
    )


def _local_listener(stack: localstack.LocalStack, options: ConnectOptions) -> int:
    """The local mosquitto's listener for a WebSocket or a custom authorizer."""
    if stack.listeners is None:
        raise UsageError(
            "this local stack has no WebSocket and password listeners (started by an older "
            "version): run `elf-async local down` then `elf-async local up`"
        )
    return stack.listeners.websocket if options.transport == "wss" else stack.listeners.password


async def _describe_endpoint(settings: Settings, meta: dict[str, str]) -> str:
    target = resolve_target(settings, meta, configured_region=configured_region(settings.profile))
    async with connect(target) as plane:
        answer = await plane.call("DescribeEndpoint", endpointType="iot:Data-ATS")
    host = answer.get("endpointAddress")
    if not isinstance(host, str) or not host:
        raise RuntimeFailure("DescribeEndpoint returned no endpointAddress")
    return host
