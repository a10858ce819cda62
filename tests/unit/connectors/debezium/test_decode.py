"""`Decoder.decode` over every recorded record, and over broken variants of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from connectors.debezium import Decoder, InvalidEvent
from connectors.debezium import decode as decode_module
from connectors.debezium import model as m
from connectors.debezium.values import DECIMAL
from connectors.errors import ConnectorError, DecodeError
from tests.unit.connectors.debezium.recorded import (
    CHANGES,
    COMMENTS_DELETE,
    COMMENTS_TRUNCATE,
    FILES,
    HEARTBEATS,
    LINE_COUNT,
    MESSAGE,
    POSTS_DELETE,
    POSTS_DELETE_TOMBSTONE,
    POSTS_INSERT,
    POSTS_PK_CREATE,
    POSTS_PK_DELETE,
    POSTS_SNAPSHOT,
    POSTS_UPDATE_TITLE,
    PROFILES_INSERT,
    SCHEMAS_FALSE,
    SCHEMAS_TRUE,
    TOMBSTONES,
    Recorded,
    decode,
    record,
    records,
)

Json = dict[str, Any]
POSTS, COMMENTS, PROFILES = "public.posts", "public.comments", "public.profiles"

# What each recorded line is (README.md of the fixtures); every other line is a
# transaction BEGIN or END marker. A tombstone's table is the one its key schema names,
# so it is known only with schemas.enable (`expected`).
EXPECTED: dict[int, tuple[str, str | None, str | None]] = {
    1: (m.CHANGE, "r", POSTS), 2: (m.CHANGE, "r", COMMENTS), 3: (m.CHANGE, "r", PROFILES),
    5: (m.CHANGE, "c", POSTS), 8: (m.CHANGE, "u", POSTS), 11: (m.CHANGE, "u", POSTS),
    14: (m.CHANGE, "d", POSTS), 15: (m.TOMBSTONE, None, POSTS), 18: (m.CHANGE, "c", POSTS),
    21: (m.CHANGE, "d", POSTS), 22: (m.TOMBSTONE, None, POSTS), 23: (m.CHANGE, "c", POSTS),
    26: (m.CHANGE, "c", COMMENTS), 29: (m.CHANGE, "u", COMMENTS),
    32: (m.CHANGE, "u", COMMENTS), 35: (m.CHANGE, "d", COMMENTS),
    36: (m.TOMBSTONE, None, COMMENTS), 39: (m.TRUNCATE, "t", COMMENTS),
    42: (m.CHANGE, "c", PROFILES), 45: (m.CHANGE, "u", PROFILES),
    48: (m.CHANGE, "d", PROFILES), 49: (m.TOMBSTONE, None, PROFILES),
    52: (m.CHANGE, "c", POSTS), 53: (m.CHANGE, "c", COMMENTS), 54: (m.CHANGE, "c", PROFILES),
    55: (m.CHANGE, "u", POSTS), 58: (m.MESSAGE, "m", None),
    60: (m.HEARTBEAT, None, None), 61: (m.HEARTBEAT, None, None),
}
TRANSACTION = (m.TRANSACTION, None, None)
TRANSACTIONS = tuple(n for n in range(1, LINE_COUNT + 1) if n not in EXPECTED)
EVERY_LINE = [(file, line) for file in FILES for line in range(1, LINE_COUNT + 1)]


def both(*lines: int) -> list[tuple[str, int]]:
    return [(file, line) for file in FILES for line in lines]


# --------------------------------------------------------------------------- recorded


def test_both_files_record_the_same_steps_on_the_same_lines() -> None:
    true, false = records(SCHEMAS_TRUE), records(SCHEMAS_FALSE)
    assert len(true) == len(false) == LINE_COUNT
    for a, b in zip(true, false, strict=True):
        assert a.topic.replace("capjson", "P") == b.topic.replace("capbare", "P"), a.line


@pytest.mark.parametrize(("file", "line"), EVERY_LINE)
def test_every_recorded_line_decodes_to_its_kind_op_and_table(file: str, line: int) -> None:
    event = decode(file, line)
    assert (event.kind, event.op, event.table) == expected(file, line)


def expected(file: str, line: int) -> tuple[str, str | None, str | None]:
    kind, op, table = EXPECTED.get(line, TRANSACTION)
    if kind == m.TOMBSTONE and file == SCHEMAS_FALSE:
        return kind, op, None  # no key schema: the table is known from the topic only
    return kind, op, table


@pytest.mark.parametrize(("file", "line"), EVERY_LINE)
def test_decoded_event_keeps_topic_partition_and_offset(file: str, line: int) -> None:
    rec = record(file, line)
    event = rec.decode()
    assert (event.topic, event.partition, event.offset) == (rec.topic, rec.partition, rec.offset)
    assert event.where == f"{rec.topic}[{rec.partition}]@{rec.offset}"


@pytest.mark.parametrize(("file", "line"), both(*CHANGES, COMMENTS_TRUNCATE))
def test_change_and_truncate_ts_ms_is_the_source_commit_time(file: str, line: int) -> None:
    rec = record(file, line)
    assert rec.decode().ts_ms == rec.payload()["source"]["ts_ms"]


def test_snapshot_ts_ms_is_the_recorded_commit_time() -> None:
    assert decode(SCHEMAS_TRUE, POSTS_SNAPSHOT).ts_ms == 1795501764107


@pytest.mark.parametrize(
    ("file", "line"),
    both(*HEARTBEATS, MESSAGE, *TRANSACTIONS),
)
def test_heartbeat_message_and_transaction_ts_ms_is_the_envelope_time(file: str,
                                                                       line: int) -> None:
    rec = record(file, line)
    assert rec.decode().ts_ms == rec.payload()["ts_ms"]


@pytest.mark.parametrize(("file", "line"), both(*TOMBSTONES))
def test_tombstone_keeps_the_row_key_and_nothing_else(file: str, line: int) -> None:
    event = decode(file, line)
    delete = decode(file, line - 1)
    assert delete.op == "d"
    assert event.key == delete.key
    assert (event.before, event.after, event.ts_ms) == (None, None, None)


@pytest.mark.parametrize("file", FILES)
def test_truncate_has_a_null_key_and_no_row_images(file: str) -> None:
    rec = record(file, COMMENTS_TRUNCATE)
    assert rec.key is None
    event = rec.decode()
    assert (event.key, event.before, event.after) == (None, None, None)


@pytest.mark.parametrize("file", FILES)
def test_logical_message_has_no_table_although_source_names_an_empty_one(file: str) -> None:
    rec = record(file, MESSAGE)
    assert rec.payload()["source"]["table"] == ""
    event = rec.decode()
    assert event.kind == m.MESSAGE
    assert event.table is None


@pytest.mark.parametrize("file", FILES)
def test_heartbeat_prefix_can_be_configured(file: str) -> None:
    rec = record(file, HEARTBEATS[0])
    renamed = rec.with_raw(topic=rec.topic.replace("__debezium-heartbeat", "hb"))
    assert renamed.decode(Decoder(heartbeat_prefix="hb")).kind == m.HEARTBEAT
    # Under the default prefix the renamed topic is no heartbeat: {"ts_ms"} has no op.
    with pytest.raises(InvalidEvent):
        renamed.decode()


@pytest.mark.parametrize("line", CHANGES)
def test_schemas_true_and_false_give_the_same_row_images(line: int) -> None:
    with_schema, bare = decode(SCHEMAS_TRUE, line), decode(SCHEMAS_FALSE, line)
    assert with_schema.before == bare.before
    assert with_schema.after == bare.after
    assert (with_schema.op, with_schema.table) == (bare.op, bare.table)


@pytest.mark.parametrize("line", CHANGES + TOMBSTONES)
def test_schemas_true_and_false_give_the_same_key_columns(line: int) -> None:
    with_schema, bare = decode(SCHEMAS_TRUE, line), decode(SCHEMAS_FALSE, line)
    assert with_schema.key == bare.key
    assert with_schema.key is not None


def test_delete_with_default_identity_keeps_the_fake_defaults_in_before() -> None:
    before = decode(SCHEMAS_FALSE, POSTS_DELETE).before
    assert before is not None
    assert before["id"] == 19
    assert (before["neighborhood_id"], before["system_version"]) == (0, 1)


def test_primary_key_change_records_carry_the_other_key_in_headers() -> None:
    delete, create = record(SCHEMAS_TRUE, POSTS_PK_DELETE), record(SCHEMAS_TRUE, POSTS_PK_CREATE)
    assert delete.header("__debezium.newkey") == '{"id":1000020}'
    assert create.header("__debezium.oldkey") == '{"id":20}'
    assert delete.decode().key == {"id": 20}
    assert create.decode().key == {"id": 1000020}


# --------------------------------------------------------------------------- column types


def test_embedded_schema_gives_posts_column_types() -> None:
    types = decode(SCHEMAS_TRUE, POSTS_INSERT).column_types
    assert types is not None
    assert types["score"] == ("org.apache.kafka.connect.data.Decimal", 2)
    assert types["created_at"] == ("io.debezium.time.ZonedTimestamp", 0)
    assert types["metadata"] == ("io.debezium.data.Json", 0)


def test_embedded_schema_gives_profiles_column_types() -> None:
    types = decode(SCHEMAS_TRUE, PROFILES_INSERT).column_types
    assert types == {
        "user_id": ("io.debezium.data.Uuid", 0),
        "karma": ("org.apache.kafka.connect.data.Decimal", 2),
        "birthday": ("io.debezium.time.Date", 0),
        "updated_at": ("io.debezium.time.MicroTimestamp", 0),
    }


def test_plain_columns_have_no_logical_type() -> None:
    types = decode(SCHEMAS_TRUE, POSTS_INSERT).column_types
    assert types is not None
    assert not {"id", "neighborhood_id", "system_version", "title"} & set(types)


@pytest.mark.parametrize("line", CHANGES)
def test_without_embedded_schema_there_are_no_column_types(line: int) -> None:
    assert decode(SCHEMAS_FALSE, line).column_types is None


def test_same_schema_on_a_topic_is_parsed_once() -> None:
    decoder = Decoder()
    first = record(SCHEMAS_TRUE, POSTS_INSERT).decode(decoder)
    second = record(SCHEMAS_TRUE, POSTS_UPDATE_TITLE).decode(decoder)
    assert first.column_types is not None
    assert second.column_types is first.column_types


def score_scale(rec: Recorded, decoder: Decoder) -> int:
    """The scale the decoder found for posts.score in the record's embedded schema."""
    types = rec.decode(decoder).column_types
    assert types is not None
    return types["score"][1]


