"""Record the flattened fixtures: ``python -m stack.capture flattened`` (the stack must
be up: ``python -m stack up``).

The same workload as the JSON capture, recorded by three connectors at once, each with
its own slot on the stack's publication:

- ``capflat`` → ``rewrite.jsonl``: Debezium's ``ExtractNewRecordState`` as the stack's
  ``nd-flat`` runs it (`stack.flat`): deletes rewritten as rows with ``__deleted:
  "true"`` (no tombstone), ``add.fields=op,table,source.ts_ms``; JSON with
  ``schemas.enable=true``;
- ``capups`` → ``tombstones.jsonl``: the SMT with its defaults: a delete leaves only its
  tombstone, no field added (rows are upserts); JSON with ``schemas.enable=false``;
- ``capftwin`` → ``twin.jsonl``: the change-event envelope (JSON, ``schemas.enable=true``):
  the same lines as ``../schemas_true.jsonl``, and the records the flattened ones are
  compared with.

The twin's records are selected and ordered as the JSON capture's (`order.select`) and
checked by its `Checker`. A flattened record carries no transaction id: it is matched
to the twin's record of the same table and key, in the order of that key's records
(one partition holds them all), the twin's delete and tombstone kept where the SMT's
mode keeps them, its TRUNCATE skipped (the SMT drops truncates). Transaction markers
and logical messages, passed on unchanged, are matched by their ids. The flattened
files list their records in the twin's order; ``lines.json`` gives each of their lines
the twin line it was matched to.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict, deque
from functools import partial
from typing import Any

from stack import flat, services
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
    PK,
    CaptureError,
    Record,
    heartbeat_topic,
    log,
    unwrap,
)
from stack.capture.run import complete as twin_complete
from stack.capture.run import snapshot_done, wait
from stack.capture.topics import delete_topics, read_all
from stack.capture.workload import Workload, cleanup_rows, pg_connect, run_workload, seed

REWRITE, UPSERT, TWIN = "capflat", "capups", "capftwin"  # the connectors' topic prefixes
FLAT_DIR = FIXTURE_DIR / "flattened"
FILES = {REWRITE: "rewrite.jsonl", UPSERT: "tombstones.jsonl", TWIN: "twin.jsonl"}
SCHEMAS = {REWRITE: True, UPSERT: False, TWIN: True}  # schemas.enable
SMT = {  # the SMT's settings: delete.tombstone.handling.mode, add.fields
    REWRITE: flat.unwrap(),
    UPSERT: flat.unwrap("tombstone", None),
}
FLAT = (REWRITE, UPSERT)
KEEPS_DELETES = {REWRITE: True, UPSERT: False}  # a delete's row (rewrite) or not (tombstone)
KEEPS_TOMBSTONES = {REWRITE: False, UPSERT: True}


def configs(seeds: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    out = {prefix: capture_config(prefix, SCHEMAS[prefix], seeds) for prefix in FILES}
    for prefix, smt in SMT.items():
        out[prefix].update(smt)
    return out


def _key(rec: Record, schemas: bool) -> str:
    return json.dumps(unwrap(rec.key, schemas)[0], sort_keys=True)


def seeded(prefix: str, work: Workload) -> bool:
    """The flattened snapshot has read the seeded rows (its records carry no
    source.snapshot to say it is done)."""
    found = 0
    for (topic, _), recs in read_all(prefix).items():
        table = topic.rsplit(".", 1)[-1]
        if table in PK and topic == f"{prefix}.public.{table}":
            found += sum(1 for rec in recs if rec.value is not None and str(
                unwrap(rec.value, SCHEMAS[prefix])[0].get(PK[table])) in work.seeds[table])
    return found >= len(PK)


def complete(prefix: str, work: Workload) -> bool:
    """The logical message has arrived, and heartbeats after it."""
    records = read_all(prefix)
    step = next(s for s in work.steps if s.label == "logical_message")
    message = [rec for (topic, _), recs in records.items() if topic == f"{prefix}.message"
               for rec in recs if unwrap(rec.value, SCHEMAS[prefix])[0]["source"]["txId"]
               % 2**32 == step.txid % 2**32]
    if not message:
        return False
    beats = [rec for (topic, _), recs in records.items() if topic == heartbeat_topic(prefix)
             for rec in recs if rec.timestamp >= message[0].timestamp]
    return len(beats) >= HEARTBEATS_KEPT


def align(prefix: str, twin: list[Record],
          found: dict[tuple[str, int], list[Record]]) -> tuple[list[Record], list[int]]:
    """`prefix`'s records of this run in the twin's order, and the twin line of each."""
    schemas = SCHEMAS[prefix]
    rows: dict[tuple[str, str], deque[Record]] = defaultdict(deque)
    passed: dict[tuple[str, str], Record] = {}  # (topic suffix, id) → marker or message
    beats: list[Record] = []
    for (topic, _), recs in sorted(found.items()):
        suffix = topic.removeprefix(prefix + ".")
        for rec in sorted(recs, key=lambda r: r.offset):
            rec.key_payload, _ = unwrap(rec.key, schemas)
            rec.payload, _ = unwrap(rec.value, schemas)
            if topic == heartbeat_topic(prefix):
                beats.append(rec)
            elif suffix == "transaction":
                passed[suffix, rec.payload["id"]] = rec
            elif suffix == "message":
                passed[suffix, str(rec.payload["source"]["txId"])] = rec
            else:
                rows[suffix, _key(rec, schemas)].append(rec)
    out: list[Record] = []
    lines: list[int] = []
    used: set[tuple[str, str]] = set()
    for number, t in enumerate(twin, start=1):
        suffix = t.topic.removeprefix(TWIN + ".")
        match: Record | None = None
        if t.step == "heartbeat":
            continue
        if suffix in ("transaction", "message"):
            ident = t.payload["id"] if suffix == "transaction" else str(
                t.payload["source"]["txId"])
            match = passed.get((suffix, ident))
            if match is None:
                raise CaptureError(f"{prefix}: no {suffix} record {ident} (twin line {number})")
        else:
            op = None if t.value is None else t.payload.get("op")
            if op == "t" or (op == "d" and not KEEPS_DELETES[prefix]) or (
                    op is None and not KEEPS_TOMBSTONES[prefix]):
                continue  # what the SMT drops
            queue = rows.get((suffix, _key(t, True)))
            if not queue:
                raise CaptureError(f"{prefix}: no record for twin line {number} ({t.topic} "
                                   f"key {t.key_payload}, op {op or 'tombstone'})")
            match = queue.popleft()
            used.add((suffix, _key(t, True)))
            deleted = isinstance(match.payload, dict) and match.payload.get("__deleted") == "true"
            # The SMT's tombstone keeps the value schema: the JSON converter writes it as
            # `null` (or a null payload), not as a Kafka tombstone.
            if (op is None) != (match.payload is None) or (op == "d") != deleted:
                raise CaptureError(f"{prefix}: {match.topic}@{match.partition}/{match.offset} "
                                   f"does not match twin line {number} (op {op or 'tombstone'}): "
                                   f"{(match.value or 'a tombstone')[:300]}")
        match.step = t.step
        out.append(match)
        lines.append(number)
    left = {ident: len(rows[ident]) for ident in used if rows[ident]}
    if left:
        raise CaptureError(f"{prefix}: records of this run's keys left unmatched: {left}")
    last = max((rec.timestamp for rec in out), default=0)
    twin_beats = [n for n, t in enumerate(twin, start=1) if t.step == "heartbeat"]
    for rec, number in zip(sorted((r for r in beats if r.timestamp >= last),
                                  key=lambda r: (r.timestamp, r.offset))[:HEARTBEATS_KEPT],
                           twin_beats, strict=False):
        rec.step = "heartbeat"
        out.append(rec)
        lines.append(number)
    return out, lines


def describe(rec: Record) -> str:
    p = rec.payload
    if rec.step == "heartbeat":
        return "heartbeat, passed on unchanged"
    if rec.topic.endswith(".transaction"):
        return f"transaction {p['status']} id={p['id']}, passed on unchanged"
    if rec.topic.endswith(".message"):
        return "op m, logical message, passed on unchanged"
    if rec.value is None:
        return f"tombstone (key {json.dumps(rec.key_payload)})"
    if p is None:
        return (f"the delete as the SMT's tombstone: the value is `{rec.value[:40]}`"
                f"{'…' if len(rec.value) > 40 else ''}, not a Kafka tombstone (key "
                f"{json.dumps(rec.key_payload)})")
    meta = {k: v for k, v in p.items() if k.startswith("__")}
    what = "delete, rewritten as its row" if meta.get("__deleted") == "true" else "row"
    return f"{what} {json.dumps(meta)}" if meta else f"{what}, no field added"


def check(ordered: dict[str, list[Record]]) -> None:
    """What the SMT made of the deletes, as the fixtures' tests rely on it."""
    rewrite = [rec.payload for rec in ordered[REWRITE] if isinstance(rec.payload, dict)
               and rec.payload.get("__deleted") == "true"]
    if len(rewrite) != 4 or any(not {"__op", "__table", "__source_ts_ms"} <= set(p)
                                for p in rewrite):
        raise CaptureError(f"{REWRITE}: expected 4 rewritten deletes with __op, __table, "
                           f"__source_ts_ms, found {rewrite}")
    if any(rec.value is None for rec in ordered[REWRITE]):
        raise CaptureError(f"{REWRITE}: a tombstone, with delete.tombstone.handling.mode=rewrite")
    bare = [rec for rec in ordered[UPSERT] if rec.payload is not None and rec.topic.startswith(
        f"{UPSERT}.public.")]
    if any(key.startswith("__") for rec in bare for key in rec.payload):
        raise CaptureError(f"{UPSERT}: a field added, without add.fields")
    if sum(rec.payload is None for rec in ordered[UPSERT]) != 4:
        raise CaptureError(f"{UPSERT}: expected the 4 deletes' tombstones")


