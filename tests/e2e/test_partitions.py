"""A partitioned table, for real: the stack's ``events`` (leaves ``events_2026_11``,
``events_2026_12``, ``events_default``), published per leaf by ``nd`` (topics
``nd.public.events_<leaf>``, ``source.table`` the leaf) and via the root by ``nd2``
(``nd2.public.events``). Either way its changes are planned by ``tables.public.events``;
per leaf only when ``partitions`` names the leaves — without it they are skipped as
unknown tables, as they were before it existed — and ``doctor`` says which it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
import valkey
import yaml

from connectors.valkey.writer import CacheWriter
from reconciler.cli import main
from tests.conftest import Stack
from tests.e2e.sources import (
    LEAF_PATTERNS,
    LEAF_TOPICS,
    ROOT_TOPIC,
    Events,
    edit,
    events_table,
    first_source,
    second_source,
)
from tests.e2e.support import (
    InProcessWorker,
    admin,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
MAX_VERSION = str(2**63 - 1).encode()  # the delete fence's version


def fence(version: int | bytes) -> dict[bytes, bytes]:
    return {b"v": version if isinstance(version, bytes) else str(version).encode()}


@pytest.fixture
def prefix(uid: str) -> str:
    return f"part-{uid}:"


@pytest.fixture
def events(stack: Stack) -> Iterator[Events]:
    rows = Events(stack.postgres_dsn)
    yield rows
    rows.close()


def worker_config(stack: Stack, tmp_path: Path, uid: str, prefix: str, topics: list[str],
                  partitions: list[str] | None) -> Path:
    config = write_config(tmp_path, stack, group=f"part-{uid}", topics=topics,
                          key_prefix=prefix)
    start_group_at_end(stack, f"part-{uid}", topics)
    return edit(config, tables={"public.events": events_table(prefix, partitions)})


# --------------------------------------------------------------------------- per leaf


@pytest.mark.parametrize("partitions", [LEAF_PATTERNS, None],
                         ids=["with-partitions", "without-partitions"])
def test_a_leafs_changes_are_reconciled_by_the_parents_config(
        stack: Stack, tmp_path: Path, uid: str, prefix: str, events: Events,
        shards: dict[str, valkey.Valkey], partitions: list[str] | None) -> None:
    """Without `partitions` (the control run, as before it existed) the leaves' changes
    are skipped as unknown tables and the cache keeps its stale entry."""
    a = shards["a"]
    config = worker_config(stack, tmp_path, uid, prefix, LEAF_TOPICS, partitions)
    with InProcessWorker(config) as worker:
        november, n1 = events.insert("2026-11-15")  # leaf events_2026_11
        december, d1 = events.insert("2026-12-15")  # leaf events_2026_12
        later, l1 = events.insert("2031-01-01")  # leaf events_default
        key = f"{prefix}event:{december}"
        assert CacheWriter(a).set_if_newer(key, d1, {"kind": "e"}, 300)
        d2 = events.update(december)
        events.delete(november)
        if partitions is None:  # c, c, c, u, d: each skipped
            wait_until(lambda: worker.metric("reconciler_skipped_total",
                                             {"reason": "unknown_table"}) >= 5, 30,
                       "the leaves' changes to be skipped as unknown tables")
            assert CacheWriter(a).get(key) == {"kind": "e"}, "the stale entry stays"
            assert not a.exists(f"{prefix}event:{later}")
            return
        wait_until(lambda: a.hgetall(key) == fence(d2), 30, "the stale entry to become a fence")
        wait_until(lambda: a.hgetall(f"{prefix}event:{november}") == fence(MAX_VERSION), 30,
                   "the delete fence")
        wait_until(lambda: a.hgetall(f"{prefix}event:{later}") == fence(l1), 30,
                   "the default leaf's row fenced")
        assert n1 < d1 < l1
        worker.wait_caught_up(stack, LEAF_TOPICS)
        # Counted under the configured table, never a leaf's name.
        assert worker.metric("reconciler_events_total", {"table": "public.events", "op": "c"}) >= 3
        assert worker.metric("reconciler_events_total",
                             {"table": "public.events_2026_12", "op": "u"}) == 0
        assert worker.metric("reconciler_skipped_total", {"reason": "unknown_table"}) == 0


@pytest.fixture
def new_leaf(stack: Stack, uid: str) -> Iterator[tuple[str, str]]:
    """A leaf partition of events created by the test (a day of its own, far in the
    future: no other run's rows), then dropped with its topic."""
    seed = int(hashlib.sha256(uid.encode()).hexdigest(), 16)
    day = date(2100, 1, 1) + timedelta(days=seed % 300_000)
    name = f"events_t{uid}"
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        try:
            yield name, day.isoformat()
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            client = admin(stack)
            for future in client.delete_topics([f"nd.public.{name}"]).values():
                with contextlib.suppress(Exception):  # never created: nothing to delete
                    future.result(timeout=30)


def test_a_leaf_created_while_the_worker_runs_is_reconciled_without_a_restart(
        stack: Stack, tmp_path: Path, uid: str, prefix: str, events: Events,
        shards: dict[str, valkey.Valkey], new_leaf: tuple[str, str]) -> None:
    """Why `partitions` holds patterns, not names: next month's leaf needs no new config,
    and a regex subscription picks its topic up."""
    name, day = new_leaf
    config = worker_config(stack, tmp_path, uid, prefix, LEAF_TOPICS, [r"events_.*"])
    data = yaml.safe_load(config.read_text())
    data["kafka"].pop("topics")
    data["kafka"]["topic_regex"] = r"^nd\.public\.events_.*"
    data["kafka"]["client"] = {"topic.metadata.refresh.interval.ms": 1000}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with InProcessWorker(config):
        events.conn.execute(f"CREATE TABLE {name} PARTITION OF events "
                            f"FOR VALUES FROM ('{day}') TO ('{day}'::date + 1)")
        event_id, version = events.insert(day)
        wait_until(lambda: shards["a"].hgetall(f"{prefix}event:{event_id}") == fence(version),
                   90, f"the change in the new leaf {name} to be reconciled")


# --------------------------------------------------------------------------- via the root


def test_a_root_published_tables_changes_are_reconciled_as_the_table(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey]) -> None:
    second = second_source(stack)
    config = worker_config(stack, tmp_path, uid, prefix, [ROOT_TOPIC], None)
    rows = Events(second.postgres_dsn)
    b = shards["b"]
    try:
        with InProcessWorker(config) as worker:
            event_id, v1 = rows.insert("2026-12-15", neighborhood_id=700)  # shard b
            key = f"{prefix}event:{event_id}"
            wait_until(lambda: b.hgetall(key) == fence(v1), 30, "the root's insert fenced")
            assert CacheWriter(b).set_if_newer(key, v1, {"kind": "e"}, 300)
            v2 = rows.update(event_id)
            wait_until(lambda: b.hgetall(key) == fence(v2), 30, "the stale entry replaced")
            rows.delete(event_id)
            wait_until(lambda: b.hgetall(key) == fence(MAX_VERSION), 30, "the delete fence")
            assert worker.metric("reconciler_events_total",
                                 {"table": "public.events", "op": "u"}) == 1
    finally:
        rows.close()


