"""The commands of one `Shard.apply()`: its FCALLs (`APPLY_CHUNK` keys each, so that no
single call holds the server for long), their arguments checked, the WAIT (or
WAITAOF) a shard may be asked to add, and the result labels read from the answers
(`read_labels`, for `Shard` and `ClusterShard` alike)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.functions import APPLY_FUNCTION
from connectors.valkey.protocols import MAX_VERSION, OPS

APPLY_CHUNK = 512  # keys per cr2_apply call: bounds how long one call blocks the server
_FCALL = b"FCALL"  # the command, pre-encoded
# Reply bytes -> the result label (one shared str object per label, no decoding).
_LABEL = {b"repaired": "repaired", b"fresh": "fresh", b"absent": "absent",
          b"fenced": "fenced"}.__getitem__


def apply_commands(keys: Sequence[str], ops: Sequence[str], versions: Sequence[int],
                   fence_ttl_ms: int, function: bytes = APPLY_FUNCTION.encode()
                   ) -> list[tuple[Any, ...]]:
    """The FCALL argument tuples for one `apply()`: `APPLY_CHUNK` keys each.

    Per key: only slicing and slice assignment (C loops); the client packs ints itself.
    """
    commands = []
    for start in range(0, len(keys), APPLY_CHUNK):
        stop = start + APPLY_CHUNK
        chunk = keys[start:stop]
        pairs: list[Any] = [None] * (2 * len(chunk))
        pairs[0::2] = ops[start:stop]
        pairs[1::2] = versions[start:stop]
        commands.append((_FCALL, function, len(chunk), *chunk, fence_ttl_ms, *pairs))
    return commands


def check_apply(shard: str, keys: Sequence[str], ops: Sequence[str],
                versions: Sequence[int]) -> None:
    """ValueError unless `apply()`'s arguments are well formed (one op and one version
    per key, known op codes, versions in [0, 2^63-1])."""
    n = len(keys)
    if n != len(ops) or n != len(versions):
        raise ValueError(f"shard {shard!r}: apply() needs as many ops and versions "
                         f"as keys, got {n} keys, {len(ops)} ops, {len(versions)} versions")
    if not n:
        return
    if not OPS.issuperset(ops):
        bad = next(i for i, op in enumerate(ops) if op not in OPS)
        raise ValueError(f"shard {shard!r}: op #{bad} for key {keys[bad]!r} must be "
                         f"one of {''.join(sorted(OPS))}, got {ops[bad]!r}")
    if min(versions) < 0 or max(versions) > MAX_VERSION:
        bad = next(i for i, v in enumerate(versions) if not 0 <= v <= MAX_VERSION)
        raise ValueError(f"shard {shard!r}: version #{bad} for key {keys[bad]!r} "
                         f"must be in [0, 2^63-1], got {versions[bad]}")


def read_labels(replies: Iterable[Any], n: int, *, shard: str, command: str,
                library: str) -> list[str]:
    """The result labels of FCALL answers (each a list of reply bytes), `n` in all, in
    order; `ValkeyRejected` if an answer is not labels or the count is not `n`."""
    results: list[str] = []
    for reply in replies:
        try:
            results += map(_LABEL, reply)
        except (KeyError, TypeError) as error:
            raise ValkeyRejected(
                f"valkey shard {shard!r}: {command} answered {reply!r:.200}, not one "
                f"label per key: is another {library} loaded? Run `reconciler doctor`",
                shard=shard, command=command) from error
    if len(results) != n:
        raise ValkeyRejected(f"valkey shard {shard!r}: {command} answered "
                             f"{len(results)} results for {n} keys",
                             shard=shard, command=command)
    return results


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Acknowledge a call only once `replicas` replicas have it (WAIT), or, with `aof`,
    once the primary's append-only file and `replicas` replicas' have it (WAITAOF), in
    at most `timeout_ms`. Fewer is `ValkeyUnavailable`: the call is retried (it is
    idempotent), within the retry budget."""

    replicas: int
    aof: bool = False
    timeout_ms: int = 1000

    def command(self) -> tuple[Any, ...]:
        if self.aof:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, reply: Any, *, shard: str) -> None:
        local, replicas = (reply[0], reply[1]) if self.aof else (1, reply)
        if int(local) >= 1 and int(replicas) >= self.replicas:
            return
        what = "WAITAOF" if self.aof else "WAIT"
        raise ValkeyUnavailable(
            f"valkey shard {shard!r}: {what} {self.replicas} {self.timeout_ms}: "
            f"{'the primary fsynced its AOF' if int(local) else 'the primary did not fsync'}"
            f" and {replicas} of {self.replicas} replicas acknowledged in time (shards."
            f"{shard}.wait): retrying the call", shard=shard, command=what)
