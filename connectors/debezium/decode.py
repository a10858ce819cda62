"""Decode a Kafka record written by the Debezium PostgreSQL connector into an Event.

Handles the JSON converter with ``schemas.enable`` true or false, every op (c, u, d,
r, t, m), tombstones, heartbeats and transaction markers. Anything else raises
``InvalidEvent`` with a low-cardinality ``reason`` and a message that says what is
wrong and where in the record (a JSON path); the worker dead-letters it.

reasons: ``invalid_json`` (not JSON, invalid UTF-8, nested too deep), ``invalid_key``,
``invalid_envelope`` (wrong types, no source table, no row image), ``unknown_op``,
``empty_record`` (neither key nor value), ``key_too_large`` (a record key past
``MAX_RECORD_KEY_BYTES``), ``schema_too_large`` (an embedded value schema past
``MAX_SCHEMA_BYTES``). The two caps bound what a record makes the decoder build beside
the columns it keeps: no PostgreSQL key or table comes near them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypedDict, get_type_hints

import msgspec

from connectors.debezium import model
from connectors.debezium.model import ColumnTypes, Event, WireEnvelope, WireKey, WireValue
from connectors.errors import DecodeError

HEARTBEAT_PREFIX = "__debezium-heartbeat"  # Debezium's default topic.heartbeat.prefix
KEY_SCHEMA_SUFFIX = ".Key"  # Debezium names a key schema <prefix>.<schema>.<table>.Key
# A record key past this is no primary key (a btree entry holds at most ~2.7 kB, over
# at most 32 columns): it is dead-lettered before it is parsed.
MAX_RECORD_KEY_BYTES = 256 * 1024
# An embedded value schema past this is no table's (at most 1,600 columns: ~600 kB with
# both row images): it is dead-lettered before it is parsed.
MAX_SCHEMA_BYTES = 1024 * 1024


class InvalidEvent(DecodeError):
    """A record that is not a Debezium event we can act on."""

    def __init__(self, reason: str, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.reason = reason  # low-cardinality: a metric label and a dead-letter header
        self.message = message


_VALUE = msgspec.json.Decoder(WireValue)
_ENVELOPE = msgspec.json.Decoder(WireEnvelope)
PAYLOAD_KEY = b',"payload":'  # what follows the embedded schema in Connect's JSON
_KEY = msgspec.json.Decoder(WireKey)
_ANY = msgspec.json.Decoder()


class Decoder:
    """Decodes records; remembers each topic's last embedded schema's column types.

    The hot path: Connect's JSON converter writes ``{"schema":<S>,"payload":<P>}`` with
    the same bytes of S for every record of a topic until the table changes. Once a
    topic's ``{"schema":<S>,"payload":`` prefix is known, a record that starts with it
    has only P parsed (the schema is often two thirds of the record). Anything else —
    a new schema, other spacing, a payload that does not parse — takes the full,
    validating decode, which also reports what is wrong and where.

    With `columns` (every row column anything reads: the worker passes its tables'
    key, version and template columns) the row images keep only those: the parser
    skips the others — still checked as JSON, never built into objects (a post's body
    is most of its record). The parser does not check skipped text for UTF-8, so the
    record is checked first (`isascii()`, else a UTF-8 decode); one that fails takes
    the full decode, which says where the bad byte is, as without `columns`. (A column
    name that is not ASCII keeps the rows whole: see `__init__`.)
    """

    __slots__ = ("_envelope", "_heartbeat_prefix", "_prefixes", "_projected", "_schemas",
                 "_value")

    def __init__(self, *, heartbeat_prefix: str = HEARTBEAT_PREFIX,
                 columns: Iterable[str] | None = None) -> None:
        self._heartbeat_prefix = heartbeat_prefix + "."
        self._schemas: dict[str, tuple[msgspec.Raw, ColumnTypes]] = {}
        self._prefixes: dict[str, tuple[bytes, ColumnTypes]] = {}  # topic → (prefix, types)
        kept = None if columns is None else frozenset(columns)
        # msgspec (0.22) matches no TypedDict field whose name is not ASCII: such a
        # column would be dropped, so with one the rows stay whole.
        self._projected = kept is not None and all(column.isascii() for column in kept)
        if kept is None or not self._projected:
            self._envelope: msgspec.json.Decoder[Any] = _ENVELOPE
            self._value: msgspec.json.Decoder[Any] = _VALUE
        else:
            self._envelope, self._value = _projected_decoders(kept)

    def decode(self, topic: str, partition: int, offset: int,
               key: bytes | None, value: bytes | None) -> Event:
        if value is None:
            if key is None:
                raise InvalidEvent("empty_record", "record has neither a key nor a value")
            return self.key_event(topic, partition, offset, key)
        # Projected, skipped text is not checked for UTF-8: check the record first; one
        # that fails takes the full decoders, which build (and so check) every string.
        if not self._projected or value.isascii() or _utf8_error(value) is None:
            envelope, whole = self._envelope, self._value
        else:
            envelope, whole = _ENVELOPE, _VALUE
        known = self._prefixes.get(topic)
        if known is not None and value.startswith(known[0]) and value.endswith(b"}"):
            try:
                payload = envelope.decode(memoryview(value)[len(known[0]):-1])
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                    RecursionError):
                pass  # the full decode below says what is wrong
            else:
                return self._event(topic, partition, offset, key, payload, True, known[1])
        wire = _parse(whole, value, "value")
        if len(wire.schema) > MAX_SCHEMA_BYTES:
            raise InvalidEvent("schema_too_large", f"the embedded schema is "
                               f"{len(wire.schema):,} bytes, more than MAX_SCHEMA_BYTES "
                               f"({MAX_SCHEMA_BYTES:,}): no table's schema is that large",
                               path="$.schema")
        if wire.payload is None:
            return self._event(topic, partition, offset, key, wire, False, None)
        column_types = self._column_types(topic, wire.schema) if wire.schema else None
        if column_types is not None:
            prefix = b'{"schema":' + bytes(wire.schema) + PAYLOAD_KEY
            if value.startswith(prefix):
                self._prefixes[topic] = (prefix, column_types)
        return self._event(topic, partition, offset, key, wire.payload, True, column_types)

    def _event(self, topic: str, partition: int, offset: int, key: bytes | None,
               envelope: WireValue | WireEnvelope, wrapped: bool,
               column_types: ColumnTypes | None) -> Event:
        where = "$.payload" if wrapped else "$"
        if topic.startswith(self._heartbeat_prefix):
            return Event(model.HEARTBEAT, topic, partition, offset, ts_ms=envelope.ts_ms)
        op = envelope.op
        if op is None:
            if envelope.status is not None:
                return Event(model.TRANSACTION, topic, partition, offset, ts_ms=envelope.ts_ms)
            raise InvalidEvent("invalid_envelope", f"no `op` in the event envelope at `{where}`",
                               path=f"{where}.op")
        if op not in model.OPS:
            raise InvalidEvent("unknown_op", f"unknown op {op[:20]!r} (expected one of c, u, d, "
                               "r, t, m)", path=f"{where}.op")
        if op == "m":
            return Event(model.MESSAGE, topic, partition, offset, op=op, ts_ms=envelope.ts_ms)
        source = envelope.source
        if source is None or not source.table or not source.schema:
            raise InvalidEvent("invalid_envelope", "event has no source schema and table",
                               path=f"{where}.source")
        table = f"{source.schema}.{source.table}"
        ts_ms = source.ts_ms if source.ts_ms is not None else envelope.ts_ms
        if op == "t":
            return Event(model.TRUNCATE, topic, partition, offset, table=table, op=op, ts_ms=ts_ms)
        before, after = envelope.before, envelope.after
        if op == "d":
            if before is None:
                raise InvalidEvent("invalid_envelope", "delete event has no `before` image",
                                   path=f"{where}.before")
        elif after is None:
            raise InvalidEvent("invalid_envelope", f"op {op!r} event has no `after` image",
                               path=f"{where}.after")
        row_key = self._key(key) if key is not None else None
        return Event(model.CHANGE, topic, partition, offset, table=table, op=op, before=before,
                     after=after, key=row_key, ts_ms=ts_ms, column_types=column_types)

    def key_event(self, topic: str, partition: int, offset: int, key: bytes) -> Event:
        """A record known by its key alone (a tombstone; the key of a record whose value
        is dead-lettered): a TOMBSTONE event with the key's columns and, when the key
        embeds its Connect schema, the table its schema names (Debezium's
        ``<prefix>.<schema>.<table>.Key``) and the columns' logical types."""
        columns = self._key(key)
        table, types = None, None
        if key.startswith(b'{"schema":'):  # rare records: the schema is parsed each time
            table, types = _key_schema(key)
        return Event(model.TOMBSTONE, topic, partition, offset, table=table, key=columns,
                     column_types=types)

    def _key(self, key: bytes) -> dict[str, Any] | None:
        if len(key) > MAX_RECORD_KEY_BYTES:
            raise InvalidEvent("key_too_large", f"the record key is {len(key):,} bytes, more "
                               f"than MAX_RECORD_KEY_BYTES ({MAX_RECORD_KEY_BYTES:,}): no "
                               "primary key is that large")
        try:
            wire = _KEY.decode(key)
        except msgspec.ValidationError:
            # A key without an embedded schema is the bare column object.
            bare = _bare_key(key)
            if not isinstance(bare, dict):
                raise InvalidEvent("invalid_key", "record key is not a JSON object",
                                   path="$") from None
            return bare
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidEvent("invalid_key", f"record key is not valid JSON: {exc}") from None
        if wire.payload is not None:
            return wire.payload
        bare = _bare_key(key)
        assert isinstance(bare, dict)
        return bare

    def _column_types(self, topic: str, schema: msgspec.Raw) -> ColumnTypes:
        cached = self._schemas.get(topic)
        if cached is not None and cached[0] == schema:
            return cached[1]
        types = _row_types(schema)
        self._schemas[topic] = (schema, types)
        return types


