"""A Valkey Cluster as one shard: `ClusterShard`, the same `ShardClient` as `Shard`.

One `apply()` groups its keys by hash slot (a FCALL's keys must share one, or the
server answers CROSSSLOT), keeps all the ops of one key in one call (so that a call
sent again after a redirection can never reorder a key's ops), cuts each slot's keys
into calls of about `APPLY_CHUNK` (`calls`), and sends each primary its calls as ONE
pipelined write — every primary written before any answer is read; the answers are put back in
the caller's key order. Redirections (MOVED, ASK, TRYAGAIN) and a library missing on
one node are followed per call (`routing`); a connection failure, CLUSTERDOWN or a
node still loading is `ValkeyUnavailable`, and the invalidator retries the whole call.

The library is loaded on every primary (`ensure_functions`), and again on any node
that answers "Function not found". `truncate()` scans every primary (`truncate_step`
one primary's SCAN step at a time). `identity()` changes whenever any primary changes
incarnation (a failover, a restart).

The writer helper (`CacheWriter`) uses valkey-py's `ValkeyCluster` instead
(`topology.cluster_client`): its calls are single-key, routed and redirected by valkey-py.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from valkey import exceptions as vx
from valkey.crc import key_slot

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.calls import apply_calls
from connectors.valkey.commands import WaitFor, check_apply, read_labels
from connectors.valkey.connection import redact
from connectors.valkey.functions import PROTOCOL, Library, load_functions, translate
from connectors.valkey.pacing import UnlinkPace
from connectors.valkey.protocols import PendingApply, ShardClient
from connectors.valkey.routing import Call, Lost, Round, answered, run
from connectors.valkey.shard import DEFAULT_FENCE_TTL_MS
from connectors.valkey.topology import NodeInfo, Topology, slot_of

log = logging.getLogger(__name__)

_CURSOR_MASK = 2**64 - 1  # a SCAN cursor's bits in a truncate_step cursor
_UNLINK = b"UNLINK"

T = TypeVar("T")


class ClusterShard:
    """A Valkey Cluster holding part of the cache (implements `ShardClient`)."""

    def __init__(self, name: str, urls: Sequence[str], *, username: str | None = None,
                 password: str | None = None, tls_ca_file: str | None = None,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 socket_timeout: float = 5.0, fence_ttl_ms: int = DEFAULT_FENCE_TTL_MS,
                 library: Library = PROTOCOL, wait: WaitFor | None = None) -> None:
        if fence_ttl_ms <= 0:
            raise ValueError(f"shard {name!r}: fence_ttl_ms must be positive, "
                             f"got {fence_ttl_ms}")
        self._name = name
        self.library = library
        self.wait = wait  # per primary: acknowledged only once its replicas have a call
        self.apply_function = library.apply.encode()
        self._apply_command = "FCALL " + library.apply
        self.fence_ttl_ms = fence_ttl_ms
        self.url = "cluster " + ", ".join(redact(url) for url in urls)  # safe to log
        self.topology = Topology(name, urls, username=username, password=password,
                                 tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
                                 tls_key_file=tls_key_file, socket_timeout=socket_timeout)
        # "write <node>": pipelined writes sent; "moved", "ask", "tryagain", "reload":
        # the redirections met (see `routing`). For the tests and a debugging session.
        self.stats: Counter[str] = Counter()
        self._last_refusal = ""

    def __repr__(self) -> str:
        return f"ClusterShard({self._name!r}, {self.url!r})"

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ hot path

    def apply(self, keys: Sequence[str], ops: Sequence[str],
              versions: Sequence[int]) -> list[str]:
        """Apply one op per key: one pipelined write per primary (more only for the
        calls a redirection sends elsewhere); one result label per key, in order."""
        check_apply(self._name, keys, ops, versions)
        if not keys:
            return []
        calls = self.calls(keys, ops, versions)
        try:
            self._run(calls)
        except Lost as lost:
            raise lost.error from lost
        return self._labels(calls, len(keys))

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        """`apply()` in two halves, as `Shard.send()`: every primary's calls go out now;
        `result()` reads the answers and follows any redirection. A connection lost
        before every answer is read makes `result()` run the whole `apply()` once."""
        check_apply(self._name, keys, ops, versions)
        return _Pending(self, keys, ops, versions)

    def calls(self, keys: Sequence[str], ops: Sequence[str],
              versions: Sequence[int]) -> list[Call]:
        """The FCALLs of one `apply()` (see `calls.apply_calls`)."""
        return apply_calls(keys, ops, versions, shard=self._name,
                           function=self.apply_function, fence_ttl_ms=self.fence_ttl_ms,
                           migrating=self.topology.migrating(), stats=self.stats)

    def _run(self, calls: Sequence[Call], first: Round | None = None, *,
             wait: bool = True) -> None:
        try:
            run(self.topology, calls, library=self.library, first=first,
                wait=self.wait if wait else None, stats=self.stats)
        except ValkeyUnavailable:
            self.topology.invalidate()
            raise

    def _labels(self, calls: Sequence[Call], n: int) -> list[str]:
        results: list[str] = [""] * n
        command = self._apply_command
        for call in answered(calls):
            reply = call.reply
            if call.known is not None and not isinstance(reply, Exception):
                reply = call.known  # what the lone op did before it was stopped halfway
            if isinstance(reply, Exception):
                if isinstance(reply, vx.ResponseError) and str(reply).startswith(
                        ("CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY")):
                    self.topology.invalidate()
                raise translate(reply, shard=self._name, command=command)
            labels = read_labels((reply,), len(call.tag), shard=self._name,
                                 command=command, library=self.library.name)
            for index, label in zip(call.tag, labels, strict=True):
                results[index] = label
        return results

    # ------------------------------------------------------------------ routed commands

    def execute(self, commands: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Single-key commands `(key, args)`, each routed by its key's slot: one
        pipelined write per primary; the replies in order, errors as values (as
        `pipeline.execute(raise_on_error=False)`). For audit's reads."""
        calls = [Call(slot_of(key), args) for key, args in commands]
        try:
            self._run(calls, wait=False)
        except Lost as lost:
            raise lost.error from lost
        return [call.reply for call in calls]

    def node(self, name: str) -> Any:
        """The valkey-py client of node `name` (``host:port``; bytes responses)."""
        return self.topology.client(name)

    def primaries(self) -> list[str]:
        """The primaries serving slots, by name (``host:port``)."""
        return self.topology.primaries()

    def nodes(self) -> list[NodeInfo]:
        """Every node of the slot map: primaries and replicas."""
        return self.topology.nodes()

    # ------------------------------------------------------------------ the rest

    def truncate(self, pattern: str, *, count: int = 1000,
                 max_keys_per_second: float | None = None) -> int:
        """Remove every key matching `pattern` on every primary (SCAN MATCH on each,
        UNLINK per slot), at most `max_keys_per_second` on average overall. Keys moved
        by a resharding during the scan may be missed: run it again."""
        pace = UnlinkPace(self._name, count, max_keys_per_second)
        removed = 0
        for node in self.primaries():
            client: Any = self.node(node)
            cursor = 0
            while True:
                cursor, found = self._node_call(
                    node, partial(client.scan, cursor, match=pattern, count=count), "SCAN")
                cursor = int(cursor)
                for piece in pace.pieces(found):
                    removed += self._unlink(piece)
                if cursor == 0:
                    break
        log.info("valkey shard %s: truncate %r removed %d keys on %s in %.1fs", self._name,
                 pattern, removed, self.url, time.monotonic() - pace.started)
        return removed

    def truncate_step(self, pattern: str, cursor: int = 0, *,
                      count: int = 1000) -> tuple[int | None, int]:
        """One step of a truncate spread over time (as `Shard.truncate_step`): one SCAN
        MATCH on one primary and an UNLINK of what it found. The cursor walks the
        primaries in order — (their index << 64) | that primary's SCAN cursor — and is
        None once the last one is scanned. Returns it and the keys removed."""
        primaries = self.primaries()
        index, position = cursor >> 64, cursor & _CURSOR_MASK
        if index >= len(primaries):
            return None, 0
        client: Any = self.node(primaries[index])
        following, found = self._node_call(
            primaries[index], partial(client.scan, position, match=pattern, count=count),
            "SCAN")
        removed = self._unlink(found) if found else 0
        if int(following) != 0:
            return (index << 64) | int(following), removed
        return (None if index + 1 >= len(primaries) else (index + 1) << 64), removed

    def _unlink(self, keys: list[bytes]) -> int:
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:
            by_slot.setdefault(key_slot(key), []).append(key)  # bytes, as SCAN gave them

        def split(call: Call) -> list[Call]:
            return [Call(call.slot, (_UNLINK, key)) for key in call.args[1:]]

        calls = [Call(slot, (_UNLINK, *group), split=split if len(group) > 1 else None)
                 for slot, group in by_slot.items()]
        try:
            self._run(calls, wait=False)
        except Lost as lost:
            raise lost.error from lost
        total = 0
        for call in answered(calls):
            if isinstance(call.reply, Exception):
                raise translate(call.reply, shard=self._name, command="UNLINK")
            total += int(call.reply)
        return total

    def ping(self) -> bool:
        """True if every primary answers PING (never raises; a refusal is logged once
        per distinct reason)."""
        try:
            for node in self.primaries():
                self._node_call(node, self.node(node).ping, "PING")
            return True
        except ValkeyUnavailable:
            return False
        except ValkeyRejected as error:
            if str(error) != self._last_refusal:
                self._last_refusal = str(error)
                log.warning("%s", error)
            return False

    def identity(self) -> str:
        """Which incarnation of the cluster holds the shard's data: sorted
        ``node-id:run_id:master_replid`` of its primaries. It changes when a replica is
        promoted, a primary restarts, or the set of primaries changes."""
        self.topology.refresh()
        parts = []
        for info in self.topology.nodes():
            if info.primary is None:
                node: Any = self.node(info.name)
                found: dict[str, Any] = self._node_call(
                    info.name, partial(node.info, "server", "replication"), "INFO")
                parts.append(f"{info.node_id}:{found.get('run_id', '?')}:"
                             f"{found.get('master_replid', '?')}")
        return ",".join(sorted(parts))

    def server_version(self) -> str:
        """The first primary's version (`valkey_version`, else `redis_version`)."""
        node = self.primaries()[0]
        client: Any = self.node(node)
        found: dict[str, Any] = self._node_call(node, lambda: client.info("server"), "INFO")
        return str(found.get("valkey_version") or found.get("redis_version") or "unknown")

    def ensure_functions(self) -> None:
        """Load (or replace) the functions library on every primary now."""
        for node in self.primaries():
            load_functions(self.node(node), shard=self._name, library=self.library)

    def close(self) -> None:
        self.topology.close()

    def __enter__(self) -> ClusterShard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _node_call(self, node: str, call: Callable[[], T], command: str) -> T:
        try:
            return call()
        except (vx.ValkeyError, OSError) as error:
            if isinstance(error, vx.ConnectionError | vx.TimeoutError | OSError):
                self.topology.invalidate()
            raise translate(error, shard=self._name, command=f"{command} on {node}") \
                from error


