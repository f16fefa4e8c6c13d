"""`elf-async create [COUNT]`: provision things (certificate, thing, policy, attachments)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from elf_async import statelock
from elf_async.cli._common import (
    ApiRateOption,
    CaCertOption,
    CaKeyOption,
    CertModeOption,
    ConcurrencyOption,
    FleetIdOption,
    IdentityOption,
    KeyTypeOption,
    MaxThingsOption,
    RegisterCaOption,
    RunIdOption,
    ShardOption,
    SharedTopicsOption,
    TopicRootOption,
    YesOption,
    api_rates,
    check_shard_fleet,
    fleet_id_of,
    print_api_table,
    run,
    settings,
)
from elf_async.cli._options import shard_of
from elf_async.cli._progress import progress_for
from elf_async.controlplane.certs import KeyType
from elf_async.controlplane.create import CERT_MODES, CreateRequest, CreateResult, create_fleet
from elf_async.controlplane.fleet import (
    IDENTITIES,
    SHARED_IDENTITY,
    prefix_problem,
    topic_root_problem,
)
from elf_async.errors import PartialFailure, UsageError
from elf_async.jobs.target import aim

KEY_TYPES: tuple[KeyType, ...] = ("rsa", "ec")


def parse_count(text: str, *, max_things: int, yes: bool, least: int = 1) -> int:
    """COUNT; `least` 0 lets `create 0 --controller` add only the controller to a fleet."""
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"COUNT must be a whole number, not {text!r}") from None
    if count < least:
        raise UsageError(f"COUNT must be at least {least}, not {count}")
    if count > max_things and not yes:
        raise UsageError(
            f"COUNT {count} is above --max-things {max_things}: pass --yes (or raise --max-things)"
        )
    return count


def command(
    ctx: typer.Context,
    count: Annotated[str, typer.Argument(help="How many things to create.")] = "1",
    prefix: Annotated[
        str | None, typer.Option(help="Thing name prefix [default: elf-<fleet id>].")
    ] = None,
    cert_mode: CertModeOption = None,
    key_type: KeyTypeOption = None,
    ca_cert: CaCertOption = None,
    ca_key: CaKeyOption = None,
    register_ca: RegisterCaOption = False,
    topic_root: TopicRootOption = None,
    shared_topics: SharedTopicsOption = False,
    identity: IdentityOption = None,
    concurrency: ConcurrencyOption = 16,
    api_rate: ApiRateOption = None,
    max_things: MaxThingsOption = 10_000,
    yes: YesOption = False,
    shard: ShardOption = None,
    fleet_id: FleetIdOption = None,
    run_id: RunIdOption = None,
    controller: Annotated[
        bool,
        typer.Option(
            "--controller",
            help="Also make the command controller's identity: its own certificate and a "
            "policy that publishes only to <root>/*/cmd and reads only <root>/+/cmd/reply "
            "(for send/run --commands).",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Create COUNT things, or finish the things an interrupted create left unfinished.
    With --shard I/N, COUNT is the whole fleet's size and only shard I's slice is made."""
    request = build_request(
        count,
        prefix=prefix,
        cert_mode=cert_mode,
        key_type=key_type,
        ca_cert=ca_cert,
        ca_key=ca_key,
        register_ca=register_ca,
        topic_root=topic_root,
        shared_topics=shared_topics,
        identity=identity,
        concurrency=concurrency,
        api_rate=api_rate,
        max_things=max_things,
        yes=yes,
        shard=shard,
        fleet_id=fleet_id,
        run_id=run_id,
        controller=controller,
    )
    ctx.with_resource(statelock.hold(settings(ctx).state_dir))  # until the command returns
    aimed = aim(settings(ctx))
    request = aimed.create_request(request)
    opts = aimed.settings
    result = run(
        create_fleet(opts, request, progress_for("create", quiet=opts.quiet or json_output))
    )
    if json_output:
        print(json.dumps(_as_json(result), indent=2))
    else:
        _print_summary(result, quiet=opts.quiet)
    if result.summary.failed or result.summary.stopped_early or result.recovery.unresolved:
        raise PartialFailure(
            f"{result.summary.failed} of {result.summary.attempted} things failed; "
            "run `elf-async create` again to finish them"
        )


