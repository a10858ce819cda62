"""The decoder the settings ask for, and the schema registry's retry policy.

JSON topics only: the JSON `Decoder`. Any flattened topic: a `FlattenedDecoder`
reading those as rows (Debezium's ExtractNewRecordState), the others as below. Any Avro
topic (``kafka.format``/``formats``): an `AvroDecoder` reading the Avro ones through a
`Registry` over confluent-kafka's
``SchemaRegistryClient``, whose requests `RegistryRetry` retries: a registry that is
down, slow or failing is transient — the batch waits, with backoff, for at most
``kafka.retry_budget_seconds``, then the worker stops without storing its offsets, as
for any budget overrun (`RetryBudgetExceeded`). Never a dead letter: the records are
fine, the registry is not. A registry that refuses us (401, 403) is a `FatalError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from connectors.debezium.decode import Decoder
from connectors.errors import RegistryRejected, RegistryUnavailable
from reconciler.errors import FatalError, RetryBudgetExceeded, TransientError
from reconciler.formats import AVRO, FLATTENED, topic_formats
from reconciler.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
BACKOFF_START = 0.2  # seconds before the first retry of a registry request
BACKOFF_MAX = 5.0  # seconds between retries at most


class RegistryRetry:
    """Calls a registry request until it answers, within `budget_seconds`."""

    def __init__(self, budget_seconds: float, *, should_stop: Callable[[], bool],
                 on_retry: Callable[[], None] = lambda: None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.budget = budget_seconds
        self._should_stop = should_stop
        self._on_retry = on_retry
        self._sleep = sleep

    def __call__(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.budget
        delay = BACKOFF_START
        attempt = 0
        while True:
            try:
                result = call()
            except RegistryRejected as exc:
                raise FatalError(str(exc)) from exc
            except RegistryUnavailable as exc:
                attempt += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RetryBudgetExceeded(
                        f"{exc}: still failing after {attempt} attempt(s) over "
                        f"{self.budget:g}s (kafka.retry_budget_seconds)") from exc
                if self._should_stop():
                    raise TransientError(f"{exc} (while stopping)") from exc
                wait = min(delay, remaining)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s (attempt %d, retrying in %.1fs)", exc, attempt, wait)
                self._on_retry()
                self._sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if attempt:
                log.info("the schema registry answered again after %d retries", attempt)
            return result


def build_decoder(settings: Settings, columns: frozenset[str] | None, *,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_retry: Callable[[], None] = lambda: None) -> Decoder:
    """The decoder for the topics' formats (`columns`: the row columns the plans read)."""
    kafka = settings.kafka
    kinds = {kafka.format, *kafka.formats.values()}
    decoder = _avro(settings, columns, should_stop, on_retry) if AVRO in kinds else None
    if FLATTENED in kinds:
        from connectors.debezium.flattened import FlattenedDecoder

        return FlattenedDecoder(
            flattened_topics=topic_formats(kafka.format, kafka.formats, FLATTENED),
            inner=decoder, heartbeat_prefix=kafka.heartbeat_topic_prefix, columns=columns)
    return decoder or Decoder(heartbeat_prefix=kafka.heartbeat_topic_prefix, columns=columns)


def _avro(settings: Settings, columns: frozenset[str] | None, should_stop: Callable[[], bool],
          on_retry: Callable[[], None]) -> Decoder:
    kafka = settings.kafka
    from connectors.debezium.avro import AvroDecoder
    from connectors.debezium.registry import Registry, confluent_fetch

    registry = kafka.schema_registry
    assert registry is not None  # settings.check_formats
    retry: RegistryRetry = RegistryRetry(kafka.retry_budget_seconds, should_stop=should_stop,
                                         on_retry=on_retry)
    return AvroDecoder(Registry(confluent_fetch(registry.client_config()), retry=retry),
                       avro_topics=topic_formats(kafka.format, kafka.formats),
                       heartbeat_prefix=kafka.heartbeat_topic_prefix, columns=columns)
