"""Message payloads: built once per thing, stamped per message, padded to an exact size.

By default a message is the seed's ``{"msg": ...}`` plus ``thing``, ``seq`` and ``ts`` (epoch
ms), so any subscriber can detect loss, duplicates and reordering and measure latency; so is a
--payload-template whose messages are a JSON object (`stamp_template`). The constant part is
encoded once per thing; per message only two integers are formatted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elf_async.errors import UsageError
from elf_async.files import read_input, read_input_text

DEFAULT_MESSAGE = "IoT ELF Hello"
MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT's limit
STAMP_FIELDS = ("thing", "seq", "ts")
_TS_WIDTH = 13  # epoch milliseconds until the year 2286
TEMPLATE_FIELDS = ("thing", "seq", "ts")
# `{name}` is a field and `{{name}}` the literal text `{name}`; any other brace is literal, so
# a JSON template such as {"n": {seq}} needs no escaping.
_TEMPLATE_FIELD = re.compile(r"\{\{(\w+)\}\}|\{(\w+)\}")

Encoder = Callable[[int, int], bytes]
"""Message bytes from (sequence number, send time in epoch ms)."""


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """What every message of the run looks like; `encoder` specialises it for one thing."""

    document: dict[str, Any] | None = None  # a JSON object to stamp
    raw: bytes | None = None  # a JSON document sent exactly as given
    template: str | None = None  # text with {thing}, {seq}, {ts} (see template_parts)
    size: int | None = None  # pad with trailing spaces to this many bytes
    replay: Replay | None = None  # the lines of a --payload-file

    def encoder(self, thing: str, position: int = 0) -> Encoder:
        """`thing`'s messages; `position` is its place among the things a --payload-file's
        round robin spreads over (`Replay`)."""
        if self.replay is not None:
            return self._padded(self.replay.encoder(thing, position))
        if self.document is not None:
            base = {k: v for k, v in self.document.items() if k not in STAMP_FIELDS}
            body = json.dumps(base)[:-1]
            head = body + (", " if base else "") + f'"thing": {json.dumps(thing)}, "seq": '
            prefix = head.encode()
            return self._padded(lambda seq, ts: prefix + b'%d, "ts": %d}' % (seq, ts))
        if self.template is not None:
            return self._padded(_template_encoder(template_parts(self.template), thing))
        assert self.raw is not None
        constant = self._pad(self.raw)
        return lambda seq, ts: constant

    def _pad(self, payload: bytes) -> bytes:
        return payload if self.size is None else payload.ljust(self.size)

    def _padded(self, encode: Encoder) -> Encoder:
        size = self.size
        if size is None:
            return encode
        return lambda seq, ts: encode(seq, ts).ljust(size)

    def check(self, longest_thing: str, max_seq: int) -> int:
        """The largest message of the run in bytes; refuse what AWS or --payload-size can't take."""
        if self.replay is not None:
            largest = self.replay.check(longest_thing, max_seq)
        else:
            unpadded = PayloadSpec(self.document, self.raw, self.template).encoder(longest_thing)
            largest = len(unpadded(max_seq, 10 ** (_TS_WIDTH - 1)))
        if self.size is not None:
            if largest > self.size:
                raise UsageError(
                    f"--payload-size {self.size}: the message itself is up to {largest} bytes"
                )
            largest = self.size
        if largest > MAX_PAYLOAD_BYTES:
            raise UsageError(
                f"payload of {largest} bytes: AWS IoT allows {MAX_PAYLOAD_BYTES} (128 KB)"
            )
        return largest


def template_parts(template: str) -> list[str]:
    """A --payload-template split into literal text (even positions) and field names (odd
    positions); `{{name}}` is the literal text `{name}`. A field other than {thing}, {seq} and
    {ts} is refused: sent literally, a typo would go unnoticed."""
    parts = [""]
    end = 0
    for match in _TEMPLATE_FIELD.finditer(template):
        literal, name = match.groups()
        parts[-1] += template[end : match.start()]
        end = match.end()
        if literal is not None:
            parts[-1] += "{" + literal + "}"
        elif name in TEMPLATE_FIELDS:
            parts += [name, ""]
        else:
            raise UsageError(
                f"--payload-template: unknown field {{{name}}}: the fields are "
                f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)} "
                f"({{{{{name}}}}} sends the text {{{name}}})"
            )
    parts[-1] += template[end:]
    return parts


