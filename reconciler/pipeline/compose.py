"""The composition root: a pipeline's parts, built once from the settings.

The worker and replay both build their clients here and hand them to a `Pipeline`:
the consumer of their group, the dead-letter producer, the shard clients of the shard
map and the invalidator over them, the decoder and the planner. Nothing else creates
a Kafka or Valkey client for the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer

from connectors.debezium.decode import Decoder
from connectors.kafka import consumer_config, is_fatal, producer_config
from reconciler.errors import ConfigError, FatalError
from reconciler.observe.metrics import Metrics
from reconciler.pipeline import faults
from reconciler.pipeline.clients import kafka_security
from reconciler.pipeline.deadletter import DeadLetters, producer_limit
from reconciler.pipeline.decoders import build_decoder
from reconciler.pipeline.hooks import Hooks
from reconciler.pipeline.invalidator import Invalidator
from reconciler.pipeline.parking import Parking
from reconciler.pipeline.planner import KEY_ONLY, MISSING, Planner
from reconciler.pipeline.shards import ShardPool
from reconciler.settings import Settings
from shard_map import ShardMap

log = logging.getLogger(__name__)
RDKAFKA_LOG = logging.getLogger("kafka")  # where librdkafka's own log lines go


def kafka_error_callback(stopping: Callable[[], bool]) -> Callable[[KafkaError], None]:
    """librdkafka's error_cb, served on the calling thread inside consume(), flush() and
    poll(). librdkafka retries a failed authentication or TLS handshake forever, telling
    only this callback: such an error (`is_fatal`) raises FatalError out of that call,
    which stops the worker, unless it is already stopping. Others librdkafka retries,
    and logs through the `kafka` logger itself."""

    def on_error(error: KafkaError) -> None:
        if is_fatal(error) and not stopping():
            raise FatalError(f"kafka refused the connection: {error.str()} (check "
                             "kafka.security: the credentials, the CA, the ACLs)")
        log.debug("kafka: %s", error.str())

    return on_error


def consumer_error(error: KafkaError) -> None:
    """An error among the consumed records: fatal ones stop the worker."""
    if is_fatal(error):
        raise FatalError(f"kafka: {error.str()} (check the credentials, ACLs and "
                         "kafka.security settings)")
    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        log.warning("kafka: %s (is the topic created? `reconciler doctor` checks)", error.str())
        return
    log.warning("kafka: %s", error.str())


@dataclass
class Parts:
    """What a pipeline is made of."""

    consumer: Consumer
    producer: Producer
    dead_letters: DeadLetters
    shards: ShardPool
    invalidator: Invalidator
    decoder: Decoder
    planner: Planner
    parking: Parking | None = None  # shard isolation (valkey.parking.enabled)

    def close(self) -> None:
        """Release the clients (the consumer is closed by its owner, who leaves the group)."""
        self.producer.flush(5)
        if self.parking is not None:
            self.parking.close()
        self.shards.close()


def build_parts(settings: Settings, shard_map: ShardMap, metrics: Metrics, *, group_id: str,
                hooks: Hooks, stopping: Callable[[], bool],
                consumer_options: dict[str, Any] | None = None) -> Parts:
    """Every client of a pipeline for `group_id`; raises ConfigError for a shard map
    these settings cannot use, or a max_event_bytes the dead-letter producer cannot."""
    kafka = settings.kafka
    security = kafka_security(settings)
    refused = {"error_cb": kafka_error_callback(stopping)}
    producer_options = (producer_config(kafka.bootstrap_servers, security, kafka.client,
                                        logger=RDKAFKA_LOG)
                        | {"message.timeout.ms": int(kafka.retry_budget_seconds * 1000)}
                        | refused)
    dead_letter_bytes = producer_limit(settings.max_event_bytes, producer_options, kafka.client)
    planner = Planner.for_settings(settings, shard_map,
                                   tombstones=not faults.broken("ignore_tombstones"))
    for name, rules in planner.tables.items():  # series at zero, for the alerts
        for template in rules.templates:
            metrics.unresolved.labels(name, template.source, MISSING)
            if template not in rules.key_templates:
                metrics.unresolved.labels(name, template.source, KEY_ONLY)
    shards = ShardPool(settings, metrics, library=faults.library())
    problems = shards.problems(shard_map)
    if problems:
        raise ConfigError(f"shard_map {settings.shard_map}: " + "; ".join(problems))
    shards.update(shard_map)
    consumer = Consumer(consumer_config(kafka.bootstrap_servers, group_id, security,
                                        kafka.client, logger=RDKAFKA_LOG,
                                        group_protocol=kafka.group_protocol)
                        | refused | (consumer_options or {}))
    producer = Producer(producer_options)
    valkey = settings.valkey
    parking = None
    if valkey.parking.enabled:
        def drain_consumer(group: str) -> Consumer:
            return Consumer(consumer_config(kafka.bootstrap_servers, group, security,
                                            kafka.client, logger=RDKAFKA_LOG,
                                            group_protocol=kafka.group_protocol)
                            | {"enable.auto.commit": False} | refused)

        parking = Parking(producer, drain_consumer,
                          topic_prefix=valkey.parking.topic_prefix or f"{group_id}.parked",
                          group=f"{group_id}.parked",
                          after_seconds=valkey.parking.after_seconds, metrics=metrics,
                          retry_budget_seconds=kafka.retry_budget_seconds,
                          truncate_rate=valkey.truncate_max_keys_per_second)
    invalidator = Invalidator(
        shards.clients, retry_budget_seconds=valkey.retry_budget_seconds,
        truncate_max_keys_per_second=valkey.truncate_max_keys_per_second,
        on_shard_state=shards.mark, on_retry=metrics.retries.labels("valkey").inc,
        should_stop=stopping, hooks=hooks, fences=not faults.broken("no_fences"),
        parking=parking)
    return Parts(
        consumer=consumer, producer=producer,
        dead_letters=DeadLetters(producer, kafka.dead_letter_topic, group_id,
                                 retry_budget_seconds=kafka.retry_budget_seconds,
                                 max_bytes=dead_letter_bytes,
                                 max_event_bytes=settings.max_event_bytes),
        shards=shards, invalidator=invalidator,
        decoder=build_decoder(settings, planner.columns, should_stop=stopping,
                              on_retry=metrics.retries.labels("registry").inc),
        planner=planner, parking=parking)
