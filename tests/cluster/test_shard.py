"""`ClusterShard` against the stack's Valkey Cluster: the same answers and end states as
a standalone `Shard`, one pipelined write per primary, the library reloaded where a
node lost it, truncate on every primary, and the cluster's ACL users."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import valkey
from hypothesis import HealthCheck, given, settings
from valkey.cluster import ValkeyCluster

from connectors.errors import ValkeyRejected
from connectors.valkey.cluster import ClusterShard
from connectors.valkey.commands import APPLY_CHUNK
from connectors.valkey.protocols import MAX_VERSION
from connectors.valkey.shard import Shard
from connectors.valkey.testing import FakeShard
from connectors.valkey.topology import slot_of
from stack import security
from stack import valkey_cluster as vc
from tests.cluster.conftest import FENCE_TTL_MS, entry, node_client
from tests.e2e.support import PrivateValkey

# A small key space: three keys share the slot of {t} (multi-key calls in one slot),
# the others spread over the cluster's primaries.
NAMES = ["post:1", "post:2", "post:10", "feed:1", "{t}:1", "{t}:2", "{t}:3", "{u}:1"]
VERSIONS = st.one_of(st.integers(0, 6), st.sampled_from([2**53 + 1, MAX_VERSION]))
ops_lists = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from("vsdu"), VERSIONS),
                     min_size=1, max_size=12)
steps = st.lists(st.one_of(
    st.tuples(st.sampled_from(["apply", "send"]), ops_lists),
    st.tuples(st.just("set"), st.sampled_from(NAMES), VERSIONS,
              st.sampled_from([0, 10_000, 500_000])),
    st.tuples(st.just("truncate"), st.sampled_from(["post:*", "{t}:*", "*1", "nothing"]))),
    max_size=20)
prefixes = itertools.count()


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Shard]:
    """A standalone Shard on a valkey-server of the test's own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    server = PrivateValkey(tmp_path / "valkey", port)
    server.start()
    with Shard("s", server.url, fence_ttl_ms=FENCE_TTL_MS) as opened:
        opened.ensure_functions()
        yield opened
    server.stop()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_same_results_and_end_states_as_a_standalone_shard(
        shard: ClusterShard, standalone: Shard, raw: ValkeyCluster, uid: str,
        steps: list[Any]) -> None:
    prefix = f"{uid}:{next(prefixes)}:"
    keyed = [prefix + name for name in NAMES]
    for step in steps:
        if step[0] in ("apply", "send"):
            keys = [prefix + name for name, _, _ in step[1]]
            ops = [op for _, op, _ in step[1]]
            versions = [version for _, _, version in step[1]]
            if step[0] == "apply":
                got = shard.apply(keys, ops, versions)
            else:
                got = shard.send(keys, ops, versions).result()
            assert got == standalone.apply(keys, ops, versions), step
        elif step[0] == "set":
            _, name, version, ttl_ms = step
            args = ("cr2_set_if_newer", 1, prefix + name, version, b"p", ttl_ms)
            assert raw.fcall(*args) == standalone.client.fcall(*args), step  # type: ignore[arg-type]
        else:
            assert shard.truncate(prefix + step[1]) == standalone.truncate(prefix + step[1])
    for key in keyed:
        assert entry(raw, key)[:2] == entry(standalone.client, key)[:2], key
        ttls = int(raw.pttl(key)), int(standalone.client.pttl(key))  # type: ignore[arg-type]
        assert (ttls[0] > 0) == (ttls[1] > 0) and abs(ttls[0] - ttls[1]) < 5_000, (key, ttls)


def test_one_pipelined_write_per_primary(shard: ClusterShard) -> None:
    """2,000 keys over more than 1,500 slots: one FCALL per slot, but one write per
    primary (sent before any answer is read), for apply() and send() alike."""
    keys = [f"post:{i}" for i in range(2000)]
    slots = {slot_of(key) for key in keys}
    assert len(slots) > 1500
    primaries = shard.primaries()
    before = _fcalls(primaries)
    assert shard.apply(keys, ["v"] * 2000, [1] * 2000) == ["absent"] * 2000
    assert {key: n for key, n in shard.stats.items() if key.startswith("write")} == {
        f"write {node}": 1 for node in primaries}
    assert sum(_fcalls(primaries).values()) - sum(before.values()) == len(slots)
    shard.stats.clear()
    pending = shard.send(keys, ["v"] * 2000, [2] * 2000)
    assert shard.stats == {f"write {node}": 1 for node in primaries}  # all sent, none read
    assert pending.result() == ["fenced"] * 2000
    assert shard.stats == {f"write {node}": 1 for node in primaries}


def _fcalls(nodes: list[str]) -> dict[str, int]:
    out = {}
    for node in nodes:
        stats = node_client(int(node.rsplit(":", 1)[1])).info("commandstats")
        out[node] = int(stats.get("cmdstat_fcall", {}).get("calls", 0))
    return out


