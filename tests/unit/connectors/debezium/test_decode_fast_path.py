"""The decoder's fast path (only the payload parsed once a topic's schema prefix is
known) gives exactly what the full decode gives, and falls back to it for anything
it does not recognise — so validation and error messages are the same either way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.debezium import Decoder, InvalidEvent
from tests.unit.connectors.debezium.recorded import FIXTURES, SCHEMAS_TRUE

LINES = [json.loads(line) for line in (FIXTURES / SCHEMAS_TRUE).read_text().splitlines()]


def raw(record: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    key, value = record["key"], record["value"]
    return (None if key is None else key.encode()), (None if value is None else value.encode())


def decode(decoder: Decoder, record: dict[str, Any], value: bytes | None = None) -> Any:
    key, original = raw(record)
    return decoder.decode(record["topic"], record["partition"], record["offset"], key,
                          original if value is None else value)


def test_every_recorded_event_decodes_the_same_warm_or_cold() -> None:
    warm = Decoder()
    for record in LINES:  # twice: the second pass takes the fast path wherever it can
        decode(warm, record)
    assert warm._prefixes, "the recording must teach the decoder some schema prefixes"
    for record in LINES:
        assert decode(warm, record) == decode(Decoder(), record), record["offset"]


@pytest.mark.parametrize("mutation", ["truncated", "op as int", "unknown op", "no source"])
def test_a_bad_payload_behind_a_known_prefix_fails_as_the_full_decode_does(
        mutation: str) -> None:
    record = next(r for r in LINES if r["topic"].endswith(".posts") and r["value"]
                  and '"op":"u"' in r["value"])
    value = record["value"]
    bad = {
        "truncated": value[: len(value) - 40],
        "op as int": value.replace('"op":"u"', '"op":7'),
        "unknown op": value.replace('"op":"u"', '"op":"x"'),
        "no source": value.replace('"source":{', '"sauce":{'),
    }[mutation].encode()
    warm = Decoder()
    decode(warm, record)
    assert record["topic"] in warm._prefixes
    with pytest.raises(InvalidEvent) as fast:
        decode(warm, record, bad)
    with pytest.raises(InvalidEvent) as full:
        decode(Decoder(), record, bad)
    assert (fast.value.reason, fast.value.message) == (full.value.reason, full.value.message)


def test_a_changed_schema_takes_the_full_decode_and_its_new_types() -> None:
    record = next(r for r in LINES if r["topic"].endswith(".profiles") and r["value"]
                  and '"op":"c"' in r["value"])
    warm = Decoder()
    first = decode(warm, record)
    assert first.column_types["birthday"][0] == "io.debezium.time.Date"
    changed = record["value"].replace('"io.debezium.time.Date"',
                                      '"org.apache.kafka.connect.data.Date"')
    event = decode(warm, record, changed.encode())
    assert event.column_types["birthday"][0] == "org.apache.kafka.connect.data.Date"
    assert event == decode(Decoder(), record, changed.encode())
