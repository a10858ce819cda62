"""The worker's Valkey shards: one client per shard of the current shard map.

When the shard map is reloaded, shards that appear are connected, shards whose URL
changed are reconnected, and shards that disappear are closed — after the batch in
flight, since the worker only swaps maps between batches. Each shard's reachability
is tracked for ``/readyz`` and the ``reconciler_shard_up`` gauge.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from connectors.errors import ConnectorError
from connectors.valkey.cluster import ClusterShard
from connectors.valkey.commands import WaitFor
from connectors.valkey.connection import TLS_SCHEMES, redact
from connectors.valkey.functions import PROTOCOL, Library
from connectors.valkey.sentinel import SentinelShard
from connectors.valkey.shard import Shard
from reconciler.observe.metrics import Metrics
from reconciler.settings import Settings
from shard_map import CLUSTER, SENTINEL, ShardEndpoint, ShardMap

log = logging.getLogger(__name__)


def digest(identity: str) -> str:
    """12 hex characters standing for a shard's identity (in commit metadata)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """Shard `shard`'s server changed: writes acknowledged from about `since` (unix
    seconds: when its old server was last seen) on may be lost."""

    shard: str
    since: float


class ShardPool:
    """The shard clients of the current shard map and their reachability."""

    def __init__(self, settings: Settings, metrics: Metrics, *,
                 library: Library = PROTOCOL) -> None:
        self._settings = settings
        self._library = library
        self._metrics = metrics
        self._shards: dict[str, Shard | ClusterShard] = {}
        self._endpoints: dict[str, ShardEndpoint] = {}
        self._up: dict[str, bool] = {}
        self._identities: dict[str, str | None] = {}  # shard → its server's run id
        self._seen: dict[str, float] = {}  # shard → when that server last answered (unix s)
        # shard → (identity digest, when) from committed offsets, for an unreachable shard
        self._expected: dict[str, tuple[str, float]] = {}
        self._changes: list[IdentityChange] = []
        self._lock = threading.Lock()

    def problems(self, shard_map: ShardMap) -> list[str]:
        """Why this shard map cannot be used with these settings (empty: it can)."""
        problems = []
        for name in shard_map.shard_names():
            endpoint = shard_map.endpoint(name)
            if self._settings.valkey.tls.enabled and (
                    urlsplit(endpoint.url).scheme.lower() not in TLS_SCHEMES):
                problems.append(f"shard {name}: valkey.tls.enabled is true but its URL "
                                f"{redact(endpoint.url)} is not TLS (use valkeys:// or rediss://)")
        return problems

    def update(self, shard_map: ShardMap) -> None:
        valkey = self._settings.valkey
        password = valkey.password_value()
        tls = valkey.tls
        wanted = {name: shard_map.endpoint(name) for name in shard_map.shard_names()}
        with self._lock:
            shards = dict(self._shards)
            for name in list(shards):
                if name in wanted and wanted[name] == self._endpoints.get(name):
                    continue
                shards.pop(name).close()
                self._up.pop(name, None)
                if name not in wanted:
                    with contextlib.suppress(KeyError):
                        self._metrics.shard_up.remove(name)
            for name, endpoint in wanted.items():
                if name in shards:
                    continue
                # A sentinel shard: the Sentinels' URLs; the primary's credentials and TLS
                # are the settings', as for a standalone one (connectors/valkey/sentinel).
                client = (partial(SentinelShard, name, endpoint.urls, endpoint.service or "",
                                  sentinel_username=valkey.sentinel.username,
                                  sentinel_password=valkey.sentinel.password_value())
                          if endpoint.kind == SENTINEL else
                          partial(ClusterShard, name, endpoint.urls)  # seeds, same settings
                          if endpoint.kind == CLUSTER else partial(Shard, name, endpoint.url))
                shards[name] = client(
                    username=valkey.username, password=password,
                    tls_ca_file=str(tls.ca_file) if tls.ca_file else None,
                    tls_cert_file=str(tls.cert_file) if tls.cert_file else None,
                    tls_key_file=str(tls.key_file) if tls.key_file else None,
                    socket_timeout=valkey.socket_timeout_seconds,
                    fence_ttl_ms=self._settings.fence_ttl_seconds * 1000,
                    library=self._library,
                    wait=None if endpoint.wait is None else WaitFor(
                        endpoint.wait.replicas, endpoint.wait.aof, endpoint.wait.timeout_ms),
                )
                self._metrics.init_shard(name)
                log.info("shard %s: %s", name, shards[name].url)
            self._shards = shards
            self._endpoints = wanted

    def clients(self) -> Mapping[str, Shard | ClusterShard]:
        return self._shards

    def mark(self, shard: str, up: bool) -> None:
        was = self._up.get(shard)
        if was != up:
            self._up[shard] = up
            self._metrics.shard_up.labels(shard).set(1 if up else 0)
            if not up:
                log.warning("shard %s is unreachable", shard)
            elif was is not None:
                log.info("shard %s is reachable again", shard)
                self.watch(only=shard)  # back after an outage: a failover? a restart?

    def probe(self) -> None:
        """Ping every shard (from the housekeeping thread)."""
        for name, shard in list(self._shards.items()):
            self.mark(name, shard.ping())

    # ------------------------------------------------------------------ identities

    def watch(self, only: str | None = None) -> None:
        """Ask every shard (or `only` one) which incarnation of its server holds its
        data; one that changed (a failover, a restart) since last asked — or since the
        committed offsets said (`expect`) — is queued for `take_changes`, with the time
        its old server was last seen: what that server acknowledged up to its end may be
        lost, however long the shard was down before the new one answered."""
        for name, shard in list(self._shards.items()):
            if only is not None and name != only:
                continue
            asked = time.time()
            try:
                now = shard.identity()
            except ConnectorError:
                continue  # unreachable: asked again when it answers
            with self._lock:
                before = self._identities.get(name)
                expected = self._expected.pop(name, None)
                last_seen = self._seen.get(name, asked)
                self._identities[name] = now
                self._seen[name] = asked
                since: float | None = None
                if before is not None and before != now:
                    since = last_seen
                elif before is None and expected is not None and digest(now) != expected[0]:
                    since = expected[1]  # changed since the committed offsets were stored
                if since is not None:
                    self._changes.append(IdentityChange(name, since))
                    self._metrics.shard_changes.labels(name).inc()
                    log.warning("shard %s: its server changed (a failover, or a restart; run "
                                "id %s, was %s): writes it acknowledged may be lost", name,
                                now[:12], (before or "?")[:12])

    def expect_digest(self, name: str, value: str, since: float) -> None:
        """What committed offsets say shard `name`'s server was when they were stored
        (`since`, unix seconds), for a shard unreachable now: its first answer is
        compared with it."""
        with self._lock:
            if name in self._shards and self._identities.get(name) is None:
                self._expected[name] = (value, since)

    def identities(self) -> dict[str, str]:
        """The last known incarnation of each shard (unreachable ones left out)."""
        with self._lock:
            return {name: value for name, value in self._identities.items() if value}

    def take_changes(self) -> list[IdentityChange]:
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    def states(self) -> dict[str, bool]:
        return {name: self._up.get(name, False) for name in self._shards}

    def close(self) -> None:
        with self._lock:
            for shard in self._shards.values():
                shard.close()
            self._shards = {}
