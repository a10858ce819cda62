"""Negative controls: every deliberately broken worker makes a scenario fail.

``RECONCILER_FAULT_BROKEN`` runs the worker with one classic bug (`tests.faults.negative`);
each test here runs one short cycle of the scenario that catches that bug and passes
only if the oracle then fails on the cache's state (stale entries) — proof that the
oracle can see that class of bug at all. They run in CI beside the scenarios.

- no_fences (keys plainly deleted): the planted delete-then-stale-set races of
  test_readers put the old version back after the worker's delete.
- no_ttl_refresh (the delete fence is never extended): test_readers' fence-lifetime
  race writes a re-inserted row's older version once the fence's first TTL ran out.
- early_offsets (a batch's offsets committed once it is planned): the network
  partition — the batch that fails on the cut-off shard is already committed, the
  restarted worker starts past it; and SIGKILL at `decoded` / `between_shards`, on a
  backlog of last changes.
- ignore_tombstones: the compacted topic, where the tombstone is all that is left of a
  delete.

And one that is a setting, not a bug: ``valkey.failover_replay_seconds: 0`` (the
protection off) through the lossy failover of test_valkey_loss — a held-back replica
promoted without fences the primary acknowledged — must leave stale entries: the loss
the protection repairs is real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stack.toxiproxy import FaultNet
from tests.conftest import Stack
from tests.faults.oracle import Oracle
from tests.faults.readers import Readers
from tests.faults.shards import ShardB, workload_shards
from tests.faults.test_kill import run_kills
from tests.faults.test_network import run_partition
from tests.faults.test_readers import FENCE_TTL, run_races
from tests.faults.test_topics import run_compacted
from tests.faults.test_valkey_loss import NO_REPLAY, run_lossy
from tests.faults.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


@pytest.fixture
def workload(stack: Stack, valkey_clients: dict[str, Any], uid: str,
             shard_b: ShardB | None) -> Iterator[Workload]:
    """The suite's workload with a fixed fence TTL (the races' timing needs 4 s)."""
    load = Workload(stack, seed=uid, fence_ttl=FENCE_TTL,
                    **workload_shards(valkey_clients, shard_b))
    yield load
    load.close()


def test_without_fences_a_slow_writer_puts_stale_data_back(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        readers: Readers) -> None:
    oracle.figures.extra["negative_control"] = "no_fences"
    run_races(stack, tmp_path, uid, workload, oracle, readers, cycles=1, broken="no_fences")
    assert readers.stats["race_hit_written"] > 0, dict(readers.stats)


def test_without_fence_ttl_refresh_a_reinserted_rows_old_version_comes_back(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        readers: Readers) -> None:
    oracle.figures.extra["negative_control"] = "no_ttl_refresh"
    run_races(stack, tmp_path, uid, workload, oracle, readers, cycles=1,
              broken="no_ttl_refresh")
    assert readers.stats["lifetime_written"] > 0, dict(readers.stats)


def test_offsets_committed_before_acknowledgement_lose_the_batch_a_partition_failed(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        net: FaultNet) -> None:
    oracle.figures.extra["negative_control"] = "early_offsets"
    run_partition(stack, tmp_path, uid, workload, oracle, net, cycles=1,
                  broken="early_offsets")


def test_offsets_committed_before_acknowledgement_lose_the_batch_a_kill_interrupted(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    oracle.figures.extra["negative_control"] = "early_offsets"
    run_kills(stack, tmp_path, uid, workload, oracle, cycles=1,
              points=("decoded", "between_shards"), broken="early_offsets", last_changes=True)


def test_ignoring_tombstones_leaves_deleted_rows_cached_on_a_compacted_topic(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    oracle.figures.extra["negative_control"] = "ignore_tombstones"
    run_compacted(stack, tmp_path, uid, workload, oracle, cycles=1,
                  broken="ignore_tombstones")


@pytest.mark.parametrize("shard_b", ["sentinel"], indirect=True)
def test_without_failover_replay_a_lossy_failover_leaves_stale_entries(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    oracle.figures.extra["negative_control"] = NO_REPLAY
    run_lossy(stack, tmp_path, uid, workload, oracle, shard_b, cycles=1, replay=0.0)
