"""`--scenario FILE.toml`: the options of `send` and `run` from a file, with groups of things
that send differently.

Every option is a key, named as its parameter (`connect_rate` for --connect-rate), its type
checked against the option's declaration (elf_async.cli._args), so an option declared there
is a key with nothing to add here. The keys before the first `[[group]]` are the run's: they
become the options' defaults (click's default map), so an option given on the command line
wins. Each `[[group]]` is a contiguous slice of the fleet (`share` of it, or `things` of
them) with its own send options (`GROUP_KEYS`: rate, qos, topic, payload...), which override
the run's unless given on the command line. A relative path in the file is the file's
directory's. Bad input names the file, the line and the key, and exits 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import typer
from typer._click.core import Context, Parameter, ParameterSource
from typer._click.exceptions import ClickException

from elf_async.cli._args import ARGS, SendArgs
from elf_async.cli._options import parse_send_options
from elf_async.dataplane.plan import fleet_slices
from elf_async.errors import UsageError
from elf_async.files import read_input_text
from elf_async.jobs.send import SendGroup, SendOptions

T = TypeVar("T")
Check = Callable[[str, Any], str | None]
_META = "elf_async.scenario"  # where `read` leaves the scenario, in the command's context
GROUP = "group"
# A group's own keys; its things' send options are the rest of `GROUP_KEYS`.
OWN_KEYS = ("name", "share", "things")
# SendArgs' options that are the whole run's, not a group's: a group's slice of the things,
# the report, the processes; churn, storm and the commands act on the whole fleet (a group
# has its own stages).
RUN_WIDE = frozenset(
    {"things", "report", "html", "workers", "cloudwatch", "cloudwatch_wait", "drain", "scenario"}
    | {"churn", "storm", "commands"}
    | {"user_property", "topic_alias", "message_expiry"}  # one MQTT 5 PUBLISH for the whole run
)
GROUP_KEYS = tuple(
    f.name for f in dataclasses.fields(SendArgs) if f.type not in ARGS and f.name not in RUN_WIDE
)
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
_HEADER = re.compile(r"^\s*\[")
_GROUP_HEADER = re.compile(r"^\s*\[\[\s*group\s*\]\]")


@dataclass(frozen=True, slots=True)
class Group:
    """One `[[group]]`: its name, its slice of the fleet, its options by name."""

    number: int  # 1-based, in the file's order
    name: str
    share: float | None
    things: int | None
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scenario file, read and checked: its run-wide options and its groups."""

    path: Path
    lines: Sequence[str]
    values: Mapping[str, Any]  # the run's options, by name
    groups: Sequence[Group]

    def where(self, key: str | None, group: Group | None = None) -> str:
        """``FILE:LINE: group "name": `` for `key` (in `group`), the line found by a light
        scan of the text (tomllib gives no positions): the first `key =` line of the run's
        keys, or of the group's table (else its `[[group]]` line)."""
        start, end, context = 0, len(self.lines), ""
        if group is not None:
            headers = [i for i, line in enumerate(self.lines) if _GROUP_HEADER.match(line)]
            start = headers[group.number - 1] if group.number <= len(headers) else 0
            context = f"group {json.dumps(group.name)}: "
        found = start + 1 if group is not None else None
        spelled = re.escape(key or "").replace("_", "[_-]")  # connect_rate or connect-rate
        for i in range(start + (group is not None), end):
            if _HEADER.match(self.lines[i]):
                break
            if key is not None and re.match(rf'^\s*("?){spelled}\1\s*=', self.lines[i]):
                found = i + 1
                break
        if found is None and key is not None:  # a table's key: its header
            header = re.compile(rf"^\s*\[+\s*{re.escape(key)}\s*\]")
            found = next((i + 1 for i, x in enumerate(self.lines) if header.match(x)), None)
        return f"{self.path}:{found}: {context}" if found else f"{self.path}: {context}"


def read(ctx: Context, param: Parameter, path: Path | None) -> Path | None:
    """--scenario's callback, before the other options are read: the file's run-wide options
    become their defaults (what the command line gives wins), its groups wait in the context
    for `send_options`."""
    if path is None:
        return None
    callback = ctx.command.callback
    assert callback is not None  # a command's
    hints = get_type_hints(callback, include_extras=True)
    params = {p.name: p for p in ctx.command.params if p.name is not None}

    def check(key: str, value: Any) -> str | None:
        """What the option's own checks say of `value` (a range, a choice), if anything."""
        try:
            params[key].process_value(ctx, value)
        except ClickException as exc:
            return re.sub(r"^Invalid value( for '[^']*')?: ", "", exc.format_message())
        return None

    hints = {name: hint for name, hint in hints.items() if name in params}
    scenario = load(path, hints, check=check)
    names = set(params)
    defaults = dict(scenario.values)
    counts = [g.things for g in scenario.groups]
    if scenario.groups and None not in counts and "things" not in defaults:
        defaults["things"] = sum(c or 0 for c in counts)  # the groups' things are the fleet
    if "size" in names and "things" in defaults:  # run's COUNT: the things to create
        defaults["size"] = str(defaults["things"])
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_META] = scenario
    return path


