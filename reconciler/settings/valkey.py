"""``valkey:``: credentials and TLS for every shard, retries, failover replay,
parking."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, SecretStr, model_validator

from reconciler.settings.base import Strict, one_of, read_secret_file


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


class Credentials(Strict):
    """A user and a password, each given inline or as a file (a Secret's): what a
    section holding Valkey credentials shares."""

    username: str | None = None
    username_file: Path | None = None  # read at load: for a user name kept in a Secret
    password: SecretStr | None = None
    password_file: Path | None = None
    _section: ClassVar[str]  # where the fields stand in the config, for error messages

    @model_validator(mode="after")
    def _check(self) -> Self:
        one_of(self.username, self.username_file, "username")
        return self

    def password_value(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return read_secret_file(self.password_file, f"{self._section}.password_file")
        return None


class ValkeySentinelAuth(Credentials):
    """The user and password sent to the Sentinels of sentinel shards whose URLs carry
    none (a URL's user information wins); the primaries use valkey.username/password."""

    _section = "valkey.sentinel"


class ValkeySettings(Credentials):
    _section = "valkey"

    tls: ValkeyTLS = Field(default_factory=ValkeyTLS)
    sentinel: ValkeySentinelAuth = Field(default_factory=ValkeySentinelAuth)
    socket_timeout_seconds: float = Field(5.0, gt=0)
    retry_budget_seconds: float = Field(120.0, gt=0)
    truncate_max_keys_per_second: float = Field(50_000.0, gt=0)
    # A shard whose server changed (failover, restart) may have lost writes it had
    # acknowledged: the changes from this many seconds before its old server was last
    # seen are processed again (0: off).
    failover_replay_seconds: float = Field(60.0, ge=0)
    identity_check_seconds: float = Field(1.0, gt=0)  # how often each shard's server is asked
    parking: ParkingSettings = Field(default_factory=ParkingSettings)
