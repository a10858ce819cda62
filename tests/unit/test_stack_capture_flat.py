"""The flattened capture's matching (`stack.capture.flattened.align`) over the records it
wrote, without a stack: the flattened records, read back per partition as from Kafka,
are matched to the twin's lines again as `lines.json` says; a record missing, or one of
another kind, fails the capture naming the twin line."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from stack.capture.flattened import FILES, FLAT_DIR, TWIN, UPSERT, align
from stack.capture.records import CaptureError, Record, unwrap

PAIRS = json.loads((FLAT_DIR / "lines.json").read_text())


def read(name: str) -> list[Record]:
    out = []
    for text in (FLAT_DIR / name).read_text().splitlines():
        item = json.loads(text)
        out.append(Record(item["topic"], item["partition"], item["offset"], item["timestamp"],
                          item["key"], item["value"], [(k, v) for k, v in item["headers"]]))
    return out


def twin() -> list[Record]:
    records = read(FILES[TWIN])
    for rec in records:
        rec.key_payload, _ = unwrap(rec.key, True)
        rec.payload, _ = unwrap(rec.value, True)
        rec.step = "heartbeat" if rec.topic.startswith("__debezium-heartbeat") else "step"
    return records


def by_partition(records: list[Record]) -> dict[tuple[str, int], list[Record]]:
    found: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for rec in records:
        found[rec.topic, rec.partition].append(rec)
    return dict(found)


@pytest.mark.parametrize("prefix", [p for p in FILES if p != TWIN])
def test_the_recorded_rows_match_their_twin_lines_again(prefix: str) -> None:
    recorded = read(FILES[prefix])
    ordered, lines = align(prefix, twin(), by_partition(recorded))
    assert lines == PAIRS[FILES[prefix]]
    assert [(r.topic, r.partition, r.offset) for r in ordered] == [
        (r.topic, r.partition, r.offset) for r in recorded]


def test_a_missing_tombstone_fails_naming_the_twin_line() -> None:
    recorded = [rec for rec in read(FILES[UPSERT]) if rec.value != "null"]
    with pytest.raises(CaptureError, match="no record for twin line 15"):
        align(UPSERT, twin(), by_partition(recorded))
