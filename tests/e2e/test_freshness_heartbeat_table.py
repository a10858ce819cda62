"""With `freshness.heartbeat_table`, only the heartbeat table's changes — written by
Debezium's heartbeat.action.query through the WAL, so their commit time says how far
Debezium has read — move the watermark of quiet partitions. The heartbeat topic's
ts_ms is wall time: while Debezium lags the WAL it runs ahead of what is reconciled.

The records are the real ones Debezium emitted on the local stack (a heartbeat-topic
record and a heartbeat-table change), copied to this test's own topics; the topic
heartbeat is re-stamped an hour ahead, as a lagging connector's heartbeats would be
compared with the WAL it has not read yet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import Stack
from tests.e2e.support import InProcessWorker, create_topic, wait_until, write_config

pytestmark = pytest.mark.e2e
HEARTBEAT_TABLE = "public.debezium_heartbeat"


def latest(stack: Stack, topic: str) -> Any:
    """The newest record Debezium wrote on `topic` (waiting for one)."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "fresh-probe",
                         "enable.auto.commit": False})
    try:
        def newest() -> Any:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                tp = TopicPartition(topic, partition)
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high > 0:
                    consumer.assign([TopicPartition(topic, partition, high - 1)])
                    message = consumer.poll(10)
                    if message is not None and message.error() is None:
                        return message
            return None

        return wait_until(newest, 30, f"a record on {topic}", interval=0.5)
    finally:
        consumer.close()


def test_only_wal_ordered_heartbeats_move_a_quiet_partitions_watermark(
        stack: Stack, tmp_path: Path, uid: str, valkey_clients: dict[str, Any]) -> None:
    prefix = f"fresh{uid}"
    table_heartbeat = latest(stack, f"nd.{HEARTBEAT_TABLE}")
    topic_heartbeat = latest(stack, "__debezium-heartbeat.nd")
    posts = create_topic(stack, f"{prefix}.public.posts", partitions=1)
    heartbeat_topic = create_topic(stack, f"__debezium-heartbeat.{prefix}", partitions=1)
    table_topic = create_topic(stack, f"{prefix}.{HEARTBEAT_TABLE}", partitions=1)

    commit_ms = json.loads(table_heartbeat.value())["payload"]["source"]["ts_ms"]
    ahead = json.loads(topic_heartbeat.value())
    ahead["payload"]["ts_ms"] = int(time.time() * 1000) + 3_600_000

    config = write_config(tmp_path, stack, group=f"fresh-{uid}", topics=[posts],
                          overrides={"freshness.heartbeat_table": HEARTBEAT_TABLE})
    with InProcessWorker(config) as running:
        subscribed = running.worker.subscription()
        assert heartbeat_topic in subscribed and table_topic in subscribed
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        producer.produce(heartbeat_topic, key=topic_heartbeat.key(), value=json.dumps(ahead))
        producer.flush(10)
        time.sleep(2)  # consumed, and the lag monitor has seen the quiet posts partition
        marks = {p["topic"]: p["watermark_ms"]
                 for p in running.worker.freshness.as_json()["partitions"]}
        assert marks.get(posts) is None, "a wall-clock heartbeat must not vouch for the WAL"

        producer.produce(table_topic, key=table_heartbeat.key(), value=table_heartbeat.value())
        producer.flush(10)
        wait_until(lambda: {p["topic"]: p["watermark_ms"] for p in
                            running.worker.freshness.as_json()["partitions"]}.get(posts)
                   == commit_ms, 30, "the heartbeat table's commit time on the quiet partition")
