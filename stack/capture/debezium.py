"""The capture's temporary Debezium connectors (one per prefix of `PREFIXES`, each with
its own replication slot) on the stack's Kafka Connect, and their removal."""

from __future__ import annotations

import contextlib
import time
import urllib.error
from typing import Any

from stack import connect as stack_connect
from stack import postgres
from stack.capture.records import PK, TIMEOUT, CaptureError, log
from stack.process import LOG_DIR, http_json

CONNECTOR_PREFIX = "cr-capture-"  # connector names: cr-capture-<prefix>
SLOT_PREFIX = "cr_capture_"  # replication slots: cr_capture_<prefix>

def connector_name(prefix: str) -> str:
    return CONNECTOR_PREFIX + prefix


def slot_name(prefix: str) -> str:
    return SLOT_PREFIX + prefix


def capture_config(prefix: str, schemas: bool, seeds: dict[str, list[str]]) -> dict[str, str]:
    config = stack_connect.connector_config()
    enabled = "true" if schemas else "false"
    config.update({
        "topic.prefix": prefix,
        "slot.name": slot_name(prefix),
        "key.converter.schemas.enable": enabled,
        "value.converter.schemas.enable": enabled,
        # The snapshot reads only the rows this run seeded, never other tests' data.
        "snapshot.select.statement.overrides": ",".join(f"public.{t}" for t in PK),
    })
    for table, pk in PK.items():
        ids = ", ".join(f"'{v}'" for v in seeds[table])
        config[f"snapshot.select.statement.overrides.public.{table}"] = (
            f"SELECT * FROM public.{table} WHERE {pk} IN ({ids})")
    return config


def connect(method: str, path: str, body: object | None = None) -> Any:
    return http_json(method, stack_connect.connect_url(path), body)


def connector_state(name: str) -> tuple[str, list[dict[str, Any]]]:
    status = connect("GET", f"/connectors/{name}/status")
    return status["connector"]["state"], status.get("tasks") or []


def wait_running(name: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.HTTPError):
            state, tasks = connector_state(name)
            for task in tasks:
                if task.get("state") == "FAILED":
                    raise CaptureError(f"connector {name} task failed:\n"
                                       f"{task.get('trace', '')[:3000]}")
            if state == "FAILED":
                raise CaptureError(f"connector {name} failed")
            if state == "RUNNING" and tasks and all(t["state"] == "RUNNING" for t in tasks):
                return
        time.sleep(0.5)
    raise CaptureError(f"connector {name} not RUNNING after {TIMEOUT:.0f}s; see "
                       f"{LOG_DIR / 'connect.log'}")


def remove_connector(name: str) -> None:
    """Stop, reset the offsets (a re-created connector must snapshot again) and delete."""
    try:
        connect("GET", f"/connectors/{name}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return
        raise
    log(f"removing connector {name}")
    try:
        connect("PUT", f"/connectors/{name}/stop")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and connector_state(name)[0] != "STOPPED":
            time.sleep(0.5)
        connect("DELETE", f"/connectors/{name}/offsets")
    except Exception as exc:  # noqa: BLE001 - deletion below still matters most
        log(f"could not reset the offsets of {name}: {exc}")
    connect("DELETE", f"/connectors/{name}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connect("GET", f"/connectors/{name}")
        except urllib.error.HTTPError:
            return
        time.sleep(0.5)


def drop_slot(slot: str) -> None:
    """Drop a replication slot as the superuser, ending its walsender if still attached."""
    where = f"FROM pg_replication_slots WHERE slot_name = '{slot}'"
    if postgres.psql(f"SELECT count(*) {where}") != "1":
        return
    deadline = time.monotonic() + 30
    while (pid := postgres.psql(f"SELECT coalesce(active_pid::text, '') {where}")) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid:
        log(f"slot {slot} still in use by pid {pid}: terminating that walsender")
        postgres.psql(f"SELECT pg_terminate_backend({int(pid)})")
        time.sleep(1)
    log(f"dropping replication slot {slot}")
    postgres.psql(f"SELECT pg_drop_replication_slot(slot_name) {where}")


def slot_active(slot: str) -> bool:
    return postgres.psql(f"SELECT active FROM pg_replication_slots "
                         f"WHERE slot_name = '{slot}'") == "t"


def capture_slots() -> list[str]:
    """The replication slots of capture connectors, this run's or an earlier one's."""
    return postgres.psql("SELECT slot_name FROM pg_replication_slots WHERE slot_name "
                         f"LIKE '{SLOT_PREFIX}%'").split()
