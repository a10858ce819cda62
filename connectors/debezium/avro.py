"""Decode Debezium records written with an Avro converter and a schema registry.

The Confluent wire format: byte 0 (the magic byte), the schema id (4 bytes, big-endian)
and the Avro body, for the key and for the value. Apicurio's converter writes it with
``as-confluent=true``, Confluent's always. The writer schema comes from the registry
by id (`registry.Registry`: fetched once, kept).

`AvroDecoder` is a `Decoder`: the topics `avro_topics` names are read as Avro, the
others as JSON by the JSON decoder it extends. An Avro record becomes the same `Event`
as the same change read from JSON (`schemas.enable=true`): the same row dicts — kept
to `columns` like the JSON projection, bytes as the JSON converter's base64 text, a
32-bit float as the short decimal Java prints — and the same ``column_types``, read
from the schema's Connect annotations. The planner and ``values.format_value`` then
cannot tell the two apart: keys are formatted the same (tests/unit pins it on one
recorded workload in both formats).

reasons (dead letters): ``not_avro`` (no Confluent framing: shorter than 6 bytes or a
magic byte that is not 0), ``unknown_schema`` (an id the registry does not know),
``invalid_schema`` (a registered schema that is not Avro), ``avro_mismatch`` (the body
does not decode with its schema, or leaves bytes over), ``invalid_envelope`` (an Avro
record that is no Debezium envelope), ``invalid_key`` (a key that is none of the
above's problems but is no record). A registry that does not answer is never a dead
letter: `RegistryUnavailable`, retried by the policy `Registry` was given.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from connectors.debezium import model
from connectors.debezium.decode import HEARTBEAT_PREFIX, Decoder, InvalidEvent
from connectors.debezium.model import Event, WireEnvelope, WireSource
from connectors.debezium.registry import Registry, WriterSchema

MAGIC = 0  # the Confluent wire format's first byte
HEADER = 5  # magic byte + 4-byte schema id
NOT_AVRO = "not_avro"
AVRO_MISMATCH = "avro_mismatch"
# What fastavro raises on a body its schema cannot read (truncated, a bad union index,
# an invalid UTF-8 string, a length past the end …).
_READ_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError,
                StopIteration, UnicodeDecodeError, MemoryError, struct.error)
_FLOAT = struct.Struct("<f")


class AvroDecoder(Decoder):
    """Decodes Avro topics (`avro_topics`) through `registry`; JSON topics as `Decoder`."""

    __slots__ = ("_is_avro", "_kept", "_reader", "_registry")

    def __init__(self, registry: Registry, *, avro_topics: Callable[[str], bool],
                 heartbeat_prefix: str = HEARTBEAT_PREFIX,
                 columns: Iterable[str] | None = None) -> None:
        super().__init__(heartbeat_prefix=heartbeat_prefix, columns=columns)
        import fastavro

        self._registry = registry
        self._is_avro = avro_topics
        self._kept = None if columns is None else tuple(sorted(frozenset(columns)))
        self._reader = fastavro.schemaless_reader

    def decode(self, topic: str, partition: int, offset: int,
               key: bytes | None, value: bytes | None) -> Event:
        if not self._is_avro(topic):
            return super().decode(topic, partition, offset, key, value)
        if value is None:
            if key is None:
                raise InvalidEvent("empty_record", "record has neither a key nor a value")
            return self.key_event(topic, partition, offset, key)
        record, schema = self._read(value, "value")
        envelope = _envelope(record, self._row(record, "before", schema),
                             self._row(record, "after", schema))
        event = self._event(topic, partition, offset, None, envelope, False, schema.column_types)
        if event.kind == model.CHANGE and key is not None:
            event = msgspec.structs.replace(event, key=self._key_columns(key)[0])
        return event

    def key_event(self, topic: str, partition: int, offset: int, key: bytes) -> Event:
        if not self._is_avro(topic):
            return super().key_event(topic, partition, offset, key)
        columns, schema = self._key_columns(key)
        return Event(model.TOMBSTONE, topic, partition, offset, table=schema.key_table,
                     key=columns, column_types=schema.column_types)

    # ------------------------------------------------------------------ reading

    def _read(self, data: bytes, what: str) -> tuple[Any, WriterSchema]:
        if len(data) <= HEADER or data[0] != MAGIC:
            detail = (f"{len(data)} byte(s), the framing alone is {HEADER + 1} or more"
                      if len(data) <= HEADER else f"its first byte is {data[0]}, not {MAGIC}")
            raise InvalidEvent(NOT_AVRO, f"{what} is not in the Confluent wire format "
                               f"(magic byte 0, a 4-byte schema id, the Avro body): {detail}")
        schema = self._registry.schema(int.from_bytes(data[1:HEADER], "big"))
        body = io.BytesIO(data)
        body.seek(HEADER)
        try:
            record = self._reader(body, schema.parsed, None)
        except _READ_ERRORS as exc:
            raise InvalidEvent(AVRO_MISMATCH, f"{what} does not match its schema (id "
                               f"{schema.schema_id}): {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None
        left = len(data) - body.tell()
        if left:
            raise InvalidEvent(AVRO_MISMATCH, f"{what} does not match its schema (id "
                               f"{schema.schema_id}): {left} byte(s) left after the record")
        return record, schema

    def _key_columns(self, key: bytes) -> tuple[dict[str, Any], WriterSchema]:
        try:
            record, schema = self._read(key, "key")
        except InvalidEvent as exc:
            if exc.reason in (NOT_AVRO, AVRO_MISMATCH):
                raise InvalidEvent("invalid_key", exc.message) from None
            raise
        if not isinstance(record, dict):
            raise InvalidEvent("invalid_key", f"record key is an Avro {type(record).__name__}, "
                               "not a record (schema id {schema.schema_id})")
        return {name: _json_value(value) for name, value in record.items()}, schema

    def _row(self, record: Any, image: str, schema: WriterSchema) -> dict[str, Any] | None:
        """A row image as the JSON decoder keeps it: `columns` only, JSON's encodings."""
        row = record.get(image) if isinstance(record, dict) else None
        if not isinstance(row, dict):
            return row  # None, or not a row: `_envelope` says what is wrong
        kept = self._kept
        if kept is None:
            out = {name: _json_value(value) for name, value in row.items()}
        else:
            out = {name: _json_value(row[name]) for name in kept if name in row}
        for name in schema.floats:
            if type(out.get(name)) is float:
                out[name] = _java_float(out[name])
        return out


