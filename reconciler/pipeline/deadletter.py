"""The dead-letter topic: poison records, with headers saying why — never a reason for
the worker to stop.

A dead letter is the original record (key, value, headers) plus headers naming the
original topic, partition, offset and timestamp, the reason (a low-cardinality label),
the error message and the consumer group. ``confirm()`` waits for the broker to
acknowledge every dead letter of the batch: only then may the batch's offsets be stored.

Size. A dead letter must fit the producer's ``message.max.bytes`` and the topic's
``max.message.bytes`` (read at start-up when the cluster lets us: ``fit_topic``). One
that does not is stored truncated — its value cut; only if the key and the original
headers alone do not fit, those dropped, then the key cut — with
``reconciler.truncated`` saying what was cut and ``reconciler.original.size`` how big
the record was. ``producer_limit`` checks ``max_event_bytes`` against the producer's
limit at start-up, so that a record the worker accepts is never cut by it.

Refusals. A dead letter refused for itself (its size, an invalid record), by
``produce()`` or by the broker, is sent again alone, cut in half each time, down to a
marker (no key, no value, no original headers: only ours); any other error from
``produce()`` is retried, then the marker is tried. So a poison record never stops the
worker: a marker refused, a fatal producer error or an error outlasting
``kafka.retry_budget_seconds`` do, and then the topic is the problem (missing, not
writable, too small even for headers), not the record: FatalError or
RetryBudgetExceeded, the batch's offsets not stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from connectors.kafka import is_fatal
from reconciler.errors import ConfigError, FatalError, RetryBudgetExceeded

log = logging.getLogger(__name__)

HEADER_TOPIC = "reconciler.original.topic"  # topic the record was consumed from
HEADER_PARTITION = "reconciler.original.partition"  # its partition
HEADER_OFFSET = "reconciler.original.offset"  # its offset
HEADER_TIMESTAMP = "reconciler.original.timestamp"  # its Kafka timestamp (ms)
HEADER_REASON = "reconciler.reason"  # low-cardinality reason (invalid_json, oversized …)
HEADER_ERROR = "reconciler.error"  # the full error message
HEADER_GROUP = "reconciler.group"  # the consumer group that dead-lettered it
HEADER_TRUNCATED = "reconciler.truncated"  # what was cut to fit: value, headers, key
HEADER_SIZE = "reconciler.original.size"  # the record's key + value bytes, before the cut
MAX_ERROR_BYTES = 4096  # error text kept in the header
HEADROOM = 64 * 1024  # beside a record of max_event_bytes: our headers (<5 KiB), its own
RECORD_OVERHEAD = 1024  # what the producer counts beside key, value and headers (a margin)
HEADER_OVERHEAD = 16  # per header: its length prefixes (a margin)
MARKS_BYTES = 128  # the truncated and original-size headers, when a dead letter is cut
MAX_MESSAGE_BYTES = 1_000_000_000  # librdkafka's largest message.max.bytes
RETRIES = 3  # attempts at a record whose produce() fails for an unknown reason
RETRY_SECONDS = 0.5  # between them
# Errors about the record itself (its size, its format): it is cut, never retried whole.
REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
                     KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
                     KafkaError.INVALID_MSG})

Headers = list[tuple[str, Any]]


class ProducerLike(Protocol):
    """What dead letters need of a confluent_kafka Producer."""

    def produce(self, topic: str, *, value: bytes | None = ..., key: bytes | None = ...,
                headers: Headers | None = ...,
                on_delivery: Callable[[KafkaError | None, Message], None] | None = ...
                ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


@dataclass(frozen=True, slots=True)
class _Letter:
    """A dead letter before any cut."""

    key: bytes | None
    value: bytes | None
    headers: Headers  # the original record's
    ours: Headers  # coordinates, reason, error, group

    @property
    def size(self) -> int:
        return len(self.key or b"") + len(self.value or b"")


def producer_limit(max_event_bytes: int, config: dict[str, Any],
                   client: Mapping[str, object]) -> int:
    """The dead-letter producer's message.max.bytes: raised in `config` to fit a record
    of max_event_bytes with its headers, unless kafka.client sets it; ConfigError when
    it is set too low for that."""
    needed = max_event_bytes + HEADROOM
    if "message.max.bytes" not in client:
        config["message.max.bytes"] = max(int(config.get("message.max.bytes", 0)), needed)
    limit = int(config["message.max.bytes"])
    if needed > limit or limit > MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"max_event_bytes ({max_event_bytes:,}) plus {HEADROOM:,} bytes for a dead "
            f"letter's headers must fit kafka.client message.max.bytes ({limit:,}), at most "
            f"{MAX_MESSAGE_BYTES:,}: a record the worker accepts is dead-lettered whole. "
            "Lower max_event_bytes, or raise (or remove) kafka.client.message.max.bytes")
    return limit


class DeadLetters:
    """Produces dead letters and confirms their delivery."""

    def __init__(self, producer: ProducerLike, topic: str, group_id: str, *,
                 retry_budget_seconds: float, max_bytes: int,
                 max_event_bytes: int | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._group = group_id.encode()
        self._budget = retry_budget_seconds
        self._max_bytes = max_bytes  # the largest dead letter the producer and topic take
        self._max_event_bytes = max_event_bytes
        self._pending = 0
        self._failures: list[KafkaError] = []
        # Refused by the broker: (letter, bytes kept of it, whether it was sent alone).
        self._refused: list[tuple[_Letter, int, bool]] = []

    @property
    def topic(self) -> str:
        return self._topic

    def fit_topic(self, admin: AdminClient, timeout: float = 10.0) -> None:
        """Cut dead letters to the topic's max.message.bytes too, if the cluster says it
        (best effort: without it, what the broker refuses is cut then)."""
        resource = ConfigResource("topic", self._topic)
        try:
            config = admin.describe_configs([resource])[resource].result(timeout=timeout)
            limit = int(config["max.message.bytes"].value)
        except Exception as exc:  # noqa: BLE001 - an ACL, a timeout: the refusal path copes
            log.info("%s: max.message.bytes not read (%s); a dead letter the broker refuses "
                     "as too large is stored cut", self._topic, exc)
            return
        if limit >= self._max_bytes:
            return
        self._max_bytes = limit
        if self._max_event_bytes is not None and limit < self._max_event_bytes + HEADROOM:
            log.warning("the dead-letter topic %s takes records of at most %s bytes "
                        "(max.message.bytes), less than max_event_bytes (%s) and a dead "
                        "letter's headers: larger dead letters are stored truncated. Raise "
                        "its max.message.bytes to keep them whole", self._topic,
                        f"{limit:,}", f"{self._max_event_bytes:,}")

    def send(self, message: Message, reason: str, error: str) -> None:
        original = message.headers() or []
        headers: Headers = list(original.items() if isinstance(original, dict) else original)
        _, timestamp = message.timestamp()
        ours: Headers = [
            (HEADER_TOPIC, (message.topic() or "").encode()),
            (HEADER_PARTITION, str(message.partition()).encode()),
            (HEADER_OFFSET, str(message.offset()).encode()),
            (HEADER_TIMESTAMP, str(timestamp).encode()),
            (HEADER_REASON, reason.encode()),
            (HEADER_ERROR, error.encode("utf-8", "replace")[:MAX_ERROR_BYTES]),
            (HEADER_GROUP, self._group),
        ]
        letter = _Letter(message.key(), message.value(), headers, ours)
        self._produce(letter, self._max_bytes - RECORD_OVERHEAD - _headers_size(ours)
                      - MARKS_BYTES)

    def _produce(self, letter: _Letter, room: int, *, alone: bool = False) -> None:
        """Produce `letter` with at most `room` bytes of its key, value and headers; cut
        further while produce() refuses it."""
        deadline = time.monotonic() + self._budget
        attempts = 0
        while True:
            key, value, headers, size = _cut(letter, room)
            try:
                self._producer.produce(
                    self._topic, value=value, key=key, headers=headers,
                    on_delivery=partial(self._delivered, letter, size, alone))
                self._pending += 1
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                failure: KafkaError = exc.args[0]
            if is_fatal(failure):
                raise FatalError(f"the dead-letter producer failed: {failure.str()} (check "
                                 "the credentials, the ACLs and kafka.security)")
            attempts += 1
            if size > 0 and (failure.code() in REFUSED or attempts >= RETRIES):
                log.warning("%s: a dead letter of %d bytes was refused (%s): sending it cut",
                            self._topic, size, failure.str())
                room = size // 2 if failure.code() in REFUSED else 0  # else the marker
                continue
            if (size == 0 and failure.code() in REFUSED) or time.monotonic() > deadline:
                raise FatalError(_marker_refused(self._topic, failure))
            self._producer.poll(RETRY_SECONDS)

    def _delivered(self, letter: _Letter, size: int, alone: bool, error: KafkaError | None,
                   _message: Message) -> None:
        self._pending -= 1
        if error is None:
            return
        if error.code() in REFUSED and not is_fatal(error):
            self._refused.append((letter, size, alone))
        else:
            self._failures.append(error)

    def confirm(self) -> None:
        """Block until every dead letter sent so far is acknowledged, or raise."""
        if self._pending == 0 and not self._failures and not self._refused:
            return
        deadline = time.monotonic() + self._budget
        while True:
            while self._pending > 0:
                if time.monotonic() > deadline:
                    raise RetryBudgetExceeded(
                        f"{self._pending} dead letter(s) to {self._topic} not acknowledged "
                        f"within {self._budget:.0f}s (kafka.retry_budget_seconds)")
                self._producer.flush(1.0)
            if self._failures:
                failures, self._failures = self._failures, []
                first = failures[0]
                kind = "fatal" if is_fatal(first) else "permanent"
                raise FatalError(
                    f"the dead-letter topic {self._topic} refused {len(failures)} record(s) "
                    f"({kind}: {first.str()}); their offsets are not stored. Check that the "
                    "topic exists and that this principal may write to it")
            if not self._refused:
                return
            refused, self._refused = self._refused, []
            log.warning("%s refused %d dead letter(s) for their size or format: sending "
                        "each again alone, then cut in half while refused", self._topic,
                        len(refused))
            for letter, size, alone in refused:
                if size == 0:
                    raise FatalError(_marker_refused(self._topic, None))
                # Alone first (a batch of small ones may be what was too large), then
                # cut in half each time, down to the marker.
                self._produce(letter, size // 2 if alone else size, alone=True)
                while self._pending > 0 and time.monotonic() <= deadline:
                    self._producer.flush(1.0)


def _cut(letter: _Letter, room: int) -> tuple[bytes | None, bytes | None, Headers, int]:
    """Key, value and headers of `letter` with at most `room` bytes of the original
    record (key + value + headers), and the bytes kept (0: the marker)."""
    key, value, headers = letter.key, letter.value, letter.headers
    k, v, h = len(key or b""), len(value or b""), _headers_size(headers)
    ours = letter.ours
    if k + v + h <= room:
        return key, value, headers + ours, k + v + h
    cut = []
    if k + h > room:  # the key and the original headers alone do not fit
        if headers:
            headers, h = [], 0
            cut.append("headers")
        if k > room:
            key, k = (key or b"")[:max(0, room)], max(0, room)
            cut.append("key")
    keep = max(0, room - k - h)
    if v > keep:
        value = (value or b"")[:keep]
        cut.insert(0, "value")
    marks = [(HEADER_TRUNCATED, ",".join(cut).encode()), (HEADER_SIZE, str(letter.size).encode())]
    return key, value, headers + ours + marks, len(key or b"") + len(value or b"") + h


def _headers_size(headers: Headers) -> int:
    return sum(len(name) + len(value or b"") + HEADER_OVERHEAD for name, value in headers)


def _marker_refused(topic: str, error: KafkaError | None) -> str:
    why = f" ({error.str()})" if error is not None else ""
    return (f"the dead-letter topic {topic} refused even a dead letter cut down to its "
            f"headers{why}: the topic, not a record, is the problem. Check that it exists, "
            "that this principal may write to it, and its max.message.bytes")
