"""Where a Valkey Cluster's slots live, and one connection pool per node.

`Topology` learns the slot map with CLUSTER SLOTS from any node it knows (the seeds
first, then every node it has seen), lazily: nothing is contacted until the first
call, so a worker starts while the cluster is down. It is marked stale by a MOVED
redirection or a connection error and read again before the next call; a MOVED also
patches its slot at once. Every node gets its own pool with the seeds' settings
(credentials, TLS files, timeouts): a node found in the slot map is reached exactly as
a seed would be. `cluster_client()` makes valkey-py's `ValkeyCluster` with the same
settings, for the writer helper.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import valkey
from valkey import exceptions as vx
from valkey.cluster import ClusterNode, ValkeyCluster
from valkey.crc import VALKEY_CLUSTER_HASH_SLOTS, key_slot

from connectors.errors import ValkeyUnavailable
from connectors.valkey.connection import TLS_SCHEMES, connection_pool, redact
from connectors.valkey.functions import translate

log = logging.getLogger(__name__)

SLOTS = VALKEY_CLUSTER_HASH_SLOTS  # 16384 hash slots
MIGRATING_MEMORY = 10.0  # seconds a slot seen being migrated is treated as such


def slot_of(key: str) -> int:
    """The hash slot of `key` (its {hash tag} if it has one), as the server computes it."""
    return key_slot(key.encode())


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node of the slot map: `name` is ``host:port``; `primary` the name of the node
    it replicates (None for a primary)."""

    name: str
    node_id: str
    primary: str | None = None


