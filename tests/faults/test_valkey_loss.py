"""Failovers that lose acknowledged invalidations, for real — and the worker repairing them.

- The lossy failover (shard b behind Sentinel): the rows of the cycle are reconciled and
  cached on b at their version, and the replica has copied all of it
  (`sentinel.wait_replicated`). Then the replica is held back from replication
  (`sentinel.hold_back_replica`: CLIENT PAUSE WRITE on it, its link up), the rows change
  — their last change —, and the worker's fences are acknowledged by the primary and
  the offsets committed. The replica is read directly: it still holds the cached data
  those fences replaced (counted; at least one, or the test fails: no loss to repair).
  The primary is SIGKILLed (`sentinel.kill_primary`) and the held-back replica promoted
  without those writes: stale entries whose changes are committed. With
  ``valkey.failover_replay_seconds: 60`` the worker notices the new server (run id) and
  processes the last minute again: 0 stale. With 0 (`run_lossy(replay=0)`, a negative
  control in test_negative.py) the oracle must find them stale.
- A primary restarted from an old snapshot (shard b a Valkey of the test's own with RDB
  persistence): rows cached at their version, SAVE, then their last changes reconciled;
  the server crashed (SIGKILL: nothing saved on the way down) and, DOWN seconds later —
  longer than the scenario's ``failover_replay_seconds`` (SNAPSHOT_REPLAY), and than
  ``parking.after_seconds``, with a load running meanwhile —, started again: it loads the
  old snapshot. The worker is SIGSTOPped from just before the start until the restored
  stale entries are counted (at least one), then resumes, notices the new run id and
  replays from the replay window before it last saw the old server: 0 stale. Every
  other cycle the worker is stopped (SIGTERM) before the crash and a new one started
  after the restart: it notices the new server from the identities its group's
  committed offsets carry, and starts that much before their commit.

The rows whose loss is counted are never picked by the random readers (`readable=False`),
which could otherwise cache them at their version before the oracle looks; the readers
race on the rest of each cycle's rows all along.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import valkey

from stack import sentinel
from tests.conftest import Stack
from tests.e2e.sentinel import fields
from tests.faults.conftest import REPEAT
from tests.faults.negative import judged
from tests.faults.oracle import Figures, Oracle, judge
from tests.faults.shards import Marks, ShardB, settle_after_failover
from tests.faults.test_valkey_ha import changed_again, finish, prepare
from tests.faults.workers import Load, Worker, dead_letter_topic
from tests.faults.workload import SHARD_B, Row, Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
NO_REPLAY = "failover_replay_seconds=0"  # the negative control's name for the figures
SNAPSHOT_REPLAY = 15.0  # failover_replay_seconds of the old-snapshot scenario: < DOWN
DOWN = 20.0  # seconds the crashed server stays down while the worker runs (even cycles)


def stale_on(client: valkey.Valkey, rows: list[Row]) -> list[str]:
    """The keys of `rows` whose entry on `client`'s server breaks the state rules for
    shard b (data older than the row, of a deleted row, …)."""
    return [row.key for row in rows if judge(row, SHARD_B, fields(client, row.key)) is not None]


def cycle_rows(workload: Workload, oracle: Oracle, group: str, worker: Worker
               ) -> tuple[list[Row], list[Row]]:
    """A cycle's rows, reconciled: some the readers race on, and the rows on b whose loss
    the test counts (only the test touches them), then cached at their version."""
    raced = workload.create(posts=10, comments=10)
    counted = workload.create(posts=15, comments=15, readable=False)
    workload.update(raced + counted, recache=0)
    oracle.wait_committed(group, oracle.published(), alive=worker.alive)
    counted = [r for r in counted if SHARD_B in r.home]
    for row in counted:
        workload.cache(row)
    return raced, counted


def last_changes(workload: Workload, raced: list[Row], counted: list[Row]) -> None:
    """The counted rows' last changes (nothing re-cached first: the cached data at the
    version before is what a lost change leaves), some of them deletes; and changes
    of the raced rows."""
    workload.update(counted, recache=0)
    workload.delete(counted[::5])
    workload.update(raced)


# --------------------------------------------------------------------------- Sentinel


def run_lossy(stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
              shard_b: ShardB, *, cycles: int, replay: float) -> Figures | None:
    """`cycles` lossy failovers of shard b (the module docstring), the worker run with
    ``valkey.failover_replay_seconds: replay``; then the oracle, which must fail on
    stale entries when `replay` is 0."""
    group = f"flos-{uid}"
    config, since, worker = prepare(stack, tmp_path, group, workload, oracle, shard_b,
                                    **{"valkey.failover_replay_seconds": replay})
    held_back = 0
    try:
        worker.wait_ready()
        for _cycle in range(cycles):
            raced, counted = cycle_rows(workload, oracle, group, worker)
            sentinel.wait_replicated()  # the replica holds the cached data too
            before = Marks.of(worker)
            port = sentinel.hold_back_replica()
            try:
                last_changes(workload, raced, counted)
                oracle.wait_committed(group, oracle.published(), alive=worker.alive)
                with valkey.Valkey(port=port) as replica:
                    lost = stale_on(replica, counted)
            except BaseException:
                sentinel.release_replica()
                raise
            assert lost, "the held-back replica copied every fence: nothing to lose"
            held_back += len(lost)
            failover = sentinel.kill_primary()  # the held-back replica promoted
            assert failover.new == port, failover
            sentinel.restart_node(failover.old)  # a replica of the promoted one
            oracle.figures.faults += 1
            changed_again(workload, raced)
            settle_after_failover(worker, oracle, workload, group, before,
                                  replay=replay > 0)
        if replay:
            finish(worker, oracle, group, config, since)
            figures: Figures | None = oracle.figures
        else:
            figures = judged(oracle, NO_REPLAY, lambda: oracle.account(
                group, dead_letter_topic=dead_letter_topic(config)))
    finally:
        assert worker.stop() == 0
    oracle.figures.extra["lost_on_failover"] = held_back
    return figures


@pytest.mark.parametrize("shard_b", ["sentinel"], indirect=True)
def test_lossy_failover_a_held_back_replica_promoted_is_repaired_by_the_replay(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    run_lossy(stack, tmp_path, uid, workload, oracle, shard_b, cycles=REPEAT, replay=60.0)


# --------------------------------------------------------------------------- old snapshot


@pytest.mark.parametrize("shard_b", ["persistent"], indirect=True)
def test_primary_restarted_from_an_old_snapshot_is_repaired_by_the_replay(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    server = shard_b.server
    assert server is not None and oracle.readers is not None
    group = f"fsnp-{uid}"
    config, since, worker = prepare(stack, tmp_path, group, workload, oracle, shard_b,
                                    **{"valkey.failover_replay_seconds": SNAPSHOT_REPLAY})
    restored_stale = tallied = 0
    try:
        worker.wait_ready()
        for cycle in range(REPEAT):
            raced, counted = cycle_rows(workload, oracle, group, worker)
            assert shard_b.client.save()  # the snapshot: the cached data, no later fence
            last_changes(workload, raced, counted)
            oracle.wait_committed(group, oracle.published(), alive=worker.alive)
            assert not stale_on(shard_b.client, counted)  # the fences, acknowledged
            # Even cycles: the worker runs on while the crashed server stays down,
            # longer than the replay window; odd ones: the worker is down across the
            # restart (the pod and the cache node restarted together) and its successor
            # notices the new server from the identities its group's offsets carry.
            down = cycle % 2 == 1
            before: Marks | None = None if down else Marks.of(worker)
            if down:
                with oracle.readers.paused():
                    assert worker.stop() == 0
                tallied += worker.processed_at_exit()
            server.kill()  # a crash: the last snapshot is all that is left
            if not down:
                with Load(workload, pause=0.1):
                    time.sleep(DOWN)
            with oracle.readers.paused():  # nothing touches the restored entries…
                if not down:
                    worker.signal(signal.SIGSTOP)  # …until they are counted
                try:
                    server.start()
                    lost = stale_on(shard_b.client, counted)
                finally:
                    if down:
                        worker = Worker(config, worker.log_path)
                    else:
                        worker.signal(signal.SIGCONT)
            assert lost, "the restarted server lost no fence: nothing to repair"
            restored_stale += len(lost)
            oracle.figures.faults += 1
            changed_again(workload, raced)
            settle_after_failover(worker, oracle, workload, group, before)
        finish(worker, oracle, group, config, since, before=tallied)
        oracle.figures.extra["stale_after_restart"] = restored_stale
    finally:
        assert worker.stop() == 0
