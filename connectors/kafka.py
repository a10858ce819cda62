"""librdkafka configuration for the worker's consumer, its dead-letter producer and
its admin client, and the classification of Kafka errors.

The consumer stores offsets only when the application says so
(``enable.auto.offset.store=false``) and auto-commits what was stored; it starts a
new group at the earliest offset (an invalidator must never skip to the latest);
rebalances are cooperative. Security properties (SASL, TLS) and any extra
librdkafka property pass through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError

ClientConfig = dict[str, str | int | float | bool | object]

CLASSIC, CONSUMER = "classic", "consumer"  # group.protocol: the client's, or KIP-848's
# Client properties the consumer group protocol (KIP-848) refuses: the broker owns them.
BROKER_OWNED = ("session.timeout.ms", "heartbeat.interval.ms", "group.protocol.type",
                "partition.assignment.strategy")
ASSIGNMENT_STRATEGY = "cooperative-sticky"  # incremental rebalances: no stop-the-world
AUTO_COMMIT_INTERVAL_MS = 1000  # how often stored offsets are committed
SESSION_TIMEOUT_MS = 10_000  # a silent worker loses its partitions after this
# A batch that stays in retry longer than this loses the partitions, so the retry
# budget (120 s by default) fits well inside it.
MAX_POLL_INTERVAL_MS = 300_000
PREFETCH_KBYTES = 32 * 1024  # librdkafka's local queue: enough for ~7k 4.5 KB records
FETCH_QUEUE_BACKOFF_MS = 10  # how soon to fetch again once the full queue drains
# A fetch response carries up to 1 MB per partition (max.partition.fetch.bytes), up to
# librdkafka's 50 MB: on a backlog it grows with the partitions, decompressed into the
# queue on top of PREFETCH_KBYTES. Capped, the worker's peak RSS at 96 partitions fell
# from 490-635 to ~240 MB, near the 209 at 6, and its events/s did not fall
# (docs/benchmarks.md, "How cost grows"). Larger single records still come: the first
# batch of a fetch always does.
FETCH_MAX_BYTES = 8 * 1024 * 1024
# librdkafka notices that a subscribed topic grew partitions only on a metadata refresh;
# at its default (5 min) the changes Debezium writes to a new partition wait that long,
# unreconciled. One small metadata request per interval bounds it.
METADATA_REFRESH_MS = 10_000
# The broker holds a fetch until FETCH_MIN_BYTES are ready or FETCH_WAIT_MAX_MS have
# passed. At everyday rates a batch then carries ~20 records instead of one or two: the
# cost of a batch (a Valkey round trip per shard, the offsets, the metrics, a thread
# woken from sleep) is shared, and CPU per event falls ~4x at 1k/s and ~2.4x at 5k/s
# (docs/benchmarks.md, "Everyday rates"). The price: up to FETCH_WAIT_MAX_MS more delay
# when changes are sparse (p50 ~11 ms added at 1k/s, against 1.2 before; at 5k/s a
# fetch fills in ~5 ms), and an idle worker fetching 50 times a second (0.6% of a
# core). Lower them in kafka.client to trade CPU for latency, raise them for the
# reverse (README: the cost-first setting).
FETCH_WAIT_MAX_MS = 20
FETCH_MIN_BYTES = 32 * 1024


@dataclass(frozen=True, slots=True)
class Security:
    """Kafka security settings, with secrets already read from the env or files."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: str | None = None
    ssl_endpoint_identification: bool = True

    def properties(self) -> ClientConfig:
        props: ClientConfig = {"security.protocol": self.protocol}
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_file,
            "ssl.certificate.location": self.ssl_cert_file,
            "ssl.key.location": self.ssl_key_file,
            "ssl.key.password": self.ssl_key_password,
        }
        props.update({name: str(value) for name, value in optional.items() if value is not None})
        if self.protocol in ("SSL", "SASL_SSL"):
            props["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_endpoint_identification else "none")
        return props


def _base(bootstrap_servers: str, security: Security, client: Mapping[str, object],
          logger: logging.Logger | None) -> ClientConfig:
    config: ClientConfig = {"bootstrap.servers": bootstrap_servers, **security.properties()}
    if logger is not None:
        config["logger"] = logger
    config.update(client)
    return config


def consumer_config(bootstrap_servers: str, group_id: str, security: Security,
                    client: Mapping[str, object] | None = None, *,
                    logger: logging.Logger | None = None,
                    group_protocol: str = CLASSIC) -> ClientConfig:
    """With `group_protocol` CONSUMER (KIP-848), the broker runs the group: it assigns
    partitions (incrementally, like cooperative-sticky) and sets the session timeout, so
    neither may be set on the client."""
    config = _base(bootstrap_servers, security, client or {}, logger)
    config.update({
        "group.id": group_id,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    })
    if group_protocol == CONSUMER:
        config["group.protocol"] = CONSUMER
    else:
        config["partition.assignment.strategy"] = ASSIGNMENT_STRATEGY
        config.setdefault("session.timeout.ms", SESSION_TIMEOUT_MS)
    config.setdefault("enable.auto.commit", True)
    config.setdefault("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
    config.setdefault("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)
    config.setdefault("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
    config.setdefault("fetch.min.bytes", FETCH_MIN_BYTES)
    # The prefetch queue and the size of a fetch bound memory on a backlog (RSS stays
    # flat whatever its size)…
    config.setdefault("queued.max.messages.kbytes", PREFETCH_KBYTES)
    config.setdefault("fetch.max.bytes", FETCH_MAX_BYTES)  # …whatever the partitions
    # …and when it is full, librdkafka waits this long before fetching again. Its default
    # (1 s) left the worker idle in consume() for a third of a backlog catch-up.
    config.setdefault("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
    config.setdefault("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS)
    config.setdefault("client.id", f"cache-reconciler-{group_id}")
    return config


def producer_config(bootstrap_servers: str, security: Security,
                    client: Mapping[str, object] | None = None, *,
                    logger: logging.Logger | None = None) -> ClientConfig:
    # Consumer-only passthrough properties would make the producer warn.
    extra = {k: v for k, v in (client or {}).items() if not _consumer_only(k)}
    config = _base(bootstrap_servers, security, extra, logger)
    config.update({"enable.idempotence": True, "acks": "all"})
    config.setdefault("linger.ms", 5)
    config.setdefault("message.max.bytes", 16 * 1024 * 1024)
    config.setdefault("client.id", "cache-reconciler-dlq")
    return config


def admin_config(bootstrap_servers: str, security: Security,
                 client: Mapping[str, object] | None = None, *,
                 logger: logging.Logger | None = None) -> ClientConfig:
    extra = {k: v for k, v in (client or {}).items()
             if not _consumer_only(k) and not k.startswith(("linger", "batch", "acks"))}
    return _base(bootstrap_servers, security, extra, logger)


def _consumer_only(name: str) -> bool:
    return name.startswith(("fetch.", "queued.", "session.", "heartbeat.", "max.poll",
                            "auto.commit", "enable.auto", "isolation.", "group."))


def is_fatal(error: KafkaError) -> bool:
    """True for errors the client reports as fatal, or that no retry can fix."""
    return bool(error.fatal()) or error.code() in {
        KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION,
        KafkaError._SSL, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
