"""Several source databases (`sources:`): the stack's ``nd`` and ``nd2`` (``python -m
stack up connect-nd2``), the same schema, each with its own connector, slot and topic
prefix. One worker reconciles both into one cache; audit reads each entry's row from
whichever database holds it; doctor checks each source against its own database and
connector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import valkey

from connectors.valkey.writer import CacheWriter
from reconciler.cli import main
from tests.conftest import Stack
from tests.e2e.sources import (
    LEAF_PATTERNS,
    LEAF_TOPICS,
    ROOT_TOPIC,
    Events,
    Second,
    edit,
    events_table,
    first_source,
    second_source,
)
from tests.e2e.support import (
    InProcessWorker,
    Rows,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
MAX_VERSION = str(2**63 - 1).encode()  # the delete fence's version
POSTS = ["nd.public.posts", "nd2.public.posts"]


def fence(version: int | bytes) -> dict[bytes, bytes]:
    return {b"v": version if isinstance(version, bytes) else str(version).encode()}


@pytest.fixture
def prefix(uid: str) -> str:
    return f"src-{uid}:"


@pytest.fixture
def second(stack: Stack) -> Second:
    return second_source(stack)


def sources_config(stack: Stack, second: Second, tmp_path: Path, uid: str, prefix: str,
                   topics: list[str], **overrides: Any) -> Path:
    config = write_config(tmp_path, stack, group=f"src-{uid}", topics=topics,
                          key_prefix=prefix, overrides=overrides)
    return edit(config, postgres={}, sources=[first_source(stack), second.source()],
                tables={"public.events": events_table(prefix, LEAF_PATTERNS)})


def test_one_worker_reconciles_both_sources_into_one_cache(
        stack: Stack, second: Second, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey]) -> None:
    topics = [*POSTS, *LEAF_TOPICS, ROOT_TOPIC]
    config = sources_config(stack, second, tmp_path, uid, prefix, topics)
    start_group_at_end(stack, f"src-{uid}", topics)
    a, b = shards["a"], shards["b"]
    nd, nd2 = Rows(stack.postgres_dsn), Rows(second.postgres_dsn)
    nd_events, nd2_events = Events(stack.postgres_dsn), Events(second.postgres_dsn)
    try:
        with InProcessWorker(config) as worker:
            first, f1 = nd.insert_post(7)  # shard a
            other, o1 = nd2.insert_post(700)  # shard b
            assert other >= 10**12 > first  # the sources keep their ids apart
            wait_until(lambda: a.hgetall(f"{prefix}post:{first}") == fence(f1)
                       and b.hgetall(f"{prefix}post:{other}") == fence(o1), 30,
                       "both sources' inserts fenced")
            assert CacheWriter(a).set_if_newer(f"{prefix}post:{first}", f1, {"t": "x"}, 300)
            assert CacheWriter(b).set_if_newer(f"{prefix}post:{other}", o1, {"t": "x"}, 300)
            f2, o2 = nd.update_post(first), nd2.update_post(other)
            wait_until(lambda: a.hgetall(f"{prefix}post:{first}") == fence(f2)
                       and b.hgetall(f"{prefix}post:{other}") == fence(o2), 30,
                       "both stale entries replaced by fences")
            nd2.delete_post(other)
            wait_until(lambda: b.hgetall(f"{prefix}post:{other}") == fence(MAX_VERSION), 30,
                       "nd2's delete fence")
            # The partitioned table: per leaf from nd, via the root from nd2.
            leaf, l1 = nd_events.insert("2026-12-15")
            root, r1 = nd2_events.insert("2026-12-15")
            wait_until(lambda: a.hgetall(f"{prefix}event:{leaf}") == fence(l1)
                       and a.hgetall(f"{prefix}event:{root}") == fence(r1), 30,
                       "both sources' events fenced")
            assert worker.metric("reconciler_events_total",
                                 {"table": "public.posts", "op": "u"}) >= 2
            assert worker.metric("reconciler_dead_letters_total", {"reason": "unknown_table"}) == 0
    finally:
        for rows in (nd, nd2, nd_events, nd2_events):
            rows.close()


def audit(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["audit", "-c", str(config), "--json", "--table", "public.posts",
                 "--grace", "0.2", *args])
    return code, json.loads(capsys.readouterr().out)


def test_audit_checks_each_entry_against_the_source_that_holds_its_row(
        stack: Stack, second: Second, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey], capsys: pytest.CaptureFixture[str]) -> None:
    config = sources_config(stack, second, tmp_path, uid, prefix, POSTS)
    writer = CacheWriter(shards["a"])
    nd, nd2 = Rows(stack.postgres_dsn), Rows(second.postgres_dsn)
    try:
        fresh, v_fresh = nd.insert_post(7)  # in nd: fresh
        behind, v1 = nd2.insert_post(7)  # in nd2: stale
        v_behind = nd2.update_post(behind)
        gone, v_gone = nd2.insert_post(7)  # deleted from nd2: orphan
        nd2.delete_post(gone)
        twice, v_twice = nd.insert_post(7)  # the same id in both: ambiguous
        nd2.one("INSERT INTO posts (id, neighborhood_id, author_id, title) "
                "VALUES (%s, 7, 1, 'same id') RETURNING id", (twice,))
        for post, version in ((fresh, v_fresh), (behind, v1), (gone, v_gone),
                              (twice, v_twice)):
            assert writer.set_if_newer(f"{prefix}post:{post}", version, {"t": "x"}, 600)

        code, found = audit(config, capsys)
        assert code == 1
        assert found["sources"] == ["nd", "nd2"]
        counts = {state: found["tables"]["public.posts"][state]
                  for state in ("fresh", "stale", "orphan", "ambiguous")}
        assert counts == {"fresh": 1, "stale": 1, "orphan": 1, "ambiguous": 1}, found

        code, repaired = audit(config, capsys, "--repair")
        assert repaired["tables"]["public.posts"]["repaired"] == {
            "stale": 1, "orphan": 1, "ahead": 0, "ambiguous": 1}
        assert shards["a"].hgetall(f"{prefix}post:{behind}") == fence(v_behind)
        code, after = audit(config, capsys)
        assert code == 0 and after["remaining"] == {
            "stale": 0, "orphan": 0, "ahead": 0, "ambiguous": 0}, after
    finally:
        nd2.conn.execute("DELETE FROM posts WHERE id = %s", (twice,))
        nd.close()
        nd2.close()


def test_doctor_checks_each_source_against_its_own_database_and_connector(
        stack: Stack, second: Second, tmp_path: Path, uid: str, prefix: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = sources_config(stack, second, tmp_path, uid, prefix,
                            [*POSTS, "nd.public.comments", "nd2.public.comments",
                             "nd.public.profiles", "nd2.public.profiles", *LEAF_TOPICS,
                             ROOT_TOPIC], connect={"url": stack.connect_url})
    main(["doctor", "-c", str(config), "--json"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    for source, slot in (("nd", "nd_debezium"), ("nd2", "nd2_debezium")):
        for check in ("postgres", "table public.posts version trigger",
                      "table public.comments replica identity", "publication nd_publication",
                      f"replication slot {slot}", "table public.events partitions"):
            assert checks[f"{source}/{check}"]["status"] == "OK", checks[f"{source}/{check}"]
    assert checks["nd/connector nd-postgres"]["status"] == "OK"
    assert checks[f"nd2/connector {second.connector}"]["status"] == "OK"
    assert not [c for c in checks.values() if c["status"] == "FAIL"], checks

    # A source whose connector is not there fails under its own name only.
    broken = {**second.source(), "connector": f"missing-{uid}"}
    edit(config, sources=[first_source(stack), broken])
    main(["doctor", "-c", str(config), "--json"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    failed = sorted(name for name, c in checks.items() if c["status"] == "FAIL")
    assert failed == ["nd2/connector"], failed
    assert f"missing-{uid} not found" in checks["nd2/connector"]["detail"]
    assert "sources[nd2].connector" in checks["nd2/connector"]["fix"]
