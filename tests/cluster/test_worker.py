"""Postgres → Debezium → Kafka → the worker → a shard map whose shard b is the stack's
Valkey Cluster: changes to rows of b's neighbourhoods are reconciled on the cluster,
keys spread over its three primaries, and a neighbourhood moving from a to b is
invalidated on both."""

from __future__ import annotations

from pathlib import Path

import pytest
import valkey
from valkey.cluster import ValkeyCluster

from connectors.valkey.topology import slot_of
from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    COMMENTS,
    POSTS,
    PROFILES,
    InProcessWorker,
    Rows,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPICS = [POSTS, COMMENTS, PROFILES]
MAX_VERSION = str(2**63 - 1).encode()  # the delete fence's version


def test_the_worker_reconciles_a_cluster_shard(stack: Stack, fresh: list[str],
                                               raw: ValkeyCluster, tmp_path: Path,
                                               uid: str) -> None:
    prefix = f"clw-{uid}:"
    group = f"cluster-{uid}"
    config = write_config(tmp_path, stack, group=group, topics=TOPICS, key_prefix=prefix,
                          shard_map={"shards": {"a": {"url": stack.valkey["valkey-a"]},
                                                "b": {"cluster": fresh[:2]}}})
    start_group_at_end(stack, group, TOPICS)
    a = valkey.Valkey.from_url(stack.valkey["valkey-a"])
    writer = CacheWriter(raw)
    db = Rows(stack.postgres_dsn)
    try:
        with InProcessWorker(config) as worker:
            posts = [db.insert_post(700) for _ in range(30)]
            keys = {post: f"{prefix}post:{post}" for post, _ in posts}
            wait_until(lambda: all(raw.exists(key) for key in keys.values()), 60,
                       "the inserts' fences on the cluster")
            primaries = {raw.get_node_from_key(key).name for key in keys.values()}
            assert len(primaries) == 3 and len({slot_of(k) for k in keys.values()}) > 20
            # A reader caches every row at its version; then every row changes.
            for post, version in posts:
                wait_until(lambda p=post, v=version: writer.set_if_newer(
                    keys[p], v, {"id": p}, 600), 10, "the insert fence to allow the fill")
            new = {post: db.update_post(post) for post, _ in posts}
            wait_until(lambda: all(raw.hgetall(keys[p]) == {b"v": str(v).encode()}
                                   for p, v in new.items()), 60,
                       "every cached row replaced by a fence at its new version")
            assert all(writer.get(key) is None for key in keys.values())
            assert worker.metric("reconciler_invalidations_total",
                                 {"shard": "b", "result": "repaired"}) >= 30
            gone = posts[0][0]
            db.delete_post(gone)
            wait_until(lambda: raw.hget(keys[gone], "v") == MAX_VERSION, 60,
                       "the delete fence on the cluster")
            moving, _ = db.insert_post(420)  # moving from a to b: on both
            key = f"{prefix}post:{moving}"
            wait_until(lambda: raw.exists(key) and a.exists(key), 60,
                       "the moving row's fence on a and on the cluster")
            assert worker.metric("reconciler_shard_up", {"shard": "b"}) == 1
    finally:
        db.close()
        for found in a.scan_iter(f"{prefix}*"):
            a.delete(found)
        a.close()