def _parse(decoder: msgspec.json.Decoder[Any], data: bytes, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidEvent("invalid_envelope", f"{what}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # Invalid UTF-8 is a UnicodeDecodeError up to msgspec 0.22 and a DecodeError
        # ("Invalid UTF-8 encoded string") from 0.23, neither saying where in the record:
        # find the offending byte ourselves (only on this error path).
        bad = _utf8_error(data)
        if bad is not None:
            raise InvalidEvent("invalid_json", f"{what} is not valid UTF-8: {bad.reason} "
                               f"at byte {bad.start}") from None
        if isinstance(exc, UnicodeDecodeError):
            raise InvalidEvent("invalid_json", f"{what} is not valid UTF-8") from None
        raise InvalidEvent("invalid_json", f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidEvent("invalid_json", f"{what} is nested too deeply") from None


def _projected_decoders(columns: frozenset[str]) -> tuple[msgspec.json.Decoder[Any],
                                                          msgspec.json.Decoder[Any]]:
    """`_ENVELOPE` and `_VALUE` with row images of only `columns` (a dict of those
    present, like the full decode's): the same fields, types and defaults otherwise."""
    row: Any = TypedDict("Row", dict.fromkeys(sorted(columns), Any), total=False)  # type: ignore[misc]
    fields: list[tuple[str, Any, Any]] = []
    for name, hint in get_type_hints(WireEnvelope).items():
        fields.append((name, row | None if name in ("before", "after") else hint, None))
    envelope = msgspec.defstruct("ProjectedEnvelope", fields, frozen=True)
    value = msgspec.defstruct("ProjectedValue", [
        ("schema", msgspec.Raw, model.EMPTY), ("payload", envelope | None, None),
        *[(name, hint, None) for name, hint, _ in fields]], frozen=True)
    return msgspec.json.Decoder(envelope), msgspec.json.Decoder(value)


def _utf8_error(data: bytes | memoryview | msgspec.Raw) -> UnicodeDecodeError | None:
    """Where `data` is not valid UTF-8, or None when it is."""
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    return None


def _bare_key(key: bytes) -> Any:
    try:
        return _parse(_ANY, key, "key")
    except InvalidEvent as exc:  # every key problem has the same reason
        raise InvalidEvent("invalid_key", exc.message) from None


def _key_schema(key: bytes) -> tuple[str | None, ColumnTypes | None]:
    """The table a key's embedded schema names, and its columns' logical types."""
    try:
        schema = _ANY.decode(key).get("schema")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, AttributeError):
        return None, None
    if not isinstance(schema, dict):
        return None, None
    name = schema.get("name")
    table = None
    if isinstance(name, str) and name.endswith(KEY_SCHEMA_SUFFIX):
        parts = name[:-len(KEY_SCHEMA_SUFFIX)].split(".")
        if len(parts) >= 2 and all(parts[-2:]):
            table = f"{parts[-2]}.{parts[-1]}"
    fields = schema.get("fields")
    return table, _struct_types(fields if isinstance(fields, list) else [])


def _column_types(columns: Iterable[_Column]) -> ColumnTypes:
    """`_struct_types` for typed columns."""
    types: ColumnTypes = {}
    for column in columns:
        name = column.name
        if not isinstance(column.field, str) or not name:
            continue
        params = column.parameters
        try:
            scale = int(params.get("scale", 0)) if isinstance(params, dict) else 0
        except (TypeError, ValueError):
            scale = 0
        types[column.field] = (str(name), scale)
    return types


def _struct_types(columns: list[Any]) -> ColumnTypes:
    """Column → (logical name, scale) for the fields of a Connect struct schema."""
    types: ColumnTypes = {}
    for column in columns:
        # A malformed column entry is skipped: its values are then formatted untyped.
        if not isinstance(column, dict) or not isinstance(column.get("field"), str):
            continue
        name = column.get("name")
        if not name:
            continue
        params = column.get("parameters")
        try:
            scale = int(params.get("scale", 0)) if isinstance(params, dict) else 0
        except (TypeError, ValueError):
            scale = 0
        types[column["field"]] = (str(name), scale)
    return types


class _Column(msgspec.Struct, frozen=True, gc=False):
    """A column of a Connect struct schema: only what `_struct_types` reads."""

    field: Any = None
    name: Any = None
    parameters: Any = None


class _Field(msgspec.Struct, frozen=True, gc=False):
    """A field of the envelope schema (`before`, `after`, `source` …)."""

    field: Any = None
    fields: list[_Column] | None = None


class _Schema(msgspec.Struct, frozen=True, gc=False):
    fields: list[_Field] | None = None


_SCHEMA = msgspec.json.Decoder(_Schema)


def _row_types(schema: msgspec.Raw) -> ColumnTypes:
    """Column → (logical name, scale) for the row struct of an envelope schema.

    Connect's schemas are read as untracked structs of only the fields read, the rest
    skipped: 4x faster than as dicts (at MAX_SCHEMA_BYTES, ~2 ms instead of ~8 ms,
    for a record whose schema differs from its topic's last). A schema of another
    shape (a column that is not an object …) is read generically: the same answer."""
    try:
        typed = _SCHEMA.decode(schema)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return _generic_row_types(schema)
    for image in typed.fields or ():
        if image.field in ("after", "before"):
            types = _column_types(image.fields or ())
            if types:
                return types
    return {}


def _generic_row_types(schema: msgspec.Raw) -> ColumnTypes:
    """`_row_types`, for a schema of any shape (and bytes that may not be UTF-8)."""
    try:
        parsed = _ANY.decode(schema)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # The envelope decoder leaves `schema` raw, so its bytes are checked only here.
        bad = _utf8_error(schema)
        if bad is not None:
            raise InvalidEvent("invalid_json", f"value is not valid UTF-8: {bad.reason} at "
                               f"byte {bad.start} of `$.schema`", path="$.schema") from None
        return {}
    types: ColumnTypes = {}
    fields = parsed.get("fields") if isinstance(parsed, dict) else None
    for envelope_field in fields if isinstance(fields, list) else []:
        if not isinstance(envelope_field, dict) or envelope_field.get("field") not in (
                "after", "before"):
            continue
        columns = envelope_field.get("fields")
        types = _struct_types(columns if isinstance(columns, list) else [])
        if types:
            break
    return types
