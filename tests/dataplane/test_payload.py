"""Payloads: the seed's JSON, stamps a subscriber can check, templates, exact sizes, limits."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from elf_async.dataplane.payload import (
    MAX_PAYLOAD_BYTES,
    build_spec,
    read_payload_file,
    read_stamp,
)
from elf_async.errors import UsageError


def spec(**options: object):  # type: ignore[no-untyped-def]
    defaults: dict[str, object] = {
        "message": None, "json_message": None, "template": None, "size": None, "stamp": None,
    }  # fmt: skip
    return build_spec(**{**defaults, **options})  # type: ignore[arg-type]


def test_default_is_the_seed_message_stamped() -> None:
    payload = spec().encoder("elf-0001")(7, 1_700_000_000_123)
    assert json.loads(payload) == {
        "msg": "IoT ELF Hello", "thing": "elf-0001", "seq": 7, "ts": 1_700_000_000_123
    }  # fmt: skip
    stamp = read_stamp(payload)
    assert stamp is not None
    assert (stamp.thing, stamp.seq, stamp.ts) == ("elf-0001", 7, 1_700_000_000_123)


def test_no_stamp_sends_the_seed_payload() -> None:
    assert json.loads(spec(message="hi", stamp=False).encoder("t")(1, 2)) == {"msg": "hi"}


def test_json_message_is_sent_exactly_unless_stamped(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow.json"
    shadow.write_text('{"state": {"reported": {"on": true}}}')
    exact = spec(json_message=shadow).encoder("t")
    assert json.loads(exact(0, 1)) == {"state": {"reported": {"on": True}}}
    assert exact(0, 1) == exact(5, 9)
    stamped = json.loads(spec(json_message=shadow, stamp=True).encoder("t")(3, 4))
    assert stamped == {"state": {"reported": {"on": True}}, "thing": "t", "seq": 3, "ts": 4}


def test_stamping_an_empty_object(tmp_path: Path) -> None:
    empty = tmp_path / "e.json"
    empty.write_text("{}")
    assert json.loads(spec(json_message=empty, stamp=True).encoder("t")(0, 1)) == {
        "thing": "t", "seq": 0, "ts": 1
    }  # fmt: skip


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "no such file"), ("{not json", "invalid JSON at line 1"), (b"\xff\xfe", "UTF-8")],
)
def test_bad_json_message_files_are_clear_errors(
    tmp_path: Path, content: str | bytes | None, fragment: str
) -> None:
    path = tmp_path / "m.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=fragment):
        spec(json_message=path)


def test_template_placeholders() -> None:
    template = '{"t": "{thing}", "n": {seq}, "at": {ts}}'
    encode = spec(template=template, stamp=False).encoder("x-1")
    assert json.loads(encode(12, 99)) == {"t": "x-1", "n": 12, "at": 99}
    assert spec(template="plain").encoder("x")(1, 2) == b"plain"


def test_a_json_object_template_is_stamped_like_the_default_payload() -> None:
    """subscribe reads thing, seq and ts: without them it could not count loss or latency."""
    encode = spec(template='{"temperature": 21.5, "n": {seq}}\n').encoder("elf-0001")
    payload = encode(7, 1_700_000_000_123)
    assert json.loads(payload) == {
        "temperature": 21.5, "n": 7, "thing": "elf-0001", "seq": 7, "ts": 1_700_000_000_123
    }  # fmt: skip
    stamp = read_stamp(payload)
    assert stamp is not None
    assert (stamp.thing, stamp.seq, stamp.ts) == ("elf-0001", 7, 1_700_000_000_123)
    assert json.loads(spec(template="{}", stamp=True).encoder("t")(0, 1)) == {
        "thing": "t", "seq": 0, "ts": 1
    }  # fmt: skip


@pytest.mark.parametrize(
    ("template", "sent"),
    [
        ('{"thing": "{thing}", "seq": {seq}, "ts": {ts}}', b'{"thing": "t", "seq": 3, "ts": 4}'),
        ("plain {seq}", b"plain 3"),
        ("[{seq}]", b"[3]"),
    ],
    ids=["stamps-itself", "text", "json-array"],
)
def test_a_template_that_stamps_itself_or_is_no_object_is_sent_as_it_is(
    template: str, sent: bytes
) -> None:
    assert spec(template=template).encoder("t")(3, 4) == sent
    assert spec(template=template, stamp=False).encoder("t")(3, 4) == sent


def test_no_stamp_sends_a_json_object_template_as_it_is() -> None:
    assert spec(template='{"n": {seq}}', stamp=False).encoder("t")(3, 4) == b'{"n": 3}'


def test_template_braces_are_literal_except_around_a_field() -> None:
    """JSON needs no escaping; {{name}} is the literal {name}, which a field cannot be."""
    template = '{"a": {"b": [{seq}]}, "f": "{{thing}}", "g": "{}{ seq }"}'
    encode = spec(template=template, stamp=False).encoder("x")
    assert encode(3, 4) == b'{"a": {"b": [3]}, "f": "{thing}", "g": "{}{ seq }"}'
    assert spec(template=template).encoder("x")(3, 4) == (
        b'{"a": {"b": [3]}, "f": "{thing}", "g": "{}{ seq }", "thing": "x", "seq": 3, "ts": 4}'
    )
    assert spec(template="{thing}{seq}{ts}{{ts}}").encoder("t-1")(7, 9) == b"t-179{ts}"


@pytest.mark.parametrize("template", ["{unknown}", '{"n": {seq}, "x": {Seq}}', "{0}"])
def test_an_unknown_template_field_is_refused(template: str) -> None:
    """Sent literally, a typo'd field would go unnoticed in every message."""
    with pytest.raises(UsageError) as caught:
        spec(template=template)
    name = template.split("{")[-1].split("}")[0]
    assert str(caught.value) == (
        f"--payload-template: unknown field {{{name}}}: the fields are {{thing}}, {{seq}}, "
        f"{{ts}} ({{{{{name}}}}} sends the text {{{name}}})"
    )