def build_request(
    count: str,
    *,
    prefix: str | None,
    cert_mode: str | None,
    key_type: str | None,
    ca_cert: Path | None,
    ca_key: Path | None,
    register_ca: bool,
    topic_root: str | None,
    shared_topics: bool,
    identity: str | None,
    concurrency: int,
    api_rate: list[str] | None,
    max_things: int,
    yes: bool,
    shard: str | None,
    fleet_id: str | None,
    run_id: str | None,
    controller: bool = False,
) -> CreateRequest:
    """Check the create options (`run` takes them too) and build the request."""
    chosen = shard_of(shard)
    fleet = fleet_id_of(fleet_id, run_id)
    check_shard_fleet(chosen, fleet)
    if cert_mode is not None and cert_mode not in CERT_MODES:
        raise UsageError(f"--cert-mode must be one of {', '.join(CERT_MODES)}, not {cert_mode!r}")
    if controller and chosen is not None:
        raise UsageError(
            "a command controller (--controller, --commands) serves a whole fleet: it cannot "
            "be made for a shard (--shard)"
        )
    if identity is not None and identity not in IDENTITIES:
        raise UsageError(f"--identity must be thing or shared, not {identity!r}")
    if identity == SHARED_IDENTITY and chosen is not None:
        raise UsageError(
            "--identity shared makes one certificate for the whole fleet: it cannot be split "
            "into shards (--shard); use --identity thing"
        )
    if key_type is not None and key_type not in KEY_TYPES:
        raise UsageError(f"--key-type must be rsa or ec, not {key_type!r}")
    for path, flag in ((ca_cert, "--ca-cert"), (ca_key, "--ca-key")):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    return CreateRequest(
        count=parse_count(count, max_things=max_things, yes=yes, least=0 if controller else 1),
        prefix=_checked(prefix, prefix_problem),
        cert_mode=cert_mode,
        key_type=key_type,
        topic_root=_checked(topic_root, topic_root_problem),
        shared_topics=shared_topics,
        identity=identity,
        ca_cert=ca_cert,
        ca_key=ca_key,
        register_ca=register_ca,
        concurrency=concurrency,
        api_rates=api_rates(api_rate, chosen),
        fleet_id=fleet,
        shard=chosen,
        controller=controller,
    )


def _checked(value: str | None, problem: Callable[[str], str | None]) -> str | None:
    if value is not None and (message := problem(value)):
        raise UsageError(message)
    return value


def _print_summary(result: CreateResult, *, quiet: bool) -> None:
    s = result.summary
    verb = "finished" if s.resumed else "created"
    unit = "devices" if result.identity == SHARED_IDENTITY else "things"
    print(
        f"fleet {result.fleet_id} ({result.region}, account {result.account}): {verb} "
        f"{s.created} of {s.attempted} {unit} in {s.elapsed_s:.1f}s "
        f"({s.things_per_s:.1f} {unit}/s), {s.failed} failed; {result.things_in_fleet} in the fleet"
    )
    if result.controller:
        print(f"  command controller: {result.controller} (send --commands)")
    if result.identity == SHARED_IDENTITY:
        print("  no registry things: every device connects with the fleet's one certificate")
    if s.resumed:
        print(
            "an interrupted create was finished instead of adding new things; "
            "run create again to add more"
        )
    for line in s.errors.lines():
        print(f"  {line}")
    if s.stopped_early:
        print(f"  {s.stopped_early}")
    recovery = result.recovery
    if recovery.adopted:
        print(f"  recovered after an interruption: {recovery.adopted} certificate(s) adopted")
    for warning in recovery.unresolved:
        print(f"  warning: {warning}")
    if not quiet:
        print_api_table(result.api)


def _as_json(result: CreateResult) -> dict[str, object]:
    s = result.summary
    return {
        "fleet_id": result.fleet_id,
        "region": result.region,
        "account": result.account,
        "prefix": result.prefix,
        "identity": result.identity,
        "controller": result.controller,
        "attempted": s.attempted,
        "created": s.created,
        "failed": s.failed,
        "resumed": s.resumed,
        "things_in_fleet": result.things_in_fleet,
        "elapsed_s": round(s.elapsed_s, 3),
        "things_per_s": round(s.things_per_s, 3),
        "errors": s.errors.as_json(),
        "stopped_early": s.stopped_early,
        "recovery": {
            "adopted": result.recovery.adopted,
            "unresolved": result.recovery.unresolved,
        },
        "api": result.api,
    }
