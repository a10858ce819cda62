"""`python -m bench decode`: the decode cost per record of each format, on one workload.

The recorded workload of ``tests/fixtures/debezium/`` as each format carries it, from
the real connector:

- ``avro/``: ``avro.jsonl`` (through Apicurio's AvroConverter) and its ``twin.jsonl``
  (the JSON converter, ``schemas.enable=true``), recorded in one run;
- ``flattened/``: ``rewrite.jsonl`` (Debezium's ExtractNewRecordState, rewritten
  deletes, ``__op``/``__table``/``__source_ts_ms``, schemas on), ``tombstones.jsonl``
  (the SMT's defaults, schemas off) and their envelope ``twin.jsonl``, in another run.

Every record (61 in the envelope files; 56 flattened: the SMT drops the truncate and
a delete or its tombstone) is decoded again and again, as the worker decodes them (row
images projected to the local config's planned columns, each topic's schema already
seen: the schema-prefix fast paths taken, the Avro writer schemas cached), and timed
per record:

- ``json``: `Decoder` on the Avro run's JSON twin;
- ``avro``: `AvroDecoder` (fastavro on the schema parsed once per id);
- ``avro, confluent AvroDeserializer``: confluent-kafka's deserializer on the same
  bytes, the writer schemas from an in-memory registry — the dicts only, no Event:
  what the deserializer alone costs per record, beside what the AvroDecoder does;
- ``flattened, rewrite (schemas on)`` / ``flattened, tombstones (schemas off)``:
  `FlattenedDecoder` on the rows; ``json, flattened run's twin``: `Decoder` on the
  same run's envelopes;
- ``plan_record json`` / ``avro`` / ``flattened``: decode and plan, as the worker does.

Also the posts insert alone (its 20,000-character body is most of the record's bytes).
No stack needed; nothing is sent anywhere.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.env import ROOT
from bench.report import machine, table, write_result

AVRO_DIR = ROOT / "tests" / "fixtures" / "debezium" / "avro"
FLAT_DIR = ROOT / "tests" / "fixtures" / "debezium" / "flattened"
CONFIG = ROOT / "config" / "local" / "reconciler.yaml"
POSTS_INSERT = 5  # the fixture line of the posts insert
MAX_EVENT_BYTES = 8 * 1024 * 1024

Record = tuple[str, int, int, bytes | None, bytes | None]  # topic, partition, offset, key, value


def _records(name: str, binary: bool, folder: Path = AVRO_DIR) -> list[Record]:
    out = []
    for text in (folder / name).read_text().splitlines():
        item = json.loads(text)
        if binary:
            key = None if item["key_b64"] is None else base64.b64decode(item["key_b64"])
            value = None if item["value_b64"] is None else base64.b64decode(item["value_b64"])
        else:
            key = None if item["key"] is None else item["key"].encode()
            value = None if item["value"] is None else item["value"].encode()
        out.append((item["topic"], item["partition"], item["offset"], key, value))
    return out


def _time(run: Callable[[], None], count: int, rounds: int) -> float:
    """µs per record: the median of `rounds` rounds of `run` over `count` records."""
    run()  # warm: schemas fetched, fast paths learned
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(samples)


def _each(run: Callable[[Record], object], records: list[Record], times: int) -> None:
    for _ in range(times):
        for record in records:
            run(record)


def _schemas() -> dict[int, str]:
    raw = json.loads((AVRO_DIR / "schemas.json").read_text())
    return {int(schema_id): json.dumps(schema) for schema_id, schema in raw.items()}


class _MemoryRegistry:
    """What AvroDeserializer asks of a SchemaRegistryClient, over the recorded schemas."""

    def __init__(self, texts: dict[int, str]) -> None:
        from confluent_kafka.schema_registry import Schema

        self._schemas = {i: Schema(text, "AVRO") for i, text in texts.items()}

    def get_schema(self, schema_id: int, subject_name: str | None = None,
                   fmt: str | None = None) -> Any:
        return self._schemas[schema_id]

    def config(self) -> dict[str, Any]:
        return {}


def measure(rounds: int) -> dict[str, Any]:
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from connectors.debezium.avro import AvroDecoder
    from connectors.debezium.decode import Decoder
    from connectors.debezium.flattened import FlattenedDecoder
    from connectors.debezium.registry import Registry
    from reconciler.pipeline.batch import plan_record
    from reconciler.pipeline.planner import Planner
    from reconciler.settings import load_settings
    from shard_map import load_shard_map

    settings = load_settings(CONFIG)
    planner = Planner.for_settings(settings, load_shard_map(settings.shard_map))
    texts = _schemas()
    json_decoder = Decoder(columns=planner.columns)
    avro_decoder = AvroDecoder(Registry(texts.__getitem__), avro_topics=lambda topic: True,
                               columns=planner.columns)
    deserializer = AvroDeserializer(_MemoryRegistry(texts))
    flat_decoder = FlattenedDecoder(flattened_topics=lambda topic: True,
                                    columns=planner.columns)
    pairs = json.loads((FLAT_DIR / "lines.json").read_text())  # flattened line → twin line
    insert = {name: pairs[name].index(POSTS_INSERT) for name in pairs}  # its 0-based lines
    files = (_records("twin.jsonl", False), _records("avro.jsonl", True),
             _records("rewrite.jsonl", False, FLAT_DIR),
             _records("tombstones.jsonl", False, FLAT_DIR),
             _records("twin.jsonl", False, FLAT_DIR))
    workloads = {"every recorded record": files,
                 "posts insert": ([files[0][POSTS_INSERT - 1]], [files[1][POSTS_INSERT - 1]],
                                  [files[2][insert["rewrite.jsonl"]]],
                                  [files[3][insert["tombstones.jsonl"]]],
                                  [files[4][POSTS_INSERT - 1]])}
    results: dict[str, Any] = {}
    for name, (twin, avro, rewrite, tombstones, flat_twin) in workloads.items():

        def timed(run: Callable[[Record], object], records: list[Record]) -> float:
            repeat = max(1, 20_000 // len(records))
            return _time(lambda: _each(run, records, repeat), repeat * len(records), rounds)

        def size(records: list[Record]) -> float:
            return sum(len(r[4] or b"") + len(r[3] or b"") for r in records) / len(records)

        results[name] = {
            "json": timed(lambda r: json_decoder.decode(*r), twin),
            "avro": timed(lambda r: avro_decoder.decode(*r), avro),
            "avro, confluent AvroDeserializer": timed(
                lambda r: (deserializer(r[3]), deserializer(r[4])), avro),
            "plan_record json": timed(
                lambda r: plan_record(json_decoder, planner, MAX_EVENT_BYTES, *r), twin),
            "plan_record avro": timed(
                lambda r: plan_record(avro_decoder, planner, MAX_EVENT_BYTES, *r), avro),
            "flattened, rewrite (schemas on)": timed(lambda r: flat_decoder.decode(*r), rewrite),
            "flattened, tombstones (schemas off)": timed(lambda r: flat_decoder.decode(*r),
                                                         tombstones),
            "json, flattened run's twin": timed(lambda r: json_decoder.decode(*r), flat_twin),
            "plan_record flattened": timed(
                lambda r: plan_record(flat_decoder, planner, MAX_EVENT_BYTES, *r), rewrite),
            "bytes per record json": size(twin),
            "bytes per record avro": size(avro),
            "bytes per record flattened, rewrite": size(rewrite),
            "bytes per record flattened, tombstones": size(tombstones),
        }
    return results


def run_decode(rounds: int, out_dir: Path | None = None) -> None:
    results = measure(rounds)
    rows = [(workload, what, f"{value:.2f}" if "bytes" not in what else f"{value:,.0f}")
            for workload, figures in results.items() for what, value in figures.items()]
    print(table(["workload", "measure", "µs/record (bytes where said)"], rows))
    path = write_result("decode", {"kind": "decode", "rounds": rounds, "machine": machine(),
                                   "results": results}, *(() if out_dir is None else (out_dir,)))
    print(f"\nwritten to {path}")
