"""A dead letter cannot crash-loop the worker (issue 16): one larger than the producer's
`message.max.bytes`, or than the dead-letter topic's `max.message.bytes`, is stored
truncated, with its reason and original coordinates, and the worker moves on.

Before, the first made `produce()` raise KafkaException (only BufferError was caught)
and the second came back as a delivery error that stopped the worker (FatalError)
without storing the offset: every restart died on the same record. Real Kafka, a
source topic and a dead-letter topic of the test's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from tests.conftest import Stack
from tests.e2e.support import (
    InProcessWorker,
    admin,
    committed,
    create_topic,
    end_offsets,
    post_insert,
    read_topic,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPIC_LIMIT = 64 * 1024  # the dead-letter topic's max.message.bytes in the first test


def produce(stack: Stack, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap,
                         "message.max.bytes": 4 * 1024 * 1024})
    for key, value in records:
        producer.produce(topic, key=key, value=value,
                         headers=[("origin", b"test")])
    assert producer.flush(30) == 0


def padded(post_id: int, body_chars: int, op: str = "c") -> tuple[bytes, bytes]:
    """The recorded insert of a post, its body grown to `body_chars` and its op set."""
    key, value = post_insert(post_id, 7)
    event = json.loads(value)
    event["payload"]["after"]["body"] = "b" * body_chars
    event["payload"]["op"] = op
    return key, json.dumps(event).encode()


def run_until_past(stack: Stack, config: Path, topic: str,
                   timeout: float = 60.0) -> InProcessWorker:
    """Run the worker until its group's committed offsets reach the topic's end; fail
    if it stops (or dies) first."""
    ends = end_offsets(stack, [topic])
    with InProcessWorker(config) as running:
        def done() -> bool:
            assert running._thread.is_alive(), (
                f"the worker stopped on the dead letter (exit code {running.code}; a "
                "restart would stop on it again: its offset is not committed)")
            return committed(stack, running.worker.group_id, [topic]) == ends

        wait_until(done, timeout, "the worker to commit past the dead letter")
    return running


def header_map(letter: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in letter.headers() or []}


def test_a_dead_letter_over_the_topic_limit_is_stored_truncated(
        stack: Stack, tmp_path: Path, uid: str) -> None:
    topic = create_topic(stack, f"dlq-limit-{uid}", partitions=1)
    group = f"dlq-limit-{uid}"
    client = admin(stack)
    client.create_topics([NewTopic(f"{group}.dlq", num_partitions=1, replication_factor=1,
                                   config={"max.message.bytes": str(TOPIC_LIMIT)})]
                         )[f"{group}.dlq"].result(timeout=30)
    poison = padded(2, 300_000, op="x")  # unknown op: dead-lettered whole, 300 KB
    produce(stack, topic, [post_insert(1, 7), poison, post_insert(3, 7)])
    config = write_config(tmp_path, stack, group=group, topics=[topic])

    running = run_until_past(stack, config, topic)
    assert running.metric("reconciler_dead_letters_total", {"reason": "unknown_op"}) == 1

    letters = read_topic(stack, f"{group}.dlq", expected=1)
    assert len(letters) == 1
    letter = letters[0]
    headers = header_map(letter)
    assert headers["reconciler.reason"] == "unknown_op"
    assert headers["reconciler.original.topic"] == topic
    assert headers["reconciler.original.partition"] == "0"
    assert headers["reconciler.original.offset"] == "1"
    assert headers["reconciler.truncated"] == "value"
    assert int(headers["reconciler.original.size"]) == len(poison[0]) + len(poison[1])
    assert headers["origin"] == "test"  # the original headers are kept
    assert letter.key() == poison[0]  # the key, whole
    value = letter.value()
    assert 0 < len(value) < TOPIC_LIMIT and poison[1].startswith(value)


def test_a_dead_letter_over_the_producer_limit_is_stored_truncated(
        stack: Stack, tmp_path: Path, uid: str) -> None:
    topic = create_topic(stack, f"dlq-producer-{uid}", partitions=1)
    group = f"dlq-producer-{uid}"
    oversized = padded(2, 400_000)  # over max_event_bytes: dead-lettered as `oversized`
    produce(stack, topic, [post_insert(1, 7), oversized, post_insert(3, 7)])
    producer_limit = 256 * 1024
    config = write_config(tmp_path, stack, group=group, topics=[topic], overrides={
        "max_event_bytes": 128 * 1024,
        "kafka.client": {"message.max.bytes": producer_limit}})

    running = run_until_past(stack, config, topic)
    assert running.metric("reconciler_dead_letters_total", {"reason": "oversized"}) == 1

    letters = read_topic(stack, f"{group}.dlq", expected=1)
    assert len(letters) == 1
    headers = header_map(letters[0])
    assert headers["reconciler.reason"] == "oversized"
    assert headers["reconciler.original.offset"] == "1"
    assert headers["reconciler.truncated"] == "value"
    assert int(headers["reconciler.original.size"]) == len(oversized[0]) + len(oversized[1])
    value = letters[0].value()
    assert len(value) < producer_limit and oversized[1].startswith(value)


def test_a_topic_limit_lowered_under_a_running_worker_is_met_by_cutting(
        stack: Stack, tmp_path: Path, uid: str) -> None:
    """The worker read the topic's limit at start-up; lowered since, the broker refuses
    the dead letter: it is sent again alone, then cut in half until it fits."""
    topic = create_topic(stack, f"dlq-lowered-{uid}", partitions=1)
    group = f"dlq-lowered-{uid}"
    config = write_config(tmp_path, stack, group=group, topics=[topic])
    poison = padded(2, 300_000, op="x")
    with InProcessWorker(config) as running:
        client = admin(stack)
        resource = ConfigResource("topic", f"{group}.dlq", incremental_configs=[ConfigEntry(
            "max.message.bytes", str(TOPIC_LIMIT),
            incremental_operation=AlterConfigOpType.SET)])
        client.incremental_alter_configs([resource])[resource].result(timeout=30)
        produce(stack, topic, [post_insert(1, 7), poison, post_insert(3, 7)])
        ends = end_offsets(stack, [topic])
        wait_until(lambda: not running._thread.is_alive() or committed(
            stack, group, [topic]) == ends, 60, "the worker to commit past the dead letter")
        assert running._thread.is_alive(), f"the worker stopped (exit code {running.code})"

    letters = read_topic(stack, f"{group}.dlq", expected=1)
    assert len(letters) == 1
    headers = header_map(letters[0])
    assert headers["reconciler.reason"] == "unknown_op"
    assert headers["reconciler.original.offset"] == "1"
    assert headers["reconciler.truncated"] == "value"
    assert int(headers["reconciler.original.size"]) == len(poison[0]) + len(poison[1])
    value = letters[0].value()
    assert 0 < len(value) < TOPIC_LIMIT and poison[1].startswith(value)


def test_small_dead_letters_batched_over_the_topic_limit_are_stored_whole(
        stack: Stack, tmp_path: Path, uid: str) -> None:
    """Each fits the topic; together, in one producer batch, they do not: refused as a
    batch, each is sent again alone, whole."""
    topic = create_topic(stack, f"dlq-batch-{uid}", partitions=1)
    group = f"dlq-batch-{uid}"
    limit = 16 * 1024
    client = admin(stack)  # kept alive until the future completes
    client.create_topics([NewTopic(f"{group}.dlq", num_partitions=1, replication_factor=1,
                                   config={"max.message.bytes": str(limit)})]
                         )[f"{group}.dlq"].result(timeout=30)
    poison = [padded(10 + n, 3_000, op="x") for n in range(12)]  # ~6 KB each, 12 in a batch
    produce(stack, topic, [post_insert(1, 7), *poison, post_insert(3, 7)])
    config = write_config(tmp_path, stack, group=group, topics=[topic])

    running = run_until_past(stack, config, topic)
    assert running.metric("reconciler_dead_letters_total", {"reason": "unknown_op"}) == 12

    letters = read_topic(stack, f"{group}.dlq", expected=len(poison))
    assert len(letters) == len(poison)
    by_offset = {int(header_map(letter)["reconciler.original.offset"]): letter
                 for letter in letters}
    for offset, (key, value) in enumerate(poison, start=1):
        letter = by_offset[offset]
        assert "reconciler.truncated" not in header_map(letter)
        assert (letter.key(), letter.value()) == (key, value)
