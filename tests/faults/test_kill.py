"""Scenario 1: SIGKILL the worker at each point of a batch, restart, repeat.

The fault seam (`reconciler.pipeline.faults`) stops the worker at an exact point of its Nth
batch — decoded (no Valkey call yet), between_shards (one shard answered, the other
not asked), acknowledged (every call answered, offsets not stored), stored (offsets
stored, not committed) — and the test SIGKILLs it there. Each cycle kills the worker
once at every point, in a random order, on a random batch (the 1st to 3rd arrival at
the point); before every kill fresh changes make a backlog of more than three batches,
so the kill lands mid-stream. A worker that finishes without reaching its point is
killed anyway and the point tried again with a new backlog: every point is reached in
every cycle. A clean worker then catches up and the oracle must hold.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.pipeline.faults import POINTS
from tests.conftest import Stack
from tests.e2e.support import committed, start_group_at_end, wait_until
from tests.faults.conftest import REPEAT
from tests.faults.negative import assert_broken, env, judged
from tests.faults.oracle import TOPICS, Figures, Oracle
from tests.faults.workers import Worker, dead_letter_topic, fault_config
from tests.faults.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
BATCH = 20  # kafka.batch_size
MAX_STOP_ON = 3  # the kill lands on the 1st to 3rd arrival at its point
ATTEMPTS = 3  # tries per point and cycle before the test fails


def backlog(workload: Workload) -> int:
    """Fresh changes on both shards and across them, rows deleted earlier inserted
    again, rows deleted and inserted again at once; returns how many (> 3 batches)."""
    count = workload.reinsert(workload.gone()[::2])
    rows = workload.create(posts=20, comments=15)
    count += len(rows) + workload.update(rows)
    count += workload.move([r for r in rows if r.table == "comments"][::5])
    count += workload.churn(rows[1::11])
    return count + workload.delete(rows[3::9])


class LastChanges:
    """Backlogs of last changes only, for a negative control: rows created and
    reconciled first, then each backlog updates 70 of them (each cached at its version
    just before), so whichever batch a broken worker loses leaves stale data."""

    def __init__(self, stack: Stack, tmp_path: Path, workload: Workload, oracle: Oracle,
                 config: Path, group: str, rows: int) -> None:
        self.workload = workload
        self.rows = workload.create(posts=rows // 2, comments=rows - rows // 2,
                                    readable=False)
        clean = Worker(config, tmp_path / "reconcile-first.log")
        try:
            oracle.wait_committed(group, oracle.published(), alive=clean.alive)
        finally:
            assert clean.stop() == 0

    def __call__(self, workload: Workload) -> int:
        chosen, self.rows = self.rows[:70], self.rows[70:]
        assert len(chosen) == 70, "out of rows for last-change backlogs"
        return workload.update(chosen, recache=1.0)


def run_kills(stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
              *, cycles: int, points: tuple[str, ...] = POINTS, broken: str | None = None,
              last_changes: bool = False) -> Figures | None:
    """`cycles` kills at each of `points`, then a clean worker and the oracle.
    `last_changes`: backlogs of last changes only (`LastChanges`)."""
    group = f"fkill-{uid}"
    start_group_at_end(stack, group, TOPICS)
    # A killed member holds its partitions until its session times out: the shortest
    # session the broker allows keeps the restarts quick.
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl,
                          batch_size=BATCH,
                          overrides={"kafka.client": {"session.timeout.ms": 6000}})
    make_backlog: Callable[[Workload], int] = backlog
    if last_changes:
        make_backlog = LastChanges(stack, tmp_path, workload, oracle, config, group,
                                   rows=70 * cycles * len(points) * ATTEMPTS)
    rng = random.Random(uid)
    stopped_at: dict[str, int] = dict.fromkeys(points, 0)
    missed: dict[str, int] = dict.fromkeys(points, 0)  # kills that had to be tried again
    behind_at_kill: list[int] = []  # records of the topics not yet committed at each kill
    log = tmp_path / "worker.log"
    for _cycle in range(cycles):
        for point in rng.sample(points, len(points)):
            for _attempt in range(ATTEMPTS):
                # More than MAX_STOP_ON batches of new changes wait on the topics, so
                # the point is reached with work of this test in flight.
                assert make_backlog(workload) > MAX_STOP_ON * BATCH
                ends = oracle.published()
                worker = Worker(config, log, env={
                    "RECONCILER_FAULT_STOP_AT": point,
                    "RECONCILER_FAULT_STOP_ON": str(rng.randint(1, MAX_STOP_ON)),
                    **env(broken)})
                try:
                    wait_until(lambda w=worker: w.state() == "T" or not w.alive(), 30,  # type: ignore[misc]
                               f"the worker to stop at {point}", interval=0.05)
                    reached = True
                except AssertionError:
                    reached = False  # the worker went through its backlog without it
                assert worker.alive(), f"the worker exited on its own:\n{worker.log()[-3000:]}"
                assert_broken(worker.log(), broken)
                if reached:
                    now = committed(stack, group, TOPICS)
                    behind_at_kill.append(sum(end - max(now.get(tp, 0), 0)
                                              for tp, end in ends.items()))
                worker.kill()
                oracle.figures.faults += 1
                if reached:
                    stopped_at[point] += 1
                    break
                missed[point] += 1
    # The killed workers left no counters: the clean worker accounts for every record
    # from where the group had committed when it started.
    since = oracle.committed(group)
    final = Worker(config, log, env=env(broken))
    try:
        figures = judged(oracle, broken, lambda: oracle.account(
            group, dead_letter_topic=dead_letter_topic(config)))
        if broken is None:
            oracle.counted(final.processed, since)
    finally:
        assert final.stop() == 0
    oracle.figures.extra.update(stopped_at=stopped_at, missed=missed,
                                uncommitted_at_kill=(min(behind_at_kill, default=0),
                                                     max(behind_at_kill, default=0)))
    # Every point reached in every cycle, each time with changes not yet committed.
    assert min(behind_at_kill) > 0, behind_at_kill
    assert stopped_at == dict.fromkeys(points, cycles), (stopped_at, missed)
    return figures


def test_sigkill_at_every_batch_point_then_restart_loses_no_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    run_kills(stack, tmp_path, uid, workload, oracle, cycles=REPEAT)
