"""The capture's topics on the stack's broker: read them whole, delete them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from stack import kafka
from stack.capture.records import CaptureError, Record, log, owned_topic

if TYPE_CHECKING:
    from confluent_kafka import Message


def prefix_topics(prefix: str) -> list[str]:
    topics = kafka.admin().list_topics(timeout=10).topics
    return sorted(t for t in topics if owned_topic(prefix, t))


def _text(raw: str | bytes | None) -> str | None:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


Binary = Callable[[bytes], str]  # a binary record's key or value as JSON text


def _record(msg: Message, binary: Binary | None = None) -> Record:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None  # consumed
    headers = msg.headers() or []
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    key, value = msg.key(), msg.value()
    if binary is not None:
        return Record(topic=topic, partition=partition, offset=offset,
                      timestamp=msg.timestamp()[1],
                      key=None if key is None else binary(key),
                      value=None if value is None else binary(value),
                      headers=[(k, _text(v)) for k, v in pairs], raw_key=key, raw_value=value)
    return Record(topic=topic, partition=partition, offset=offset,
                  timestamp=msg.timestamp()[1], key=_text(key), value=_text(value),
                  headers=[(k, _text(v)) for k, v in pairs])


def read_all(prefix: str, binary: Binary | None = None) -> dict[tuple[str, int], list[Record]]:
    """Every record of every topic of ``prefix``, from the beginning to the current end
    (a binary topic's records decoded to JSON text by `binary`, their bytes kept)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    metadata = kafka.admin().list_topics(timeout=10)
    partitions = [TopicPartition(t, p, OFFSET_BEGINNING)
                  for t, meta in sorted(metadata.topics.items()) if owned_topic(prefix, t)
                  for p in sorted(meta.partitions)]
    out: dict[tuple[str, int], list[Record]] = {}
    if not partitions:
        return out
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap(),
                         "group.id": f"cr-capture-reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    try:
        remaining: dict[tuple[str, int], int] = {}
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            out[(tp.topic, tp.partition)] = []
            if high > low:
                remaining[(tp.topic, tp.partition)] = high
        consumer.assign(partitions)
        deadline = time.monotonic() + 60
        while remaining:
            if time.monotonic() > deadline:
                raise CaptureError(f"timed out reading {prefix} topics; still missing {remaining}")
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                raise CaptureError(f"kafka error while reading {msg.topic()}: {msg.error()}")
            rec = _record(msg, binary)
            tp_key = (rec.topic, rec.partition)
            out[tp_key].append(rec)
            if tp_key in remaining and rec.offset + 1 >= remaining[tp_key]:
                del remaining[tp_key]
    finally:
        consumer.close()
    return out


def delete_topics(prefix: str) -> None:
    topics = prefix_topics(prefix)
    if not topics:
        return
    log(f"deleting topics {', '.join(topics)}")
    client = kafka.admin()  # must outlive the futures
    for topic, future in client.delete_topics(topics, operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - reported, cleanup goes on
            log(f"could not delete topic {topic}: {exc}")
    deadline = time.monotonic() + 60
    while prefix_topics(prefix) and time.monotonic() < deadline:
        time.sleep(0.5)
