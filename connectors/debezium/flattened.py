"""Decode the rows Debezium's ``ExtractNewRecordState`` SMT writes ("flattened" topics).

The SMT replaces the change-event envelope with one row — ``after``, or for a delete
``before`` — plus the fields its ``add.fields`` asks for, written by Connect's JSON
converter (``schemas.enable`` true or false). `FlattenedDecoder` is a `Decoder`: the
topics `flattened_topics` names are read as rows, the others by the decoder it wraps
(JSON, or Avro). A row becomes the `Event` the envelope of the same change would have
become, as far as the row tells, so the planner plans it the same way:

- ``__deleted: "true"`` (``delete.tombstone.handling.mode=rewrite``), or ``__op: "d"``:
  a delete, the row as its ``before`` — with REPLICA IDENTITY DEFAULT the key and the
  columns' defaults, as in the envelope's;
- ``__op`` c, u or r (``add.fields=op``): that change, the row as its ``after``;
- no ``__op``: an upsert, op ``u`` — a snapshot read is then fenced as a change;
- a null value, or the SMT's tombstone (its value schema kept, so the JSON converter
  writes ``null`` or ``{"schema": …, "payload": null}``): a tombstone, the key-only delete;
- a transaction marker, a logical message, a heartbeat (passed on unchanged by the
  SMT): as the JSON decoder reads them.

No row carries ``before``: a change of the shard key (a move) or of a key column is
seen only as the new row. ``TRUNCATE`` never arrives (the SMT drops it).

The table is ``__schema``.``__table`` (``add.fields=schema,table``); without them the
topic's last two parts (``<prefix>.<schema>.<table>``) stand in for what is missing.
The commit time is ``__source_ts_ms`` (``add.fields=source.ts_ms``), else unknown. The
SMT's default field prefix ``__`` is the one read: fields renamed or given another
``add.fields.prefix`` are row columns like any other.

reasons (dead letters), as `Decoder`'s: ``invalid_json``, ``invalid_envelope`` (not a
row, a metadata field of the wrong type, no table), ``unknown_op``, ``invalid_key``,
``key_too_large``, ``schema_too_large``, ``empty_record``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypedDict

import msgspec

from connectors.debezium import model
from connectors.debezium.decode import (  # with this package's own private helpers
    _ANY,
    HEARTBEAT_PREFIX,
    MAX_SCHEMA_BYTES,
    Decoder,
    InvalidEvent,
    _Column,
    _column_types,
    _parse,
    _utf8_error,
)
from connectors.debezium.model import ColumnTypes, Event

DELETED = "__deleted"  # "true" on a rewritten delete, "false" on the other rows
OP = "__op"  # add.fields=op: c, u, d or r
TABLE = "__table"  # add.fields=table
SCHEMA = "__schema"  # add.fields=schema
SOURCE_TS = "__source_ts_ms"  # add.fields=source.ts_ms: the commit time
META = (DELETED, OP, TABLE, SCHEMA, SOURCE_TS)  # what the decoder reads of the SMT's fields
# Fields of the records the SMT passes on unchanged (transaction markers, messages).
PASSED_ON = ("status", "event_count", "op", "message", "ts_ms")
ROW_OPS = frozenset("cudr")
MAX_NAMES = 10_000  # (topic, __schema, __table) → table names remembered, at most
SCHEMA_KEY = b'{"schema":'  # how the JSON converter starts a value with its schema
PAYLOAD_KEY = b',"payload":'


class _Schema(msgspec.Struct, frozen=True, gc=False):
    """A flattened value's Connect schema: its fields are the row's columns."""

    fields: list[_Column] | None = None


_SCHEMA = msgspec.json.Decoder(_Schema)


class FlattenedDecoder(Decoder):
    """Decodes flattened topics (`flattened_topics`) as rows; the others with `inner`
    (default: as `Decoder`, JSON)."""

    __slots__ = ("_flat_prefixes", "_flat_schemas", "_inner", "_is_flat", "_names", "_rows",
                 "_wrapped")

    def __init__(self, *, flattened_topics: Callable[[str], bool], inner: Decoder | None = None,
                 heartbeat_prefix: str = HEARTBEAT_PREFIX,
                 columns: Iterable[str] | None = None) -> None:
        super().__init__(heartbeat_prefix=heartbeat_prefix, columns=columns)
        self._is_flat = flattened_topics
        self._inner = inner
        self._flat_schemas: dict[str, tuple[msgspec.Raw, ColumnTypes]] = {}
        self._flat_prefixes: dict[str, tuple[bytes, ColumnTypes]] = {}  # as Decoder's
        self._names: dict[tuple[str, Any, Any], str] = {}  # (topic, __schema, __table) → table
        self._rows, self._wrapped = _row_decoders(None if columns is None else frozenset(columns))

    def decode(self, topic: str, partition: int, offset: int,
               key: bytes | None, value: bytes | None) -> Event:
        if not self._is_flat(topic):
            if self._inner is not None:
                return self._inner.decode(topic, partition, offset, key, value)
            return super().decode(topic, partition, offset, key, value)
        if value is None or topic.startswith(self._heartbeat_prefix):
            return super().decode(topic, partition, offset, key, value)
        row, types = self._row(topic, value)
        if row is None:  # the SMT's tombstone
            if key is None:
                raise InvalidEvent("empty_record", "record has neither a key nor a row")
            return self.key_event(topic, partition, offset, key)
        if not isinstance(row, dict):
            raise InvalidEvent("invalid_envelope", f"the value is a JSON "
                               f"{type(row).__name__}, not a row (an object)", path="$")
        if OP not in row and DELETED not in row:
            passed = _passed_on(topic, partition, offset, row)
            if passed is not None:
                return passed
        return self._row_event(topic, partition, offset, key, row, types)

    def key_event(self, topic: str, partition: int, offset: int, key: bytes) -> Event:
        if self._inner is not None and not self._is_flat(topic):
            return self._inner.key_event(topic, partition, offset, key)
        return super().key_event(topic, partition, offset, key)

    def _row(self, topic: str, value: bytes) -> tuple[Any, ColumnTypes | None]:
        """The row (None for the SMT's tombstone) and, with an embedded schema, its
        columns' logical types."""
        rows, wrapped = self._rows, self._wrapped
        if self._projected and not value.isascii() and _utf8_error(value) is not None:
            rows, wrapped = _ROWS, _WRAPPED  # the full decode says where the bad byte is
        known = self._flat_prefixes.get(topic)
        if known is not None and value.startswith(known[0]) and value.endswith(b"}"):
            try:
                return rows.decode(memoryview(value)[len(known[0]):-1]), known[1]
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                    RecursionError):
                pass  # the full decode below says what is wrong
        if value.startswith(SCHEMA_KEY):
            try:
                found = wrapped.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                    RecursionError):
                _not_wrapped(value)  # else a row whose first column is `schema`
            else:
                return found.payload, self._types(topic, value, found.schema)
        return _parse(rows, value, "value"), None

    def _types(self, topic: str, value: bytes, schema: msgspec.Raw) -> ColumnTypes | None:
        if len(schema) > MAX_SCHEMA_BYTES:
            raise InvalidEvent("schema_too_large", f"the embedded schema is {len(schema):,} "
                               f"bytes, more than MAX_SCHEMA_BYTES ({MAX_SCHEMA_BYTES:,}): no "
                               "table's schema is that large", path="$.schema")
        cached = self._flat_schemas.get(topic)
        if cached is not None and cached[0] == schema:
            types = cached[1]
        else:
            types = _row_types(schema)
            self._flat_schemas[topic] = (schema, types)
        prefix = SCHEMA_KEY + bytes(schema) + PAYLOAD_KEY
        if value.startswith(prefix):
            self._flat_prefixes[topic] = (prefix, types)
        return types

    def _row_event(self, topic: str, partition: int, offset: int, key: bytes | None,
                   row: dict[str, Any], types: ColumnTypes | None) -> Event:
        pop = row.pop
        deleted, op, ts_ms = pop(DELETED, None), pop(OP, None), pop(SOURCE_TS, None)
        schema, name = pop(SCHEMA, None), pop(TABLE, None)
        named = (topic, schema, name)
        try:
            table = self._names[named]
        except KeyError:  # the first of its topic, or not names (unhashable: raises below)
            table = _table(topic, schema, name)
            if len(self._names) < MAX_NAMES:
                self._names[named] = table
        except TypeError:
            table = _table(topic, schema, name)
        if ts_ms is not None and type(ts_ms) is not int:
            raise InvalidEvent("invalid_envelope", f"`{SOURCE_TS}` is {ts_ms!r:.40}, not "
                               "epoch milliseconds", path=f"$.{SOURCE_TS}")
        if deleted is not None and deleted != "true" and deleted != "false":
            raise InvalidEvent("invalid_envelope", f"`{DELETED}` is {deleted!r:.40}, not "
                               '"true" or "false"', path=f"$.{DELETED}")
        row_key = self._key(key) if key is not None else None
        if deleted == "true" or op == "d":
            return Event(model.CHANGE, topic, partition, offset, table=table, op="d",
                         before=row, key=row_key, ts_ms=ts_ms, column_types=types)
        if op is None:
            op = "u"  # an upsert: no more is known
        elif type(op) is not str or op not in ROW_OPS:
            raise InvalidEvent("unknown_op", f"unknown `{OP}` {op!r:.40} (expected one of c, "
                               "u, d, r)", path=f"$.{OP}")
        return Event(model.CHANGE, topic, partition, offset, table=table, op=op, after=row,
                     key=row_key, ts_ms=ts_ms, column_types=types)