def capture() -> None:
    state = services.status()
    if not all(state.get(n) for n in ("postgres", "kafka", "connect")):
        raise CaptureError(f"the stack is not running ({state}): `python -m stack up`")
    for prefix in FILES:
        remove_connector(connector_name(prefix))
        drop_slot(slot_name(prefix))
        delete_topics(prefix)
    work = Workload()
    try:
        with pg_connect() as conn:
            conn.autocommit = True
            seed(conn, work)
            settings = configs(work.seeds)
            for prefix, config in settings.items():
                connect("PUT", f"/connectors/{connector_name(prefix)}/config", config)
            for prefix in FILES:
                wait_running(connector_name(prefix))
                wait(f"slot {slot_name(prefix)}", partial(slot_active, slot_name(prefix)))
            wait(f"the {TWIN} snapshot", partial(snapshot_done, TWIN, True))
            for prefix in FLAT:
                wait(f"the {prefix} snapshot", partial(seeded, prefix, work))
            run_workload(conn, work)
        wait(f"the {TWIN} message and heartbeats", partial(twin_complete, TWIN, True, work))
        for prefix in FLAT:
            wait(f"the {prefix} message and heartbeats", partial(complete, prefix, work))
        twin = select(TWIN, True, work, read_all(TWIN))
        Checker(TWIN, True, work, twin).run()
        ordered: dict[str, list[Record]] = {TWIN: twin}
        pairs: dict[str, list[int]] = {}
        for prefix in FLAT:
            ordered[prefix], pairs[FILES[prefix]] = align(prefix, twin, read_all(prefix))
        check(ordered)
        FLAT_DIR.mkdir(parents=True, exist_ok=True)
        for prefix, name in FILES.items():
            (FLAT_DIR / name).write_text("".join(r.fixture_line() + "\n" for r in ordered[prefix]))
            log(f"wrote {len(ordered[prefix])} records to {FLAT_DIR / name}")
        (FLAT_DIR / "lines.json").write_text(json.dumps(pairs) + "\n")
        write_readme(work, settings, ordered, pairs)
    finally:
        for prefix in FILES:
            for step in (partial(remove_connector, connector_name(prefix)),
                         partial(drop_slot, slot_name(prefix)), partial(delete_topics, prefix)):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - every cleanup step is attempted
                    log(f"cleanup error ({prefix}): {exc}")
        cleanup_rows(work)