def stamp_template(template: str, stamp: bool | None) -> str:
    """`template` with the stamp added when its messages are a JSON object, as the default
    payload has it (`"thing": "{thing}", "seq": {seq}, "ts": {ts}` before its closing brace),
    unless `stamp` is False or the object sets one of those fields itself. Other templates are
    sent as they are (`stamp` True refuses them). Unknown fields are refused here too."""
    parts = template_parts(template)
    if stamp is False:
        return template
    try:
        document = json.loads(_template_encoder(parts, "elf-00000")(0, 0))
    except ValueError:
        document = None
    if not isinstance(document, dict):
        if stamp:
            raise UsageError("--stamp needs a --payload-template that is a JSON object")
        return template
    own = [name for name in STAMP_FIELDS if name in document]
    if own:
        if stamp:
            raise UsageError(
                f"--stamp: the --payload-template sets {own[0]!r} itself "
                "(use {seq} and {ts} there, or drop --stamp)"
            )
        return template
    body = template.rstrip()[:-1].rstrip()  # a JSON object ends with its closing brace
    fields = '"thing": "{thing}", "seq": {seq}, "ts": {ts}}'
    return body + (", " if document else "") + fields


def _template_encoder(parts: list[str], thing: str) -> Encoder:
    """The template for one thing: its name filled in once, {seq} and {ts} per message."""
    pieces: list[bytes] = []
    slots: list[tuple[int, str]] = []  # (position in pieces, "seq" or "ts")
    for position, part in enumerate(parts):
        if position % 2 == 0 or part == "thing":
            pieces.append((thing if position % 2 else part).encode())
        else:
            slots.append((len(pieces), part))
            pieces.append(b"")
    if not slots:
        constant = b"".join(pieces)
        return lambda seq, ts: constant

    def encode(seq: int, ts: int) -> bytes:
        out = list(pieces)
        for i, name in slots:
            out[i] = b"%d" % (seq if name == "seq" else ts)
        return b"".join(out)

    return encode


def build_spec(
    *,
    message: str | None,
    json_message: Path | None,
    template: str | None,
    size: int | None,
    stamp: bool | None,
    replay: Replay | None = None,
) -> PayloadSpec:
    """Turn the payload options into a spec, refusing contradictions and unreadable files."""
    given = [
        name
        for name, value in (
            ("MESSAGE", message),
            ("--json-message", json_message),
            ("--payload-template", template),
            ("--payload-file", replay),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]} cannot be used together")
    if size is not None and not 0 < size <= MAX_PAYLOAD_BYTES:
        raise UsageError(f"--payload-size {size}: must be between 1 and {MAX_PAYLOAD_BYTES}")
    if replay is not None:
        return PayloadSpec(replay=replay, size=size)
    if template is not None:
        return PayloadSpec(template=stamp_template(template, stamp), size=size)
    if json_message is not None:
        document = read_json_message(json_message)
        if stamp:
            if not isinstance(document, dict):
                raise UsageError(f"--json-message {json_message}: --stamp needs a JSON object")
            return PayloadSpec(document=document, size=size)
        return PayloadSpec(raw=json.dumps(document).encode(), size=size)
    if stamp is False:
        return PayloadSpec(raw=json.dumps({"msg": message or DEFAULT_MESSAGE}).encode(), size=size)
    return PayloadSpec(document={"msg": message or DEFAULT_MESSAGE}, size=size)


def read_json_message(path: Path) -> Any:
    """Read and validate the --json-message file once (the seed sent {} for a bad file)."""
    text = read_input_text(path, option="--json-message")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--json-message {path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg}"
        ) from exc


PAYLOAD_ORDERS = ("per-thing", "round-robin")


