"""Key-only deletes against the real stack: a compacted topic whose cleaner removed a
delete before the worker read it, and a dead letter whose key still invalidates.

On a compacted topic (`cleanup.policy=compact`) the log cleaner keeps each key's last
record: a deleted row's delete event goes, its tombstone stays (for
`delete.retention.ms`). A consumer behind the cleaner sees only the tombstone, so the
tombstone alone must delete and fence the row's keys (SPEC §3).

The change records are the real connector's: the test makes the changes in Postgres,
reads what Debezium wrote to `nd.public.posts` and copies those records (key, value,
headers) into a compacted topic of its own named like a Debezium topic
(`<prefix>.public.posts`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import valkey
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    POSTS,
    InProcessWorker,
    Rows,
    admin,
    committed,
    end_offsets,
    post_insert,
    read_topic,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
MAX_VERSION = 2**63 - 1
# The cleaner may only wait for the broker's log.cleaner.backoff.ms (the stack sets 1 s;
# a broker with the default waits 15 s) plus a segment roll.
COMPACTED = {"cleanup.policy": "compact", "segment.ms": "200", "min.cleanable.dirty.ratio":
             "0.001", "min.compaction.lag.ms": "0", "delete.retention.ms": "3600000"}


@pytest.fixture
def prefix(uid: str) -> str:
    return f"t{uid}:"


def create_compacted(stack: Stack, name: str) -> str:
    client = admin(stack)
    client.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                   config=COMPACTED)])[name].result(timeout=30)
    wait_until(lambda: name in client.list_topics(timeout=5).topics, 30, f"topic {name}")
    return name


def debezium_records(stack: Stack, start: dict[tuple[str, int], int],
                     post_id: int, expected: int) -> list[Message]:
    """The records Debezium wrote to nd.public.posts for `post_id` since `start`."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap,
                         "group.id": f"cr-copy-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    found: list[Message] = []
    deadline = time.monotonic() + 60
    try:
        while len(found) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                if message.error() is None and _post_id(message) == post_id:
                    found.append(message)
    finally:
        consumer.close()
    assert len(found) == expected, f"Debezium wrote {len(found)} records for post {post_id}"
    return sorted(found, key=lambda m: m.offset())


def _post_id(message: Message) -> int | None:
    key = json.loads(message.key() or b"null")
    if not isinstance(key, dict):
        return None
    return int((key.get("payload") or key)["id"])


def kinds(records: list[Message]) -> list[str]:
    """c, d … or `tombstone`, per record."""
    out = []
    for message in records:
        if message.value() is None:
            out.append("tombstone")
            continue
        value = json.loads(message.value() or b"{}")
        out.append((value.get("payload") or value)["op"])
    return out


def test_a_tombstone_compaction_left_alone_deletes_and_fences_the_row(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey]) -> None:
    # A post in neighbourhood 7 (shard a), cached by the application, then deleted.
    start = end_offsets(stack, [POSTS])
    db = Rows(stack.postgres_dsn)
    try:
        post_id, version = db.insert_post(7, f"compacted {uid}")
        db.delete_post(post_id)
    finally:
        db.close()
    key = f"{prefix}post:{post_id}"
    assert CacheWriter(shards["a"]).set_if_newer(key, version, {"id": post_id}, 3600)
    records = debezium_records(stack, start, post_id, expected=3)
    assert kinds(records) == ["c", "d", "tombstone"]

    # Copied into a compacted topic, then another key's record a little later rolls the
    # segment; the cleaner then keeps only the tombstone of our key.
    topic = create_compacted(stack, f"cmp{uid}.public.posts")
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for message in records:
        producer.produce(topic, key=message.key(), value=message.value(),
                         headers=message.headers())
    producer.flush(30)
    other_key, other_value = post_insert(10**9 + int(uid, 16) % 10**6, 7)

    def only_the_tombstone_left() -> list[str] | None:
        producer.produce(topic, key=other_key, value=other_value)  # rolls the segment
        producer.flush(30)
        ours = [m for m in read_topic(stack, topic, expected=1, timeout=5)
                if _post_id(m) == post_id]
        return kinds(ours) if kinds(ours) == ["tombstone"] else None

    wait_until(only_the_tombstone_left, 120, "the log cleaner to remove the create and the "
               "delete, keeping the tombstone", interval=1.0)

    # A new group reads the compacted topic: all it sees of the row is the tombstone.
    config = write_config(tmp_path, stack, group=f"cmp-{uid}", topics=[topic],
                          key_prefix=prefix)
    with InProcessWorker(config) as live:
        live.wait_caught_up(stack, [topic])
        entries = {name: client.hgetall(key) for name, client in shards.items()}
        tombstones = live.metric("reconciler_events_total",
                                 {"table": "public.posts", "op": "tombstone"})
        unseen = live.metric("reconciler_unseen_records_total",
                             {"topic": topic, "partition": "0"})
    fence = {b"v": str(MAX_VERSION).encode()}
    assert entries == {"a": fence, "b": fence}, entries  # deleted and fenced on every shard
    assert tombstones == 1
    assert unseen == 0  # offsets removed by compaction are not a retention gap
    # A slow reader that loaded the row before the delete cannot put it back.
    assert not CacheWriter(shards["a"]).set_if_newer(key, version, {"id": post_id}, 3600)


def test_a_dead_letter_whose_key_decodes_still_deletes_and_fences_the_row(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey]) -> None:
    """A record dead-lettered for its value (here: not JSON) whose key decodes and names
    a configured table: the keys that key builds are deleted and fenced on every shard
    before its offset is stored, and the dead letter is on the dead-letter topic."""
    topic = f"dlk{uid}.public.posts"
    client = admin(stack)
    client.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]
                         )[topic].result(timeout=30)
    post_id = 2_000_000_000 + int(uid, 16) % 10**6
    key_bytes, _ = post_insert(post_id, 7, version=5)
    key = f"{prefix}post:{post_id}"
    assert CacheWriter(shards["a"]).set_if_newer(key, 5, {"id": post_id}, 3600)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topic, key=key_bytes, value=b'{"payload": {"op": "u", "after": ')
    producer.flush(30)
    group = f"dlk-{uid}"
    config = write_config(tmp_path, stack, group=group, topics=[topic], key_prefix=prefix)
    with InProcessWorker(config) as live:
        wait_until(lambda: committed(stack, group, [topic]).get((topic, 0)) == 1, 60,
                   "the dead letter's offset to be committed")
        dead = live.metric("reconciler_dead_letters_total", {"reason": "invalid_json"})
        repaired = live.metric("reconciler_invalidations_total",
                               {"shard": "a", "result": "repaired"})
        unresolved = live.metric("reconciler_unresolved_keys_total", {
            "table": "public.posts", "template": f"{prefix}feed:{{neighborhood_id}}",
            "cause": "key_only"})
    fence = {b"v": str(MAX_VERSION).encode()}
    assert {name: c.hgetall(key) for name, c in shards.items()} == {"a": fence, "b": fence}
    assert (dead, repaired, unresolved) == (1, 1, 1)
    letters = read_topic(stack, f"{group}.dlq", expected=1)
    assert [m.key() for m in letters] == [key_bytes]
