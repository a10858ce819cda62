"""Where shard b lives in a fault scenario, and what the failover scenarios wait for.

Every scenario runs shard a on the stack's standalone valkey-a. Shard b is the stack's
standalone valkey-b, unless the test asks for another kind through the ``shard_b``
fixture (``@pytest.mark.parametrize("shard_b", [KIND], indirect=True)``):

- ``cluster``: the stack's Valkey Cluster, 3 primaries and 3 replicas (`python -m stack
  up valkey-cluster`), every node running, the cluster whole and every primary flushed
  before and after the test; shard b is ``{cluster: [two seeds]}``;
- ``sentinel``: the stack's Sentinel-managed primary and replica (`python -m stack up
  valkey-sentinel`), settled (a primary, its replica linked, three Sentinels agreeing)
  and flushed before and after; shard b is ``{sentinel: [three URLs], service: cache-s}``;
- ``persistent``: a Valkey of the test's own with RDB persistence as production runs it
  (save points set: a clean stop saves and the next start loads it; a crash comes back
  from the last snapshot), which the test crashes, restarts, stops and freezes.

A service that is not running fails the test, naming the command that starts it.

After a fault that changes shard b's server (a promotion, a restart), the worker notices
the new server and processes its recent changes again (`valkey.failover_replay_seconds`)
while its committed offsets stay where they were. `settle_after_failover` waits for
that replay to have begun and then for changes made after it to be committed on every
partition of the change topics, so that the oracle never looks at the cache mid-replay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import valkey

from connectors.valkey.sentinel import close_sentinel_client, sentinel_client
from connectors.valkey.topology import cluster_client
from stack import sentinel
from stack import valkey_cluster as vc
from stack.process import HOST, port_open
from tests.cluster.conftest import flush as flush_cluster
from tests.cluster.conftest import restore as restore_cluster
from tests.conftest import Stack
from tests.e2e.support import COMMENTS, POSTS, PrivateValkey, end_offsets, wait_until
from tests.faults.oracle import Oracle
from tests.faults.workers import Worker
from tests.faults.workload import SHARD_B, Connect, Workload, url_client

KINDS = ("cluster", "sentinel", "persistent")
# RDB persistence: a snapshot an hour (or on SAVE) and on a clean shutdown, none on a
# crash; no AOF, so a start loads the last snapshot.
RDB = ("--save", "3600 1", "--appendonly", "no")
REPLAYED = "reconciler_failover_replayed_records_total"  # records processed again
CHANGED = "reconciler_shard_changes_total"  # times a shard's server changed under it
MAX_ROWS = 200  # rows changes_on_every_partition may make: far more than 3 partitions need


@dataclass
class ShardB:
    """Shard b of one test: the worker's shard-map entry and the test's clients."""

    kind: str
    entry: dict[str, Any]  # shard b in the worker's shard map
    client: Any  # the test's client (bytes): the workload writes, the oracle reads
    connect: Connect  # a client of its own, for a reader thread
    server: PrivateValkey | None = None  # the persistent kind's server

    def shard_map(self, stack: Stack) -> dict[str, Any]:
        """The shard map's `shards` with shard a the stack's valkey-a and b this one."""
        return {"shards": {"a": {"url": stack.valkey["valkey-a"]}, "b": self.entry}}


@contextlib.contextmanager
def open_shard_b(kind: str, folder: Path) -> Iterator[ShardB]:
    """Shard b of `kind` (one of KINDS), ready and empty; left so afterwards."""
    if kind == "cluster":
        yield from _cluster()
    elif kind == "sentinel":
        yield from _sentinel()
    elif kind == "persistent":
        yield from _persistent(folder)
    else:
        raise ValueError(f"shard b kind {kind!r}: not one of {KINDS}")


def _cluster() -> Iterator[ShardB]:
    if not any(vc.ping(port) for port in vc.ports()):
        pytest.fail(f"the Valkey Cluster is not running (nothing on {HOST}:{vc.PORT}-"
                    f"{vc.PORT + vc.NODES - 1}): start it with `python -m stack up "
                    "valkey-cluster` (scripts/faults and scripts/test do)", pytrace=False)
    restore_cluster()
    flush_cluster()
    urls = vc.urls()
    try:
        with contextlib.closing(cluster_client(urls)) as client:
            yield ShardB("cluster", {"cluster": urls[:2]}, client,
                         lambda: contextlib.closing(cluster_client(urls)))
    finally:
        restore_cluster()
        flush_cluster()


def _sentinel() -> Iterator[ShardB]:
    ports = sentinel.NODE_PORTS + sentinel.SENTINEL_PORTS
    if not any(port_open(port) for port in ports):
        pytest.fail(f"valkey-sentinel is not running (nothing on {ports}): start it with "
                    "`python -m stack up valkey-sentinel` (scripts/faults and scripts/test "
                    "do)", pytrace=False)
    urls = sentinel.sentinel_urls()

    def flush() -> None:
        sentinel.settle()
        sentinel.command(sentinel.primary(), "FLUSHALL")

    @contextlib.contextmanager
    def connect() -> Iterator[valkey.Valkey]:
        opened = sentinel_client(urls, sentinel.SERVICE_NAME)
        try:
            yield opened
        finally:
            close_sentinel_client(opened)

    flush()
    with connect() as client:
        try:
            yield ShardB("sentinel", {"sentinel": urls, "service": sentinel.SERVICE_NAME},
                         client, connect)
        finally:
            flush()


def _persistent(folder: Path) -> Iterator[ShardB]:
    server = PrivateValkey.on_free_port(folder / "valkey-b", RDB)
    connect = url_client(server.url)
    try:
        with connect() as client:
            yield ShardB("persistent", {"url": server.url}, client, connect, server)
    finally:
        server.thaw_if_frozen()
        server.stop()


def workload_shards(clients: Mapping[str, Any], shard_b: ShardB | None) -> dict[str, Any]:
    """The `Workload`'s shard arguments: the stack's clients (`clients`, by shard name),
    shard b's replaced by `shard_b`'s when the test has one — whose cache writes may then
    fail while the test fails it over."""
    if shard_b is None:
        return {"shards": dict(clients)}
    return {"shards": {**clients, SHARD_B: shard_b.client}, "connect": {SHARD_B: shard_b.connect},
            "may_fail": {SHARD_B}}


# --------------------------------------------------------------------------- after a fault


def sample(worker: Worker, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (scraped now)."""
    wanted = set(labels.items())
    return sum(value for (found, have), value in worker.metrics().items()
               if found == name and wanted <= set(have))