def test_payload_size_is_exact_and_stays_json() -> None:
    encode = spec(size=200).encoder("elf-0001")
    for seq in (0, 9, 12345):
        payload = encode(seq, 1_700_000_000_000)
        assert len(payload) == 200
        assert json.loads(payload)["seq"] == seq


def test_limits() -> None:
    with pytest.raises(UsageError, match="128 KB"):
        spec(message="x" * (MAX_PAYLOAD_BYTES + 1)).check("t", 0)
    with pytest.raises(UsageError, match="--payload-size 10"):
        spec(size=10).check("t", 0)
    with pytest.raises(UsageError, match="--payload-size"):
        spec(size=MAX_PAYLOAD_BYTES + 1)
    assert spec(size=100).check("thing", 999) == 100


def test_contradictions(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot be used together"):
        spec(message="hi", template="x")
    with pytest.raises(UsageError, match="--stamp needs a --payload-template that is a JSON"):
        spec(template="x", stamp=True)
    with pytest.raises(UsageError, match="--stamp: the --payload-template sets 'seq' itself"):
        spec(template='{"seq": {seq}}', stamp=True)
    arr = tmp_path / "a.json"
    arr.write_text("[1]")
    with pytest.raises(UsageError, match="JSON object"):
        spec(json_message=arr, stamp=True)


def test_read_stamp_ignores_other_payloads() -> None:
    assert read_stamp(b"not json") is None
    assert read_stamp(b"[1, 2]") is None
    assert read_stamp(b'{"thing": "t", "seq": "1", "ts": 2}') is None


def write_lines(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def test_a_payload_file_is_replayed_line_by_line_per_thing(tmp_path: Path) -> None:
    """Every thing sends line k mod L as its message k, exactly as written."""
    lines = ['{"t": 1}', '{"t":  2}', "[3]"]
    replay = read_payload_file(write_lines(tmp_path / "m.jsonl", *lines), stamp=None,
                               order="per-thing")  # fmt: skip
    for position in (0, 5):
        encode = spec(replay=replay).encoder("elf-1", position)
        assert [encode(k, 0) for k in range(7)] == [lines[k % 3].encode() for k in range(7)]


def test_round_robin_spreads_the_lines_over_the_things(tmp_path: Path) -> None:
    """Thing p of N sends line (p + k x N) mod L: the fleet's k-th round is lines kN..kN+N-1."""
    path = write_lines(tmp_path / "m.jsonl", *(f'{{"n": {i}}}' for i in range(7)))
    replay = dataclasses.replace(read_payload_file(path, stamp=None, order="round-robin"), things=3)
    sent = {p: [json.loads(replay.encoder("t", p)(k, 0))["n"] for k in range(4)] for p in range(3)}
    assert sent == {0: [0, 3, 6, 2], 1: [1, 4, 0, 3], 2: [2, 5, 1, 4]}


def test_stamped_lines_get_thing_seq_and_ts(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", '{"v": 1, "seq": 99}', "{}")
    encode = spec(replay=read_payload_file(path, stamp=True, order="per-thing")).encoder("t")
    assert json.loads(encode(0, 5)) == {"v": 1, "thing": "t", "seq": 0, "ts": 5}
    assert json.loads(encode(1, 6)) == {"thing": "t", "seq": 1, "ts": 6}


@pytest.mark.parametrize(
    ("lines", "stamp", "fragment"),
    [
        (['{"a": 1}', "{not json"], None, "m.jsonl:2: not JSON at column 2"),
        (['{"a": 1}', "", "{}"], None, "m.jsonl:2: an empty line"),
        (["{}", "[1]"], True, "m.jsonl:2: --stamp needs a JSON object on every line"),
        (["{}", "{}", b"\xff"], None, "m.jsonl:3: not UTF-8"),
        ([], None, "m.jsonl: no lines"),
    ],
)
def test_bad_payload_file_lines_are_named(
    tmp_path: Path, lines: list[str | bytes], stamp: bool | None, fragment: str
) -> None:
    path = write_lines(tmp_path / "m.jsonl", *lines)
    with pytest.raises(UsageError, match=re.escape(fragment)):
        read_payload_file(path, stamp=stamp, order="per-thing")


def test_a_line_over_aws_limit_is_named(tmp_path: Path) -> None:
    big = json.dumps({"pad": "x" * MAX_PAYLOAD_BYTES})
    path = write_lines(tmp_path / "m.jsonl", "{}", big)
    with pytest.raises(UsageError, match=r"m\.jsonl:2: a message of 131083 bytes: AWS IoT allows"):
        read_payload_file(path, stamp=None, order="per-thing")


def test_a_line_that_the_stamp_takes_over_the_limit_is_named(tmp_path: Path) -> None:
    """128 KB exactly is accepted as written; stamped, it no longer fits."""
    line = json.dumps({"pad": "x" * (MAX_PAYLOAD_BYTES - 11)})
    assert len(line) == MAX_PAYLOAD_BYTES
    path = write_lines(tmp_path / "m.jsonl", "{}", line)
    assert spec(replay=read_payload_file(path, stamp=None, order="per-thing")).check("t", 9) == (
        MAX_PAYLOAD_BYTES
    )
    stamped = spec(replay=read_payload_file(path, stamp=True, order="per-thing"))
    with pytest.raises(UsageError, match=r"m\.jsonl:2: \d+ bytes once stamped"):
        stamped.check("elf-00001", 1000)


def test_the_stamped_size_check_is_exact(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", '{"a": [1, 2]}', '{"b": "a longer line"}')
    stamped = spec(replay=read_payload_file(path, stamp=True, order="per-thing"))
    largest = stamped.check("elf-00001", 12345)
    assert largest == len(stamped.encoder("elf-00001")(12345 * 2 + 1, 10**12))


def test_an_unknown_payload_order_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--payload-order shuffled: one of per-thing, round-robin"):
        read_payload_file(write_lines(tmp_path / "m.jsonl", "{}"), stamp=None, order="shuffled")
