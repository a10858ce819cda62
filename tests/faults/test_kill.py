"""Scenario 1: SIGKILL the worker at each point of a batch, restart, repeat.

The fault seam (`reconciler.faults`) stops the worker at an exact point of its Nth
batch — decoded (no Valkey call yet), between_shards (one shard answered, the other
not asked), acknowledged (every call answered, offsets not stored), stored (offsets
stored, not committed) — and the test SIGKILLs it there. Each cycle makes fresh changes
and kills the worker once at every point, in a random order, on a random batch; a
clean worker then catches up and the oracle must hold.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reconciler.faults import POINTS
from tests.conftest import Stack
from tests.e2e.support import start_group_at_end, wait_until
from tests.faults.conftest import REPEAT
from tests.faults.oracle import TOPICS, Oracle, Workload
from tests.faults.workers import Worker, dead_letter_topic, fault_config

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def test_sigkill_at_every_batch_point_then_restart_loses_no_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    group = f"fkill-{uid}"
    start_group_at_end(stack, group, TOPICS)
    # A killed member holds its partitions until its session times out: the shortest
    # session the broker allows keeps the restarts quick.
    config = fault_config(tmp_path, stack, group, batch_size=20,
                          overrides={"kafka.client": {"session.timeout.ms": 6000}})
    rng = random.Random(uid)
    stopped_at: dict[str, int] = dict.fromkeys(POINTS, 0)
    idle_kills = 0
    log = tmp_path / "worker.log"
    for _cycle in range(REPEAT):
        rows = workload.create(posts=40, comments=30)
        workload.update(rows)
        workload.move([r for r in rows if r.table == "comments"][::5])
        workload.delete(rows[3::9])
        oracle.published()  # a backlog of this cycle's changes waits on the topics
        for point in rng.sample(POINTS, len(POINTS)):
            worker = Worker(config, log, env={"RECONCILER_FAULT_STOP_AT": point,
                                              "RECONCILER_FAULT_STOP_ON": str(rng.randint(1, 3))})
            try:
                wait_until(lambda w=worker: w.state() == "T" or not w.alive(), 20,  # type: ignore[misc]
                           f"the worker to stop at {point}", interval=0.05)
                stopped_at[point] += 1
            except AssertionError:
                idle_kills += 1  # the backlog ran out before that batch: kill it anyway
            assert worker.alive(), f"the worker exited on its own:\n{worker.log()[-3000:]}"
            worker.kill()
            oracle.figures.faults += 1

    # The killed workers left no counters: the clean worker accounts for every record
    # from where the group had committed when it started.
    since = oracle.committed(group)
    final = Worker(config, log)
    try:
        figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config))
        oracle.counted(final.processed, since)
    finally:
        assert final.stop() == 0
    figures.extra.update(stopped_at=stopped_at, idle_kills=idle_kills)
    assert sum(stopped_at.values()) >= len(POINTS) * REPEAT // 2, stopped_at