def set_score_scale(scale: str) -> Callable[[Json], None]:
    def change(value: Json) -> None:
        for envelope_field in value["schema"]["fields"]:
            for column in envelope_field.get("fields") or []:
                if column["field"] == "score":
                    column["parameters"]["scale"] = scale
    return change


def test_changed_schema_on_a_topic_is_parsed_again() -> None:
    decoder = Decoder()
    original = record(SCHEMAS_TRUE, POSTS_UPDATE_TITLE)
    altered = original.with_value(set_score_scale("3"))
    assert score_scale(original, decoder) == 2
    assert score_scale(altered, decoder) == 3
    assert score_scale(original, decoder) == 2


def test_schema_cache_is_per_topic() -> None:
    decoder = Decoder()
    posts = record(SCHEMAS_TRUE, POSTS_UPDATE_TITLE)
    renamed = posts.with_value(set_score_scale("4")).with_raw(topic="other.public.posts")
    assert score_scale(renamed, decoder) == 4
    assert score_scale(posts, decoder) == 2
    assert score_scale(renamed, decoder) == 4


def mutate_row_schema(change: Callable[[Json, Json], object]) -> Callable[[Json], None]:
    """A change to the `score` column of both row structs of the envelope schema."""
    def on_value(value: Json) -> None:
        for envelope_field in value["schema"]["fields"]:
            if envelope_field["field"] in ("before", "after"):
                for column in envelope_field["fields"]:
                    if column["field"] == "score":
                        change(envelope_field, column)
    return on_value


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda struct, column: column.pop("field"), id="column-without-field"),
        pytest.param(lambda struct, column: column.__setitem__("field", 5), id="field-not-str"),
        pytest.param(lambda struct, column: column.__setitem__("parameters", ["scale"]),
                     id="parameters-not-a-mapping"),
        pytest.param(lambda struct, column: column["parameters"].__setitem__("scale", "x"),
                     id="scale-not-a-number"),
        pytest.param(lambda struct, column: struct.__setitem__("fields", 5),
                     id="fields-not-a-list"),
        pytest.param(lambda struct, column: struct.__setitem__("fields", ["score"]),
                     id="column-not-a-mapping"),
    ],
)
def test_hostile_schema_still_decodes_the_row(change: Callable[[Json, Json], object]) -> None:
    rec = record(SCHEMAS_TRUE, POSTS_UPDATE_TITLE).with_value(mutate_row_schema(change))
    event = rec.decode()
    assert event.after == decode(SCHEMAS_TRUE, POSTS_UPDATE_TITLE).after
    assert event.column_types is not None
    assert event.column_types.get("score", (DECIMAL, 0)) == (DECIMAL, 0)