def _smt(config: dict[str, str]) -> str:
    return ", ".join(f"`{k.removeprefix('transforms.unwrap.')}={v}`" for k, v in config.items()
                     if k.startswith("transforms.unwrap.") and not k.endswith(".type"))


def _delete_rows(records: list[Record]) -> list[str]:
    return [f"`{rec.topic}`: `{json.dumps(rec.payload)}`" for rec in records
            if isinstance(rec.payload, dict) and rec.payload.get("__deleted") == "true"]


def write_readme(work: Workload, settings: dict[str, dict[str, Any]],
                 ordered: dict[str, list[Record]], pairs: dict[str, list[int]]) -> None:
    found = versions()
    twin_lines = len(ordered[TWIN])
    missing = {name: sorted(set(range(1, twin_lines + 1)) - set(numbers))
               for name, numbers in pairs.items()}
    out = [
        "# Recorded Debezium events, flattened (ExtractNewRecordState)",
        "",
        "Generated by `stack/capture/flattened.py` — do not edit by hand. Regenerate with",
        "",
        "```sh",
        ".venv/bin/python -m stack up   # if the stack is not running",
        f"{COMMAND} flattened",
        "```",
        "",
        f"Recorded on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from Debezium PostgreSQL "
        f"connector {found['debezium']} and its `io.debezium.transforms.ExtractNewRecordState` "
        f"SMT, Kafka Connect {found['kafka']}, PostgreSQL {found['postgres']}.",
        "",
        "| file | topic prefix | what |",
        "|---|---|---|",
        f"| `rewrite.jsonl` | `{REWRITE}` | the SMT with {_smt(settings[REWRITE])} (the stack's "
        "`nd-flat`); JsonConverter, `schemas.enable=true` |",
        f"| `tombstones.jsonl` | `{UPSERT}` | the SMT with its defaults: "
        f"{_smt(settings[UPSERT])}, no field added; JsonConverter, `schemas.enable=false` |",
        f"| `twin.jsonl` | `{TWIN}` | no SMT: the change-event envelope, JsonConverter, "
        "`schemas.enable=true` (the same lines as `../schemas_true.jsonl`) |",
        "| `lines.json` | | for each flattened file, the twin line of each of its lines |",
        "",
        f"The three connectors recorded the same run of the workload of `../README.md` "
        f"({twin_lines} twin records), each from its own slot. A flattened record is the "
        "twin's record of the same table and key (in that key's order), so the same rows, "
        "ids and versions; the flattened files list them in the twin's order. Lines are "
        "the input format of `reconciler plan`.",
        "",
        "## What the SMT did to the workload",
        "",
        "- c, u, r: the `after` row, plus the fields asked for (`__op`, `__table`, "
        "`__source_ts_ms`) and, with `rewrite`, `__deleted: \"false\"`.",
        "- d with `rewrite`: the `before` row with `__deleted: \"true\"` and `__op: \"d\"`, no "
        "tombstone after it. REPLICA IDENTITY DEFAULT (posts, profiles): the key and "
        "defaults, as in the envelope's `before`. FULL (comments): the true old row:",
        *[f"  - {row}" for row in _delete_rows(ordered[REWRITE])],
        "- d with `tombstone` (the default): only a tombstone, which keeps the value schema: "
        "the JSON converter writes its value as `null` (`schemas.enable=false`) or "
        "`{\"schema\": …, \"payload\": null}`, not as a Kafka tombstone (compaction keeps "
        "it); Debezium's own tombstone is dropped.",
        f"- TRUNCATE: dropped (twin line(s) without a flattened record: "
        f"{', '.join(f'`{n}` {m}' for n, m in missing.items())}; the truncate is twin line "
        "39).",
        "- transaction markers, logical messages and heartbeats: passed on unchanged.",
        "",
        "## Workload",
        "",
        "| step | txid | what |",
        "|---|---|---|",
        *[f"| {s.label} | {s.txid} | {s.what} |" for s in work.steps],
    ]
    for prefix in FLAT:
        name = FILES[prefix]
        out += ["", f"## `{name}`", "", "| line | twin line | topic | partition/offset | step "
                "| record |", "|---|---|---|---|---|---|"]
        for number, (rec, twin) in enumerate(zip(ordered[prefix], pairs[name], strict=True),
                                             start=1):
            out.append(f"| {number} | {twin} | `{rec.topic}` | {rec.partition}/{rec.offset} | "
                       f"{rec.step} | {describe(rec).replace('|', '/')} |")
    (FLAT_DIR / "README.md").write_text("\n".join(out) + "\n")