def _table(topic: str, schema: Any, table: Any) -> str:
    """`schema.table` from the row's fields, the topic's name filling in what is missing."""
    for name, found in ((SCHEMA, schema), (TABLE, table)):
        if found is not None and (type(found) is not str or not found):
            raise InvalidEvent("invalid_envelope", f"`{name}` is {found!r:.40}, not a name",
                               path=f"$.{name}")
    if schema is not None and table is not None:
        return f"{schema}.{table}"
    parts = topic.rsplit(".", 2)
    if len(parts) < 2 or not all(parts[-2:]):
        raise InvalidEvent("invalid_envelope", f"no table: topic {topic!r} is not named "
                           "<prefix>.<schema>.<table> and the row has no "
                           f"`{SCHEMA}`/`{TABLE}` (add.fields=schema,table)")
    return f"{schema or parts[-2]}.{table or parts[-1]}"


def _not_wrapped(value: bytes) -> None:
    """Raises for a schema-and-payload value whose payload is no row (nor null)."""
    try:
        parsed = _ANY.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return  # the row decode says what is wrong
    if isinstance(parsed, dict) and parsed.keys() == {"schema", "payload"}:
        raise InvalidEvent("invalid_envelope", f"`payload` is a JSON "
                           f"{type(parsed['payload']).__name__}, not a row (an object)",
                           path="$.payload")