def test_schema_that_is_not_a_struct_gives_no_column_types() -> None:
    def change(value: Json) -> None:
        value["schema"] = "not a schema"

    event = record(SCHEMAS_TRUE, POSTS_UPDATE_TITLE).with_value(change).decode()
    assert event.column_types == {}
    assert event.after is not None


# --------------------------------------------------------------------------- broken records


def reject(rec: Recorded, reason: str) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        rec.decode()
    assert caught.value.reason == reason, caught.value.message
    return caught.value


def envelope_path(file: str, field: str) -> str:
    return f"$.payload.{field}" if file == SCHEMAS_TRUE else f"$.{field}"


@pytest.mark.parametrize("file", FILES)
def test_truncated_value_is_invalid_json(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE)
    error = reject(rec.with_raw(value=rec.text()[:200]), "invalid_json")
    assert "value is not valid JSON" in error.message
    assert "truncated" in error.message


@pytest.mark.parametrize("file", FILES)
def test_invalid_utf8_in_value_is_invalid_json(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE)
    raw = rec.text().encode().replace(b"second title", b"second \xff\xfe")
    with pytest.raises(InvalidEvent) as caught:
        Decoder().decode(rec.topic, 0, 0, rec.key_bytes(), raw)
    assert caught.value.reason == "invalid_json"
    where = raw.index(b"\xff")
    assert f"not valid UTF-8: invalid start byte at byte {where}" in caught.value.message


