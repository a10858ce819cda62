"""Readers racing the worker on purpose: the races the fences exist for.

No infrastructure fault: one worker, the random readers (as in every scenario), and in
every cycle, on rows of their own that the random readers leave alone:

1. The delete-then-stale-set race, planted: rows the application cached at version v
   are updated or deleted (each its last change); a slow writer that read v before
   the change writes v again as soon as it sees the worker invalidated the entry —
   within 0.8 x fence_ttl of its read. Every such write must be refused.
2. The fence lifetime (issue 12's reproduction, end to end): rows are deleted; once
   the worker's delete is seen in the cache, half a fence TTL later they are inserted
   again (a higher version) and a reader reads them; they are updated and the worker
   reconciles the update; then — after the delete fence's original TTL has run out,
   still inside the reader's window — the reader writes what it read. The changes that
   met the delete fence must have extended it: the write is refused.
3. Churn: rows deleted and inserted again at once, updated, deleted again; rows deleted
   earlier inserted again.

Run against a broken worker (`tests.faults.negative`), 1 makes a worker without fences
fail and 2 one that never extends a fence's TTL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.support import start_group_at_end, wait_until
from tests.faults.conftest import REPEAT
from tests.faults.negative import assert_broken, env, judged
from tests.faults.oracle import TOPICS, Figures, Oracle
from tests.faults.readers import WINDOW, Readers
from tests.faults.workers import Worker, dead_letter_topic, fault_config
from tests.faults.workload import DATA_TTL, Row, Workload, payload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
FENCE_TTL = 4.0  # fixed here: the fence-lifetime race needs half a TTL to set itself up
LATE = 0.3  # seconds after the delete fence's original expiry that the reader writes


def fence_lifetime(workload: Workload, readers: Readers, oracle: Oracle, group: str,
                   rows: list[Row]) -> None:
    """Part 2 of the module docstring, on `rows` (reconciled, cached at their version)."""
    ttl = workload.fence_ttl
    homes = {row.key: row.home for row in rows}
    workload.delete(rows)

    def deleted_in_cache() -> bool:
        return all(b"d" not in workload.shards[shard].hgetall(key)
                   for key, shards in homes.items() for shard in shards)

    wait_until(deleted_in_cache, 60, "the worker to apply the deletes", interval=0.02)
    seen = time.monotonic()  # every delete fence expires by seen + ttl at the latest
    time.sleep(ttl / 2)
    workload.reinsert(rows, place="same")
    read_at = time.monotonic()
    read = {row.key: (row.id, workload.db.one(
        f"SELECT system_version FROM {row.table} WHERE id = %s", (row.id,))[0]) for row in rows}
    workload.update(rows, recache=0)
    oracle.wait_committed(group, oracle.published())  # the worker reconciled the updates
    write_at = max(seen + ttl + LATE, time.monotonic())
    if write_at - read_at > WINDOW * ttl:
        readers.stats["lifetime_missed"] += len(rows)  # too slow to set the race up
        return
    time.sleep(write_at - time.monotonic())
    for row in rows:
        row_id, version = read[row.key]
        for shard in homes[row.key]:
            written = workload.writers[shard].set_if_newer(row.key, version,
                                                           payload(row_id, version), DATA_TTL)
            readers.stats["lifetime_writes"] += 1
            readers.stats["lifetime_written"] += bool(written)


def run_races(stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
              readers: Readers, *, cycles: int, broken: str | None = None) -> Figures | None:
    assert workload.fence_ttl == FENCE_TTL
    group = f"frace-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=20)
    worker = Worker(config, tmp_path / "worker.log", env=env(broken))
    try:
        worker.wait_ready()
        assert_broken(worker.log(), broken)
        for _cycle in range(cycles):
            rows = workload.create(posts=20, comments=15)  # the random readers' rows
            raced = workload.create(posts=10, comments=10, readable=False)
            lifetime = workload.create(posts=6, comments=4, readable=False)
            workload.update(rows)
            oracle.wait_committed(group, oracle.published())
            readers.race(raced)  # 1: cached at v, written back after the change
            workload.update(raced[::2], recache=0)
            workload.delete(raced[1::2])
            for row in lifetime:
                workload.cache(row)
            fence_lifetime(workload, readers, oracle, group, lifetime)  # 2
            workload.churn(rows[::3])  # 3
            workload.reinsert(workload.gone()[::2])
            workload.delete(rows[1::4])
            workload.update(workload.live()[::5])
            oracle.figures.faults += 1
        figures = judged(oracle, broken, lambda: oracle.account(
            group, dead_letter_topic=dead_letter_topic(config)))
        if broken is None:
            oracle.counted(worker.processed, since)
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    stats = readers.stats
    if broken is None:
        # The races were run, and every write that came after the worker's invalidation
        # was refused (beside the oracle, which would see the stale entry it left).
        assert stats["race_hit"] > 0, dict(stats)
        assert stats["race_hit_written"] == 0, dict(stats)
        assert stats["lifetime_writes"] > 0, dict(stats)
        assert stats["lifetime_written"] == 0, dict(stats)
    return figures


@pytest.fixture
def workload(stack: Stack, valkey_clients: dict[str, Any], uid: str) -> Iterator[Workload]:
    """The suite's workload with this module's fence TTL."""
    load = Workload(stack, valkey_clients, seed=uid, fence_ttl=FENCE_TTL)
    yield load
    load.close()


def test_readers_racing_deletes_reinserts_and_fence_lifetimes_leave_nothing_stale(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        readers: Readers) -> None:
    run_races(stack, tmp_path, uid, workload, oracle, readers, cycles=REPEAT)
