"""Dead letters cannot crash-loop the worker (issue 16): what `produce()` or the broker
refuses is cut, down to a marker, before anything stops; max_event_bytes is checked
against the producer's limit at start-up.

The refusals by a real broker and by librdkafka's own size check are in
tests/e2e/test_dead_letter_limits.py; here a fake producer injects what Kafka cannot be
made to do on demand: produce() failing for other reasons, a fatal error, a topic that
refuses even a marker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Message

from reconciler.errors import ConfigError, FatalError
from reconciler.pipeline.deadletter import (
    HEADER_OFFSET,
    HEADER_REASON,
    HEADER_SIZE,
    HEADER_TRUNCATED,
    HEADROOM,
    DeadLetters,
    producer_limit,
)

Headers = list[tuple[str, Any]]
LOCAL = Path(__file__).resolve().parents[3] / "config" / "local"
Sent = tuple[bytes | None, bytes | None, dict[str, Any]]


class FakeProducer:
    """Accepts what `refuse` lets through; delivers on poll/flush with `deliver`'s error."""

    def __init__(self, refuse: Callable[[int, Sent], KafkaError | None] = lambda n, s: None,
                 deliver: Callable[[Sent], KafkaError | None] = lambda s: None) -> None:
        self.refuse = refuse
        self.deliver = deliver
        self.calls = 0
        self.produced: list[Sent] = []  # accepted by produce()
        self.stored: list[Sent] = []  # delivered without error
        self._queue: list[tuple[Sent, Callable[[KafkaError | None, Message], None]]] = []

    def produce(self, topic: str, *, value: bytes | None = None, key: bytes | None = None,
                headers: Headers | None = None,
                on_delivery: Callable[[KafkaError | None, Message], None] | None = None
                ) -> None:
        self.calls += 1
        sent: Sent = (key, value, dict(headers or []))
        error = self.refuse(self.calls, sent)
        if error is not None:
            raise KafkaException(error)
        assert on_delivery is not None
        self.produced.append(sent)
        self._queue.append((sent, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        return self.flush(timeout)

    def flush(self, timeout: float = 0) -> int:
        queue, self._queue = self._queue, []
        for sent, callback in queue:
            error = self.deliver(sent)
            if error is None:
                self.stored.append(sent)
            callback(error, Message(topic="dlq", value=sent[1], key=sent[0]))
        return 0


def record(value: bytes = b"v" * 1000, key: bytes = b'{"id":7}') -> Message:
    return Message(topic="nd.public.posts", partition=2, offset=41, key=key, value=value,
                   headers=[("origin", b"debezium")], timestamp=(1, 1_700_000_000_000))


def letters(producer: FakeProducer, max_bytes: int = 1 << 20,
            budget: float = 0.5) -> DeadLetters:
    return DeadLetters(producer, "dlq", "group", retry_budget_seconds=budget,
                       max_bytes=max_bytes, max_event_bytes=max_bytes - HEADROOM)


def test_a_dead_letter_that_fits_is_stored_whole_with_its_coordinates() -> None:
    producer = FakeProducer()
    sink = letters(producer)
    sink.send(record(), "unknown_op", "unknown op 'x'")
    sink.confirm()
    [(key, value, headers)] = producer.stored
    assert (key, value) == (b'{"id":7}', b"v" * 1000)
    assert headers["origin"] == b"debezium"
    assert headers[HEADER_OFFSET] == b"41" and headers[HEADER_REASON] == b"unknown_op"
    assert HEADER_TRUNCATED not in headers


def test_a_dead_letter_over_the_limit_is_cut_to_it_before_it_is_sent() -> None:
    producer = FakeProducer()
    sink = letters(producer, max_bytes=8 * 1024)
    sink.send(record(b"v" * 100_000), "oversized", "record is 100,008 bytes")
    sink.confirm()
    [(key, value, headers)] = producer.stored
    assert key == b'{"id":7}' and value and value != b"v" * 100_000
    assert len(value) < 8 * 1024
    assert headers[HEADER_TRUNCATED] == b"value"
    assert headers[HEADER_SIZE] == b"100008"
    assert headers["origin"] == b"debezium"


def test_a_key_and_headers_too_large_are_dropped_and_cut() -> None:
    producer = FakeProducer()
    sink = letters(producer, max_bytes=8 * 1024)
    sink.send(record(b"v" * 10, key=b"k" * 50_000), "key_too_large", "record key")
    sink.confirm()
    [(key, value, headers)] = producer.stored
    assert headers[HEADER_TRUNCATED] == b"value,headers,key"
    assert key is not None and 0 < len(key) < 8 * 1024 and value == b""
    assert "origin" not in headers and headers[HEADER_REASON] == b"key_too_large"


def test_produce_refusing_the_size_cuts_in_half_until_it_fits() -> None:
    def refuse(_n: int, sent: Sent) -> KafkaError | None:
        big = len(sent[1] or b"") > 10_000
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if big else None

    producer = FakeProducer(refuse)
    sink = letters(producer)
    sink.send(record(b"v" * 100_000), "oversized", "too big")
    sink.confirm()
    [(_, value, headers)] = producer.stored
    assert value is not None and 5_000 < len(value) <= 10_000
    assert headers[HEADER_TRUNCATED] == b"value" and producer.calls > 2


def test_another_error_of_produce_for_one_record_ends_in_a_marker_not_a_crash() -> None:
    def refuse(_n: int, sent: Sent) -> KafkaError | None:  # this record, never a marker
        return KafkaError(KafkaError._INVALID_ARG) if sent[1] else None

    producer = FakeProducer(refuse)
    sink = letters(producer)
    sink.send(record(), "invalid_json", "not json")
    sink.confirm()
    [(key, value, headers)] = producer.stored
    assert not key and not value
    assert headers[HEADER_TRUNCATED] == b"value,headers,key"
    assert headers[HEADER_OFFSET] == b"41" and headers[HEADER_REASON] == b"invalid_json"


def test_a_transient_error_of_produce_is_retried_whole() -> None:
    producer = FakeProducer(lambda n, _s: KafkaError(KafkaError._UNKNOWN_TOPIC) if n == 1
                            else None)
    sink = letters(producer)
    sink.send(record(), "unknown_op", "x")
    sink.confirm()
    [(_, value, headers)] = producer.stored
    assert value == b"v" * 1000 and HEADER_TRUNCATED not in headers


def test_a_topic_that_refuses_even_the_marker_stops_the_worker_within_the_budget() -> None:
    producer = FakeProducer(lambda _n, _s: KafkaError(KafkaError._UNKNOWN_TOPIC))
    sink = letters(producer, budget=0.2)
    with pytest.raises(FatalError, match="even a dead letter cut down to its headers"):
        sink.send(record(), "unknown_op", "x")


def test_a_fatal_producer_error_stops_the_worker_at_once() -> None:
    producer = FakeProducer(lambda _n, _s: KafkaError(KafkaError._FATAL, "fenced",
                                                       fatal=True))
    with pytest.raises(FatalError, match="fenced"):
        letters(producer).send(record(), "unknown_op", "x")
    assert producer.calls == 1


def test_a_broker_refusal_is_sent_again_alone_then_cut() -> None:
    # The broker refuses records over 5,000 bytes: the first delivery fails, the
    # same record alone fails again, then halves until it fits.
    producer = FakeProducer(deliver=lambda sent: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
                            if len(sent[1] or b"") > 5_000 else None)
    sink = letters(producer)
    sink.send(record(b"v" * 40_000), "oversized", "too big")
    sink.confirm()
    [(_, value, headers)] = producer.stored
    assert value is not None and 2_500 < len(value) <= 5_000
    assert headers[HEADER_TRUNCATED] == b"value"
    sizes = [len(sent[1] or b"") for sent in producer.produced]
    assert sizes[:2] == [40_000, 40_000]  # alone, whole, first


def test_a_broker_refusing_even_the_marker_stops_the_worker() -> None:
    producer = FakeProducer(deliver=lambda _sent: KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    sink = letters(producer)
    sink.send(record(), "oversized", "x")
    with pytest.raises(FatalError, match="even a dead letter cut down to its headers"):
        sink.confirm()


def test_another_delivery_error_still_stops_the_worker() -> None:
    producer = FakeProducer(deliver=lambda _sent: KafkaError(
        KafkaError.TOPIC_AUTHORIZATION_FAILED))
    sink = letters(producer)
    sink.send(record(), "oversized", "x")
    with pytest.raises(FatalError, match="refused 1 record"):
        sink.confirm()


# --------------------------------------------------------------------------- start-up


def test_max_event_bytes_must_fit_the_producers_message_max_bytes() -> None:
    config: dict[str, Any] = {"message.max.bytes": 1024 * 1024}
    with pytest.raises(ConfigError) as caught:
        producer_limit(1024 * 1024, config, {"message.max.bytes": 1024 * 1024})
    assert "max_event_bytes (1,048,576)" in str(caught.value)
    assert "kafka.client message.max.bytes (1,048,576)" in str(caught.value)


def test_the_producer_limit_follows_max_event_bytes_unless_it_is_set() -> None:
    config: dict[str, Any] = {"message.max.bytes": 16 * 1024 * 1024}
    assert producer_limit(32 * 1024 * 1024, config, {}) == 32 * 1024 * 1024 + HEADROOM
    assert config["message.max.bytes"] == 32 * 1024 * 1024 + HEADROOM
    config = {"message.max.bytes": 16 * 1024 * 1024}
    assert producer_limit(8 * 1024 * 1024, config, {}) == 16 * 1024 * 1024


def test_a_max_event_bytes_past_librdkafkas_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at most 1,000,000,000"):
        producer_limit(2_000_000_000, {"message.max.bytes": 16 * 1024 * 1024}, {})


def test_the_worker_stops_at_start_up_on_a_max_event_bytes_its_producer_cannot_take(
        tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from reconciler.observe.metrics import Metrics
    from reconciler.pipeline.compose import build_parts
    from reconciler.pipeline.hooks import NoHooks
    from reconciler.settings import load_settings
    from shard_map import load_shard_map

    config = yaml.safe_load((LOCAL / "reconciler.yaml").read_text())
    config["shard_map"] = str(LOCAL / "shard_map.yaml")
    config["max_event_bytes"] = 4 * 1024 * 1024
    config["kafka"]["client"] = {"message.max.bytes": 1024 * 1024}
    (tmp_path / "reconciler.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(tmp_path / "reconciler.yaml")
    assert settings.shard_map is not None
    with pytest.raises(ConfigError, match=r"max_event_bytes \(4,194,304\).*kafka\.client "
                                          r"message\.max\.bytes \(1,048,576\)"):
        build_parts(settings, load_shard_map(settings.shard_map),
                    Metrics.create(CollectorRegistry()), group_id="g", hooks=NoHooks(),
                    stopping=lambda: False)
