"""One capture, start to end (``python -m stack.capture``), always cleaning up."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from stack import connect as stack_connect
from stack import services
from stack.capture.checks import Checker
from stack.capture.debezium import (
    CONNECTOR_PREFIX,
    capture_config,
    capture_slots,
    connect,
    connector_name,
    drop_slot,
    remove_connector,
    slot_active,
    slot_name,
    wait_running,
)
from stack.capture.order import select
from stack.capture.readme import versions, write_readme
from stack.capture.records import (
    FIXTURE_DIR,
    HEARTBEATS_KEPT,
    PREFIXES,
    TIMEOUT,
    CaptureError,
    Record,
    log,
    unwrap,
)
from stack.capture.topics import delete_topics, prefix_topics, read_all
from stack.capture.workload import Workload, cleanup_rows, pg_connect, run_workload, seed
from stack.process import STACK_DIR


def wait(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - e.g. a topic still being created
            last_error = f" (last error: {exc})"
        time.sleep(1)
    raise CaptureError(f"timed out after {timeout:.0f}s waiting for {what}{last_error}")


def snapshot_done(prefix: str, schemas: bool) -> bool:
    for records in read_all(prefix).values():
        for rec in records:
            payload, _ = unwrap(rec.value, schemas)
            if (isinstance(payload, dict) and isinstance(payload.get("source"), dict)
                    and payload["source"].get("snapshot") == "last"):
                return True
    return False


def complete(prefix: str, schemas: bool, work: Workload) -> bool:
    """The message (last step) has arrived, followed by two heartbeats."""
    records = select(prefix, schemas, work, read_all(prefix))
    message = [r for r in records if r.step == "logical_message" and r.value is not None
               and r.payload.get("op") == "m"]
    beats = [r for r in records if r.step == "heartbeat"]
    return bool(message) and len(beats) >= HEARTBEATS_KEPT


def preclean() -> None:
    """Leftovers of an earlier, interrupted run."""
    for name in connect("GET", "/connectors"):
        if name.startswith(CONNECTOR_PREFIX):
            remove_connector(name)
    for slot in capture_slots():
        drop_slot(slot)
    for prefix in PREFIXES:
        delete_topics(prefix)
        if prefix_topics(prefix):
            raise CaptureError(f"topics of {prefix} still exist after deleting them")


def cleanup(work: Workload) -> list[str]:
    errors: list[str] = []
    for prefix in PREFIXES:
        actions: list[Callable[[], None]] = [
            partial(remove_connector, connector_name(prefix)),
            partial(drop_slot, slot_name(prefix)),
            partial(delete_topics, prefix),
        ]
        for action in actions:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - every cleanup step is attempted
                errors.append(f"{prefix}: {exc}")
                log(f"cleanup error ({prefix}): {exc}")
    cleanup_rows(work)
    leftover = capture_slots()
    if leftover:
        errors.append(f"replication slots left behind: {' '.join(leftover)}")
    return errors


def record(work: Workload) -> dict[str, dict[str, str]]:
    """Seed, start both connectors, wait for their snapshots, run the workload and wait
    for its last events; the connectors' configurations."""
    with pg_connect() as conn:
        conn.autocommit = True
        seed(conn, work)
        configs = {prefix: capture_config(prefix, schemas, work.seeds)
                   for prefix, (schemas, _) in PREFIXES.items()}
        for prefix, config in configs.items():
            log(f"registering {connector_name(prefix)}")
            connect("PUT", f"/connectors/{connector_name(prefix)}/config", config)
        for prefix, (schemas, _) in PREFIXES.items():
            log(f"waiting for {connector_name(prefix)} to run and finish its snapshot")
            wait_running(connector_name(prefix))
            wait(f"the {prefix} snapshot", partial(snapshot_done, prefix, schemas))
            wait(f"slot {slot_name(prefix)} streaming", partial(slot_active, slot_name(prefix)))
        log("both connectors running, snapshots done; running the workload")
        run_workload(conn, work)
    log(f"waiting for the last events and {HEARTBEATS_KEPT} heartbeats")
    for prefix, (schemas, _) in PREFIXES.items():
        wait(f"the {prefix} message event and {HEARTBEATS_KEPT} heartbeats after it",
             partial(complete, prefix, schemas, work))
    return configs


def same_shapes(ordered: dict[str, list[Record]]) -> None:
    """Both wire formats must carry the same sequence of records."""
    def shapes(prefix: str) -> list[tuple[str, str, str]]:
        return [(r.topic.removeprefix(prefix + ".").replace(prefix, "<prefix>"), r.step,
                 "tombstone" if r.value is None else str(
                     r.payload.get("op") or r.payload.get("status") or "heartbeat"))
                for r in ordered[prefix]]
    a, b = shapes("capjson"), shapes("capbare")
    if a != b:
        diff = [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y][:5]
        raise CaptureError(f"the two formats differ: {len(a)} vs {len(b)} records; "
                           f"first differences {diff}")


def check(work: Workload, ordered: dict[str, list[Record]]) -> None:
    """Every shape in both formats, alike; else what was captured is kept in .stack/."""
    try:
        for prefix, (schemas, _) in PREFIXES.items():
            Checker(prefix, schemas, work, ordered[prefix]).run()
        same_shapes(ordered)
    except CaptureError:
        for prefix, records in ordered.items():
            dump = STACK_DIR / f"capture-failed-{prefix}.jsonl"
            dump.write_text("".join(r.fixture_line() + "\n" for r in records))
            log(f"what was captured is in {dump}")
        raise


def capture() -> None:
    state = services.status()
    if not all(state.get(n) for n in ("postgres", "kafka", "connect")):
        raise CaptureError(f"the stack is not running ({state}); start it with "
                           "`.venv/bin/python -m stack up`")
    base = stack_connect.connector_config()
    preclean()
    work = Workload()
    failed = True
    try:
        configs = record(work)
        ordered = {prefix: select(prefix, schemas, work, read_all(prefix))
                   for prefix, (schemas, _) in PREFIXES.items()}
        check(work, ordered)
        FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
        for prefix, (_, name) in PREFIXES.items():
            (FIXTURE_DIR / name).write_text(
                "".join(rec.fixture_line() + "\n" for rec in ordered[prefix]))
            log(f"wrote {len(ordered[prefix])} records to {FIXTURE_DIR / name}")
        write_readme(work, configs, base, ordered, versions())
        failed = False
    finally:
        errors = cleanup(work)
        if errors and not failed:
            raise CaptureError("cleanup failed: " + "; ".join(errors))
