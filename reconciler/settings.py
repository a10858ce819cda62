"""Settings: one YAML file, every field overridable from the environment.

``RECONCILER_`` prefix, ``__`` for nesting (``RECONCILER_KAFKA__GROUP_ID``), and the
environment wins over the file. Secrets (``SecretStr``) come from the environment or
from files (``*_file`` fields) and are masked wherever settings are printed. Relative
paths in the file (``shard_map``, TLS files) are resolved against the file's folder.
A bad file stops start-up with a message naming the file, the field and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connectors.kafka import BROKER_OWNED, CONSUMER
from reconciler.errors import ConfigError
from reconciler.formats import Format, SchemaRegistrySettings, check_formats
from reconciler.templates import KeyTemplate, TemplateError

CONFIG_ENV = "RECONCILER_CONFIG"  # environment variable naming the config file
DEFAULT_CONFIG = "reconciler.yaml"  # config file used when neither --config nor the env names one
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*")  # schema.table
IMPLICIT_SOURCE = "default"  # the source `postgres` and `connect.connector` make without `sources`
# Client property names whose values are masked when settings are printed.
SECRET_WORDS = ("password", "secret", "token", "credential", "key.pem", "oauthbearer.config",
                "jaas")
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


class Strict(BaseModel):
    """Base of every config section: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySpec(Strict):
    template: str = Field(description="key template, e.g. post:{id}")
    versioned: bool = Field(True, description="a versioned hash entry (v/d), or a plain key")

    @field_validator("template")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            KeyTemplate.compile(value, versioned=True)
        except TemplateError as exc:
            raise ValueError(f"template {value!r}: {exc}") from exc
        return value


class TableSpec(Strict):
    primary_key: list[str] = Field(min_length=1)
    shard_key: str
    version_column: str = "system_version"
    replica_identity: Literal["default", "full"] = "default"
    keys: list[KeySpec] = Field(min_length=1)
    # Logical types of columns used in templates, for topics without embedded schemas
    # (value.converter.schemas.enable=false): decimal:<scale>, date, timestamp-ms,
    # timestamp-us, timestamp-ns, string, int.
    column_types: dict[str, str] = Field(default_factory=dict)
    # A partitioned table published per leaf partition (publish_via_partition_root off,
    # Postgres' default): its leaves, whose changes are planned by this config. Regular
    # expressions, each matching a whole leaf name (in this table's schema) or
    # schema.table, e.g. ['events_\d{4}_\d{2}', events_default]. `doctor` checks them.
    partitions: list[str] = Field(default_factory=list)

    @field_validator("partitions")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"partitions: {pattern!r} is not a regular expression: "
                                 f"{exc}") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> TableSpec:
        for entry in self.keys:
            template = KeyTemplate.compile(entry.template, versioned=entry.versioned)
            if not template.columns:
                raise ValueError(f"template {entry.template!r} has no {{column}} placeholder")
            if not "".join(template.literals):
                raise ValueError(
                    f"template {entry.template!r} has no literal text: its truncate pattern "
                    "would be `*`, every key on every shard (write e.g. post:{id})")
        for column, kind in self.column_types.items():
            if not re.fullmatch(r"decimal:\d+|date|timestamp-(ms|us|ns)|string|int", kind):
                raise ValueError(
                    f"column_types.{column}: {kind!r} is not one of decimal:<scale>, date, "
                    "timestamp-ms, timestamp-us, timestamp-ns, string, int"
                )
        return self

    def templates(self) -> tuple[KeyTemplate, ...]:
        return tuple(KeyTemplate.compile(k.template, versioned=k.versioned) for k in self.keys)


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


class ValkeyTLS(Strict):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class ParkingSettings(Strict):
    """Shard isolation: a shard unavailable for `after_seconds` is parked — its calls go
    to a Kafka topic of its own, `<topic_prefix>.<shard>`, until it answers again — so
    the other shards go on (reconciler.pipeline.parking). Off: the worker retries for
    valkey.retry_budget_seconds, then exits."""

    enabled: bool = True
    after_seconds: float = Field(10.0, gt=0)
    topic_prefix: str | None = None  # default: <kafka.group_id>.parked