def _passed_on(topic: str, partition: int, offset: int, row: dict[str, Any]) -> Event | None:
    """The event of a record the SMT passes on unchanged — a transaction marker, a
    logical message — as the JSON decoder makes it; None for a row."""
    status = row.get("status")
    if (status == "BEGIN" or status == "END") and "event_count" in row:
        kind = model.TRANSACTION
    elif row.get("op") == "m" and "message" in row:
        kind = model.MESSAGE
    else:
        return None
    ts_ms = row.get("ts_ms")
    if ts_ms is not None and type(ts_ms) is not int:
        raise InvalidEvent("invalid_envelope", f"`ts_ms` is {ts_ms!r:.40}, not epoch "
                           "milliseconds", path="$.ts_ms")
    if kind == model.MESSAGE:
        return Event(kind, topic, partition, offset, op="m", ts_ms=ts_ms)
    return Event(kind, topic, partition, offset, ts_ms=ts_ms)


def _row_types(schema: msgspec.Raw) -> ColumnTypes:
    try:
        fields = _SCHEMA.decode(schema).fields
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        fields = None
        parsed = _ANY.decode(schema) if _utf8_error(schema) is None else None
        if isinstance(parsed, dict) and isinstance(parsed.get("fields"), list):
            fields = [_Column(field=f.get("field"), name=f.get("name"),
                              parameters=f.get("parameters"))
                      for f in parsed["fields"] if isinstance(f, dict)]
    return _column_types(fields or ())


def _row_decoders(columns: frozenset[str] | None) -> tuple[msgspec.json.Decoder[Any],
                                                           msgspec.json.Decoder[Any]]:
    """The row (or null) and the ``{"schema", "payload"}`` value decoders; with `columns`,
    rows of only those columns and the fields the decoder reads."""
    row: Any = Any
    if columns is not None and all(column.isascii() for column in columns):
        names = sorted({*columns, *META, *PASSED_ON})
        row = TypedDict("FlatRow", dict.fromkeys(names, Any), total=False)  # type: ignore[misc,no-redef]
    wrapped = msgspec.defstruct("FlatValue", [("schema", msgspec.Raw), ("payload", row | None)],
                                frozen=True, forbid_unknown_fields=True)
    return msgspec.json.Decoder(row | None), msgspec.json.Decoder(wrapped)


_ROWS, _WRAPPED = _row_decoders(None)
