"""Avro writer schemas by id, from a Confluent-compatible schema registry.

`Registry.schema(id)` is what the Avro decoder needs of a schema: fastavro's parsed
form and, read from Connect's annotations (``connect.name``, ``connect.parameters``),
the columns' logical types — the same ``(name, scale)`` pairs the JSON path reads from
an embedded schema. Kept per id for the life of the process: an id names one schema
for the life of its registry.

The schema is parsed without its Avro ``logicalType`` annotations, so that values
arrive as they are on the wire, which is what Connect's JSON converter sends too: a
decimal's unscaled two's-complement bytes (base64 in JSON, see `avro.py`), a date as
days, a timestamp as an epoch number. ``values.format_value`` then formats a key the
same from either format.

The HTTP side is confluent-kafka's ``SchemaRegistryClient`` (`confluent_fetch`: its
authentication, TLS and cache), with its own retries off: an unanswered request is
`RegistryUnavailable` at once and the caller's retry policy (`retry`, injected by the
reconciler: its backoff, budget and metric) decides. An id the registry does not know
(404) is a dead letter, `UnknownSchema`, remembered for `UNKNOWN_TTL_SECONDS` so that
a run of records from another registry costs one request, not one each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from connectors.debezium.decode import KEY_SCHEMA_SUFFIX, InvalidEvent
from connectors.debezium.model import ColumnTypes
from connectors.errors import RegistryRejected, RegistryUnavailable

UNKNOWN_SCHEMA = "unknown_schema"  # dead-letter reason: an id the registry does not know
INVALID_SCHEMA = "invalid_schema"  # dead-letter reason: a registered schema that is no Avro
UNKNOWN_TTL_SECONDS = 60.0  # an unknown id is asked again after this long
ROW_IMAGES = ("after", "before")  # the envelope fields holding a row

T = TypeVar("T")
Retry = Callable[[Callable[[], T]], T]  # calls the function, retrying RegistryUnavailable


class UnknownSchema(InvalidEvent):
    """A schema id the registry does not know: the record is dead-lettered."""

    def __init__(self, schema_id: int, detail: str) -> None:
        super().__init__(UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the schema registry "
                         f"({detail}): written under another registry, or its schema "
                         "was deleted")
        self.schema_id = schema_id
        self.detail = detail


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A registered schema, as the decoder reads records with it."""

    schema_id: int
    parsed: Any  # fastavro's parsed schema (logical types left out)
    column_types: ColumnTypes  # a value's row columns, or a key's columns → logical type
    key_table: str | None  # "schema.table" named by a Debezium key schema, else None
    floats: frozenset[str]  # columns of Avro type float (32 bits): formatted as Java does


def _once(call: Callable[[], T]) -> T:
    return call()


