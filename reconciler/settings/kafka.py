"""``kafka:``: the brokers, the group, the topics and their formats, the client."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator

from connectors.kafka import BROKER_OWNED, CONSUMER
from reconciler.formats import Format, SchemaRegistrySettings, check_formats
from reconciler.settings.base import Strict, masked_client

# librdkafka properties the worker owns: a passthrough value would break its guarantees.
RESERVED_CLIENT_PROPERTIES = {
    "group.id": "set kafka.group_id instead",
    "enable.auto.offset.store": "offsets are stored only after invalidations are acknowledged",
    "auto.offset.reset": "always `earliest`: an invalidator must never skip to latest",
    "bootstrap.servers": "set kafka.bootstrap_servers instead",
    "enable.partition.eof": "used internally",
    "partition.assignment.strategy": "cooperative-sticky is required for safe rebalances",
    "group.protocol": "set kafka.group_protocol instead",
}


class KafkaSecurity(Strict):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_username_file: Path | None = None  # read at load: for a user name kept in a Secret
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_endpoint_identification: bool = True

    @model_validator(mode="after")
    def _check(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"protocol {self.protocol} needs sasl_mechanism")
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set sasl_password or sasl_password_file, not both")
        if self.sasl_username is not None and self.sasl_username_file is not None:
            raise ValueError("set sasl_username or sasl_username_file, not both")
        return self


class KafkaSettings(Strict):
    bootstrap_servers: str
    group_id: str = "cache-reconciler"
    topics: list[str] = Field(default_factory=list)
    topic_regex: str | None = None
    dead_letter_topic: str = "cache-reconciler.dlq"
    heartbeat_topic_prefix: str = "__debezium-heartbeat"
    client: dict[str, str | int | float | bool] = Field(default_factory=dict)
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    batch_size: int = Field(2000, ge=1, le=100_000)
    poll_timeout_seconds: float = Field(0.5, gt=0)
    retry_budget_seconds: float = Field(120.0, gt=0)
    # classic: the client-side protocol every broker speaks (cooperative-sticky);
    # consumer: KIP-848, the broker-side protocol of Kafka 4.x (faster rebalances).
    group_protocol: Literal["classic", "consumer"] = "classic"
    # How the topics are encoded (reconciler/formats.py): json (Connect's JsonConverter),
    # avro (the Confluent wire format, schemas from schema_registry) or flattened (the
    # rows of Debezium's ExtractNewRecordState SMT, JSON); per topic in `formats`.
    format: Format = "json"
    formats: dict[str, Format] = Field(default_factory=dict)
    schema_registry: SchemaRegistrySettings | None = None

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        if bool(self.topics) == bool(self.topic_regex):
            raise ValueError("set exactly one of topics (a list) or topic_regex")
        if self.topic_regex:
            try:
                re.compile(self.topic_regex)
            except re.error as exc:
                raise ValueError(f"topic_regex {self.topic_regex!r}: {exc}") from exc
        for name, why in RESERVED_CLIENT_PROPERTIES.items():
            if name in self.client:
                raise ValueError(f"client.{name} cannot be set: {why}")
        if self.dead_letter_topic in self.topics:
            raise ValueError("dead_letter_topic must not be one of the consumed topics")
        check_formats(self.format, self.formats, self.schema_registry)
        if self.group_protocol == CONSUMER:
            refused = [name for name in BROKER_OWNED if name in self.client]
            if refused:
                raise ValueError(
                    f"client.{refused[0]} cannot be set with group_protocol: consumer "
                    "(KIP-848): the broker owns it (group.consumer.session.timeout.ms, "
                    "group.consumer.heartbeat.interval.ms, group.consumer.assignors on the "
                    "broker)")
        return self

    def __repr_args__(self) -> Any:
        # repr() and str() of the settings must not show a secret passed through `client`.
        for name, value in super().__repr_args__():
            yield name, (masked_client(value) if name == "client" else value)

    def subscription(self) -> list[str]:
        if self.topic_regex:
            regex = self.topic_regex
            return [regex if regex.startswith("^") else "^" + regex]
        return list(self.topics)
