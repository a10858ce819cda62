"""The dead-letter topic: poison records, kept whole, with headers saying why.

The original key, value and headers are produced unchanged, plus headers naming the
original topic, partition, offset and timestamp, the reason (a low-cardinality label)
and the error message. ``confirm()`` waits for the broker to acknowledge every dead
letter of the batch: only then may the batch's offsets be stored.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from connectors.kafka import is_fatal
from reconciler.errors import FatalError, RetryBudgetExceeded

log = logging.getLogger(__name__)

HEADER_TOPIC = "reconciler.original.topic"  # topic the record was consumed from
HEADER_PARTITION = "reconciler.original.partition"  # its partition
HEADER_OFFSET = "reconciler.original.offset"  # its offset
HEADER_TIMESTAMP = "reconciler.original.timestamp"  # its Kafka timestamp (ms)
HEADER_REASON = "reconciler.reason"  # low-cardinality reason (invalid_json, oversized …)
HEADER_ERROR = "reconciler.error"  # the full error message
HEADER_GROUP = "reconciler.group"  # the consumer group that dead-lettered it
MAX_ERROR_BYTES = 4096  # error text kept in the header


class DeadLetters:
    """Produces dead letters and confirms their delivery."""

    def __init__(self, producer: Producer, topic: str, group_id: str, *,
                 retry_budget_seconds: float) -> None:
        self._producer = producer
        self._topic = topic
        self._group = group_id.encode()
        self._budget = retry_budget_seconds
        self._pending = 0
        self._failures: list[KafkaError] = []

    @property
    def topic(self) -> str:
        return self._topic

    def send(self, message: Message, reason: str, error: str) -> None:
        original = message.headers() or []
        headers: list[tuple[str, Any]] = list(
            original.items() if isinstance(original, dict) else original)
        _, timestamp = message.timestamp()
        headers += [
            (HEADER_TOPIC, (message.topic() or "").encode()),
            (HEADER_PARTITION, str(message.partition()).encode()),
            (HEADER_OFFSET, str(message.offset()).encode()),
            (HEADER_TIMESTAMP, str(timestamp).encode()),
            (HEADER_REASON, reason.encode()),
            (HEADER_ERROR, error.encode("utf-8", "replace")[:MAX_ERROR_BYTES]),
            (HEADER_GROUP, self._group),
        ]
        self._produce(message.key(), message.value(), headers)

    def _produce(self, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, Any]]) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value=value, key=key, headers=headers,
                                       on_delivery=self._delivered)
                self._pending += 1
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self._producer.poll(0.1)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        self._pending -= 1
        if error is not None:
            self._failures.append(error)

    def confirm(self) -> None:
        """Block until every dead letter sent so far is acknowledged, or raise."""
        if self._pending == 0 and not self._failures:
            return
        deadline = time.monotonic() + self._budget
        while self._pending > 0:
            if time.monotonic() > deadline:
                raise RetryBudgetExceeded(
                    f"{self._pending} dead letter(s) to {self._topic} not acknowledged within "
                    f"{self._budget:.0f}s (kafka.retry_budget_seconds)")
            self._producer.flush(1.0)
        if self._failures:
            failures, self._failures = self._failures, []
            first = failures[0]
            kind = "fatal" if is_fatal(first) else "permanent"
            raise FatalError(
                f"the dead-letter topic {self._topic} refused {len(failures)} record(s) "
                f"({kind}: {first.str()}); their offsets are not stored. Check that the "
                f"topic exists, that this principal may write to it, and that its "
                f"max.message.bytes fits the largest record")