class Registry:
    """Writer schemas by id: fetched once (through `fetch`, under `retry`), kept."""

    def __init__(self, fetch: Callable[[int], str], *, retry: Retry[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._retry: Retry[str] = retry or _once
        self._clock = clock
        self._schemas: dict[int, WriterSchema] = {}
        self._unknown: dict[int, tuple[float, str]] = {}  # id → (until, detail)

    def schema(self, schema_id: int) -> WriterSchema:
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        unknown = self._unknown.get(schema_id)
        if unknown is not None and self._clock() < unknown[0]:
            raise UnknownSchema(schema_id, unknown[1])
        try:
            text = self._retry(lambda: self._fetch(schema_id))
        except UnknownSchema as exc:
            self._unknown[schema_id] = (self._clock() + UNKNOWN_TTL_SECONDS, exc.detail)
            raise
        found = parse(schema_id, text)
        self._schemas[schema_id] = found
        self._unknown.pop(schema_id, None)
        return found


def parse(schema_id: int, text: str) -> WriterSchema:
    """A registered schema's text as a `WriterSchema` (InvalidEvent if it is no Avro)."""
    import fastavro

    try:
        raw = json.loads(text)
        plain = _without_logical_types(raw)
        parsed = fastavro.parse_schema(plain)
    except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
        raise InvalidEvent(INVALID_SCHEMA, f"schema id {schema_id} is not an Avro schema "
                           f"fastavro can read: {exc}") from None
    columns, floats = _row_columns(raw)
    return WriterSchema(schema_id, parsed, columns, _key_table(raw), floats)


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {name: _without_logical_types(value) for name, value in schema.items()
                if name != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def _non_null(schema: Any) -> Any:
    """The branch of an optional field's union that is not null."""
    if isinstance(schema, list):
        branches = [branch for branch in schema if branch != "null"]
        return branches[0] if len(branches) == 1 else None
    return schema


def _record_fields(schema: Any) -> list[Any]:
    return schema.get("fields") or [] if isinstance(schema, dict) else []


def _row_columns(schema: Any) -> tuple[ColumnTypes, frozenset[str]]:
    """The logical types (and float columns) of an envelope's row record, or of a key
    record's own fields; for other records, none."""
    fields = _record_fields(schema)
    for field in fields:
        if isinstance(field, dict) and field.get("name") in ROW_IMAGES:
            row = _non_null(field.get("type"))
            if isinstance(row, dict):  # the first image defines the record, the other names it
                return _columns(_record_fields(row))
    if _key_table(schema) is not None:
        return _columns(fields)
    return {}, frozenset()


def _columns(fields: list[Any]) -> tuple[ColumnTypes, frozenset[str]]:
    types: ColumnTypes = {}
    floats = set()
    for field in fields:
        if not isinstance(field, dict) or not isinstance(field.get("name"), str):
            continue
        kind = _non_null(field.get("type"))
        if kind == "float" or (isinstance(kind, dict) and kind.get("type") == "float"):
            floats.add(field["name"])
        if not isinstance(kind, dict) or not kind.get("connect.name"):
            continue
        params = kind.get("connect.parameters")
        try:
            scale = int(params.get("scale", 0)) if isinstance(params, Mapping) else 0
        except (TypeError, ValueError):
            scale = 0
        types[field["name"]] = (str(kind["connect.name"]), scale)
    return types, frozenset(floats)


def _key_table(schema: Any) -> str | None:
    """The table a Debezium key schema names (``<prefix>.<schema>.<table>.Key``)."""
    if not isinstance(schema, dict):
        return None
    name = schema.get("connect.name")
    if not isinstance(name, str):
        namespace, short = schema.get("namespace"), schema.get("name")
        name = f"{namespace}.{short}" if isinstance(namespace, str) else short
    if not isinstance(name, str) or not name.endswith(KEY_SCHEMA_SUFFIX):
        return None
    parts = name[:-len(KEY_SCHEMA_SUFFIX)].split(".")
    if len(parts) >= 2 and all(parts[-2:]):
        return f"{parts[-2]}.{parts[-1]}"
    return None


# --------------------------------------------------------------------------- confluent


def confluent_fetch(config: Mapping[str, Any]) -> Callable[[int], str]:
    """`Registry`'s fetch over confluent-kafka's ``SchemaRegistryClient`` (`config`: its
    settings: url, basic.auth.user.info, timeout, ssl.*), its own retries off."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.common._httpx_compat import httpx
    from confluent_kafka.schema_registry.error import OAuthTokenError, SchemaRegistryError

    client = SchemaRegistryClient({**config, "max.retries": 0})
    where = _without_userinfo(str(config.get("url", "")))

    def fetch(schema_id: int) -> str:
        try:
            schema = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            status = exc.http_status_code
            if status == 404:
                raise UnknownSchema(schema_id, f"{where} answered 404: {exc.error_message}") \
                    from None
            if status in (401, 403):
                raise RegistryRejected(
                    f"schema registry {where} refused to serve schema id {schema_id}: HTTP "
                    f"{status} {exc.error_message} (check kafka.schema_registry: the "
                    "credentials and their permissions)") from None
            if status in (408, 429) or status >= 500 or status < 0:
                raise RegistryUnavailable(f"schema registry {where}: HTTP {status} "
                                          f"{exc.error_message}") from None
            raise RegistryRejected(f"schema registry {where} refused schema id {schema_id}: "
                                   f"HTTP {status} {exc.error_message}") from None
        except (httpx.TransportError, OSError, OAuthTokenError) as exc:
            raise RegistryUnavailable(f"schema registry {where} unreachable: "
                                      f"{type(exc).__name__}: {exc}") from None
        if schema.schema_type not in (None, "AVRO"):
            raise InvalidEvent(INVALID_SCHEMA, f"schema id {schema_id} is a "
                               f"{schema.schema_type} schema, not Avro")
        return str(schema.schema_str)

    return fetch


def _without_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)
    if "@" in host[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