@dataclass(frozen=True, slots=True)
class Replay:
    """The lines of a --payload-file, read and checked once, each one message, replayed in
    order and again from the top once done. `per-thing`: every thing sends line k mod L as its
    message k. `round-robin`: the things share the file, thing p (of `things`) sending line
    (p + k x things) mod L as its message k, so that at one rate the fleet's messages go
    through the lines in order. Stamped (`heads`), a line is its object re-encoded without
    thing/seq/ts, which the stamp then adds."""

    path: str  # as given, to name FILE:LINE
    lines: tuple[bytes, ...]
    heads: tuple[bytes, ...] | None = None  # stamped: each line up to the stamp
    round_robin: bool = False
    things: int = 1  # the things a round robin spreads over

    def encoder(self, thing: str, position: int) -> Encoder:
        count = len(self.lines)
        step = self.things if self.round_robin else 1
        start = position % count if self.round_robin else 0
        if self.heads is None:
            lines = self.lines
            return lambda seq, ts: lines[(start + seq * step) % count]
        heads = self.heads
        tail = f'"thing": {json.dumps(thing)}, "seq": '.encode()
        return lambda seq, ts: (
            heads[(start + seq * step) % count] + tail + b'%d, "ts": %d}' % (seq, ts)
        )

    def check(self, longest_thing: str, max_seq: int) -> int:
        """The largest message in bytes; a line over AWS's limit once stamped is refused,
        named by its line."""
        if self.heads is None:  # each line was checked as it was read
            return max(map(len, self.lines))
        heads = self.heads
        line = max(range(len(heads)), key=lambda i: len(heads[i]))
        stamp = f'"thing": {json.dumps(longest_thing)}, "seq": {max_seq}, "ts": '
        largest = len(heads[line]) + len(stamp.encode()) + _TS_WIDTH + 1
        if largest > MAX_PAYLOAD_BYTES:
            raise UsageError(
                f"--payload-file {self.path}:{line + 1}: {largest} bytes once stamped: AWS IoT "
                f"allows {MAX_PAYLOAD_BYTES} (128 KB)"
            )
        return largest


def read_payload_file(path: Path, *, stamp: bool | None, order: str) -> Replay:
    """Read a --payload-file once, before anything connects: one JSON document per line
    (JSON Lines), each at most AWS's 128 KB; --stamp needs every line to be an object. A bad
    line is named FILE:LINE."""
    if order not in PAYLOAD_ORDERS:
        raise UsageError(f"--payload-order {order}: one of {', '.join(PAYLOAD_ORDERS)}")
    data = read_input(path, option="--payload-file")
    rows = data.split(b"\n")
    if rows[-1] == b"":  # the newline that ends the last line
        rows.pop()
    if not rows:
        raise UsageError(f"--payload-file {path}: no lines (one message per line)")
    lines: list[bytes] = []
    heads: list[bytes] = []
    for number, row in enumerate(rows, 1):
        line = row.removesuffix(b"\r")
        where = f"--payload-file {path}:{number}"
        if not line.strip():
            raise UsageError(f"{where}: an empty line (each line is one message)")
        if len(line) > MAX_PAYLOAD_BYTES:
            raise UsageError(
                f"{where}: a message of {len(line)} bytes: AWS IoT allows {MAX_PAYLOAD_BYTES} "
                "(128 KB)"
            )
        try:
            document = json.loads(line)
        except UnicodeDecodeError:
            raise UsageError(f"{where}: not UTF-8 text") from None
        except ValueError as exc:
            column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise UsageError(f"{where}: not JSON{column} (one JSON document per line)") from None
        lines.append(line)
        if stamp:
            if not isinstance(document, dict):
                raise UsageError(f"{where}: --stamp needs a JSON object on every line")
            base = {k: v for k, v in document.items() if k not in STAMP_FIELDS}
            heads.append((json.dumps(base)[:-1] + (", " if base else "")).encode())
    return Replay(
        str(path),
        tuple(lines),
        tuple(heads) if stamp else None,
        round_robin=order == "round-robin",
    )


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a stamped message says about itself."""

    thing: str
    seq: int
    ts: int


def read_stamp(payload: bytes) -> Stamp | None:
    """The thing/seq/ts of a stamped message, or None for any other payload."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    thing, seq, ts = (document.get(name) for name in STAMP_FIELDS)
    if isinstance(thing, str) and type(seq) is int and type(ts) is int:
        return Stamp(thing, seq, ts)
    return None
