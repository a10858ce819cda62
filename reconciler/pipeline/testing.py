"""In-memory parts for driving a `Pipeline` in unit tests, without Kafka.

`MemorySource` is a record source (bytewax's testing source is the model): the
records given to it, served in order by `consume()`, with the offsets the pipeline
stores and commits kept for the test to read. `MemoryDeadLetters` keeps the dead
letters sent and confirmed. Both write to an optional shared `journal`, so a test can
check the order of everything that happened (with `connectors.valkey.testing`'s
`FakeShard` for the shards).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import TopicPartition

TP = tuple[str, int]


class Record:
    """A consumed Kafka record, as much of confluent_kafka.Message as a pipeline reads."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None,
                 value: bytes | None, headers: list[tuple[str, bytes]] | None = None,
                 timestamp_ms: int = 0) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._timestamp = timestamp_ms

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return 1, self._timestamp  # TIMESTAMP_CREATE_TIME

    def error(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"Record({self._topic}[{self._partition}]@{self._offset})"


class MemorySource:
    """Serves records in the order given; keeps the offsets stored and committed."""

    def __init__(self, records: Iterable[tuple[str, int, bytes | None, bytes | None]] = (),
                 *, journal: list[str] | None = None) -> None:
        self._queue: list[Record] = []
        self._next: dict[TP, int] = {}
        self.stored: dict[TP, int] = {}  # the offsets stored (next offset to read)
        self.committed: dict[TP, int] = {}
        self.journal = journal if journal is not None else []
        for topic, partition, key, value in records:
            self.add(topic, partition, key, value)

    def add(self, topic: str, partition: int, key: bytes | None,
            value: bytes | None) -> Record:
        """Append a record to a partition (offsets count from 0 per partition)."""
        offset = self._next.get((topic, partition), 0)
        self._next[topic, partition] = offset + 1
        record = Record(topic, partition, offset, key, value)
        self._queue.append(record)
        return record

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        taken, self._queue = self._queue[:num_messages], self._queue[num_messages:]
        return taken

    def store_offsets(self, message: Any = None,
                      offsets: list[TopicPartition] | None = None) -> None:
        for tp in offsets or []:
            self.stored[tp.topic, tp.partition] = tp.offset
            self.journal.append(f"store {tp.topic}[{tp.partition}]@{tp.offset}")

    def commit(self, *, asynchronous: bool = True) -> list[TopicPartition]:
        self.committed.update(self.stored)
        self.journal.append("commit")
        return [TopicPartition(t, p, o) for (t, p), o in self.committed.items()]


class MemoryDeadLetters:
    """A dead-letter sink that keeps what it was sent and what was confirmed."""

    def __init__(self, topic: str = "dlq", *, journal: list[str] | None = None) -> None:
        self._topic = topic
        self.sent: list[tuple[Any, str, str]] = []  # (record, reason, error)
        self.confirmed = 0  # how many of `sent` were confirmed
        self.journal = journal if journal is not None else []

    @property
    def topic(self) -> str:
        return self._topic

    def send(self, message: Any, reason: str, error: str) -> None:
        self.sent.append((message, reason, error))
        self.journal.append(f"dead letter {message.topic()}[{message.partition()}]"
                            f"@{message.offset()}")

    def confirm(self) -> None:
        self.confirmed = len(self.sent)
        self.journal.append("confirm dead letters")