# --------------------------------------------------------------------------- doctor


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    main(["doctor", "-c", str(config), "--json"])
    return {check["check"]: check for check in json.loads(capsys.readouterr().out)["checks"]}


def test_doctor_says_how_each_source_publishes_and_flags_unplanned_leaves(
        stack: Stack, tmp_path: Path, uid: str, capsys: pytest.CaptureFixture[str]) -> None:
    second = second_source(stack)
    config = write_config(tmp_path, stack, group=f"part-{uid}", topics=[*LEAF_TOPICS, ROOT_TOPIC],
                          overrides={"connect": {"url": stack.connect_url}})
    edit(config, postgres={}, sources=[first_source(stack), second.source()],
         tables={"public.events": events_table(f"part-{uid}:")})
    checks = doctor(config, capsys)
    leaves = checks["nd/table public.events partitions"]
    assert leaves["status"] == "FAIL", leaves
    assert "publication nd_publication publishes per leaf partition" in leaves["detail"]
    assert "public.events_2026_11" in leaves["detail"] and "skipped as unknown tables" in \
        leaves["detail"]
    assert r"set tables.public.events.partitions: ['events_\d{4}_\d{2}', 'events_default'" in \
        leaves["fix"]
    root = checks["nd2/table public.events partitions"]
    assert root["status"] == "OK", root
    assert "publishes via the root: changes arrive under public.events" in root["detail"]

    edit(config, tables={"public.events": events_table(f"part-{uid}:", [r"events_.*"])})
    checks = doctor(config, capsys)
    fixed = checks["nd/table public.events partitions"]
    assert fixed["status"] == "OK", fixed
    assert "tables.public.events.partitions matches every leaf" in fixed["detail"]
    assert checks["nd/publication nd_publication"]["status"] == "OK"
    assert checks["nd2/publication nd_publication"]["status"] == "OK"
    assert not [c for c in checks.values() if c["status"] == "FAIL"], checks
