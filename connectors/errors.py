"""Errors raised by the connectors package (the edges: Debezium, Kafka, Valkey).

The tree::

    ConnectorError                  root: everything raised on purpose by `connectors`
    ├── DecodeError                 a record that cannot be decoded: poison, dead-letter it
    │   └── ValueTooLarge           a column value past a cap (debezium.values): it names
    │                               no key and is not converted
    ├── RegistryUnavailable         the schema registry did not answer (connection refused,
    │                               timeout, 5xx): transient, the caller retries
    ├── RegistryRejected            the schema registry refused us (401, 403, another 4xx):
    │                               no retry helps; the message says what to check
    ├── PayloadError                a cached payload the writer helper cannot decode
    │                               (unknown codec marker, corrupt bytes): treat as a miss
    └── ValkeyShardError            a Valkey shard failed a command (.shard, .command)
        ├── ValkeyUnavailable       transient: connection refused/reset, timeout, LOADING,
        │                           MASTERDOWN, READONLY after a failover, TRYAGAIN, BUSY.
        │                           Whether it was applied is unknown; every cache
        │                           operation is idempotent, so the caller retries.
        └── ValkeyRejected          the server refused the command: NOPERM, WRONGPASS /
                                    NOAUTH, OOM, a script error, or its TLS certificate
                                    does not verify. Retrying will not help;
                                    the message names the shard, the command and the fix.

`reconciler` translates these at its boundary into its own tree; `connectors` never
imports `reconciler`.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connectors package raises on purpose."""


class DecodeError(ConnectorError):
    """A record that cannot be decoded: poison, to be dead-lettered."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class RegistryUnavailable(ConnectorError):
    """Transient: the schema registry is unreachable, slow or failing (5xx). Retry."""


class RegistryRejected(ConnectorError):
    """The schema registry refused the request (credentials, permissions). Do not retry."""


class PayloadError(ConnectorError):
    """A cached payload the writer helper cannot decode (unknown marker, corrupt data)."""


class ValkeyShardError(ConnectorError):
    """A Valkey shard failed a command; `shard` and `command` say where and what."""

    def __init__(self, message: str, *, shard: str, command: str) -> None:
        super().__init__(message)
        self.shard = shard
        self.command = command


class ValkeyUnavailable(ValkeyShardError):
    """Transient: the shard is unreachable, loading, read-only or busy. Retry."""


class ValkeyRejected(ValkeyShardError):
    """The shard refused the command (ACL, auth, OOM, script error). Do not retry."""
