"""Fixtures for the cluster tests: the stack's Valkey Cluster of 3 primaries and 3
replicas (`python -m stack up valkey-cluster`; scripts/test starts it).

Every test starts with all six nodes up and the cluster healthy (a test before it may
have killed a node or failed one over: which ports are primaries is never assumed),
and every primary flushed; it ends flushed too. A cluster that is not running fails
the test, naming the command that starts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import valkey
from valkey.cluster import ValkeyCluster

from connectors.valkey.cluster import ClusterShard
from connectors.valkey.topology import cluster_client
from stack import valkey_cluster as vc

FENCE_TTL_MS = 60_000  # the fence TTL the tests' shards write


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(pytest.mark.cluster)


def restore() -> None:
    """Every node running and the cluster agreeing on a full slot map."""
    for port in vc.ports():
        vc.start_node(port)
    vc.healthy()


def flush() -> None:
    for port in vc.primaries():
        vc.command(port, "FLUSHALL")


@pytest.fixture(scope="session")
def cluster_urls() -> list[str]:
    down = [port for port in vc.ports() if not vc.ping(port)]
    if len(down) == vc.NODES:
        pytest.fail(f"the Valkey Cluster is not running (nothing on {vc.HOST}:{vc.PORT}-"
                    f"{vc.PORT + vc.NODES - 1}): start it with `python -m stack up "
                    "valkey-cluster` (scripts/test does)", pytrace=False)
    return vc.urls()


@pytest.fixture
def fresh(cluster_urls: list[str]) -> Iterator[list[str]]:
    """The seeds of a whole, healthy, empty cluster (flushed again afterwards)."""
    restore()
    flush()
    yield cluster_urls
    restore()
    flush()


@pytest.fixture
def shard(fresh: list[str]) -> Iterator[ClusterShard]:
    """A ClusterShard from one seed, its library loaded on every primary."""
    with ClusterShard("c", fresh[:1], fence_ttl_ms=FENCE_TTL_MS) as opened:
        opened.ensure_functions()
        yield opened


@pytest.fixture
def raw(fresh: list[str]) -> Iterator[ValkeyCluster]:
    """valkey-py's cluster client (bytes), to arrange and inspect entries by key."""
    client = cluster_client(fresh)
    yield client
    client.close()


def entry(client: Any, key: str) -> tuple[str, Any, bool]:
    """What `key` holds (type, value) and whether it has a TTL."""
    kind = client.type(key).decode()
    value = client.hgetall(key) if kind == "hash" else (
        client.get(key) if kind == "string" else None)
    return kind, value, int(client.pttl(key)) > 0


def node_client(port: int) -> valkey.Valkey:
    return valkey.Valkey(host=vc.HOST, port=port)