@dataclass(frozen=True)
class Marks:
    """The worker's failover counters before a fault: shard b's server changes noticed,
    records replayed."""

    changed: float
    replayed: float

    @classmethod
    def of(cls, worker: Worker) -> Marks:
        return cls(sample(worker, CHANGED, shard="b"), sample(worker, REPLAYED))


def settle_after_failover(worker: Worker, oracle: Oracle, workload: Workload, group: str,
                          before: Marks | None, *, replay: bool = True,
                          timeout: float = 120.0) -> None:
    """Once the worker has noticed shard b's new server (`reconciler_shard_changes_total`
    above `before`) — and, with `replay`, has sought back to process its recent changes
    again (the replay counter is bumped after the seek) —, new changes are made until
    every partition of the change topics has records after that point, and the group's
    commit is waited for past them. A partition's offsets are stored again only once its
    replay reached where it had been: then every replay is over. `before` None: the
    worker started after the change, and noticed it from the identities its group's
    committed offsets carry (which the replay counter alone shows)."""
    def noticed() -> bool:
        assert worker.alive(), f"the worker exited:\n{worker.log()[-3000:]}"
        if before is None:
            return sample(worker, REPLAYED) > 0
        return (sample(worker, CHANGED, shard="b") > before.changed
                and (not replay or sample(worker, REPLAYED) > before.replayed))

    wait_until(noticed, timeout, "the worker to notice shard b's new server"
               + (" and replay the recent changes" if replay else ""), interval=0.2)
    changes_on_every_partition(workload, oracle, timeout=timeout)
    oracle.wait_committed(group, oracle.published(), timeout, alive=worker.alive)


def changes_on_every_partition(workload: Workload, oracle: Oracle, *,
                               timeout: float = 120.0) -> int:
    """Create rows until every partition of the posts and comments topics has a record
    it did not have before; returns the rows made."""
    before = end_offsets(workload.stack, [POSTS, COMMENTS])
    made = 0
    while made < MAX_ROWS:
        made += len(workload.create(posts=3, comments=3))
        now = oracle.published(timeout)
        if all(now[tp] > end for tp, end in before.items()):
            return made
    raise AssertionError(f"{made} rows made, still a partition without a new record: "
                         f"{before}")
