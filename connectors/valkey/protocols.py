"""The seam between the reconciler and a cache shard.

`Shard` (real server) and `testing.FakeShard` (in memory, same semantics) implement
`ShardClient`, so the reconciler's invalidation code is written and unit-tested
against this Protocol without a server. The op codes, result labels and field names
of the cache protocol are defined here too; this module imports nothing but the
standard library, so pure code (the planner) can use it freely.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

MAX_VERSION = 2**63 - 1  # highest version (Postgres bigint); the delete fence uses it

OP_VERSIONED = "v"  # a change (Debezium c/u) to a row now at the given version
OP_SNAPSHOT = "s"  # a snapshot read (r): repairs stale data, never fences an absent key
OP_DELETE = "d"  # a delete: remove the entry and fence every version for fence_ttl
OP_UNVERSIONED = "u"  # a derived, unversioned key: plain delete, no fence
OPS = frozenset({OP_VERSIONED, OP_SNAPSHOT, OP_DELETE, OP_UNVERSIONED})  # valid op codes

REPAIRED = "repaired"  # stale data (or any removed value) was replaced or removed
FRESH = "fresh"  # the entry holds data at least as new as the change: left alone
ABSENT = "absent"  # nothing was cached (a fence may have been written)
FENCED = "fenced"  # a fence was there (and raised to the change's version if lower)
RESULTS = (REPAIRED, FRESH, ABSENT, FENCED)  # every result label, for metrics

VERSION_FIELD = b"v"  # the hash field holding the row version
DATA_FIELD = b"d"  # the hash field holding the payload (absent in a fence)
_DIGITS = re.compile(rb"[0-9]+")  # what a stored version must look like


def parse_version(raw: bytes | None) -> int | None:
    """A stored `v` as an int, or None unless it is a decimal in [0, 2^63-1]."""
    if raw is None or not _DIGITS.fullmatch(raw):
        return None
    version = int(raw)
    return version if version <= MAX_VERSION else None


class ShardClient(Protocol):
    """Applies cache-protocol operations to one shard."""

    @property
    def name(self) -> str:
        """The shard's name in the shard map (a metrics label)."""
        ...

    def apply(self, keys: Sequence[str], ops: Sequence[str],
              versions: Sequence[int]) -> list[str]:
        """Apply `ops[i]` at `versions[i]` to `keys[i]`, in order, atomically per key.

        One result label per key, in input order. Versions of `d`/`u` ops are ignored
        (pass 0). Raises ValueError for bad arguments, ValkeyUnavailable (retry: every
        op is idempotent) or ValkeyRejected.
        """
        ...

    def send(self, keys: Sequence[str], ops: Sequence[str],
             versions: Sequence[int]) -> PendingApply:
        """`apply()` in two halves: send the operations now, read the answers with
        `result()` later, so the caller can work (or send to other shards) meanwhile.
        Raises ValueError for bad arguments at once; every other failure, including
        one while sending, comes out of `result()` exactly as `apply()` raises it."""
        ...

    def truncate(self, pattern: str, *, count: int = 1000,
                 max_keys_per_second: float | None = None) -> int:
        """Remove every key matching the glob `pattern`; return how many were removed."""
        ...


class PendingApply(Protocol):
    """Operations sent by `ShardClient.send()`, their answers not read yet."""

    def result(self) -> list[str]:
        """One result label per key, in order (what `apply()` returns); raises what
        `apply()` raises. Call it once."""
        ...

    def discard(self) -> None:
        """Give up on the answers (the connection they would arrive on is closed)."""
        ...
