"""The Debezium PostgreSQL connector's records, as they arrive and as we keep them.

The wire structs (``msgspec.Struct``) validate at the boundary: a record whose types
are wrong fails to decode with a JSON path. Both converter settings are covered by
one struct: with ``schemas.enable=true`` a value is ``{"schema": …, "payload": …}``,
without it the envelope fields sit at the top level.

Inside, a record is an ``Event``: a frozen struct.
"""

from __future__ import annotations

from typing import Any

import msgspec

from connectors.debezium.values import LogicalType

# Event kinds.
CHANGE = "change"  # op c, u, d or r on a table row
TRUNCATE = "truncate"  # op t: every row of a table is gone
TOMBSTONE = "tombstone"  # null value after a delete: the key alone (a key-only delete)
HEARTBEAT = "heartbeat"  # __debezium-heartbeat.<prefix>: the connector is alive at ts_ms
TRANSACTION = "transaction"  # <prefix>.transaction BEGIN/END markers
MESSAGE = "message"  # op m: a logical decoding message (pg_logical_emit_message)

OPS = frozenset("cudrtm")  # every op the PostgreSQL connector emits
EMPTY = msgspec.Raw()  # an absent embedded schema (msgspec.Raw cannot be Optional)


class WireSource(msgspec.Struct, frozen=True):
    """`source`: which table, and when the change was committed. Only what the
    reconciler reads: the other fields (db, lsn, txId, snapshot, sequence …) are
    skipped by the parser, as JSON, without being built or type-checked."""

    schema: str | None = None
    table: str | None = None
    ts_ms: int | None = None


class WireEnvelope(msgspec.Struct, frozen=True):
    """The change-event envelope, or a heartbeat / transaction marker (no `op`)."""

    op: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    source: WireSource | None = None
    ts_ms: int | None = None
    status: str | None = None  # transaction metadata: BEGIN or END


class WireValue(msgspec.Struct, frozen=True):
    """A record value with or without the embedded Connect schema."""

    schema: msgspec.Raw = EMPTY  # left undecoded; empty when the schema is not embedded
    payload: WireEnvelope | None = None
    op: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    source: WireSource | None = None
    ts_ms: int | None = None
    status: str | None = None


class WireKey(msgspec.Struct, frozen=True):
    """A record key: the primary-key columns, with or without the schema."""

    schema: msgspec.Raw = EMPTY
    payload: dict[str, Any] | None = None


ColumnTypes = dict[str, LogicalType]  # column → logical type, from the embedded schema


class Event(msgspec.Struct, frozen=True, gc=False):
    """One decoded Kafka record (a msgspec Struct: ~10x cheaper to build than a frozen
    dataclass, and built once per record on the hot path)."""

    kind: str  # CHANGE, TRUNCATE, TOMBSTONE, HEARTBEAT, TRANSACTION or MESSAGE
    topic: str
    partition: int
    offset: int
    table: str | None = None  # "schema.table" from `source`
    op: str | None = None  # c, u, d, r, t or m
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    key: dict[str, Any] | None = None  # the record key's columns (the primary key)
    ts_ms: int | None = None  # source commit time (source.ts_ms), or the heartbeat's ts_ms
    column_types: ColumnTypes | None = None  # logical types, when the schema is embedded

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"
