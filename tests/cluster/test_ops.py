"""What applications and operators run against a cluster shard: the writer helper,
`reconciler audit` (every primary scanned) and `reconciler doctor` (the cluster's
state, every node, the library on every primary, the ACL user on each)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import valkey
import yaml
from valkey.cluster import ValkeyCluster

from connectors.valkey.cluster import ClusterShard
from connectors.valkey.topology import slot_of
from connectors.valkey.writer import CacheWriter
from reconciler.cli import main
from reconciler.ops.doctor.valkey import shard_checks
from reconciler.settings import load_settings
from stack import security
from stack import valkey_cluster as vc
from tests.cluster.conftest import node_client
from tests.conftest import Stack
from tests.e2e.support import COMMENTS, POSTS, PROFILES, Rows, write_config

MAX_VERSION = str(2**63 - 1).encode()  # the delete fence's version


@pytest.fixture
def config(stack: Stack, fresh: list[str], tmp_path: Path, uid: str) -> Path:
    """The local config with shard b (neighbourhoods 501-1000) on the cluster."""
    return write_config(tmp_path, stack, group=f"cluster-{uid}",
                        topics=[POSTS, COMMENTS, PROFILES], key_prefix=f"cl-{uid}:",
                        shard_map={"shards": {"a": {"url": stack.valkey["valkey-a"]},
                                              "b": {"cluster": fresh[2:4]}}})


@pytest.fixture
def db(stack: Stack) -> Iterator[Rows]:
    rows = Rows(stack.postgres_dsn)
    yield rows
    rows.close()


def test_the_writer_helper_on_a_cluster(fresh: list[str], raw: ValkeyCluster) -> None:
    keys = [f"post:{i}" for i in range(200)]
    writer = CacheWriter.for_cluster(fresh[:1])
    assert writer.name == "cluster"
    for primary in vc.primaries():
        node_client(primary).function_flush()
    assert all(writer.set_if_newer(key, 5, {"k": key}, 60) for key in keys)  # reloaded
    assert all(writer.get(key) == {"k": key} for key in keys)
    assert not writer.set_if_newer(keys[0], 4, {"k": "older"}, 60)
    with ClusterShard("c", fresh[:1]) as shard:
        assert shard.apply(keys, ["v"] * 200, [6] * 200) == ["repaired"] * 200
    assert writer.get(keys[0]) is None  # a fence reads as a miss
    assert not writer.set_if_newer(keys[0], 5, {"k": "behind the fence"}, 60)
    assert writer.set_if_newer(keys[0], 6, {"k": "at the fence"}, 60)
    assert {slot_of(key) for key in keys} and writer.get_with_version(keys[0]) == (
        6, {"k": "at the fence"})
    writer.close()
    app = CacheWriter(raw)  # an application's own ValkeyCluster client
    assert app.get(keys[0]) == {"k": "at the fence"}


def audit(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["audit", "-c", str(config), "--json", "--table", "public.posts", *args])
    return code, json.loads(capsys.readouterr().out)


def test_audit_scans_every_primary_and_repairs(config: Path, db: Rows, uid: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Posts of neighbourhood 700 (shard b, the cluster): 30 fresh, 10 stale, 5 orphans,
    spread over the three primaries."""
    writer = CacheWriter.for_cluster(vc.urls()[:1])
    prefix = f"cl-{uid}:"
    fresh, stale, orphans = [], [], []
    for i in range(45):
        post, version = db.insert_post(700)
        if i < 30:
            fresh.append(post)
            assert writer.set_if_newer(f"{prefix}post:{post}", version, {"t": "ok"}, 600)
        elif i < 40:
            stale.append((post, db.update_post(post)))
            assert writer.set_if_newer(f"{prefix}post:{post}", version, {"t": "old"}, 600)
        else:
            orphans.append(post)
            assert writer.set_if_newer(f"{prefix}post:{post}", version, {"t": "gone"}, 600)
            db.delete_post(post)
    with ClusterShard("b", vc.urls()[:1]) as shard:
        owners = {shard.topology.node_of(slot_of(f"{prefix}post:{p}")) for p in fresh}
        assert owners == set(shard.primaries())
    code, found = audit(config, capsys, "--grace", "0")
    assert code == 1
    b = found["tables"]["public.posts"]["shards"]["b"]
    assert (b["fresh"], b["stale"], b["orphan"]) == (30, 10, 5), b
    code, sampled = audit(config, capsys, "--grace", "0", "--sample", "7")
    assert sum(sampled["tables"]["public.posts"]["shards"]["b"].values()) == 7
    code, repaired = audit(config, capsys, "--grace", "0", "--repair")
    assert code == 0
    assert repaired["tables"]["public.posts"]["repaired"] == {"stale": 10, "orphan": 5,
                                                              "ahead": 0}
    raw = writer._sync
    for post, version in stale:
        assert raw.hgetall(f"{prefix}post:{post}") == {b"v": str(version).encode()}
    for post in orphans:
        assert raw.hgetall(f"{prefix}post:{post}") == {b"v": MAX_VERSION}
    code, after = audit(config, capsys, "--grace", "0")
    assert code == 0 and after["tables"]["public.posts"]["fence"] == 15
    writer.close()