def test_invalid_utf8_in_the_embedded_schema_is_invalid_json_not_a_crash() -> None:
    # The envelope decoder leaves `schema` raw: its bytes were first read when the column
    # types were parsed, where a UnicodeDecodeError escaped and stopped the worker.
    rec = record(SCHEMAS_TRUE, POSTS_UPDATE_TITLE)
    raw = rec.text().encode().replace(b'"field":"op"', b'"field":"o\xff\xfep"', 1)
    with pytest.raises(InvalidEvent) as caught:
        Decoder().decode(rec.topic, 0, 0, rec.key_bytes(), raw)
    assert caught.value.reason == "invalid_json"
    assert "not valid UTF-8" in caught.value.message
    assert "$.schema" in caught.value.message


@pytest.mark.parametrize("file", FILES)
def test_value_nested_100k_levels_deep_is_invalid_json(file: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    rec = record(file, POSTS_UPDATE_TITLE)
    hostile = rec.with_raw(value=rec.text().replace('"second title"', deep))
    error = reject(hostile, "invalid_json")
    assert "nested too deeply" in error.message


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"id=19", id="not-json"),
        pytest.param(b'{"id": 19', id="truncated"),
        pytest.param(b'{"id":"\xff"}', id="invalid-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-array"),
        pytest.param(b'{"id":' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deep-object"),
    ],
)
def test_every_undecodable_key_is_an_invalid_key(key: bytes) -> None:
    rec = record(SCHEMAS_FALSE, POSTS_UPDATE_TITLE)
    with pytest.raises(InvalidEvent) as caught:
        Decoder().decode(rec.topic, 0, 0, key, rec.value_bytes())
    assert caught.value.reason == "invalid_key", caught.value.message
    assert "key" in caught.value.message


