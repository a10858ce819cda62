"""How the consumed topics are encoded, and the schema registry of the Avro ones.

``kafka.format`` (``json``, the default, ``avro`` or ``flattened``) is every topic's, and
``kafka.formats`` overrides it per topic. ``flattened``: the rows of Debezium's
``ExtractNewRecordState`` SMT through Connect's JSON converter (no ``before`` image:
what that cannot do is in `connectors.debezium.flattened` and the README). Avro topics
need ``kafka.schema_registry``:
a Confluent-compatible API (Confluent Schema Registry, Apicurio's ``/apis/ccompat/v7``,
Karapace …), read with confluent-kafka's ``SchemaRegistryClient``. Its password comes
from the environment or a file and is masked wherever settings are printed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from reconciler.errors import ConfigError

JSON, AVRO, FLATTENED = "json", "avro", "flattened"
Format = Literal["json", "avro", "flattened"]


class SchemaRegistrySettings(BaseModel):
    """`kafka.schema_registry`: where Avro topics' writer schemas are read, by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="the Confluent-compatible API, e.g. "
                                 "http://registry:8080/apis/ccompat/v7; several: comma-separated")
    username: str | None = None  # HTTP basic auth
    username_file: Path | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ssl_ca_file: Path | None = None  # the CA that signed the registry's certificate
    ssl_cert_file: Path | None = None  # a client certificate (mutual TLS)
    ssl_key_file: Path | None = None
    timeout_seconds: float = Field(10.0, gt=0, description="one request's timeout; a "
                                   "registry that does not answer is retried within "
                                   "kafka.retry_budget_seconds")

    @model_validator(mode="after")
    def _check(self) -> SchemaRegistrySettings:
        for name in ("username", "password"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise ValueError(f"set {name} or {name}_file, not both")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r}: an http:// or https:// URL")
        return self

    def __repr_args__(self) -> Any:
        # repr() and str() never show a password given in the URL.
        for name, value in super().__repr_args__():
            yield name, (masked_url(value) if name == "url" else value)

    def resolved(self, resolve: Callable[[Path | None], Path | None]) -> SchemaRegistrySettings:
        """These settings with their files' relative paths resolved by `resolve`."""
        return self.model_copy(update={
            name: resolve(getattr(self, name))
            for name in ("username_file", "password_file", "ssl_ca_file", "ssl_cert_file",
                         "ssl_key_file") if getattr(self, name) is not None})

    def client_config(self) -> dict[str, Any]:
        """The ``SchemaRegistryClient`` configuration (secrets read here)."""
        config: dict[str, Any] = {"url": self.url, "timeout": self.timeout_seconds}
        username = self.username if self.username_file is None else _read(
            self.username_file, "kafka.schema_registry.username_file")
        password = self.password.get_secret_value() if self.password is not None else (
            _read(self.password_file, "kafka.schema_registry.password_file")
            if self.password_file is not None else None)
        if username is not None or password is not None:
            config["basic.auth.user.info"] = f"{username or ''}:{password or ''}"
        for name, option in (("ssl_ca_file", "ssl.ca.location"),
                             ("ssl_cert_file", "ssl.certificate.location"),
                             ("ssl_key_file", "ssl.key.location")):
            if getattr(self, name) is not None:
                config[option] = str(getattr(self, name))
        return config


def masked_url(url: str) -> str:
    """`url` (or comma-separated URLs) with any user:password@ replaced by ***@."""
    return ",".join(_masked(one) for one in url.split(","))


def _masked(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    return f"{scheme}{sep}{host}{slash}{path}"


def _read(path: Path, field: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from exc


def topic_formats(default: str, overrides: Mapping[str, str],
                  kind: str = AVRO) -> Callable[[str], bool]:
    """Whether a topic is of format `kind` (Avro by default): its override, else the
    default."""
    if not overrides:
        same = default == kind
        return lambda topic: same
    return lambda topic: overrides.get(topic, default) == kind


def check_formats(default: str, overrides: Mapping[str, str],
                  registry: SchemaRegistrySettings | None) -> None:
    """ValueError when an Avro topic has no schema registry to read it with."""
    if registry is None and (default == AVRO or AVRO in overrides.values()):
        raise ValueError("Avro topics (format or formats: avro) need schema_registry "
                         "(its url at least)")
