"""Retention gaps against the real broker: records deleted before the group read them
are counted (`reconciler_unseen_records_total{topic,partition}`) and logged with their
offsets; the rest of the partition is reconciled as usual.

The records are removed with DeleteRecords, which moves the log start offset exactly
as retention does (retention only waits for `log.retention.check.interval.ms`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    InProcessWorker,
    admin,
    post_insert,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
RECORDS = 10  # post inserts on the topic, offsets 0..9
DELETED_BELOW = 6  # DeleteRecords: the log then starts at offset 6


@pytest.fixture
def prefix(uid: str) -> str:
    return f"g{uid}:"


@pytest.fixture
def shard_a(stack: Stack, prefix: str) -> Iterator[valkey.Valkey]:
    client = valkey.Valkey.from_url(stack.valkey["valkey-a"])
    yield client
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def gap(stack: Stack, uid: str, prefix: str, shard_a: valkey.Valkey) -> tuple[str, list[str]]:
    """A topic of ten post inserts at version 2, each post cached at version 1 (stale),
    whose log now starts at offset 6; returns the topic and the ten keys."""
    topic = f"gap{uid}.public.posts"
    client = admin(stack)
    client.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]
                         )[topic].result(timeout=30)
    wait_until(lambda: topic in client.list_topics(timeout=5).topics, 30, topic)
    base = 3_000_000_000 + int(uid, 16) % 10**6 * 100
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    keys = []
    for index in range(RECORDS):
        post_id = base + index
        key, value = post_insert(post_id, 7, version=2)
        producer.produce(topic, key=key, value=value)
        keys.append(f"{prefix}post:{post_id}")
        assert CacheWriter(shard_a).set_if_newer(keys[-1], 1, {"id": post_id}, 3600)
    assert producer.flush(30) == 0
    deleted = client.delete_records([TopicPartition(topic, 0, DELETED_BELOW)])
    for future in deleted.values():
        assert future.result(timeout=30).low_watermark == DELETED_BELOW
    return topic, keys


def commit(stack: Stack, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


@pytest.mark.parametrize(("committed_at", "lost"), [(2, 4), (None, 6)],
                         ids=["committed-below-the-log-start", "new-group"])
def test_records_deleted_before_the_group_read_them_are_counted_and_logged(
        stack: Stack, tmp_path: Path, uid: str, prefix: str, shard_a: valkey.Valkey,
        gap: tuple[str, list[str]], caplog: pytest.LogCaptureFixture,
        committed_at: int | None, lost: int) -> None:
    topic, keys = gap
    group = f"gap-{uid}"
    if committed_at is not None:
        commit(stack, group, topic, committed_at)  # read up to 2, then fell behind
    config = write_config(tmp_path, stack, group=group, topics=[topic], key_prefix=prefix)
    first = committed_at or 0
    with caplog.at_level(logging.ERROR, logger="reconciler.observe.gaps"), \
            InProcessWorker(config) as live:
        live.wait_caught_up(stack, [topic])
        unseen = live.metric("reconciler_unseen_records_total",
                             {"topic": topic, "partition": "0"})
        repaired = live.metric("reconciler_invalidations_total",
                               {"shard": "a", "result": "repaired"})
    assert unseen == lost == DELETED_BELOW - first
    lines = [r.getMessage() for r in caplog.records if "never seen" in r.getMessage()]
    assert lines == [f"{topic}[0]: {lost} record(s) at offsets {first}-{DELETED_BELOW - 1} "
                     "were deleted (retention) before this group read them: never seen, "
                     "their changes were not reconciled. Run `reconciler audit --repair` "
                     f"for the tables of {topic}, and keep the topic's retention longer "
                     "than the worker can fall behind"]
    # What was still there is reconciled; what was deleted never was (the repair is an
    # audit's job).
    assert repaired == RECORDS - DELETED_BELOW
    for index, key in enumerate(keys):
        entry = shard_a.hgetall(key)
        if index >= DELETED_BELOW:
            assert entry == {b"v": b"2"}, (key, entry)
        elif index >= first:
            assert entry.get(b"v") == b"1" and b"d" in entry, (key, entry)


def test_a_group_that_keeps_up_counts_no_gap(stack: Stack, tmp_path: Path, uid: str,
                                             prefix: str, gap: tuple[str, list[str]]) -> None:
    topic, _ = gap
    group = f"gap-{uid}"
    commit(stack, group, topic, DELETED_BELOW)  # read everything that was deleted
    config = write_config(tmp_path, stack, group=group, topics=[topic], key_prefix=prefix)
    with InProcessWorker(config) as live:
        live.wait_caught_up(stack, [topic])
        assert live.metric("reconciler_unseen_records_total",
                           {"topic": topic, "partition": "0"}) == 0