@pytest.mark.parametrize("file", FILES)
def test_op_of_the_wrong_type_names_its_json_path(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_payload(lambda p: p.__setitem__("op", 1))
    error = reject(rec, "invalid_envelope")
    assert f"`{envelope_path(file, 'op')}`" in error.message


@pytest.mark.parametrize("file", FILES)
def test_before_as_a_list_names_its_json_path(file: str) -> None:
    rec = record(file, POSTS_DELETE).with_payload(lambda p: p.__setitem__("before", [19]))
    error = reject(rec, "invalid_envelope")
    assert f"`{envelope_path(file, 'before')}`" in error.message


@pytest.mark.parametrize("file", FILES)
def test_source_ts_ms_of_the_wrong_type_names_its_json_path(file: str) -> None:
    rec = record(file, POSTS_INSERT).with_payload(
        lambda p: p["source"].__setitem__("ts_ms", "yesterday"))
    error = reject(rec, "invalid_envelope")
    assert f"`{envelope_path(file, 'source.ts_ms')}`" in error.message


@pytest.mark.parametrize("file", FILES)
def test_unknown_op_is_rejected_with_its_path(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_payload(lambda p: p.__setitem__("op", "x"))
    error = reject(rec, "unknown_op")
    assert error.path == envelope_path(file, "op")
    assert "'x'" in error.message


def test_unknown_op_message_does_not_echo_a_huge_op() -> None:
    rec = record(SCHEMAS_FALSE, POSTS_UPDATE_TITLE).with_payload(
        lambda p: p.__setitem__("op", "z" * 10_000))
    assert len(reject(rec, "unknown_op").message) < 200


@pytest.mark.parametrize("file", FILES)
def test_missing_op_is_an_invalid_envelope(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_payload(lambda p: p.pop("op"))
    error = reject(rec, "invalid_envelope")
    assert error.path == envelope_path(file, "op")


@pytest.mark.parametrize("file", FILES)
def test_missing_source_is_an_invalid_envelope(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_payload(lambda p: p.pop("source"))
    assert reject(rec, "invalid_envelope").path == envelope_path(file, "source")


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("field", ["table", "schema"])
def test_source_without_table_or_schema_is_an_invalid_envelope(file: str, field: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_payload(lambda p: p["source"].pop(field))
    assert reject(rec, "invalid_envelope").path == envelope_path(file, "source")


@pytest.mark.parametrize("file", FILES)
def test_truncate_without_source_table_is_an_invalid_envelope(file: str) -> None:
    rec = record(file, COMMENTS_TRUNCATE).with_payload(
        lambda p: p["source"].__setitem__("table", ""))
    reject(rec, "invalid_envelope")


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_change_without_after_is_an_invalid_envelope(file: str, op: str) -> None:
    def change(payload: Json) -> None:
        payload["op"] = op
        payload["after"] = None

    rec = record(file, POSTS_INSERT).with_payload(change)
    error = reject(rec, "invalid_envelope")
    assert error.path == envelope_path(file, "after")
    assert f"op {op!r}" in error.message


@pytest.mark.parametrize("file", FILES)
def test_delete_without_before_is_an_invalid_envelope(file: str) -> None:
    rec = record(file, COMMENTS_DELETE).with_payload(lambda p: p.__setitem__("before", None))
    error = reject(rec, "invalid_envelope")
    assert error.path == envelope_path(file, "before")


@pytest.mark.parametrize("file", FILES)
def test_key_that_is_not_json_is_an_invalid_key(file: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_raw(key="id=19")
    assert "not valid JSON" in reject(rec, "invalid_key").message


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("key", ["[19]", '"19"', "19", "null"])
def test_key_that_is_not_a_json_object_is_an_invalid_key(file: str, key: str) -> None:
    rec = record(file, POSTS_UPDATE_TITLE).with_raw(key=key)
    error = reject(rec, "invalid_key")
    assert error.path == "$"
    assert "not a JSON object" in error.message


@pytest.mark.parametrize("file", FILES)
def test_tombstone_with_a_broken_key_is_an_invalid_key(file: str) -> None:
    reject(record(file, POSTS_DELETE_TOMBSTONE).with_raw(key="[19]"), "invalid_key")


def test_record_with_neither_key_nor_value_is_an_empty_record() -> None:
    rec = record(SCHEMAS_TRUE, POSTS_DELETE_TOMBSTONE).with_raw(key=None)
    reject(rec, "empty_record")


@pytest.mark.parametrize("value", ["null", "[]", '"text"', "42"])
def test_value_that_is_not_a_json_object_is_an_invalid_envelope(value: str) -> None:
    rec = record(SCHEMAS_FALSE, POSTS_UPDATE_TITLE).with_raw(value=value)
    reject(rec, "invalid_envelope")


def test_value_with_an_empty_object_has_no_op() -> None:
    rec = record(SCHEMAS_FALSE, POSTS_UPDATE_TITLE).with_raw(value="{}")
    assert reject(rec, "invalid_envelope").path == "$.op"


def test_invalid_event_is_a_decode_error_for_the_dead_letter_path() -> None:
    rec = record(SCHEMAS_FALSE, POSTS_UPDATE_TITLE).with_raw(value="{")
    with pytest.raises(DecodeError) as caught:
        rec.decode()
    assert isinstance(caught.value, ConnectorError)
    assert isinstance(caught.value, InvalidEvent)
    assert str(caught.value) == caught.value.message


def _schema_of(rec_value: Json) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(rec_value["schema"]))


@pytest.mark.parametrize("line", CHANGES)
def test_the_typed_schema_reader_agrees_with_the_generic_one(line: int) -> None:
    schema = _schema_of(record(SCHEMAS_TRUE, line).value_json())
    typed = decode_module._row_types(schema)
    assert typed and typed == decode_module._generic_row_types(schema)
