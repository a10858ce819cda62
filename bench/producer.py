"""Writing the workload into Kafka: as fast as possible, or paced at a fixed rate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from bench.events import Change, Envelope

BATCH_BYTES = 1_000_000  # librdkafka batch.size for bulk loads
FLUSH_TIMEOUT = 120.0  # seconds to wait for the last deliveries


@dataclass(frozen=True, slots=True)
class Produced:
    records: int
    seconds: float
    value_bytes: int
    compression: str

    @property
    def mean_value_bytes(self) -> float:
        return self.value_bytes / self.records if self.records else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"records": self.records, "seconds": round(self.seconds, 2),
                "records_per_second": round(self.records / self.seconds),
                "mean_value_bytes": round(self.mean_value_bytes), "compression": self.compression}


def producer(bootstrap: str, compression: str, *, linger_ms: int = 20) -> Producer:
    return Producer({
        "bootstrap.servers": bootstrap, "compression.type": compression,
        "linger.ms": linger_ms, "batch.size": BATCH_BYTES,
        "enable.idempotence": True,  # keeps each key's records in order across retries
        "queue.buffering.max.kbytes": 1024 * 1024, "queue.buffering.max.messages": 1_000_000,
    })


class Failures:
    """A delivery callback that remembers the first error."""

    def __init__(self) -> None:
        self.count = 0
        self.first: KafkaError | None = None

    def __call__(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.count += 1
            self.first = self.first or error

    def check(self, topic: str) -> None:
        if self.count:
            raise RuntimeError(f"{topic}: {self.count} records were not delivered "
                               f"(first error: {self.first})")


def produce(bootstrap: str, topic: str, changes: Iterable[Change], envelope: Envelope, *,
            compression: str = "lz4") -> Produced:
    """Write every change to `topic` (keyed by row id), as fast as the client goes."""
    client = producer(bootstrap, compression)
    failures = Failures()
    records = value_bytes = 0
    started = time.perf_counter()
    for change in changes:
        value = envelope.value(change)
        value_bytes += len(value) if value is not None else 0
        _send(client, topic, envelope.key(change.id), value, envelope.headers, failures)
        records += 1
        if records % 10_000 == 0:
            client.poll(0)
    if client.flush(FLUSH_TIMEOUT):
        raise RuntimeError(f"{topic}: records still undelivered after {FLUSH_TIMEOUT:.0f}s")
    failures.check(topic)
    return Produced(records, time.perf_counter() - started, value_bytes, compression)


def _send(client: Producer, topic: str, key: bytes, value: bytes | None,
          headers: list[tuple[str, str | bytes | None]], callback: Callable[..., None]) -> None:
    while True:
        try:
            client.produce(topic, value, key, headers=headers, on_delivery=callback)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            client.poll(0.05)


Callback = Callable[[KafkaError | None, Message], None]


def paced(bootstrap: str, topic: str, records: Iterable[tuple[Change, Callback | None]],
          envelope: Envelope, *, rate: float, seconds: float,
          compression: str = "lz4") -> Produced:
    """Offer `rate` records/s for `seconds`, each with source.ts_ms = its send time, and
    call a record's own callback (if any) with its delivery report.

    Sends whatever is due every millisecond (linger.ms=1), so that the offered load is
    smooth; reports the rate it actually managed.
    """
    client = producer(bootstrap, compression, linger_ms=1)
    failures = Failures()

    def both(extra: Callback) -> Callback:
        def callback(error: KafkaError | None, message: Message) -> None:
            failures(error, message)
            extra(error, message)
        return callback

    total = int(rate * seconds)
    sent = value_bytes = 0
    source = iter(records)
    started = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            change, extra = next(source)
            value = envelope.value(change, int(time.time() * 1000))
            value_bytes += len(value) if value is not None else 0
            _send(client, topic, envelope.key(change.id), value, envelope.headers,
                  failures if extra is None else both(extra))
            sent += 1
        client.poll(0)
        pause = (sent / rate) - (time.perf_counter() - started)
        if pause > 0:
            time.sleep(min(pause, 0.001))
    elapsed = time.perf_counter() - started
    client.flush(FLUSH_TIMEOUT)
    failures.check(topic)
    return Produced(sent, elapsed, value_bytes, compression)