class ValkeySentinelAuth(Strict):
    """The user and password sent to the Sentinels of sentinel shards whose URLs carry
    none (a URL's user information wins); the primaries use valkey.username/password."""

    username: str | None = None
    username_file: Path | None = None  # read at load: for a user name kept in a Secret
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> ValkeySentinelAuth:
        _one_of(self.username, self.username_file, "username")
        return self

    def password_value(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, "valkey.sentinel.password_file")
        return None


class ValkeySettings(Strict):
    username: str | None = None
    username_file: Path | None = None  # read at load: for a user name kept in a Secret
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: ValkeyTLS = Field(default_factory=ValkeyTLS)
    sentinel: ValkeySentinelAuth = Field(default_factory=ValkeySentinelAuth)
    socket_timeout_seconds: float = Field(5.0, gt=0)
    retry_budget_seconds: float = Field(120.0, gt=0)
    truncate_max_keys_per_second: float = Field(50_000.0, gt=0)
    # A shard whose server changed (failover, restart) may have lost writes it had
    # acknowledged: the changes of this many seconds before are processed again (0: off).
    failover_replay_seconds: float = Field(60.0, ge=0)
    identity_check_seconds: float = Field(1.0, gt=0)  # how often each shard's server is asked
    parking: ParkingSettings = Field(default_factory=ParkingSettings)

    @model_validator(mode="after")
    def _check(self) -> ValkeySettings:
        _one_of(self.username, self.username_file, "username")
        return self

    def password_value(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, "valkey.password_file")
        return None


def _one_of(value: object, file: Path | None, name: str) -> None:
    if value is not None and file is not None:
        raise ValueError(f"set {name} or {name}_file, not both")


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


class Settings(BaseSettings):
    """The whole configuration (SPEC §4)."""

    model_config = SettingsConfigDict(
        env_prefix="RECONCILER_", env_nested_delimiter="__", extra="forbid", frozen=True,
    )

    kafka: KafkaSettings
    shard_map: Path
    shard_map_reload_seconds: float = Field(5.0, gt=0)
    fence_ttl_seconds: int = Field(60, ge=1)
    unknown_tables: Literal["skip", "error"] = "skip"
    max_event_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # After SIGTERM/SIGINT: at most this long to finish the batch in flight and commit;
    # past it the worker exits 2 by itself (keep the orchestrator's grace period longer).
    shutdown_timeout_seconds: float = Field(30.0, gt=0)
    tables: dict[str, TableSpec] = Field(min_length=1)
    valkey: ValkeySettings = Field(default_factory=ValkeySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    connect: ConnectSettings | None = None  # optional: used by doctor
    sources: list[SourceSettings] = Field(default_factory=list)  # several source databases
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    freshness: FreshnessSettings = Field(default_factory=FreshnessSettings)

    @model_validator(mode="after")
    def _check_sources(self) -> Settings:
        for what in ("name", "topic_prefix"):
            seen = [getattr(source, what) for source in self.sources]
            twice = sorted({value for value in seen if seen.count(value) > 1})
            if twice:
                raise ValueError(f"sources: {what} {', '.join(twice)} given more than once")
        if self.sources and (self.postgres.dsn or self.postgres.dsn_file):
            raise ValueError("postgres: with `sources`, give each source its own "
                             "sources[].postgres instead")
        if self.sources and self.connect is not None and self.connect.connector:
            raise ValueError("connect.connector: with `sources`, name each source's "
                             "connector in sources[].connector instead")
        return self

    def source_list(self) -> list[SourceSettings]:
        """`sources`, or the one implicit source (`IMPLICIT_SOURCE`) of `postgres` and
        `connect.connector`, its topic prefix unknown ("")."""
        if self.sources:
            return list(self.sources)
        return [SourceSettings.model_construct(
            name=IMPLICIT_SOURCE, topic_prefix="", postgres=self.postgres,
            connector=self.connect.connector if self.connect is not None else None)]

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, TableSpec]) -> dict[str, TableSpec]:
        for name in value:
            if not TABLE_NAME.fullmatch(name):
                raise ValueError(f"table {name!r}: write tables as schema.table, e.g. public.posts")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init kwargs).
        return env_settings, init_settings

    def masked(self) -> dict[str, Any]:
        """The effective settings for a log line, with every secret masked."""
        data = self.model_dump(mode="json")
        data["kafka"]["client"] = masked_client(data["kafka"]["client"])
        if self.postgres.dsn is not None:
            data["postgres"]["dsn"] = "**********"
        for source, raw in zip(self.sources, data["sources"], strict=True):
            if source.postgres.dsn is not None:
                raw["postgres"]["dsn"] = "**********"
        if data["kafka"].get("schema_registry"):
            registry = data["kafka"]["schema_registry"]
            registry["url"] = _without_userinfo(registry["url"])
        if data.get("connect") and data["connect"].get("url"):
            data["connect"]["url"] = _without_userinfo(data["connect"]["url"])
        return data


