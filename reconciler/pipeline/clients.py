"""The worker's Kafka clients: security settings, the subscription, the topics it
creates."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connectors.kafka import Security
from reconciler.settings import Settings, read_secret_file

log = logging.getLogger(__name__)

DLQ_TOPIC_CONFIG = {"max.message.bytes": str(16 * 1024 * 1024)}  # fits any record we consumed


def kafka_security(settings: Settings) -> Security:
    sec = settings.kafka.security
    password = sec.sasl_password.get_secret_value() if sec.sasl_password else None
    if sec.sasl_password_file is not None:
        password = read_secret_file(sec.sasl_password_file, "kafka.security.sasl_password_file")
    return Security(
        protocol=sec.protocol, sasl_mechanism=sec.sasl_mechanism,
        sasl_username=sec.sasl_username, sasl_password=password,
        ssl_ca_file=sec.ssl_ca_file, ssl_cert_file=sec.ssl_cert_file,
        ssl_key_file=sec.ssl_key_file,
        ssl_key_password=sec.ssl_key_password.get_secret_value() if sec.ssl_key_password else None,
        ssl_endpoint_identification=sec.ssl_endpoint_identification,
    )


def subscription_topics(settings: Settings, existing: Collection[str]) -> list[str]:
    """The configured topics, plus — when they are listed by name — the Debezium
    heartbeat topic and the heartbeat table's topic of each topic prefix, if they exist
    (they carry the freshness watermark of quiet partitions)."""
    kafka = settings.kafka
    topics = kafka.subscription()
    if kafka.topics:
        prefixes = dict.fromkeys(t.split(".", 1)[0] for t in topics if "." in t)
        wanted = [f"{kafka.heartbeat_topic_prefix}.{p}" for p in prefixes]
        table = settings.freshness.heartbeat_table
        if table:
            wanted += [f"{p}.{table}" for p in prefixes]
        topics += [t for t in wanted if t in existing and t not in topics]
    return topics


def ensure_topic(admin: AdminClient, topic: str, existing: Collection[str], *,
                 purpose: str, partitions: int = 3) -> None:
    """Create `topic` if it is missing; we may lack the ACL (doctor reports it)."""
    if topic in existing:
        return
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                           replication_factor=-1, config=DLQ_TOPIC_CONFIG)]
                                 )[topic]
    try:
        future.result(timeout=30)
        log.info("created the %s topic %s", purpose, topic)
    except Exception as exc:  # noqa: BLE001 - reported, the worker can still run
        log.warning("could not create the %s topic %s (%s); create it, or the first "
                    "record sent there stops the worker", purpose, topic, exc)


def cluster_topics(admin: AdminClient, timeout: float) -> dict[str, Any]:
    """The topics the cluster shows us. A refused authentication or TLS handshake stops
    start-up at once (FatalError from the admin client's error callback) rather than
    ending as a metadata timeout that does not say why."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dict(admin.list_topics(timeout=1).topics)
        except KafkaException:
            admin.poll(0)  # serves error_cb: raises FatalError if refused
            if time.monotonic() >= deadline:
                raise

