"""`elf-async clean`: remove everything the fleet created, and nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from elf_async import statelock
from elf_async.cli._common import (
    ApiRateOption,
    ConcurrencyOption,
    RunIdOption,
    ShardOption,
    api_rates,
    fleet_id_of,
    print_api_table,
    run,
    settings,
)
from elf_async.cli._options import shard_of
from elf_async.cli._progress import progress_for
from elf_async.controlplane.clean import CleanResult, clean_fleet, forget_local
from elf_async.controlplane.ledger import Ledger
from elf_async.errors import PartialFailure, UsageError
from elf_async.jobs.target import aim


def command(
    ctx: typer.Context,
    only_local: Annotated[
        bool,
        typer.Option(
            "--only-local",
            "--force",
            help="Forget local state only (ledger, keys); AWS resources stay.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Don't ask for confirmation.")] = False,
    fleet: Annotated[
        str | None,
        typer.Option(
            "--fleet",
            help="Fleet id to find in AWS by the elf_fleet attribute (when the ledger is lost).",
        ),
    ] = None,
    concurrency: ConcurrencyOption = 16,
    api_rate: ApiRateOption = None,
    shard: ShardOption = None,
    run_id: RunIdOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Remove the fleet's things, certificates and policy from AWS, then its local files.
    With --shard I/N only that shard's things; --fleet ID (or --run-id) finds every shard's."""
    opts = settings(ctx)
    if run_id is not None:  # the fleet every shard of that run made
        if fleet is not None:
            raise UsageError("--fleet and --run-id cannot be used together")
        fleet = fleet_id_of(None, run_id)
    if fleet is not None and shard is not None:
        raise UsageError("--fleet finds every shard's things by their attribute: drop --shard")
    # --fleet cleans the whole fleet, whatever shard an array job's environment names.
    chosen = None if fleet is not None else shard_of(shard)
    if only_local and not yes and not sys.stdin.isatty():
        raise UsageError("--only-local asks for confirmation: pass --yes when not interactive")
    if fleet is not None and not fleet.isalnum():
        raise UsageError(f"--fleet {fleet!r}: a fleet id is letters and digits (see `status`)")
    if fleet is None and not Ledger.exists(opts.state_dir):
        print(f"no fleet in {opts.state_dir}: nothing {'forgotten' if only_local else 'to clean'}")
        return
    ctx.with_resource(statelock.hold(opts.state_dir))  # until the command returns
    if only_local:
        _forget(opts.state_dir, yes=yes)
        return
    opts = aim(opts).settings
    quiet = opts.quiet or json_output
    result = run(
        clean_fleet(
            opts,
            fleet_id=fleet,
            concurrency=concurrency,
            api_rates=api_rates(api_rate, chosen),
            progress=progress_for("clean", quiet=quiet),
            shard=chosen,
        )
    )
    if result is None:
        print(f"no fleet in {opts.state_dir}: its ledger recorded none; removed it")
        return
    if json_output:
        print(json.dumps(result.as_json(), indent=2))
    else:
        _print_summary(result, quiet=opts.quiet)
    if result.summary.failed:
        raise PartialFailure(
            f"{result.summary.failed} things could not be removed; run `elf-async clean` again"
        )


def _forget(state_dir: Path, *, yes: bool) -> None:
    def confirm(summary: str) -> bool:
        print(summary)  # what stays in AWS, also with --yes
        return yes or typer.confirm("Forget the local state anyway?", default=False)

    left = forget_local(state_dir, confirm=confirm)
    if left is None:
        print("nothing forgotten")
        return
    print(
        f"forgot the local state in {state_dir}; {left} things and their certificates stay in AWS"
    )


def _print_summary(result: CleanResult, *, quiet: bool) -> None:
    s = result.summary
    print(
        f"fleet {result.fleet_id}: removed {s.removed} of {s.attempted} things in "
        f"{s.elapsed_s:.1f}s, {s.failed} failed"
        + ("; nothing left in AWS, local state deleted" if s.forgotten else "")
    )
    for line in s.errors.lines():
        print(f"  {line}")
    for warning in s.warnings:
        print(f"  warning: {warning}")
    if not quiet:
        print_api_table(result.api)