def doctor(config: Path) -> list[str]:
    return [check.line() for check in shard_checks(load_settings(config))]



def test_doctor_checks_every_node(stack: Stack, fresh: list[str], tmp_path: Path,
                                  uid: str) -> None:
    """As the least-privileged reconciler user (no ACL DRYRUN: probes): the cluster ok,
    each of the six nodes reachable with its ACL (the cluster's commands too), the
    library on every primary (none asked of a replica); a replica down is a warning."""
    config = write_config(tmp_path, stack, group=f"doctor-{uid}", shard_map={
        "shards": {"a": {"url": stack.valkey["valkey-a"]}, "b": {"cluster": fresh[:1]}}})
    data = yaml.safe_load(config.read_text())
    data.setdefault("valkey", {}).update(
        username=security.VALKEY_USER,
        password_file=str(security.secret_file(f"valkey-{security.VALKEY_USER}")))
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    primaries = vc.primaries()
    lines = [line for line in doctor(config) if line[5:].startswith("shard b ")]
    assert lines[0].startswith("OK   shard b cluster: ") and (
        "cluster_state ok, 3 primaries, 3 replicas, 16384 of 16384 slots served" in lines[0])
    for port in vc.ports():
        node = f"shard b {vc.HOST}:{port}"
        for check in (node, f"{node} cluster acl"):
            assert any(line.startswith(f"OK   {check}: ") for line in lines), (check, lines)
        # The worker's commands pass; audit's TYPE is not the worker user's: a warning.
        assert any(line.startswith(f"WARN {node} acl: user reconciler: probes passed")
                   for line in lines), (port, lines)
        functions = [line for line in lines if line.startswith(f"OK   {node} functions: ")]
        assert len(functions) == (port in primaries), (port, lines)
    assert not [line for line in lines if line.startswith("FAIL")], lines
    replica = vc.replicas_of(primaries[0])[0]
    vc.kill_node(replica)
    lines = [line for line in doctor(config) if line[5:].startswith("shard b ")
             and " acl: " not in line]
    assert [line for line in lines if not line.startswith("OK")] == [
        f"WARN shard b {vc.HOST}:{replica}: valkey://{vc.HOST}:{replica} (replica of "
        f"{vc.HOST}:{primaries[0]}) unreachable — a replica the cluster may fail over to: "
        "bring it back"]


def test_a_cluster_shard_is_no_longer_refused(config: Path) -> None:
    from prometheus_client import CollectorRegistry

    from reconciler.observe.metrics import Metrics
    from reconciler.pipeline.shards import ShardPool
    from shard_map import load_shard_map

    settings = load_settings(config)
    pool = ShardPool(settings, Metrics.create(CollectorRegistry()))
    shard_map = load_shard_map(settings.shard_map)
    assert pool.problems(shard_map) == []
    pool.update(shard_map)
    try:
        clients: dict[str, Any] = dict(pool.clients())
        assert isinstance(clients["b"], ClusterShard)
        assert clients["b"].apply(["post:1"], ["v"], [1]) == ["absent"]
        assert isinstance(clients["a"].client, valkey.Valkey)
    finally:
        pool.close()
