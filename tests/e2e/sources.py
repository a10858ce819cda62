"""The stack's second source (``python -m stack up connect-nd2``: the ``nd2`` database,
its publication via the partition root, its ids from 10^12, its own connector) and the
partitioned ``events`` table, for the tests of several sources and of partitions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from stack.connect import SECOND_NAME, SECOND_PREFIX
from stack.postgres import PG_DB2
from tests.conftest import Stack

LEAF_TOPICS = [f"nd.public.events_{leaf}" for leaf in ("2026_11", "2026_12", "default")]
ROOT_TOPIC = f"{SECOND_PREFIX}.public.events"  # nd2 publishes events via the root
LEAF_PATTERNS = [r"events_\d{4}_\d{2}", "events_default"]  # every leaf of nd's events


@dataclass(frozen=True)
class Second:
    """The second source: its databases' DSNs, its connector and topic prefix."""

    postgres_dsn: str  # as the application
    postgres_reconciler_dsn: str  # as the reconciler (read-only)
    connector: str = SECOND_NAME
    topic_prefix: str = SECOND_PREFIX

    def source(self) -> dict[str, Any]:
        """Its entry under `sources:`."""
        return {"name": "nd2", "topic_prefix": self.topic_prefix, "connector": self.connector,
                "postgres": {"dsn": self.postgres_reconciler_dsn}}


def _database(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + name


def second_source(stack: Stack) -> Second:
    """The second source, failing (never skipping) when its connector is not running."""
    url = f"{stack.connect_url}/connectors/{SECOND_NAME}/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"the second source's connector {SECOND_NAME} is not there ({exc}): "
                    "start it with `python -m stack up connect-nd2` (scripts/test does)",
                    pytrace=False)
    if status.get("connector", {}).get("state") != "RUNNING":
        pytest.fail(f"connector {SECOND_NAME} is not RUNNING: {status}", pytrace=False)
    return Second(_database(stack.postgres_dsn, PG_DB2),
                  _database(stack.postgres_reconciler_dsn, PG_DB2))


def first_source(stack: Stack) -> dict[str, Any]:
    """The stack's first source (nd) under `sources:`."""
    return {"name": "nd", "topic_prefix": stack.topic_prefix, "connector": stack.connector,
            "postgres": {"dsn": stack.postgres_reconciler_dsn}}


def events_table(prefix: str, partitions: list[str] | None = None) -> dict[str, Any]:
    """`tables.public.events`, its key `<prefix>event:{id}`."""
    spec: dict[str, Any] = {"primary_key": ["id", "day"], "shard_key": "neighborhood_id",
                            "keys": [{"template": f"{prefix}event:{{id}}"}]}
    if partitions is not None:
        spec["partitions"] = partitions
    return spec


def edit(config: Path, **top: Any) -> Path:
    """Set top-level settings of a written config (`tables` entries are added)."""
    data = yaml.safe_load(config.read_text())
    for name, value in top.items():
        if name == "tables":
            data["tables"].update(value)
        else:
            data[name] = value
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


class Events:
    """Rows of the partitioned `events` table of one database."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def insert(self, day: str, neighborhood_id: int = 7) -> tuple[int, int]:
        row = self.conn.execute(
            "INSERT INTO events (day, neighborhood_id, kind) VALUES (%s, %s, 'e') "
            "RETURNING id, system_version", (day, neighborhood_id)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def update(self, event_id: int) -> int:
        row = self.conn.execute("UPDATE events SET kind = kind || '+' WHERE id = %s "
                                "RETURNING system_version", (event_id,)).fetchone()
        assert row is not None
        return int(row[0])

    def delete(self, event_id: int) -> None:
        self.conn.execute("DELETE FROM events WHERE id = %s", (event_id,))
