"""The Avro decoder on the recorded events: every line decodes to the Event its JSON
twin decodes to (rows, keys, logical types), projected or whole; and each way a
record can be wrong is a dead letter with its reason, never an exception of another
kind."""

from __future__ import annotations

import contextlib
import struct

import pytest

from connectors.debezium import Decoder, InvalidEvent, model
from connectors.debezium.avro import AvroDecoder, _java_float
from connectors.debezium.registry import Registry, UnknownSchema, parse
from connectors.errors import RegistryUnavailable
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded_avro import (
    AVRO,
    TWIN,
    as_twin,
    avro_decoder,
    fetch_from,
    line,
    lines,
    schemas,
)

NUMBERS = range(1, r.LINE_COUNT + 1)
COLUMNS = ("id", "neighborhood_id", "system_version", "post_id", "user_id", "karma",
           "birthday", "updated_at", "score", "title")


def test_the_avro_and_twin_files_record_the_same_workload_steps() -> None:
    assert len(lines(AVRO)) == len(lines(TWIN)) == r.LINE_COUNT
    for avro, twin, json_line in zip(lines(AVRO), lines(TWIN), r.records(r.SCHEMAS_TRUE),
                                     strict=True):
        assert avro.topic.replace("capavro", "x") == twin.topic.replace("captwin", "x")
        assert twin.topic.replace("captwin", "x") == json_line.topic.replace("capjson", "x")
        assert (avro.value is None) == (twin.value is None) == (json_line.value is None)


@pytest.mark.parametrize("number", NUMBERS)
def test_every_avro_line_decodes_to_its_twins_event(number: int) -> None:
    avro = line(AVRO, number).decode(avro_decoder())
    twin = line(TWIN, number).decode(Decoder())
    assert as_twin(avro, twin) == twin


@pytest.mark.parametrize("number", NUMBERS)
def test_projected_rows_are_the_twins_projected_rows(number: int) -> None:
    avro = line(AVRO, number).decode(avro_decoder(COLUMNS))
    twin = line(TWIN, number).decode(Decoder(columns=COLUMNS))
    assert as_twin(avro, twin) == twin


@pytest.mark.parametrize("number", [*r.TOMBSTONES, r.POSTS_DELETE, r.PROFILES_INSERT])
def test_a_key_alone_names_its_table_and_types_as_in_json(number: int) -> None:
    avro, twin = line(AVRO, number), line(TWIN, number)
    assert avro.key is not None and twin.key is not None
    found = avro_decoder().key_event(avro.topic, avro.partition, avro.offset, avro.key)
    expected = Decoder().key_event(twin.topic, twin.partition, twin.offset, twin.key)
    assert as_twin(found, expected) == expected
    assert found.table is not None


def test_logical_types_arrive_as_the_json_converter_sends_them() -> None:
    event = line(AVRO, r.PROFILES_INSERT).decode(avro_decoder())
    assert event.after is not None and event.column_types is not None
    assert event.after["karma"] == "AUU="  # 3.25: unscaled 325, base64 as in JSON
    assert event.column_types["karma"] == ("org.apache.kafka.connect.data.Decimal", 2)
    assert event.column_types["updated_at"] == ("io.debezium.time.MicroTimestamp", 0)
    assert event.column_types["user_id"] == ("io.debezium.data.Uuid", 0)
    assert isinstance(event.after["updated_at"], int)


def test_json_topics_still_go_to_the_json_decoder() -> None:
    twin = line(TWIN, r.POSTS_INSERT)
    decoder = AvroDecoder(Registry(fetch_from({})), avro_topics=lambda t: t.startswith("capavro"))
    assert twin.decode(decoder) == twin.decode(Decoder())


# --------------------------------------------------------------------------- dead letters


def reason(value: bytes, key: bytes | None = None, decoder: AvroDecoder | None = None) -> str:
    insert = line(AVRO, r.POSTS_INSERT)
    with pytest.raises(InvalidEvent) as caught:
        (decoder or avro_decoder()).decode(insert.topic, 0, 0, key or insert.key, value)
    assert caught.value.message
    return caught.value.reason


def insert_value() -> bytes:
    value = line(AVRO, r.POSTS_INSERT).value
    assert value is not None
    return value


def test_a_wrong_magic_byte_is_not_avro() -> None:
    assert reason(b"\x01" + insert_value()[1:]) == "not_avro"
    assert reason(b'{"schema": {}, "payload": {}}') == "not_avro"
    assert reason(b"\x00\x00\x00") == "not_avro"


def test_an_unknown_schema_id_is_a_dead_letter_asked_once_a_minute() -> None:
    asked: list[int] = []

    def fetch(schema_id: int) -> str:
        asked.append(schema_id)
        raise UnknownSchema(schema_id, "404")

    decoder = avro_decoder(fetch=fetch)
    body = b"\x00" + struct.pack(">I", 999_999) + insert_value()[5:]
    assert reason(body, decoder=decoder) == "unknown_schema"
    assert reason(body, decoder=decoder) == "unknown_schema"
    assert asked == [999_999]


def test_a_body_that_does_not_match_its_schema_is_a_mismatch() -> None:
    value = insert_value()
    assert reason(value[:40]) == "avro_mismatch"  # truncated
    assert reason(value + b"\x00\x02") == "avro_mismatch"  # bytes left over
    assert reason(value[:5] + b"\xff" * 30) == "avro_mismatch"  # a union index past the end


def test_the_key_schema_for_a_value_is_no_envelope() -> None:
    insert = line(AVRO, r.POSTS_INSERT)
    assert insert.key is not None
    assert reason(insert.key) in ("invalid_envelope", "avro_mismatch")


def test_a_key_that_is_not_avro_is_an_invalid_key() -> None:
    assert reason(insert_value(), key=b'{"id": 1}') == "invalid_key"


def test_a_registry_that_does_not_answer_is_never_a_dead_letter() -> None:
    def fetch(schema_id: int) -> str:
        raise RegistryUnavailable("connection refused")

    with pytest.raises(RegistryUnavailable):
        avro_decoder(fetch=fetch).decode("capavro.public.posts", 0, 0, None, insert_value())


def test_a_registered_schema_that_is_not_avro_is_invalid_schema() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse(7, '{"type": "record", "name": "x", "fields": [{"name": "a", "type": "nope"}]}')
    assert caught.value.reason == "invalid_schema"


def test_schemas_are_fetched_once_per_id() -> None:
    asked: list[int] = []
    known = schemas()

    def fetch(schema_id: int) -> str:
        asked.append(schema_id)
        return known[schema_id]

    decoder = avro_decoder(fetch=fetch)
    for item in lines(AVRO):
        with contextlib.suppress(InvalidEvent):
            item.decode(decoder)
    assert sorted(asked) == sorted(set(asked))
    assert set(asked) <= set(known)


def test_events_of_every_kind_come_out() -> None:
    kinds = {line(AVRO, n).decode(avro_decoder()).kind for n in NUMBERS}
    assert kinds == {model.CHANGE, model.TOMBSTONE, model.TRUNCATE, model.HEARTBEAT,
                     model.TRANSACTION, model.MESSAGE}


@pytest.mark.parametrize(("value", "text"), [(0.1, "0.1"), (3.25, "3.25"), (1e-7, "1e-07"),
                                             (16777216.0, "16777216")])
def test_a_float32_reads_as_the_decimal_java_prints(value: float, text: str) -> None:
    as_float32 = struct.unpack("<f", struct.pack("<f", value))[0]
    assert _java_float(as_float32) == float(text)
