"""The decoder with `columns` (what the worker runs): row images keep only the columns
the plans read, and nothing else changes — the same plans for every recorded event, the
same rejections with the same messages, invalid UTF-8 in a skipped column included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.debezium import Decoder, InvalidEvent
from reconciler.pipeline.batch import DeadLetter, plan_record
from tests.unit.connectors.debezium.recorded import FILES, FIXTURES, SCHEMAS_FALSE, SCHEMAS_TRUE
from tests.unit.reconciler.planning import LOCAL_PLANNER

COLUMNS = LOCAL_PLANNER.columns
RECORDS = {file: [json.loads(line) for line in (FIXTURES / file).read_text().splitlines()]
           for file in FILES}


def raw(record: dict[str, Any], value: str | None = None) -> tuple[bytes | None, bytes | None]:
    key = record["key"]
    value = record["value"] if value is None else value
    return (None if key is None else key.encode()), (None if value is None else value.encode())


def planned(decoder: Decoder, record: dict[str, Any], value: bytes | None = None) -> Any:
    key, original = raw(record)
    result = plan_record(decoder, LOCAL_PLANNER, 1 << 24, record["topic"], record["partition"],
                         record["offset"], key, original if value is None else value)
    if isinstance(result, DeadLetter):
        return result
    return (result.actions, result.unresolved, result.skip)


def a_posts_update(file: str) -> dict[str, Any]:
    return next(r for r in RECORDS[file] if r["topic"].endswith(".posts") and r["value"]
                and '"op":"u"' in r["value"])


def test_the_columns_are_those_of_the_keys_versions_and_templates() -> None:
    assert {"id", "neighborhood_id", "system_version", "post_id"} <= COLUMNS
    assert "body" not in COLUMNS and "title" not in COLUMNS


@pytest.mark.parametrize("file", FILES)
def test_every_recorded_event_plans_the_same_with_and_without_projection(file: str) -> None:
    projected, full = Decoder(columns=COLUMNS), Decoder()
    for _ in range(2):  # the second pass takes the schema-prefix fast path
        for record in RECORDS[file]:
            assert planned(projected, record) == planned(full, record), record["offset"]


@pytest.mark.parametrize("file", FILES)
def test_row_images_hold_only_the_columns_read(file: str) -> None:
    record = a_posts_update(file)
    decoder = Decoder(columns=COLUMNS)
    for _ in range(2):
        event = decoder.decode(record["topic"], 0, 0, *raw(record))
        assert event.after is not None and set(event.after) <= COLUMNS
        assert event.after["system_version"] == Decoder().decode(
            record["topic"], 0, 0, *raw(record)).after["system_version"]


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("warm", [False, True], ids=["full-decode", "fast-path"])
@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"],
                         ids=["invalid-bytes", "truncated-sequence", "surrogate"])
def test_invalid_utf8_in_a_skipped_column_is_rejected_as_without_projection(
        file: str, warm: bool, bad: bytes) -> None:
    record = a_posts_update(file)
    value = record["value"].encode()
    at = value.index(b'"title":"') + len(b'"title":"')
    broken = value[:at] + bad + value[at:]
    projected, full = Decoder(columns=COLUMNS), Decoder()
    if warm:
        for decoder in (projected, full):
            decoder.decode(record["topic"], 0, 0, *raw(record))
    with pytest.raises(InvalidEvent) as caught:
        projected.decode(record["topic"], 0, 0, raw(record)[0], broken)
    with pytest.raises(InvalidEvent) as expected:
        full.decode(record["topic"], 0, 0, raw(record)[0], broken)
    assert caught.value.reason == "invalid_json"
    assert (caught.value.reason, caught.value.message) == (expected.value.reason,
                                                          expected.value.message)


@pytest.mark.parametrize("file", [SCHEMAS_TRUE, SCHEMAS_FALSE])
def test_non_ascii_text_in_a_skipped_column_is_fine(file: str) -> None:
    record = a_posts_update(file)
    text = record["value"].replace('"title":"', '"title":"Grüße aus Köln — 東京 ', 1)
    decoder = Decoder(columns=COLUMNS)
    for _ in range(2):
        assert planned(decoder, record, text.encode()) == planned(Decoder(), record,
                                                                  text.encode())


def test_a_skipped_column_nested_too_deeply_is_still_rejected() -> None:
    record = a_posts_update(SCHEMAS_FALSE)
    deep = record["value"].replace('"title":', '"title":' + "[" * 100_000 + "]" * 100_000
                                   + ',"was_title":', 1)
    with pytest.raises(InvalidEvent) as caught:
        Decoder(columns=COLUMNS).decode(record["topic"], 0, 0, raw(record)[0], deep.encode())
    assert caught.value.reason == "invalid_json"


@pytest.mark.parametrize(("columns", "kept"), [
    ({"user id", "class"}, {"user id": 1, "class": 2}),
    # msgspec matches no TypedDict field with a non-ASCII name: the row stays whole
    ({"user id", "naïve-column"}, {"user id": 1, "naïve-column": "x", "class": 2, "other": 3}),
], ids=["not-identifiers", "not-ascii"])
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "utf8"])
def test_column_names_that_are_not_identifiers_are_kept(
        columns: set[str], kept: dict[str, Any], ensure_ascii: bool) -> None:
    decoder = Decoder(columns=columns)
    event = decoder.decode("p.public.t", 0, 0, None, json.dumps({
        "op": "c", "source": {"schema": "public", "table": "t"},
        "after": {"user id": 1, "naïve-column": "x", "class": 2, "other": 3}},
        ensure_ascii=ensure_ascii).encode())
    assert event.after == kept
