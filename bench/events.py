"""The benchmark workload and the Debezium records it is written as.

`Workload` is a seeded sequence of row changes to `public.posts`: updates, inserts and
deletes (each delete followed by its tombstone) over a key space of `keys` rows spread
over neighbourhoods 1..1000, so over both shards and the moving range. It can be
replayed exactly (to pre-populate the cache and predict the results) without keeping
the records in memory.

`Envelope` writes a change as the local Debezium connector does: the posts update and
delete captured in `tests/fixtures/debezium/schemas_true.jsonl` are the templates —
the same schema block, source fields, transaction block, headers and REPLICA IDENTITY
DEFAULT delete image — with the id, neighbourhood, version, times, LSN and text
varied. `schemas=False` writes the bare payload (the JSON converter with
`schemas.enable=false`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from bench.env import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "debezium" / "schemas_true.jsonl"  # the templates
CAPTURED_PREFIX = "capjson"  # the capture's topic prefix, replaced by the stack's
TOPIC_PREFIX = "nd"  # the local connector's topic.prefix (source.name, schema names)
UPDATE, INSERT, DELETE, TOMBSTONE = "u", "c", "d", "tombstone"  # change kinds
WORDS = ("cache", "street", "garden", "market", "neighbour", "school", "lost", "cat",
         "bicycle", "party", "noise", "parking", "recommend", "plumber", "free", "sofa",
         "tonight", "library", "weekend", "rain", "found", "keys", "bakery", "event")
TEXT_POOL_CHARS = 1 << 16  # random text sliced into titles and bodies (at least)


@dataclass(frozen=True, slots=True)
class Change:
    """One record of the workload."""

    op: str  # UPDATE, INSERT, DELETE or TOMBSTONE
    id: int
    neighborhood_id: int  # the row's real neighbourhood (not in a DEFAULT delete image)
    version: int  # system_version after the change (the last one, for a delete)


@dataclass(frozen=True, slots=True)
class Workload:
    """`records` Kafka records of changes to `keys` existing rows (ids 1..keys)."""

    records: int
    keys: int = 100_000
    seed: int = 1
    updates: float = 0.80  # share of changes that update a random live row
    inserts: float = 0.10  # share that insert a new row; the rest delete one
    neighborhoods: int = 1000

    def initial(self) -> tuple[list[int], list[int]]:
        """(neighbourhood, version) of rows 0..keys before the first change (index = id)."""
        rng = random.Random(f"{self.seed}-rows")
        hoods = [0] + [rng.randint(1, self.neighborhoods) for _ in range(self.keys)]
        versions = [0] + [rng.randint(1, 9) for _ in range(self.keys)]
        return hoods, versions

    def changes(self) -> Iterator[Change]:
        hoods, versions = self.initial()
        live = list(range(1, self.keys + 1))
        slot = list(range(-1, self.keys))  # id -> index in `live` (swap-remove)
        rng = random.Random(f"{self.seed}-changes")
        emitted = 0
        while emitted < self.records:
            draw = rng.random()
            if live and (draw < self.updates or (
                    draw >= self.updates + self.inserts and emitted + 2 > self.records)):
                row = live[rng.randrange(len(live))]
                versions[row] += 1
                yield Change(UPDATE, row, hoods[row], versions[row])
                emitted += 1
            elif draw < self.updates + self.inserts or not live:
                row = len(hoods)
                hoods.append(rng.randint(1, self.neighborhoods))
                versions.append(1)
                slot.append(len(live))
                live.append(row)
                yield Change(INSERT, row, hoods[row], 1)
                emitted += 1
            else:
                index = rng.randrange(len(live))
                row, last = live[index], live[-1]
                live[index], slot[last] = last, index
                live.pop()
                yield Change(DELETE, row, hoods[row], versions[row])
                yield Change(TOMBSTONE, row, hoods[row], versions[row])
                emitted += 2

    def last_versions(self) -> dict[int, int]:
        """id -> the last version the workload gives each row (deleted rows included)."""
        last: dict[int, int] = {}
        for change in self.changes():
            last[change.id] = change.version
        return last


class Envelope:
    """Encodes changes as the local Debezium connector's records."""

    def __init__(self, *, schemas: bool = True, body_chars: tuple[int, int] = (400, 1600),
                 seed: int = 1) -> None:
        update, delete = _templates()
        self.schemas = schemas
        self.headers: list[tuple[str, str | bytes | None]] = [
            (name, (value or "").replace(CAPTURED_PREFIX, TOPIC_PREFIX).encode())
            for name, value in update["headers"]]
        key, value = json.loads(update["key"]), json.loads(update["value"])
        self._key_schema = _schema_bytes(key["schema"])
        self._value_schema = _schema_bytes(value["schema"])
        payload = value["payload"]
        self._row = dict(payload["after"])
        self._source = {**payload["source"], "name": TOPIC_PREFIX}
        self._delete_image = json.loads(delete["value"])["payload"]["before"]
        self._body_chars = body_chars
        self._rng = random.Random(f"{seed}-text")
        pool = max(TEXT_POOL_CHARS, 2 * body_chars[1])  # every body a slice of it
        self._text = " ".join(self._rng.choice(WORDS) for _ in range(pool // 6))
        self._tx = 1000
        self._lsn = 30_000_000

    def key(self, row_id: int) -> bytes:
        payload = b'{"id":%d}' % row_id
        if not self.schemas:
            return payload
        return b'{"schema":%s,"payload":%s}' % (self._key_schema, payload)

    def value(self, change: Change, ts_ms: int | None = None) -> bytes | None:
        """The record value (None for a tombstone); `ts_ms` is source.ts_ms (now)."""
        if change.op == TOMBSTONE:
            return None
        ts_ms = int(time.time() * 1000) if ts_ms is None else ts_ms
        self._tx += 1
        self._lsn += 368
        source = {**self._source, "ts_ms": ts_ms, "sequence": f'["{self._lsn - 168}",'
                  f'"{self._lsn}"]', "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000,
                  "txId": self._tx, "lsn": self._lsn}
        if change.op == DELETE:
            before: dict[str, Any] | None = {**self._delete_image, "id": change.id}
            after: dict[str, Any] | None = None
        else:
            before, after = None, self._after(change)
        sent = ts_ms + 5  # Debezium's own ts_ms: when the connector handled the change
        payload = msgspec.json.encode({
            "before": before, "after": after, "source": source,
            "transaction": {"id": f"{self._tx}:{self._lsn}", "total_order": 1,
                            "data_collection_order": 1},
            "op": change.op, "ts_ms": sent, "ts_us": sent * 1000, "ts_ns": sent * 1_000_000})
        if not self.schemas:
            return payload
        return b'{"schema":%s,"payload":%s}' % (self._value_schema, payload)

    def _after(self, change: Change) -> dict[str, Any]:
        low, high = self._body_chars
        start = self._rng.randrange(len(self._text) - high)
        body = self._text[start:start + self._rng.randint(low, high)]
        title = self._text[start + 7:start + 7 + self._rng.randint(12, 60)]
        return {**self._row, "id": change.id, "neighborhood_id": change.neighborhood_id,
                "author_id": change.id % 9973, "title": title, "body": body,
                "system_version": change.version}


def source_ts_ms(value: bytes | None) -> int:
    """source.ts_ms of a record `Envelope.value` wrote: the commit time the worker's
    end-to-end delay starts from."""
    event = msgspec.json.decode(value or b"null")
    payload = event["payload"] if "schema" in event and "payload" in event else event
    return int(payload["source"]["ts_ms"])


def _templates() -> tuple[dict[str, Any], dict[str, Any]]:
    """The captured posts update and delete records."""
    update = delete = None
    for line in FIXTURE.read_text().splitlines():
        record = json.loads(line)
        if not record["topic"].endswith(".public.posts") or record["value"] is None:
            continue
        op = json.loads(record["value"])["payload"]["op"]
        if op == "u" and update is None:
            update = record
        elif op == "d" and delete is None:
            delete = record
    if update is None or delete is None:
        raise SystemExit(f"{FIXTURE}: no posts update and delete to use as templates "
                         "(regenerate it with `python -m stack.capture`)")
    return update, delete


def _schema_bytes(schema: Any) -> bytes:
    text = json.dumps(schema, separators=(",", ":"))
    return text.replace(f'"{CAPTURED_PREFIX}.', f'"{TOPIC_PREFIX}.').encode()