def _without_userinfo(url: str) -> str:
    """A URL with any user:password@ replaced by ***@."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def masked_client(client: dict[str, Any]) -> dict[str, Any]:
    """librdkafka properties with the values of secret-looking names masked."""
    return {name: "**********" if any(word in name.lower() for word in SECRET_WORDS) else value
            for name, value in client.items()}


def read_secret_file(path: Path, field: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from exc


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, resolve and validate the config file, or raise ConfigError saying why."""
    file = config_path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{file}: no such config file (pass --config FILE or set {CONFIG_ENV})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{file}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of settings")
    for name in raw:
        if not isinstance(name, str):  # `yes:`, `on:`, `null:`, `1:` are not strings in YAML
            raise ConfigError(f"{file}: top-level key {name!r} is not a setting name "
                              "(quote it if it is meant as text)")
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(file, exc)) from None
    return _resolve_paths(settings, file.resolve().parent)


def format_validation_error(file: Path, exc: ValidationError) -> str:
    lines = [f"{file}: {exc.error_count()} problem(s) in the configuration:"]
    for error in exc.errors():
        location = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".") or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see SPEC §4)"
        lines.append(f"  - {location}: {message}")
    lines.append(f"  (environment variables with the {Settings.model_config['env_prefix']} "
                 "prefix override the file)")
    return "\n".join(lines)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def resolve(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else base / path

    def user(file: Path | None, name: str, field: str) -> dict[str, Any]:
        # A user name from a file (a Secret's key mounted by the chart) is read once, here.
        path = resolve(file)
        return {} if path is None else {name: read_secret_file(path, field), f"{name}_file": path}

    security = settings.kafka.security
    kafka_security = security.model_copy(update={
        **{name: resolve(getattr(security, name))
           for name in ("sasl_password_file", "ssl_ca_file", "ssl_cert_file", "ssl_key_file")
           if getattr(security, name) is not None},
        **user(security.sasl_username_file, "sasl_username",
               "kafka.security.sasl_username_file"),
    })
    registry = settings.kafka.schema_registry
    registry = registry.resolved(resolve) if registry is not None else None
    tls = settings.valkey.tls
    valkey_tls = tls.model_copy(update={
        name: resolve(getattr(tls, name))
        for name in ("ca_file", "cert_file", "key_file") if getattr(tls, name) is not None
    })
    sentinel = settings.valkey.sentinel
    valkey = settings.valkey.model_copy(update={
        "tls": valkey_tls,
        **({"password_file": resolve(settings.valkey.password_file)}
           if settings.valkey.password_file else {}),
        **user(settings.valkey.username_file, "username", "valkey.username_file"),
        "sentinel": sentinel.model_copy(update={
            **({"password_file": resolve(sentinel.password_file)}
               if sentinel.password_file else {}),
            **user(sentinel.username_file, "username", "valkey.sentinel.username_file"),
        }),
    })
    def postgres(found: PostgresSettings) -> PostgresSettings:
        file = found.dsn_file
        return found.model_copy(update={"dsn_file": resolve(file)} if file else {})

    return settings.model_copy(update={
        "shard_map": resolve(settings.shard_map) or settings.shard_map,
        "kafka": settings.kafka.model_copy(update={
            "security": kafka_security, "schema_registry": registry}),
        "valkey": valkey,
        "postgres": postgres(settings.postgres),
        "sources": [source.model_copy(update={"postgres": postgres(source.postgres)})
                    for source in settings.sources],
    })
