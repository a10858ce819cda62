"""The smaller sections: metrics, Postgres and sources, Kafka Connect, freshness,
logging."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from reconciler.settings.base import TABLE_NAME, Strict, read_secret_file


class MetricsSettings(Strict):
    host: str = "0.0.0.0"  # a metrics endpoint in a pod listens on all interfaces
    port: int = Field(9400, ge=0, le=65535)
    lag_refresh_seconds: float = Field(5.0, gt=0)


class PostgresSettings(Strict):
    dsn: SecretStr | None = None
    dsn_file: Path | None = None

    def dsn_value(self) -> str | None:
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        if self.dsn_file is not None:
            return read_secret_file(self.dsn_file, "postgres.dsn_file")
        return None


class SourceSettings(Strict):
    """One source database (`sources:`): its Postgres, for audit and doctor, and the
    Debezium connector whose topics (`<topic_prefix>.<schema>.<table>`) carry its
    changes. Every source shares `tables:`; the worker consumes `kafka.topics`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    topic_prefix: str = Field(min_length=1, description="the connector's topic.prefix")
    connector: str | None = Field(
        None, description="the Debezium connector's name at connect.url; None: the one "
                          "whose topic.prefix is topic_prefix")
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)


class ConnectSettings(Strict):
    """Kafka Connect's REST API, for `reconciler doctor` (connector and task state)."""

    url: str = Field(description="Kafka Connect REST URL, e.g. http://connect:8083")
    connector: str | None = Field(
        None, description="the Debezium connector's name; None: the one whose topic.prefix "
                          "names the configured topics")
    username: str | None = None  # HTTP basic auth
    password: SecretStr | None = None
    timeout_seconds: float = Field(10.0, gt=0)


class FreshnessSettings(Strict):
    """What advances the freshness watermark of quiet partitions."""

    # A table Debezium writes through the WAL on every heartbeat (heartbeat.action.query):
    # its change's source.ts_ms is a real commit time, streamed in WAL order, so it proves
    # Debezium has read everything committed before it. Without one, the heartbeat
    # topic's ts_ms (wall time) is used, which runs ahead while Debezium lags the WAL.
    heartbeat_table: str | None = None

    @field_validator("heartbeat_table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        if value is not None and not TABLE_NAME.fullmatch(value):
            raise ValueError(f"{value!r}: write it as schema.table, e.g. public.debezium_heartbeat")
        return value


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "text"