def load(path: Path, hints: Mapping[str, Any], *, check: Check = lambda k, v: None) -> Scenario:
    """The scenario at `path`, every key checked against the options' types in `hints` and
    by `check` (the option's own checks: what is wrong with a value, or None)."""
    text = read_input_text(path, option="--scenario")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        message = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(exc))
        raise UsageError(f"{where}: not TOML: {message}") from None
    shell = Scenario(path, text.splitlines(), {}, [])
    tables = document.pop(GROUP, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"{shell.where(GROUP)}{GROUP}: write each group as a [[group]] table")
    values = {
        key: _value(shell, None, key, value, hints, check)
        for key, value in _options(shell, document)
    }
    groups = [_group(shell, number, table, hints, check) for number, table in enumerate(tables, 1)]
    _check_groups(shell, groups)
    return Scenario(path, shell.lines, values, groups)


def send_options(
    ctx: typer.Context, args: SendArgs, *, fleet_size: int | None = None
) -> SendOptions:
    """`parse_send_options` of `args`, and with --scenario each group's options: the group's
    keys over the run's, unless given on the command line. `fleet_size` is `run`'s COUNT."""
    scenario: Scenario | None = ctx.meta.get(_META)
    if scenario is None:
        return parse_send_options(args, fleet_size=fleet_size)
    given = ctx.get_parameter_source("size") in _GIVEN
    if given and ctx.get_parameter_source("things") not in _GIVEN:
        args = dataclasses.replace(args, things=None)  # run's COUNT wins over the file's things
    from_file = {k for k in scenario.values if ctx.get_parameter_source(k) not in _GIVEN}
    options = _named(
        scenario, None, from_file, lambda: parse_send_options(args, fleet_size=fleet_size)
    )
    if not scenario.groups:
        return options
    sizes: list[int | None] = [None] * len(scenario.groups)
    counts = [g.things for g in scenario.groups]
    if None not in counts:
        sizes = list(counts)
        wanted = sum(c or 0 for c in counts)
        if fleet_size is not None and fleet_size != wanted:
            raise UsageError(
                f"{scenario.path}: its groups have {wanted} things, the run creates {fleet_size}"
            )
    elif fleet_size is not None:
        shares = [g.share or 0.0 for g in scenario.groups]
        sizes = [len(span) or None for span in fleet_slices(fleet_size, shares)]
    groups = []
    for group, size in zip(scenario.groups, sizes, strict=True):
        mine = {k: v for k, v in group.values.items() if ctx.get_parameter_source(k) not in _GIVEN}
        parse = functools.partial(
            parse_send_options, dataclasses.replace(args, **_length(mine)), fleet_size=size
        )
        parsed = _named(scenario, group, from_file | set(mine), parse)
        groups.append(
            SendGroup(name=group.name, share=group.share, things=group.things, options=parsed)
        )
    return dataclasses.replace(options, groups=tuple(groups))


def _length(values: Mapping[str, Any]) -> dict[str, Any]:
    """A group's keys, its length replacing the run's: its `stages` the run's duration and
    count, its `duration` or `count` the run's stages."""
    out = dict(values)
    given = set(_LENGTHS) & set(values)
    if "stages" in given:
        out |= {key: values.get(key) for key in ("duration", "count")}
    elif given:
        out["stages"] = None
    return out


_LENGTHS = ("stages", "duration", "count")


def _named(
    scenario: Scenario, group: Group | None, keys: Collection[str], parse: Callable[[], T]
) -> T:
    """`parse()`, its bad input named by the file's line of the option it names (`--rate`:
    the key `rate`) if the file gave it (`keys`, the group's or else the run's)."""
    try:
        return parse()
    except UsageError as exc:
        message = str(exc)
        for option in re.findall(r"--([a-z][a-z0-9-]*)", message):
            key = option.replace("-", "_")
            if key not in keys:
                continue
            owner = group if group is not None and key in group.values else None
            named = re.sub(rf"^--{option}(?::|(?= '))", f"{key}:", message)
            raise UsageError(scenario.where(key, owner) + named) from None
        where = scenario.where(None, group) if group is not None else f"{scenario.path}: "
        raise UsageError(where + message) from None