class Topology:
    """The slot map of one cluster and a `valkey.Valkey` client per node (bytes
    responses). Thread-safe: the worker's loop and its housekeeping thread share it."""

    def __init__(self, shard: str, urls: Sequence[str], *, username: str | None = None,
                 password: str | None = None, tls_ca_file: str | None = None,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 socket_timeout: float = 5.0) -> None:
        if not urls:
            raise ValueError(f"cluster shard {shard!r}: no seed URL given")
        tls = {urlsplit(url).scheme.lower() in TLS_SCHEMES for url in urls}
        if len(tls) > 1:
            raise ValueError(f"cluster shard {shard!r}: the seeds mix TLS and plain "
                             "schemes; a cluster's nodes are reached all one way")
        self.shard = shard
        self._pools: dict[str, valkey.ConnectionPool] = {}
        self.seeds: list[str] = []
        for url in urls:
            pool = connection_pool(url, username=username, password=password,
                                   tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
                                   tls_key_file=tls_key_file, socket_timeout=socket_timeout)
            if pool.connection_kwargs.get("db", 0) not in (0, "0"):
                raise ValueError(f"cluster shard {shard!r}: seed {redact(url)!r} names "
                                 "database {db}; a cluster has only database 0".format(
                                     db=pool.connection_kwargs["db"]))
            name = f"{pool.connection_kwargs['host']}:{pool.connection_kwargs['port']}"
            self._pools.setdefault(name, pool)
            self.seeds.append(name)
        first = self._pools[self.seeds[0]]
        self._class = first.connection_class
        self._kwargs = dict(first.connection_kwargs)
        self._clients: dict[str, valkey.Valkey] = {}
        self._slots: list[str | None] = [None] * SLOTS
        self._nodes: dict[str, NodeInfo] = {}
        self._stale = True
        self._migrating: dict[int, float] = {}  # slot → until when it counts as migrating
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ nodes

    def client(self, name: str) -> valkey.Valkey:
        """The client of node `name` (``host:port``), made on first use."""
        with self._lock:
            found = self._clients.get(name)
            if found is None:
                pool = self._pools.get(name)
                if pool is None:
                    host, _, port = name.rpartition(":")
                    pool = self._pools[name] = valkey.ConnectionPool(
                        connection_class=self._class,
                        **{**self._kwargs, "host": host, "port": int(port)})
                found = self._clients[name] = valkey.Valkey(connection_pool=pool)
            return found

    def seed_kwargs(self) -> dict[str, Any]:
        """The connection settings every node is reached with (the first seed's)."""
        return dict(self._kwargs)

    def pool(self, name: str) -> valkey.ConnectionPool:
        pool: valkey.ConnectionPool = self.client(name).connection_pool
        return pool

    def primaries(self) -> list[str]:
        """The primaries serving slots, by name (the slot map read first if stale)."""
        self.ensure()
        with self._lock:
            return sorted(n.name for n in self._nodes.values() if n.primary is None)

    def nodes(self) -> list[NodeInfo]:
        """Every node of the slot map: primaries and their replicas."""
        self.ensure()
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: n.name)

    # ------------------------------------------------------------------ slots

    def node_of(self, slot: int) -> str:
        """The primary serving `slot`; ValkeyUnavailable if none does (CLUSTERDOWN)."""
        self.ensure()
        name = self._slots[slot]
        if name is None:
            self._stale = True
            raise ValkeyUnavailable(f"valkey cluster shard {self.shard!r}: no node serves "
                                    f"slot {slot} (cluster down or being set up)",
                                    shard=self.shard, command="CLUSTER SLOTS")
        return name

    def moved(self, slot: int, name: str) -> None:
        """A MOVED redirection: `slot` is served by `name` now; the rest of the map is
        read again before the next call (a resharding or failover moves many slots)."""
        with self._lock:
            self._slots[slot] = name
            self._stale = True

    def mark_migrating(self, slot: int) -> None:
        """`slot` is being migrated (an ASK, a TRYAGAIN): for `MIGRATING_MEMORY` seconds
        its calls are sent one op each."""
        with self._lock:
            self._migrating[slot] = time.monotonic() + MIGRATING_MEMORY

    def migrating(self) -> frozenset[int]:
        """The slots seen being migrated lately."""
        if not self._migrating:
            return frozenset()
        now = time.monotonic()
        with self._lock:
            self._migrating = {s: t for s, t in self._migrating.items() if t > now}
            return frozenset(self._migrating)

    def invalidate(self) -> None:
        """Read the slot map again before the next call (after a connection error)."""
        self._stale = True

    def ensure(self) -> None:
        if self._stale:
            self.refresh()

    def refresh(self) -> None:
        """Read the slot map (CLUSTER SLOTS) from the first node that answers: the
        nodes last seen, then the seeds. ValkeyUnavailable (or ValkeyRejected for a
        refusal) when none does."""
        with self._lock:
            candidates = list(dict.fromkeys(
                [n.name for n in self._nodes.values() if n.primary is None]
                + self.seeds + list(self._nodes)))
        error: Exception | None = None
        for name in candidates:
            try:
                client: Any = self.client(name)
                reply = client.execute_command("CLUSTER", "SLOTS")
            except (vx.ValkeyError, OSError) as exc:
                error = exc
                if not isinstance(exc, vx.ConnectionError | vx.TimeoutError | OSError):
                    break  # a refusal (ACL, auth): every node answers alike
                continue
            self._install(reply, asked=name)
            return
        assert error is not None
        raise translate(error, shard=self.shard, command="CLUSTER SLOTS") from error

    def _install(self, reply: Any, *, asked: str) -> None:
        slots: list[str | None] = [None] * SLOTS
        found: dict[str, NodeInfo] = {}
        asked_host = asked.rpartition(":")[0]
        for entry in reply:
            start, end, *members = entry
            names = []
            for member in members:
                host = _text(member[0]) or asked_host
                if host == "?":
                    host = asked_host  # the endpoint is unknown: as reached
                names.append(f"{host}:{int(member[1])}")
                node_id = _text(member[2]) if len(member) > 2 else ""
                primary = None if len(names) == 1 else names[0]
                found.setdefault(names[-1], NodeInfo(names[-1], node_id, primary))
            slots[int(start):int(end) + 1] = [names[0]] * (int(end) - int(start) + 1)
        with self._lock:
            before = {n for n, info in self._nodes.items() if info.primary is None}
            self._slots, self._nodes, self._stale = slots, found, False
            after = {n for n, info in found.items() if info.primary is None}
        if before and before != after:
            log.info("valkey cluster shard %s: primaries now %s (were %s)", self.shard,
                     ", ".join(sorted(after)), ", ".join(sorted(before)))

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.disconnect()


def cluster_client(urls: Sequence[str], *, username: str | None = None,
                   password: str | None = None, tls_ca_file: str | None = None,
                   tls_cert_file: str | None = None, tls_key_file: str | None = None,
                   socket_timeout: float = 5.0) -> ValkeyCluster:
    """A valkey-py `ValkeyCluster` (bytes responses) for seed `urls`, reached as
    `ClusterShard` reaches them: the same credentials, TLS files and timeouts."""
    topology = Topology("writer", urls, username=username, password=password,
                        tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
                        tls_key_file=tls_key_file, socket_timeout=socket_timeout)
    kwargs = {key: value for key, value in topology.seed_kwargs().items()
              if key not in ("host", "port", "db", "connection_class")}
    if urlsplit(urls[0]).scheme.lower() in TLS_SCHEMES:
        kwargs["ssl"] = True
    node: Any = ClusterNode
    seeds = [node(*name.rsplit(":", 1)) for name in topology.seeds]
    try:
        return ValkeyCluster(startup_nodes=seeds, **kwargs)
    except (vx.ValkeyError, OSError) as error:
        raise translate(error, shard="writer", command="CLUSTER SLOTS") from error


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
