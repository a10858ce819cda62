"""Record the Avro fixtures: ``python -m stack.capture avro`` (the stack and its schema
registry must be up: ``python -m stack up`` then ``python -m stack up apicurio``).

The same workload as the JSON capture, recorded by two connectors at once, each with
its own slot: ``capavro`` (Apicurio's AvroConverter for key and value, as the stack's
``nd-avro``) and ``captwin`` (the JSON converter, ``schemas.enable=true``, as the JSON
fixtures). Both see the same rows, ids and versions, so line N of ``avro.jsonl`` is
line N of ``twin.jsonl`` in the other format: the tests decode and plan both and
require the same result. The writer schemas the records name are saved by id in
``schemas.json`` (the unit tests read them instead of a registry).

The Avro records are decoded to JSON payloads (logical types left as on the wire, as
the JSON converter sends them) to be selected, ordered and checked like the JSON ones;
their fixture lines carry the raw bytes in base64 (``key_b64``, ``value_b64``).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from functools import partial
from typing import Any

from stack import apicurio, services
from stack.capture.checks import Checker
from stack.capture.debezium import (
    capture_config,
    connect,
    connector_name,
    drop_slot,
    remove_connector,
    slot_active,
    slot_name,
    wait_running,
)
from stack.capture.order import select
from stack.capture.readme import versions
from stack.capture.records import (
    COMMAND,
    FIXTURE_DIR,
    HEARTBEATS_KEPT,
    CaptureError,
    Record,
    log,
    unwrap,
)
from stack.capture.run import wait
from stack.capture.topics import delete_topics, read_all
from stack.capture.workload import Workload, cleanup_rows, pg_connect, run_workload, seed
from stack.process import http_json

AVRO, TWIN = "capavro", "captwin"  # the two connectors' topic prefixes
AVRO_DIR = FIXTURE_DIR / "avro"
FILES = {AVRO: "avro.jsonl", TWIN: "twin.jsonl"}


class Schemas:
    """Writer schemas from the registry by id (Confluent API), parsed without their
    logical types; every id used, to be saved with the fixtures."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self._parsed: dict[int, Any] = {}

    def json_text(self, data: bytes) -> str:
        """An Avro key or value (Confluent framing) as the JSON converter's payload."""
        import fastavro

        if len(data) <= 5 or data[0] != 0:
            raise CaptureError(f"not in the Confluent wire format: {data[:16]!r}")
        schema_id = int.from_bytes(data[1:5], "big")
        if schema_id not in self._parsed:
            answer = http_json("GET", f"{apicurio.CCOMPAT_URL}/schemas/ids/{schema_id}")
            self.texts[schema_id] = answer["schema"]
            self._parsed[schema_id] = fastavro.parse_schema(
                _plain(json.loads(answer["schema"])), _write_hint=False)
        body = io.BytesIO(data)
        body.seek(5)
        return json.dumps(fastavro.schemaless_reader(body, self._parsed[schema_id], None),
                          default=lambda raw: base64.b64encode(raw).decode("ascii"))


def _plain(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(item) for item in schema]
    return schema