def _envelope(record: Any, before: Any, after: Any) -> WireEnvelope:
    """An Avro value as the envelope struct the JSON decoder reads (types checked: no
    parser checked them against the struct's)."""
    if not isinstance(record, dict):
        raise InvalidEvent("invalid_envelope", f"value is an Avro {type(record).__name__}, "
                           "not a record")
    source = record.get("source")
    if source is not None:
        if not isinstance(source, dict):
            raise InvalidEvent("invalid_envelope", "value: `source` is not a record",
                               path="$.source")
        source = WireSource(schema=_typed(source, "schema", str, "$.source"),
                            table=_typed(source, "table", str, "$.source"),
                            ts_ms=_typed(source, "ts_ms", int, "$.source"))
    for name, image in (("before", before), ("after", after)):
        if image is not None and not isinstance(image, dict):
            raise InvalidEvent("invalid_envelope", f"value: `{name}` is not a record",
                               path=f"$.{name}")
    return WireEnvelope(op=_typed(record, "op", str, "$"), before=before, after=after,
                        source=source, ts_ms=_typed(record, "ts_ms", int, "$"),
                        status=_typed(record, "status", str, "$"))


def _typed(record: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = record.get(name)
    if value is None or type(value) is kind:
        return value
    raise InvalidEvent("invalid_envelope", f"value: `{name}` is a {type(value).__name__}, "
                       f"expected {kind.__name__}", path=f"{where}.{name}")


def _json_value(value: Any) -> Any:
    """A column value as Connect's JSON converter sends it: bytes (a decimal's unscaled
    two's complement, a bytea) as base64 text, also inside a struct
    (VariableScaleDecimal's {scale, value})."""
    kind = type(value)
    if kind is bytes:
        return base64.b64encode(value).decode("ascii")
    if kind is dict:
        return {name: _json_value(item) for name, item in value.items()}
    if kind is list:
        return [_json_value(item) for item in value]
    return value


def _java_float(value: float) -> float:
    """A 32-bit float as JSON carries it: the shortest decimal that reads back as the
    same float32 (Java's Float.toString), not the float32's exact binary value
    (0.1, not 0.10000000149011612)."""
    exact = _FLOAT.pack(value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if _FLOAT.pack(float(text)) == exact:
            return float(text)
    return value
