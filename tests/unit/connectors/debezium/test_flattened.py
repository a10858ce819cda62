"""The flattened decoder on the rows the real ExtractNewRecordState SMT wrote: each row
decodes to the Event its envelope twin decodes to, as far as a row can tell (no
`before` but a delete's row; no op without `add.fields=op`); the SMT's tombstones, its
passed-on records, and each way a row can be wrong (a dead letter with its reason)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from connectors.debezium import Decoder, Event, InvalidEvent, model
from connectors.debezium.flattened import FlattenedDecoder
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import Recorded
from tests.unit.connectors.debezium.recorded_flat import (
    FLAT_FILES,
    PREFIXES,
    REWRITE,
    TOMBSTONES,
    TWIN,
    decode,
    flat_decoder,
    flat_line,
    record,
    records,
    twin_line,
)

COLUMNS = frozenset({"id", "neighborhood_id", "system_version", "post_id", "user_id",
                     "birthday", "updated_at", "karma"})


def each(*files: str) -> list[tuple[str, int]]:
    return [(file, rec.line) for file in files for rec in records(file)]


def _topic(rec: Recorded) -> str:
    return rec.topic.replace(PREFIXES[rec.file], "<prefix>")


def _key(rec: Recorded) -> Any:
    if rec.key is None:
        return None
    key = json.loads(rec.key.replace(PREFIXES[rec.file], "<prefix>"))
    return key["payload"] if isinstance(key, dict) and set(key) == {"schema", "payload"} else key


@pytest.mark.parametrize(("file", "number"), each(*FLAT_FILES))
def test_every_flattened_line_records_its_twins_table_and_key(file: str, number: int) -> None:
    flat, twin = record(file, number), record(TWIN, twin_line(file, number))
    assert _topic(flat) == _topic(twin)
    assert _key(flat) == _key(twin)


def test_what_each_mode_drops_the_truncate_and_a_delete_or_its_tombstone() -> None:
    dropped = {file: [n for n in range(1, r.LINE_COUNT + 1) if flat_line(file, n) is None]
               for file in FLAT_FILES}
    assert dropped[REWRITE] == sorted([*r.TOMBSTONES, r.COMMENTS_TRUNCATE])
    assert dropped[TOMBSTONES] == sorted([r.POSTS_DELETE, r.POSTS_PK_DELETE, r.COMMENTS_DELETE,
                                          r.PROFILES_DELETE, r.COMMENTS_TRUNCATE])


def _same(flat: Event, twin: Event, *, op: str | None = None) -> None:
    assert (flat.kind, flat.key) == (twin.kind, twin.key)
    if twin.kind != model.TOMBSTONE or flat.table is not None:  # a key without a schema
        assert flat.table == twin.table                       # names no table: the topic does
    assert flat.op == (op or twin.op)
    if twin.kind == model.CHANGE and twin.op != "d":
        assert flat.after == twin.after and flat.before is None


@pytest.mark.parametrize("number", [rec.line for rec in records(REWRITE)])
@pytest.mark.parametrize("columns", [None, COLUMNS], ids=["whole", "projected"])
def test_a_rewrite_row_decodes_to_its_twins_event(number: int,
                                                  columns: frozenset[str] | None) -> None:
    flat = decode(REWRITE, number, columns)
    twin = decode(TWIN, twin_line(REWRITE, number), columns)
    _same(flat, twin)
    if twin.kind == model.CHANGE:
        if twin.op != "r":  # a snapshot read's is its connector's snapshot time
            assert flat.ts_ms == twin.ts_ms  # __source_ts_ms is source.ts_ms
        assert flat.column_types == twin.column_types  # from the row's own schema
        row = flat.after if flat.op != "d" else flat.before
        assert row is not None and not any(name.startswith("__") for name in row)


@pytest.mark.parametrize("number", [rec.line for rec in records(TOMBSTONES)])
def test_without_add_fields_a_row_is_an_upsert_named_by_its_topic(number: int) -> None:
    flat = decode(TOMBSTONES, number)
    twin = decode(TWIN, twin_line(TOMBSTONES, number))
    if twin.kind == model.CHANGE:  # c, u, r: u; no commit time, no types (no schema)
        _same(flat, twin, op="u")
        assert (flat.ts_ms, flat.column_types) == (None, None)
    else:
        _same(flat, twin)


@pytest.mark.parametrize("twin", [r.POSTS_DELETE, r.POSTS_PK_DELETE, r.COMMENTS_DELETE,
                                  r.PROFILES_DELETE])
def test_a_rewritten_delete_is_a_delete_with_its_row_as_before(twin: int) -> None:
    number = flat_line(REWRITE, twin)
    assert number is not None
    flat, envelope = decode(REWRITE, number), decode(TWIN, twin)
    assert record(REWRITE, number).value_json()["payload"]["__deleted"] == "true"
    assert (flat.op, flat.after, flat.table) == ("d", None, envelope.table)
    assert flat.before is not None and envelope.before is not None
    if twin == r.COMMENTS_DELETE:  # FULL identity: the true old row, as in the envelope
        assert flat.before == envelope.before
        assert flat.before["neighborhood_id"] == 8
    else:  # DEFAULT: the key is real, the rest the columns' defaults (never routed on)
        key = "user_id" if twin == r.PROFILES_DELETE else "id"
        assert flat.before[key] == envelope.before[key]
        assert flat.before["neighborhood_id"] == 0


@pytest.mark.parametrize("twin", [r.POSTS_DELETE_TOMBSTONE, r.POSTS_PK_TOMBSTONE,
                                  r.COMMENTS_TOMBSTONE, r.PROFILES_TOMBSTONE])
def test_the_smts_tombstone_is_the_envelopes_tombstone(twin: int) -> None:
    number = flat_line(TOMBSTONES, twin)
    assert number is not None
    rec = record(TOMBSTONES, number)
    assert rec.value == "null"  # not a Kafka tombstone: the SMT keeps the value schema
    flat, envelope = decode(TOMBSTONES, number), decode(TWIN, twin)
    assert (flat.kind, flat.key) == (model.TOMBSTONE, envelope.key)


def test_a_null_payload_under_a_schema_is_a_tombstone() -> None:
    rec = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    tombstone = rec.with_value(lambda value: value.__setitem__("payload", None))
    event = tombstone.decode(flat_decoder())
    assert (event.kind, event.key) == (model.TOMBSTONE, {"id": _key(rec)["id"]})
    with pytest.raises(InvalidEvent) as caught:
        flat_decoder().decode(rec.topic, 0, 0, None, b"null")
    assert caught.value.reason == "empty_record"


@pytest.mark.parametrize("file", FLAT_FILES)
@pytest.mark.parametrize(("twin", "kind"), [
    (4, model.TRANSACTION), (r.MESSAGE, model.MESSAGE), (r.HEARTBEATS[0], model.HEARTBEAT)])
def test_records_the_smt_passes_on_decode_as_in_json(file: str, twin: int, kind: str) -> None:
    number = flat_line(file, twin)
    assert number is not None
    assert decode(file, number).kind == decode(TWIN, twin).kind == kind


def test_the_table_comes_from_the_rows_fields_else_from_the_topic() -> None:
    rec = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    routed = rec.with_raw(topic="routed.app.changes")
    assert routed.decode(flat_decoder()).table == "app.posts"  # __table, the topic's schema
    named = routed.with_value(lambda value: value["payload"].__setitem__("__schema", "blog"))
    assert named.decode(flat_decoder()).table == "blog.posts"
    bare = record(TOMBSTONES, flat_line(TOMBSTONES, r.POSTS_INSERT) or 0)
    assert bare.decode(flat_decoder()).table == "public.posts"  # <prefix>.<schema>.<table>
    with pytest.raises(InvalidEvent) as caught:
        bare.with_raw(topic="posts").decode(flat_decoder())
    assert caught.value.reason == "invalid_envelope" and "add.fields" in caught.value.message


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("__deleted", "yes", "invalid_envelope"),
    ("__op", "x", "unknown_op"),
    ("__op", 7, "unknown_op"),
    ("__table", 7, "invalid_envelope"),
    ("__schema", ["public"], "invalid_envelope"),
    ("__source_ts_ms", "soon", "invalid_envelope"),
])
def test_a_field_of_the_wrong_kind_is_a_dead_letter(field: str, value: Any, reason: str) -> None:
    rec = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    bad = rec.with_value(lambda data: data["payload"].__setitem__(field, value))
    with pytest.raises(InvalidEvent) as caught:
        bad.decode(flat_decoder())
    assert caught.value.reason == reason and field in caught.value.message


@pytest.mark.parametrize(("value", "reason"), [
    (b"[1, 2]", "invalid_envelope"), (b'"a row?"', "invalid_envelope"),
    (b"{not json", "invalid_json"), (b'{"id": "\xff"}', "invalid_json")])
def test_a_value_that_is_no_row_is_a_dead_letter(value: bytes, reason: str) -> None:
    rec = record(TOMBSTONES, flat_line(TOMBSTONES, r.POSTS_INSERT) or 0)
    for decoder in (flat_decoder(), flat_decoder(COLUMNS)):
        with pytest.raises(InvalidEvent) as caught:
            decoder.decode(rec.topic, 0, 0, rec.key_bytes(), value)
        assert caught.value.reason == reason


def test_the_schema_prefix_fast_path_decodes_what_the_full_decode_does() -> None:
    warm = flat_decoder(COLUMNS)
    for rec in records(REWRITE):
        rec.decode(warm)  # learns each topic's schema prefix
    for rec in records(REWRITE):
        assert rec.decode(warm) == rec.decode(flat_decoder(COLUMNS))
    # A known prefix, then a payload that is not a row: the full decode says why.
    rec = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    broken = rec.with_value(lambda value: value.__setitem__("payload", [1]))
    with pytest.raises(InvalidEvent) as caught:
        broken.decode(warm)
    assert caught.value.reason == "invalid_envelope"


def test_a_projected_row_keeps_the_planned_columns_only() -> None:
    event = decode(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0, COLUMNS)
    assert event.after is not None
    assert set(event.after) == {"id", "neighborhood_id", "system_version"}


class Inner(Decoder):
    """A JSON decoder that says which topics it was asked to decode."""

    __slots__ = ("asked",)

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def decode(self, topic: str, partition: int, offset: int, key: bytes | None,
               value: bytes | None) -> Event:
        self.asked.append(topic)
        return super().decode(topic, partition, offset, key, value)

    def key_event(self, topic: str, partition: int, offset: int, key: bytes) -> Event:
        self.asked.append(topic)
        return super().key_event(topic, partition, offset, key)


def test_other_topics_go_to_the_decoder_it_wraps() -> None:
    inner = Inner()
    decoder = FlattenedDecoder(flattened_topics=lambda topic: topic.startswith("capflat."),
                               inner=inner)
    flat = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    twin = record(TWIN, r.POSTS_INSERT)
    assert flat.decode(decoder).op == "c" and inner.asked == []
    assert twin.decode(decoder) == twin.decode(Decoder()) and inner.asked == [twin.topic]
    tombstone = record(TWIN, r.POSTS_DELETE_TOMBSTONE)
    assert tombstone.key is not None
    decoder.key_event(tombstone.topic, 0, 0, tombstone.key.encode())
    assert inner.asked == [twin.topic, tombstone.topic]
    # Without one, the others are JSON envelopes.
    alone = FlattenedDecoder(flattened_topics=lambda topic: False)
    assert twin.decode(alone) == twin.decode(Decoder())


def test_an_envelope_read_as_a_row_carries_no_version_and_a_row_read_as_json_no_op() -> None:
    """A topic given the wrong format is dead-lettered, never planned: its `after` then
    lacks the version column (the planner's `invalid_version`), or its envelope its op."""
    twin = record(TWIN, r.POSTS_INSERT).decode(flat_decoder())
    assert twin.after is not None and "system_version" not in twin.after
    rec = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    with pytest.raises(InvalidEvent) as caught:
        rec.decode(Decoder())
    assert caught.value.reason == "invalid_envelope"


def test_events_are_msgspec_structs_equal_warm_or_cold() -> None:
    rec = record(TOMBSTONES, flat_line(TOMBSTONES, r.PROFILES_INSERT) or 0)
    decoder = flat_decoder()
    first, second = rec.decode(decoder), rec.decode(decoder)
    assert first == second and msgspec.structs.asdict(first)["op"] == "u"