def test_a_standalone_shard_on_a_cluster_node_meets_crossslot(shard: ClusterShard) -> None:
    """Why the cluster kind exists: one multi-key FCALL per batch is refused."""
    node = shard.primaries()[0]
    mine = [key for key in (f"post:{i}" for i in range(500))
            if shard.topology.node_of(slot_of(key)) == node][:2]
    with Shard("s", f"valkey://{node}/0") as standalone, pytest.raises(
            ValkeyRejected, match="CROSSSLOT"):
        standalone.apply(mine, ["v", "v"], [1, 1])
    assert shard.apply(mine, ["v", "v"], [1, 1]) == ["absent", "absent"]


def test_function_flush_on_one_primary_is_reloaded(shard: ClusterShard) -> None:
    keys = [f"post:{i}" for i in range(300)]
    node = shard.primaries()[1]
    port = int(node.rsplit(":", 1)[1])
    node_client(port).function_flush()
    assert shard.apply(keys, ["v"] * 300, [1] * 300) == ["absent"] * 300
    assert shard.stats["reload"] == 1
    assert node_client(port).function_list(library="cache_reconciler_2")
    node_client(port).function_flush()
    assert shard.send(keys, ["v"] * 300, [2] * 300).result() == ["fenced"] * 300
    assert shard.stats["reload"] == 2


def test_a_key_with_more_ops_than_a_chunk_keeps_its_order(shard: ClusterShard) -> None:
    """The ops of one key stay in one call, in order, even past APPLY_CHUNK."""
    fake = FakeShard(fence_ttl_ms=FENCE_TTL_MS)
    keys = ["{h}:hot"] * (APPLY_CHUNK + 10) + [f"{{h}}:{i}" for i in range(APPLY_CHUNK)]
    ops = (["v", "d", "s", "u"] * APPLY_CHUNK)[:len(keys)]
    versions = [i % 7 for i in range(len(keys))]
    assert len(shard.calls(keys, ops, versions)) == 2
    assert shard.apply(keys, ops, versions) == fake.apply(keys, ops, versions)


def test_truncate_removes_matching_keys_on_every_primary(shard: ClusterShard,
                                                         raw: ValkeyCluster) -> None:
    gone = [f"t:{i}" for i in range(600)]
    kept = [f"k:{i}" for i in range(100)]
    shard.apply(gone + kept, ["v"] * 700, [1] * 700)
    raw.set(b"t:\xff", b"not UTF-8")  # a key name is bytes: routed by its bytes
    assert {shard.topology.node_of(slot_of(key)) for key in gone} == set(shard.primaries())
    assert shard.truncate("t:*", count=50, max_keys_per_second=20_000) == 601
    assert not any(raw.exists(key) for key in gone)
    assert all(raw.exists(key) for key in kept)
    assert shard.truncate("t:*") == 0
    # In steps (what a parked shard's drain runs between batches): every primary in turn.
    shard.apply(gone, ["v"] * 600, [2] * 600)
    cursor: int | None = 0
    removed = steps = 0
    while cursor is not None:
        cursor, n = shard.truncate_step("t:*", cursor, count=100)
        removed, steps = removed + n, steps + 1
    assert removed == 600 and steps >= 3
    assert not any(raw.exists(key) for key in gone) and all(raw.exists(key) for key in kept)


def test_execute_routes_each_command_by_its_key(shard: ClusterShard) -> None:
    keys = [f"e:{i}" for i in range(50)]
    assert shard.execute([(key, ("SET", key, key)) for key in keys]) == [b"OK"] * 50
    replies = shard.execute([(key, ("GET", key)) for key in keys] + [("e:0", ("HGET", "e:0", "v"))])
    assert replies[:50] == [key.encode() for key in keys]
    assert isinstance(replies[50], valkey.ResponseError)  # WRONGTYPE: a value, not raised


def test_the_acl_users_of_every_node(fresh: list[str]) -> None:
    """The least-privileged reconciler user (its standalone commands, +cluster|slots
    +asking +cluster|info) runs everything; a wrong password is refused, not retried."""
    password = security.secret(f"valkey-{security.VALKEY_USER}")
    with ClusterShard("c", fresh[1:2], username=security.VALKEY_USER,
                      password=password) as shard:
        shard.ensure_functions()
        keys = [f"post:{i}" for i in range(200)]
        assert shard.apply(keys, ["v"] * 200, [1] * 200) == ["absent"] * 200
        assert shard.truncate("post:*") == 200
        assert shard.identity() and shard.ping()
    with ClusterShard("c", fresh[1:2], username=security.VALKEY_USER,
                      password="wrong") as shard, pytest.raises(ValkeyRejected,
                                                                match="authentication"):
        shard.apply(["post:1"], ["v"], [1])
    assert vc.CLUSTER_COMMANDS == ("cluster|slots", "asking", "cluster|info")