def _options(scenario: Scenario, table: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A table's keys as option names (`connect-rate` is `connect_rate` too)."""
    return [(key.replace("-", "_"), value) for key, value in table.items()]


def _group(
    scenario: Scenario,
    number: int,
    table: Mapping[str, Any],
    hints: Mapping[str, Any],
    check: Check,
) -> Group:
    name = table.get("name", f"group {number}")
    group = Group(number, str(name), None, None, {})
    if not isinstance(name, str) or not name:
        raise UsageError(f"{scenario.where('name', group)}name: expected a name (text)")
    share, things = table.get("share"), table.get("things")
    if share is not None and things is not None:
        raise UsageError(
            f"{scenario.where('things', group)}give the group either a share of the fleet "
            "(share = 0.25) or a number of things (things = 10), not both"
        )
    if share is None and things is None:
        raise UsageError(
            f"{scenario.where(None, group)}say how much of the fleet the group is: "
            "share = 0.25 (a fraction) or things = 10"
        )
    if share is not None and not (
        isinstance(share, int | float) and not isinstance(share, bool) and 0 < share <= 1
    ):
        raise UsageError(
            f"{scenario.where('share', group)}share: expected a fraction of the fleet above "
            f"0, at most 1, got {_shown(share)}"
        )
    if things is not None and not (
        isinstance(things, int) and not isinstance(things, bool) and things >= 1
    ):
        raise UsageError(
            f"{scenario.where('things', group)}things: expected a number of things (1 or "
            f"more), got {_shown(things)}"
        )
    values = {}
    for key, value in _options(scenario, table):
        if key in OWN_KEYS:
            continue
        if key not in GROUP_KEYS:
            if key in hints:
                raise UsageError(
                    f"{scenario.where(key, group)}{key}: an option of the whole run, not of a "
                    "group: set it before the first [[group]]"
                )
            raise UsageError(
                f"{scenario.where(key, group)}{key}: not a group's key{_suggest(key, GROUP_KEYS)}"
            )
        values[key] = _value(scenario, group, key, value, hints, check)
    return Group(number, str(name), None if share is None else float(share), things, values)


def _check_groups(scenario: Scenario, groups: Sequence[Group]) -> None:
    """The groups cut the fleet one way: all by share (adding up to 1) or all by count."""
    names = [g.name for g in groups]
    for g in groups:
        if names.count(g.name) > 1:
            raise UsageError(f"{scenario.where('name', g)}name: two groups are called {g.name!r}")
    by_share = [g for g in groups if g.share is not None]
    if by_share and len(by_share) < len(groups):
        odd = next(g for g in groups if g.share is None)
        raise UsageError(
            f"{scenario.where('things', odd)}things: the groups give either all a share of "
            "the fleet or all a number of things"
        )
    total = sum(g.share or 0.0 for g in by_share)
    if by_share and not math.isclose(total, 1.0, abs_tol=1e-6):
        raise UsageError(
            f"{scenario.where('share', by_share[-1])}share: the groups' shares add up to "
            f"{total:g}, not 1"
        )


def _value(
    scenario: Scenario,
    group: Group | None,
    key: str,
    value: Any,
    hints: Mapping[str, Any],
    check: Check,
) -> Any:
    """`value` as the option `key` takes it, or bad input naming the line."""
    if key == "scenario":
        raise UsageError(f"{scenario.where(key, group)}{key}: a scenario cannot read another")
    if key not in hints:
        raise UsageError(f"{scenario.where(key, group)}{key}: not an option{_suggest(key, hints)}")
    converted = _converted(value, _bare(hints[key]), scenario.path.parent)
    if converted is None:
        raise UsageError(
            f"{scenario.where(key, group)}{key}: expected {_expected(_bare(hints[key]))}, "
            f"got {_shown(value)}"
        )
    problem = check(key, converted)
    if problem is not None:
        raise UsageError(f"{scenario.where(key, group)}{key}: {problem}")
    return converted


def _converted(value: Any, kind: Any, home: Path) -> Any:
    """`value` (from TOML) as an option of type `kind`, or None if it is not one: a number
    is text where text is expected (rate = 10); a path is relative to the file."""
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        items = [_converted(v, item, home) for v in value] if isinstance(value, list) else None
        return None if items is None or None in items else items
    if isinstance(value, bool):
        return value if kind is bool else None
    if kind is int:
        return value if isinstance(value, int) else None
    if kind is float:
        return float(value) if isinstance(value, int | float) else None
    if kind is Path:
        return home / value if isinstance(value, str) and value else None
    if kind is str:
        return str(value) if isinstance(value, str | int | float) else None
    return None


def _bare(hint: Any) -> Any:
    """The type an option holds, without its declaration (Annotated) and None."""
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) in (Union, UnionType):
        (hint,) = [arg for arg in get_args(hint) if arg is not NoneType]
    return hint


def _expected(kind: Any) -> str:
    if get_origin(kind) is list:
        return f"a list of {_expected(get_args(kind)[0])}s"
    return {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        Path: "a path (text)",
        str: "text",
    }.get(kind, "text")


def _shown(value: Any) -> str:
    """A value as the file wrote it (near enough)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return json.dumps(value, default=str)
    except ValueError:
        return repr(value)


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