def configs(seeds: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    avro = capture_config(AVRO, False, seeds)
    for name in [n for n in avro if n.startswith(("key.converter", "value.converter"))]:
        del avro[name]
    avro.update(apicurio.converter_config("key.converter"))
    avro.update(apicurio.converter_config("value.converter"))
    return {AVRO: avro, TWIN: capture_config(TWIN, True, seeds)}


def records(prefix: str, schemas: Schemas) -> dict[tuple[str, int], list[Record]]:
    return read_all(prefix, schemas.json_text if prefix == AVRO else None)


def snapshot_done(prefix: str, schemas: Schemas) -> bool:
    return any(isinstance(p := unwrap(rec.value, prefix == TWIN)[0], dict)
               and isinstance(p.get("source"), dict) and p["source"].get("snapshot") == "last"
               for recs in records(prefix, schemas).values() for rec in recs)


def complete(prefix: str, schemas: Schemas, work: Workload) -> bool:
    ordered = select(prefix, prefix == TWIN, work, records(prefix, schemas))
    return (any(r.step == "logical_message" and r.value is not None
                and r.payload.get("op") == "m" for r in ordered)
            and sum(r.step == "heartbeat" for r in ordered) >= HEARTBEATS_KEPT)


def same_records(ordered: dict[str, list[Record]]) -> None:
    """Line by line, the two formats carry the same record (payloads alike but for the
    connector's name and its timings)."""
    def shape(rec: Record, prefix: str) -> tuple[Any, ...]:
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        rows = {k: payload.get(k) for k in ("op", "before", "after", "status")}
        return (rec.topic.replace(prefix, "<prefix>"), rec.step,
                json.dumps(rec.key_payload).replace(prefix, "<prefix>"),
                json.dumps(rows, sort_keys=True))
    a = [shape(rec, AVRO) for rec in ordered[AVRO]]
    b = [shape(rec, TWIN) for rec in ordered[TWIN]]
    if a != b:
        diff = [(i + 1, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
        raise CaptureError(f"the two formats differ: {len(a)} vs {len(b)} records; first "
                           f"differences {diff[:3]}")


def capture() -> None:
    state = services.status()
    if not all(state.get(n) for n in ("postgres", "kafka", "connect", "apicurio")):
        raise CaptureError(f"the stack or its registry is not running ({state}): "
                           "`python -m stack up` and `python -m stack up apicurio`")
    if not apicurio.has_converter():
        raise CaptureError("Kafka Connect lacks Apicurio's converter: "
                           "`python -m stack restart connect`")
    for prefix in FILES:
        remove_connector(connector_name(prefix))
        drop_slot(slot_name(prefix))
        delete_topics(prefix)
    work, schemas = Workload(), Schemas()
    try:
        with pg_connect() as conn:
            conn.autocommit = True
            seed(conn, work)
            for prefix, config in configs(work.seeds).items():
                connect("PUT", f"/connectors/{connector_name(prefix)}/config", config)
            for prefix in FILES:
                wait_running(connector_name(prefix))
                wait(f"the {prefix} snapshot", partial(snapshot_done, prefix, schemas))
                wait(f"slot {slot_name(prefix)}", partial(slot_active, slot_name(prefix)))
            run_workload(conn, work)
        for prefix in FILES:
            wait(f"the {prefix} message and heartbeats", partial(complete, prefix, schemas, work))
        ordered = {prefix: select(prefix, prefix == TWIN, work, records(prefix, schemas))
                   for prefix in FILES}
        Checker(TWIN, True, work, ordered[TWIN]).run()
        same_records(ordered)
        AVRO_DIR.mkdir(parents=True, exist_ok=True)
        for prefix, name in FILES.items():
            (AVRO_DIR / name).write_text("".join(r.fixture_line() + "\n" for r in ordered[prefix]))
            log(f"wrote {len(ordered[prefix])} records to {AVRO_DIR / name}")
        (AVRO_DIR / "schemas.json").write_text(json.dumps(
            {str(k): json.loads(v) for k, v in sorted(schemas.texts.items())}, indent=1) + "\n")
        write_readme(work, len(ordered[AVRO]))
    finally:
        for prefix in FILES:
            for step in (partial(remove_connector, connector_name(prefix)),
                         partial(drop_slot, slot_name(prefix)), partial(delete_topics, prefix)):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - every cleanup step is attempted
                    log(f"cleanup error ({prefix}): {exc}")
        cleanup_rows(work)


def write_readme(work: Workload, count: int) -> None:
    found = versions()
    plugins = connect("GET", "/connector-plugins?connectorsOnly=false")
    converter = next((p.get("version") for p in plugins
                      if p.get("class") == apicurio.CONVERTER), "?")
    steps = "\n".join(f"| {s.label} | {s.txid} | {s.what} |" for s in work.steps)
    (AVRO_DIR / "README.md").write_text(f"""# Recorded Debezium events, Avro

Generated by `stack/capture/avro.py` — do not edit by hand. Regenerate with

```sh
.venv/bin/python -m stack up && .venv/bin/python -m stack up apicurio
{COMMAND} avro
```

Recorded on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from Debezium PostgreSQL connector \
{found["debezium"]}, Kafka Connect {found["kafka"]}, Apicurio Registry 2.6 with its \
AvroConverter {converter}, PostgreSQL {found["postgres"]}.

| file | topic prefix | converters |
|---|---|---|
| `avro.jsonl` | `{AVRO}` | Apicurio's AvroConverter, key and value: Confluent wire format \
(`as-confluent`, `use-id=contentId`, `headers.enabled=false`) |
| `twin.jsonl` | `{TWIN}` | JsonConverter, `schemas.enable=true` (as `../schemas_true.jsonl`) |
| `schemas.json` | | every writer schema the Avro records name, by id |

Both connectors recorded the same run of the workload below ({count} records each), so
line N of one file is line N of the other: the same rows, ids and versions. The line
numbers of the workload's steps are those of `../README.md` (the same workload and
order). Lines are the input format of `reconciler plan`; the Avro ones carry their
bytes in base64: `{{"topic", "partition", "offset", "timestamp", "key_b64",
"value_b64", "headers"}}`. The schema ids are those of the registry at capture time
(`schemas.json` keeps them with the records).

| step | txid | what |
|---|---|---|
{steps}
""")
