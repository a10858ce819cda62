"""Failovers under a `ClusterShard`: a replica promoted by CLUSTER FAILOVER, and a
primary killed (SIGKILL) whose replica takes over after cluster-node-timeout. The calls
go on (after the invalidator's retries), the library is loaded on the promoted replica
when it lacks it, and the shard's identity changes, which is what makes the worker
re-apply what the old primary may have lost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from connectors.valkey.cluster import ClusterShard
from connectors.valkey.commands import WaitFor
from connectors.valkey.topology import slot_of
from reconciler.pipeline.invalidator import Invalidator
from reconciler.pipeline.planner import VERSIONED, Action
from stack import valkey_cluster as vc
from tests.cluster.conftest import FENCE_TTL_MS, node_client

KEYS = [f"post:{i}" for i in range(1000)]  # every primary holds some


@pytest.fixture
def waiting(fresh: list[str]) -> Iterator[ClusterShard]:
    """A ClusterShard that acknowledges a call only once a replica of each primary it
    wrote to has it (WAIT 1): what is acknowledged survives the failovers below."""
    with ClusterShard("c", fresh[:1], fence_ttl_ms=FENCE_TTL_MS,
                      wait=WaitFor(1, timeout_ms=1000)) as shard:
        shard.ensure_functions()
        yield shard


def owner_port(shard: ClusterShard, key: str) -> int:
    return int(shard.topology.node_of(slot_of(key)).rsplit(":", 1)[1])


def test_a_replica_promoted_by_cluster_failover(waiting: ClusterShard) -> None:
    shard = waiting
    assert shard.apply(KEYS, ["v"] * 1000, [1] * 1000) == ["absent"] * 1000
    before = shard.identity()
    primary = owner_port(shard, KEYS[0])
    replica = vc.replicas_of(primary)[0]
    vc.failover(replica)
    assert shard.apply(KEYS, ["v"] * 1000, [2] * 1000) == ["fenced"] * 1000
    assert shard.stats["moved"] >= 1  # the old map, corrected by the first MOVED
    assert owner_port(shard, KEYS[0]) == replica
    after = shard.identity()
    assert after != before
    assert len(after.split(",")) == 3 and after == shard.identity()


def test_a_killed_primary_replaced_by_its_replica(shard: ClusterShard) -> None:
    """The primary of some of the keys is flushed of its library (its replica too, by
    replication), then SIGKILLed. The invalidator retries the batch until the replica
    is promoted; the promoted replica gets the library; every action is counted once.
    (Without WAIT here: the promoted replica has no replica of its own until the killed
    node is back, so WAIT 1 could not be satisfied meanwhile.)"""
    assert shard.apply(KEYS, ["v"] * 1000, [1] * 1000) == ["absent"] * 1000
    before = shard.identity()
    primary = owner_port(shard, KEYS[0])
    replica = vc.replicas_of(primary)[0]
    node_client(primary).function_flush()
    assert node_client(primary).wait(1, 5000) == 1  # the fences and the flush replicated
    vc.kill_node(primary)
    retries: list[int] = []
    states: list[bool] = []
    invalidator = Invalidator(lambda: {"c": shard}, retry_budget_seconds=60,
                              truncate_max_keys_per_second=1e9,
                              on_retry=lambda: retries.append(1),
                              on_shard_state=lambda _shard, up: states.append(up))
    outcome = invalidator.execute([Action("c", key, VERSIONED, 2) for key in KEYS])
    assert outcome.results == Counter({("c", "fenced"): 1000})  # acknowledged v1 kept
    assert retries and states[0] is False and states[-1] is True
    assert shard.stats["reload"] >= 1  # on the promoted replica
    assert node_client(replica).function_list(library="cache_reconciler_2")
    assert owner_port(shard, KEYS[0]) == replica
    assert shard.identity() != before
    vc.start_node(primary)  # back as a replica of the promoted one
    vc.healthy()
    assert primary in vc.replicas_of(replica)
    assert shard.ping()
