"""The stack itself: a row's life in Postgres arrives on Kafka as Debezium events."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import Stack
from tests.e2e.support import POSTS, end_offsets, rows, wait_until

pytestmark = pytest.mark.e2e


def test_insert_update_delete_arrive_as_debezium_events(stack: Stack) -> None:
    from confluent_kafka import Consumer, TopicPartition

    start = end_offsets(stack, [POSTS])
    with rows(stack) as db:
        post_id, _ = db.insert_post(7, "smoke")
        db.update_post(post_id, title="smoke, edited")
        db.delete_post(post_id)
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "smoke",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
    seen: list[tuple[str, object]] = []
    began = time.monotonic()
    try:
        def mine() -> list[tuple[str, object]]:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                key = json.loads(message.key())["payload"]["id"]
                if key == post_id:
                    value = message.value()
                    op = "tombstone" if value is None else json.loads(value)["payload"]["op"]
                    seen.append((op, message.headers()))
            return seen if len(seen) >= 4 else []

        wait_until(mine, 30, f"4 events for post {post_id}", interval=0)
    finally:
        consumer.close()
    assert [op for op, _ in seen] == ["c", "u", "d", "tombstone"]
    assert time.monotonic() - began < 30