class _Pending:
    """`ClusterShard.send()`'s calls, written to every primary, answers not read yet
    (implements `PendingApply`)."""

    __slots__ = ("_calls", "_keys", "_ops", "_round", "_shard", "_versions")

    def __init__(self, shard: ClusterShard, keys: Sequence[str], ops: Sequence[str],
                 versions: Sequence[int]) -> None:
        self._shard = shard
        self._keys, self._ops, self._versions = keys, ops, versions
        self._calls: list[Call] = []
        self._round: Round | None = None  # None: nothing in flight, result() runs apply()
        if not keys:
            return
        self._calls = shard.calls(keys, ops, versions)
        sent = Round(shard.topology, self._calls, wait=shard.wait, stats=shard.stats)
        if sent.failure is None:
            self._round = sent

    def result(self) -> list[str]:
        if not self._keys:
            return []
        sent, self._round = self._round, None
        if sent is None:
            return self._again()
        try:
            self._shard._run(self._calls, first=sent)
        except Lost:
            return self._again()
        return self._shard._labels(self._calls, len(self._keys))

    def _again(self) -> list[str]:
        """The whole call once more, as `apply()`: its topology refresh, its errors."""
        return self._shard.apply(self._keys, self._ops, self._versions)

    def discard(self) -> None:
        sent, self._round = self._round, None
        if sent is not None:
            sent.discard()


if TYPE_CHECKING:
    _implements: type[ShardClient] = ClusterShard
