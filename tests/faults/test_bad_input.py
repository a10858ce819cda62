"""Bad input at scale: thousands of malformed and hostile records, made by mutating
the recorded real events, interleaved with valid ones, produced to a topic.

Every poison record is dead-lettered with the reason written down for its kind of
damage (expected vs found, per reason and per record: the dead letter keeps the
record's own headers), none stops the worker, and every valid record around them is
applied: the application cached each valid record's key with data older than the
record before it was produced, and the record must have replaced it — the entry is its
exact fence or, once fence_ttl has passed, nothing; stale data left is a record not
applied.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from connectors.valkey.writer import encode_payload
from reconciler.pipeline.deadletter import HEADER_OFFSET, HEADER_REASON
from tests.conftest import Stack
from tests.e2e.support import create_topic, end_offsets
from tests.faults.conftest import REPEAT
from tests.faults.corpus import ANY, HEADER_EXPECT, HEADER_SEQ, VALID, Corpus, Record
from tests.faults.oracle import Figures, Oracle, read_dead_letters
from tests.faults.workers import Worker, dead_letter_topic, fault_config
from tests.faults.workload import DATA_TTL, MAX_VERSION

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
MAX_EVENT_BYTES = 256 * 1024  # max_event_bytes of this test: near-limit and oversized records
VALID_PER_ROUND = 2000
POISON_PER_ROUND = 2000
CORRUPTED_PER_ROUND = 500  # bytes flipped at random: any reason, or processed


def produce(stack: Stack, topic: str, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap,
                         "message.max.bytes": 4 * 1024 * 1024, "linger.ms": 20})
    for record in records:
        while True:
            try:
                producer.produce(topic, key=record.key, value=record.value,
                                 headers=record.headers())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0


def cache_older(oracle: Oracle, records: list[Record]) -> None:
    """The application caches each valid record's key with data older than the record
    (a delete's key with data at version 1), in one pipeline per shard."""
    pipes = {name: client.pipeline(transaction=False)
             for name, client in oracle.workload.shards.items()}
    for record in records:
        for shard, key, version in record.entries:
            older = 1 if version is None else max(0, version - 1)
            pipes[shard].hset(key, mapping={"v": str(older), "d": encode_payload({"v": older})})
            pipes[shard].expire(key, DATA_TTL)
    for pipe in pipes.values():
        pipe.execute()


def test_thousands_of_hostile_records_are_dead_lettered_and_the_valid_applied(
        stack: Stack, tmp_path: Path, uid: str, oracle: Oracle) -> None:
    topic = create_topic(stack, f"fbad-{uid}", partitions=3)
    group = f"fbad-{uid}"
    config = fault_config(tmp_path, stack, group, fence_ttl=oracle.workload.fence_ttl,
                          batch_size=500, topics=[topic], overrides={
                              "unknown_tables": "error", "max_event_bytes": MAX_EVENT_BYTES})
    corpus = Corpus(uid, max_event_bytes=MAX_EVENT_BYTES)
    records: list[Record] = []
    worker = Worker(config, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        for _round in range(REPEAT):
            batch = corpus.build(VALID_PER_ROUND, POISON_PER_ROUND, CORRUPTED_PER_ROUND)
            records += batch
            cache_older(oracle, batch)
            produce(stack, topic, batch)
        oracle.wait_committed(group, end_offsets(stack, [topic]), timeout=300)
        assert worker.alive(), worker.log()[-3000:]
        # Every record produced is counted once at least: applied, skipped or dead-lettered.
        oracle.counted(worker.processed, dict.fromkeys(end_offsets(stack, [topic]), 0))
        samples = worker.metrics()
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]

    by_seq = {record.seq: record for record in records}
    poison = [r for r in records if r.expect not in (VALID, ANY)]
    expected = Counter(r.expect for r in poison)
    every_letter = read_dead_letters(stack, dead_letter_topic(config))
    letters = [letter for letter in every_letter if letter[HEADER_EXPECT] != ANY]
    corrupted = Counter(letter[HEADER_REASON] for letter in every_letter
                        if letter[HEADER_EXPECT] == ANY)
    found = Counter(letter[HEADER_REASON] for letter in letters)
    wrong = [f"record {letter[HEADER_SEQ]} ({by_seq[int(letter[HEADER_SEQ])].kind}) at offset "
             f"{letter[HEADER_OFFSET]}: dead-lettered as {letter[HEADER_REASON]}, expected "
             f"{letter[HEADER_EXPECT]}"
             for letter in letters if letter[HEADER_REASON] != letter[HEADER_EXPECT]]
    missing = {r.seq for r in poison} - {int(letter[HEADER_SEQ]) for letter in letters}
    metric = Counter({reason: n for (name, labels), n in samples.items()
                      if name == "reconciler_dead_letters_total" for _, reason in labels})

    # The valid records around them were applied: each replaced the older data cached
    # under its key with its exact fence, which may have expired since.
    stale = []
    shards = oracle.workload.shards
    checked = 0
    for record in records:
        for shard, key, version in record.entries:
            checked += 1
            entry = shards[shard].hgetall(key)
            want = {b"v": str(MAX_VERSION if version is None else version).encode()}
            if entry and entry != want:
                stale.append(f"{shard} {key} ({record.kind}): holds {entry!r}, expected "
                             f"{want!r} or nothing")

    figures: Figures = oracle.figures
    figures.changes = sum(1 for r in records if r.expect == VALID)
    figures.records = len(records)
    figures.entries_checked = checked
    figures.stale = len(stale)
    figures.dead_letters_expected = len(poison)
    figures.dead_letters_found = len(letters)
    figures.faults = len(poison)
    figures.seconds = round(time.monotonic() - oracle.started, 1)
    figures.extra.update(expected_by_reason=dict(expected), found_by_reason=dict(found),
                         kinds=dict(Counter(r.kind for r in poison)),
                         corrupted=sum(r.expect == ANY for r in records),
                         corrupted_dead_lettered=dict(corrupted))
    assert wrong == [], f"{len(wrong)} wrong reasons, e.g.:\n" + "\n".join(wrong[:20])
    assert not missing, f"{len(missing)} poison records not dead-lettered, e.g. " + ", ".join(
        f"{by_seq[s].kind}" for s in sorted(missing)[:20])
    assert found == expected
    assert len(letters) == len(poison)
    assert metric == expected + corrupted
    assert stale == [], f"{len(stale)} valid records not applied, e.g.:\n" + "\n".join(stale[:20])
