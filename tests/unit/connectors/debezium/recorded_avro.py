"""The recorded Avro events of tests/fixtures/debezium/avro: `avro.jsonl` (the real
connector through Apicurio's AvroConverter) and `twin.jsonl` (the same run through the
JSON converter, schemas.enable=true), line N of one being line N of the other, and
the writer schemas their ids name (`schemas.json`), served by an in-memory registry.

The line numbers of the workload's steps are those of `recorded` (the same workload,
in the same order)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from connectors.debezium import Decoder, Event, model
from connectors.debezium.avro import AvroDecoder
from connectors.debezium.registry import Registry, UnknownSchema
from tests.unit.connectors.debezium.recorded import FIXTURES

AVRO_DIR = FIXTURES / "avro"
AVRO, TWIN = "avro.jsonl", "twin.jsonl"


@dataclass(frozen=True)
class Line:
    file: str
    line: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def decode(self, decoder: Decoder) -> Event:
        return decoder.decode(self.topic, self.partition, self.offset, self.key, self.value)


@functools.cache
def lines(file: str) -> tuple[Line, ...]:
    out = []
    for number, text in enumerate((AVRO_DIR / file).read_text().splitlines(), start=1):
        item = json.loads(text)
        if file == AVRO:
            key = None if item["key_b64"] is None else base64.b64decode(item["key_b64"])
            value = None if item["value_b64"] is None else base64.b64decode(item["value_b64"])
        else:
            key = None if item["key"] is None else item["key"].encode()
            value = None if item["value"] is None else item["value"].encode()
        out.append(Line(file, number, item["topic"], item["partition"], item["offset"], key,
                        value))
    return tuple(out)


def line(file: str, number: int) -> Line:
    return lines(file)[number - 1]


@functools.cache
def schemas() -> dict[int, str]:
    """Schema id → the registered schema's text."""
    raw = json.loads((AVRO_DIR / "schemas.json").read_text())
    return {int(schema_id): json.dumps(schema) for schema_id, schema in raw.items()}


def fetch_from(known: dict[int, str]) -> Callable[[int], str]:
    """A registry's fetch over `known` (a 404 for any other id)."""
    def fetch(schema_id: int) -> str:
        if schema_id not in known:
            raise UnknownSchema(schema_id, "404 from the test registry")
        return known[schema_id]
    return fetch


def avro_decoder(columns: Iterable[str] | None = None,
                 fetch: Callable[[int], str] | None = None) -> AvroDecoder:
    """An AvroDecoder for every topic, over the recorded schemas."""
    return AvroDecoder(Registry(fetch or fetch_from(schemas())), avro_topics=lambda topic: True,
                       columns=columns)


def as_twin(event: Event, twin: Event) -> Event:
    """`event` with the topic, partition and offset of its `twin`: the topic prefix
    differs, and so does the partition (the key's bytes are hashed) and the offset; and
    the time of a snapshot read, a logical message or a heartbeat, which is each
    connector's own clock (a change's is its commit's: the same in both)."""
    import msgspec

    assert event.topic.replace("capavro", "captwin") == twin.topic
    own_clock = event.kind in (model.HEARTBEAT, model.MESSAGE) or event.op == "r"
    return msgspec.structs.replace(event, topic=twin.topic, partition=twin.partition,
                                   offset=twin.offset,
                                   ts_ms=twin.ts_ms if own_clock else event.ts_ms)
