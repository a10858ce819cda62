"""Topics of a scenario's own, fed with the workload's real Debezium change records.

The compacted-topic, retention-gap and added-partitions scenarios need topics whose
configuration and partitions the test controls, without touching the Debezium topics
other scenarios read. `Relay` copies the change records Debezium wrote for the
workload (key, value and headers, tombstones included) from the test's start offsets
into such a topic, placing each record as Debezium's producer does: the partition is
murmur2 of the key bytes, made positive, modulo the partition count (the Java
client's default partitioner, which `murmur2` reimplements and `Relay` checks against
every record Debezium placed). A row's records therefore stay in order on one
partition — until partitions are added, when a key may move.

Every copy remembers where it landed (`Relay.copies`), so a scenario knows which
changes a retention gap removed or which records went to new partitions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from tests.conftest import Stack
from tests.e2e.support import end_offsets, wait_until
from tests.faults.oracle import Change, parse_change

TP = tuple[str, int]
SOURCES = ["nd.public.posts", "nd.public.comments"]  # the workload's Debezium topics


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as unsigned 32 bits."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = length - rest
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """Where the Java producer's default partitioner puts a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def admin(stack: Stack) -> AdminClient:
    return AdminClient({"bootstrap.servers": stack.kafka_bootstrap})


def create(stack: Stack, name: str, *, partitions: int,
           config: Mapping[str, str] | None = None) -> str:
    client = admin(stack)
    futures = client.create_topics([NewTopic(name, num_partitions=partitions,
                                             replication_factor=1, config=dict(config or {}))])
    futures[name].result(timeout=30)
    wait_until(lambda: name in client.list_topics(timeout=5).topics, 30, f"topic {name}")
    return name


def partitions_of(stack: Stack, topic: str) -> int:
    metadata = admin(stack).list_topics(topic, timeout=10)
    return len(metadata.topics[topic].partitions)


def add_partitions(stack: Stack, topic: str, total: int) -> None:
    """Grow `topic` to `total` partitions (AdminClient.create_partitions)."""
    client = admin(stack)
    client.create_partitions([NewPartitions(topic, total)])[topic].result(timeout=30)
    wait_until(lambda: partitions_of(stack, topic) == total, 30,
               f"{topic} to have {total} partitions")


def delete_below(stack: Stack, topic: str, partition: int, offset: int) -> int:
    """DeleteRecords: the partition's log then starts at `offset` (as retention would
    have it); returns the new low watermark."""
    client = admin(stack)  # kept alive until the futures complete
    done = client.delete_records([TopicPartition(topic, partition, offset)])
    low = -1
    for future in done.values():
        low = future.result(timeout=30).low_watermark
    return low


@dataclass(frozen=True)
class Copy:
    """A record copied into the scenario's topic."""

    source: TP
    source_offset: int
    partition: int
    offset: int
    key: bytes | None
    change: Change | None  # None: a tombstone (or a record the oracle does not parse)
    tombstone: bool


class Relay:
    """Copies the workload's Debezium records from `start` into `target` (see the module
    docstring); `copy()` copies what is new, up to the sources' current end."""

    def __init__(self, stack: Stack, target: str, start: Mapping[TP, int]) -> None:
        self.stack = stack
        self.target = target
        self.positions = {tp: offset for tp, offset in start.items() if tp[0] in SOURCES}
        self.copies: list[Copy] = []
        self.misplaced: list[str] = []  # Debezium records not where murmur2 says
        self._producer = Producer({"bootstrap.servers": stack.kafka_bootstrap,
                                   "linger.ms": 5, "enable.idempotence": True,
                                   "topic.metadata.refresh.interval.ms": 500})
        self._partition_counts: dict[str, list[int]] = {}

    def copy(self) -> int:
        """Copy every record now on the sources past the last copy; returns how many."""
        ends = end_offsets(self.stack, SOURCES)
        todo = {tp: end for tp, end in ends.items() if end > self.positions.get(tp, 0)}
        if not todo:
            return 0
        partitions = partitions_of(self.stack, self.target)
        consumer = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap,
                             "group.id": f"cr-fault-relay-{time.monotonic_ns()}",
                             "enable.auto.commit": False})
        read: list[Message] = []
        try:
            consumer.assign([TopicPartition(t, p, self.positions.get((t, p), 0))
                             for (t, p) in todo])
            deadline = time.monotonic() + 60
            while todo:
                assert time.monotonic() < deadline, f"relay: sources not read to {todo}"
                for message in consumer.consume(500, 0.5):
                    if message.error() is not None:
                        continue
                    tp = (message.topic() or "", message.partition() or 0)
                    self.positions[tp] = message.offset() + 1
                    if self.positions[tp] >= todo.get(tp, 0):
                        todo.pop(tp, None)
                    read.append(message)
        finally:
            consumer.close()
        for message in read:
            self._produce(message, partitions)
        remaining = self._producer.flush(30)
        assert remaining == 0, f"relay: {remaining} records not acknowledged"
        return len(read)

    def _produce(self, message: Message, partitions: int) -> None:
        key = message.key()
        source = (message.topic() or "", message.partition() or 0)
        if key is not None:
            debezium = partition_for(key, len(self._source_partitions(source[0])))
            if debezium != source[1]:
                self.misplaced.append(f"{source}@{message.offset()}: murmur2 says {debezium}")
        partition = partition_for(key, partitions) if key is not None else 0
        value = message.value()
        change = parse_change(source[0], value) if value is not None else None

        def delivered(error: KafkaError | None, copied: Message, source: TP = source,
                      offset: int = message.offset() or 0, key: bytes | None = key,
                      change: Change | None = change, tombstone: bool = value is None) -> None:
            assert error is None, f"relay: {error}"
            self.copies.append(Copy(source, offset, copied.partition() or 0,
                                    copied.offset() or 0, key, change, tombstone))

        deadline = time.monotonic() + 30
        while True:  # a partition just added is unknown until the next metadata refresh
            try:
                self._producer.produce(self.target, key=key, value=value, partition=partition,
                                       headers=message.headers(), on_delivery=delivered)
                break
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args else None
                if code not in (KafkaError._UNKNOWN_PARTITION, KafkaError._QUEUE_FULL) \
                        or time.monotonic() > deadline:
                    raise
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _source_partitions(self, topic: str) -> list[int]:
        if topic not in self._partition_counts:
            metadata = admin(self.stack).list_topics(topic, timeout=10)
            self._partition_counts[topic] = sorted(metadata.topics[topic].partitions)
        return self._partition_counts[topic]


def read_all(stack: Stack, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(partition, offset, key, value) of every record of `topic` now."""
    ends = end_offsets(stack, [topic])
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap,
                         "group.id": f"cr-fault-read-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    found: list[tuple[int, int, bytes | None, bytes | None]] = []
    try:
        starts = []
        todo = {}
        for (name, partition), end in ends.items():
            low, _ = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
            if end > low:
                starts.append(TopicPartition(name, partition, low))
                todo[partition] = end
        consumer.assign(starts)
        deadline = time.monotonic() + 60
        idle_until = time.monotonic() + 5
        while todo and time.monotonic() < idle_until:  # a compacted end may have no record
            assert time.monotonic() < deadline, f"{topic}: not read to the end ({todo})"
            for message in consumer.consume(500, 0.5):
                idle_until = time.monotonic() + 5
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                found.append((partition, offset, message.key(), message.value()))
                if offset + 1 >= todo.get(partition, 0):
                    todo.pop(partition, None)
    finally:
        consumer.close()
    return found

