"""Valkey: the server side of the cache protocol, the shard client and the writer helper.

- `functions.lua` / `functions` — the Functions library (`cache_reconciler_2`:
  `cr2_apply`, `cr2_set_if_newer`), loading it, transparent reload, error mapping.
- `shard` — `Shard`: one server; `apply()` (one round trip per batch), `truncate()`.
- `sentinel` — `SentinelShard`: a `Shard` on the primary a set of Sentinels name,
  following its failovers; `sentinel_client()` for the writer helper.
- `writer` — `CacheWriter`: what applications use (`get`, `set_if_newer`).
- `protocols` — the `ShardClient` seam, op codes and result labels (stdlib only).
- `testing` — `FakeShard`: the same semantics in memory, for unit tests.

Importing this package loads only `protocols`; import the other modules explicitly.
"""

from connectors.valkey.protocols import (
    ABSENT,
    FENCED,
    FRESH,
    MAX_VERSION,
    OPS,
    REPAIRED,
    RESULTS,
    PendingApply,
    ShardClient,
)

__all__ = [
    "ABSENT",
    "FENCED",
    "FRESH",
    "MAX_VERSION",
    "OPS",
    "REPAIRED",
    "RESULTS",
    "PendingApply",
    "ShardClient",
]
