"""Bad input at scale: valid and hostile records made by mutating the recorded real
Debezium events (tests/fixtures/debezium/schemas_true.jsonl).

Every record carries two headers of its own (the dead-letter topic keeps the original
headers): ``cr-fault-seq`` (its number in the corpus) and ``cr-fault-expect`` (the
dead-letter reason written down here, by hand, for each kind of damage — or ``valid``).
Valid records are clones of real events with a fresh row id, so each leaves one exact
cache entry behind: a fence at its version, or a delete fence.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.conftest import ROOT
from tests.faults.workload import NEIGHBOURHOODS, shards_of

FIXTURE = ROOT / "tests" / "fixtures" / "debezium" / "schemas_true.jsonl"
HEADER_SEQ = "cr-fault-seq"  # the record's number in the corpus
HEADER_EXPECT = "cr-fault-expect"  # the dead-letter reason expected, or "valid"
VALID = "valid"
ANY = "any"  # a randomly corrupted record: dead-lettered for any reason, or processed
ID_BASE = 10**15  # ids of cloned rows: far above any real row's


@dataclass(frozen=True)
class Record:
    seq: int
    kind: str  # what was done to it (the mutation's name, or valid-<op>)
    expect: str  # dead-letter reason, or VALID
    key: bytes | None
    value: bytes | None
    # For valid records: the cache entry it must leave, per shard: (key, version);
    # version None = a delete fence.
    entries: tuple[tuple[str, str, int | None], ...] = ()

    def headers(self) -> list[tuple[str, bytes]]:
        return [(HEADER_SEQ, str(self.seq).encode()), (HEADER_EXPECT, self.expect.encode())]


def recorded() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def _find(records: list[dict[str, Any]], table: str, op: str) -> dict[str, Any]:
    for record in records:
        value = record["value"]
        if (record["topic"].endswith(f".public.{table}") and value
                and json.loads(value)["payload"].get("op") == op):
            return record
    raise LookupError(f"no recorded {table} op {op}")


def _dump(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class Corpus:
    """Builds the corpus: `valid` clones and `poison` mutations, shuffled together."""

    def __init__(self, seed: str, *, max_event_bytes: int) -> None:
        self.rng = random.Random(seed)
        self.max_event_bytes = max_event_bytes
        records = recorded()
        self.bases = {(table, op): _find(records, table, op)
                      for table, op in [("posts", "u"), ("posts", "c"), ("posts", "d"),
                                        ("comments", "c"), ("comments", "u")]}
        self.skips = [r for r in records if r["value"] is None or r["topic"].endswith(
            (".transaction", ".message"))]  # tombstones, transaction markers, messages
        self.next_id = ID_BASE + self.rng.randrange(10**12)
        self.seq = 0

    # ------------------------------------------------------------------ valid

    def clone(self) -> tuple[Any, Any, tuple[tuple[str, str, int | None], ...], str]:
        """A real event of a random kind, for a fresh row: key, value, expected entries."""
        table, op = self.rng.choice(list(self.bases))
        base = self.bases[table, op]
        key, value = json.loads(base["key"]), json.loads(base["value"])
        self.next_id += 1
        row_id = self.next_id
        neighbourhood = self.rng.choice(list(NEIGHBOURHOODS.values()))
        version = self.rng.randrange(2, 10**9)
        key["payload"]["id"] = row_id
        payload = value["payload"]
        for image in ("before", "after"):
            if payload.get(image):
                payload[image]["id"] = row_id
                payload[image]["neighborhood_id"] = neighbourhood
                payload[image]["system_version"] = version - (image == "before")
        prefix = "post" if table == "posts" else "comment"
        if op == "d":
            shards = ("valkey-a", "valkey-b") if table == "posts" else shards_of(neighbourhood)
            entries = tuple((shard, f"{prefix}:{row_id}", None) for shard in shards)
        else:
            entries = tuple((shard, f"{prefix}:{row_id}", version)
                            for shard in shards_of(neighbourhood))
        return key, value, entries, f"valid-{table}-{op}"

    def valid(self) -> Record:
        key, value, entries, kind = self.clone()
        return self._record(kind, VALID, _dump(key), _dump(value), entries)

    def near_limit(self) -> Record:
        """A valid update padded to just under max_event_bytes: applied."""
        key, value, entries, _ = self.clone()
        while value["payload"]["op"] == "d":
            key, value, entries, _ = self.clone()
        raw_key = _dump(key)
        value["payload"]["after"]["title"] = ""
        room = self.max_event_bytes - len(raw_key) - len(_dump(value)) - 16
        value["payload"]["after"]["title"] = "x" * room
        raw = _dump(value)
        assert len(raw) + len(raw_key) <= self.max_event_bytes
        return self._record("near_limit", VALID, raw_key, raw, entries)

    def skip(self) -> Record:
        base = self.rng.choice(self.skips)
        return self._record("valid-skip", VALID, base["key"] and base["key"].encode(),
                            base["value"] and base["value"].encode())

    # ------------------------------------------------------------------ poison

    def poison(self) -> Record:
        name, expect, mutate = self.rng.choice(MUTATIONS)
        key, value, _, _ = self.clone()
        while value["payload"]["op"] == "d":  # a delete ignores most of its image
            key, value, _, _ = self.clone()
        raw_key, raw_value = mutate(self, key, value)
        return self._record(name, expect, raw_key, raw_value)

    def corrupted(self) -> Record:
        """A real event with a few bytes inserted, deleted or flipped, in its value or key:
        whatever it has become, it is dead-lettered or processed, never a crash."""
        key, value, _, _ = self.clone()
        raw_key, raw_value = bytearray(_dump(key)), bytearray(_dump(value))
        target = raw_value if self.rng.random() < 0.8 else raw_key
        for _ in range(self.rng.randint(1, 3)):
            at = self.rng.randrange(len(target))
            roll = self.rng.random()
            if roll < 0.4:
                target[at:at] = self.rng.choice(
                    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\", b'"', b"{", b"]"])
            elif roll < 0.7:
                del target[at:at + self.rng.randint(1, 10)]
            else:
                target[at] = self.rng.randrange(256)
        return self._record("corrupted_bytes", ANY, bytes(raw_key), bytes(raw_value))

    def _record(self, kind: str, expect: str, key: bytes | None, value: bytes | None,
                entries: tuple[tuple[str, str, int | None], ...] = ()) -> Record:
        self.seq += 1
        return Record(self.seq, kind, expect, key, value, entries)

    def build(self, valid: int, poison: int, corrupted: int = 0) -> list[Record]:
        records = [self.valid() for _ in range(valid)]
        records += [self.corrupted() for _ in range(corrupted)]
        records += [self.near_limit() for _ in range(max(1, valid // 500))]
        records += [self.skip() for _ in range(max(1, valid // 50))]
        records += [self.poison() for _ in range(poison)]
        self.rng.shuffle(records)
        return records


Raw = tuple[bytes | None, bytes | None]


def _set(path: str, new: Any) -> Callable[[Corpus, Any, Any], Raw]:
    """A mutation that sets payload.<path> (dots for nesting) to `new`."""
    def mutate(corpus: Corpus, key: Any, value: Any) -> Raw:
        target = value["payload"]
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        target[last] = new
        return _dump(key), _dump(value)
    return mutate


def _drop(name: str) -> Callable[[Corpus, Any, Any], Raw]:
    def mutate(corpus: Corpus, key: Any, value: Any) -> Raw:
        value["payload"].pop(name, None)
        return _dump(key), _dump(value)
    return mutate


def _truncated(corpus: Corpus, key: Any, value: Any) -> Raw:
    raw = _dump(value)
    return _dump(key), raw[:corpus.rng.randrange(1, len(raw) - 1)]


def _truncated_key(corpus: Corpus, key: Any, value: Any) -> Raw:
    raw = _dump(key)
    return raw[:corpus.rng.randrange(1, len(raw) - 1)], _dump(value)


def _key(raw_key: bytes) -> Callable[[Corpus, Any, Any], Raw]:
    def mutate(corpus: Corpus, key: Any, value: Any) -> Raw:
        return raw_key, _dump(value)
    return mutate


def _invalid_utf8(corpus: Corpus, key: Any, value: Any) -> Raw:
    raw = _dump(value)
    at = raw.index(b'"op"')
    return _dump(key), raw[:at + 1] + b"\xff\xfe" + raw[at + 1:]


def _invalid_utf8_in_payload(corpus: Corpus, key: Any, value: Any) -> Raw:
    raw = _dump(value)
    image = b'"after":{'  # a column value: the decoder reads every one
    return _dump(key), raw.replace(image, image + b'"note":"caf\xc3\x28",', 1)


def _garbage(corpus: Corpus, key: Any, value: Any) -> Raw:
    return os.urandom(corpus.rng.randrange(0, 64)), b"\xff" + os.urandom(
        corpus.rng.randrange(1, 4096))


def _deep_value(corpus: Corpus, key: Any, value: Any) -> Raw:
    depth = 100_000
    raw = _dump(value)
    image = b'"after":{'
    return _dump(key), raw.replace(image, image + b'"deep":' + b"[" * depth + b"]" * depth
                                   + b",", 1)


def _deep_key(corpus: Corpus, key: Any, value: Any) -> Raw:
    depth = 100_000
    return b'{"payload":{"id":' + b"[" * depth + b"]" * depth + b"}}", _dump(value)


def _oversized(corpus: Corpus, key: Any, value: Any) -> Raw:
    image = value["payload"]["after"]
    image["title"] = "x" * (corpus.max_event_bytes + corpus.rng.randrange(1, 4096))
    return _dump(key), _dump(value)


def _empty(corpus: Corpus, key: Any, value: Any) -> Raw:
    return None, None


def _missing_image(corpus: Corpus, key: Any, value: Any) -> Raw:
    payload = value["payload"]
    payload["op"] = "c"
    payload["after"] = None
    return _dump(key), _dump(value)


# (name, expected dead-letter reason, mutation): the reasons are written down here from
# the decoder's contract (connectors/debezium/decode.py, SPEC §3), not read back from it.
MUTATIONS: list[tuple[str, str, Callable[[Corpus, Any, Any], Raw]]] = [
    ("truncated_json", "invalid_json", _truncated),
    ("truncated_key", "invalid_key", _truncated_key),
    ("key_not_json", "invalid_key", _key(b"post-42 is not json")),
    ("key_json_array", "invalid_key", _key(b"[1, 2, 3]")),
    ("key_deep_nesting", "invalid_key", _deep_key),
    ("op_wrong_type", "invalid_envelope", _set("op", 5)),
    ("before_wrong_type", "invalid_envelope", _set("before", [1, 2])),
    ("after_wrong_type", "invalid_envelope", _set("after", "a string")),
    ("source_wrong_type", "invalid_envelope", _set("source", "nd")),
    ("source_missing", "invalid_envelope", _drop("source")),
    ("source_without_table", "invalid_envelope", _set("source.table", None)),
    ("image_missing", "invalid_envelope", _missing_image),
    ("op_missing", "invalid_envelope", _drop("op")),
    ("op_unknown", "unknown_op", _set("op", "x")),
    ("op_unknown_word", "unknown_op", _set("op", "create")),
    ("op_empty", "unknown_op", _set("op", "")),
    ("version_string", "invalid_version", _set("after.system_version", "7")),
    ("version_float", "invalid_version", _set("after.system_version", 7.5)),
    ("version_negative", "invalid_version", _set("after.system_version", -3)),
    ("version_2_63", "invalid_version", _set("after.system_version", 2**63)),
    ("version_2_64", "invalid_version", _set("after.system_version", 2**64)),
    ("version_missing", "invalid_version", _set("after.system_version", None)),
    ("shard_key_not_a_number", "invalid_shard_key", _set("after.neighborhood_id", "abc")),
    ("shard_key_outside_ranges", "unroutable", _set("after.neighborhood_id", 5000)),
    ("unknown_table", "unknown_table", _set("source.table", "ghosts")),
    ("invalid_utf8_in_schema", "invalid_json", _invalid_utf8),
    ("invalid_utf8_in_payload", "invalid_json", _invalid_utf8_in_payload),
    ("binary_garbage", "invalid_json", _garbage),
    ("deep_nesting", "invalid_json", _deep_value),
    ("oversized", "oversized", _oversized),
    ("null_key_null_value", "empty_record", _empty),
]
