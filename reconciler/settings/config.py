"""The whole file (`Settings`), and loading it: the YAML, then the environment, then
relative paths resolved against the file's folder; a bad file is a `ConfigError`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from reconciler.errors import ConfigError
from reconciler.settings.base import (
    TABLE_NAME,
    masked_client,
    read_secret_file,
    without_userinfo,
)
from reconciler.settings.kafka import KafkaSettings
from reconciler.settings.sections import (
    ConnectSettings,
    FreshnessSettings,
    LoggingSettings,
    MetricsSettings,
    PostgresSettings,
    SourceSettings,
)
from reconciler.settings.tables import TableSpec
from reconciler.settings.valkey import ValkeySettings

CONFIG_ENV = "RECONCILER_CONFIG"  # environment variable naming the config file
DEFAULT_CONFIG = "reconciler.yaml"  # config file used when neither --config nor the env names one
IMPLICIT_SOURCE = "default"  # the source `postgres` and `connect.connector` make without `sources`


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
            registry["url"] = without_userinfo(registry["url"])
        if data.get("connect") and data["connect"].get("url"):
            data["connect"]["url"] = without_userinfo(data["connect"]["url"])
        return data


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
