"""The advice an out-of-memory refusal carries: never an eviction policy that can evict
fences.

A fence evicted before its TTL reopens the delete-then-stale-set race (SPEC §2): a
slow writer puts back the version the reconciler just invalidated. `allkeys-*` evicts
any key; `volatile-*` evicts keys that have a TTL, and every fence has one
(`volatile-ttl` takes them first: theirs are the shortest). Only `noeviction` keeps
them, so the hint is more memory, not eviction.
"""

from __future__ import annotations

import valkey.exceptions as vx

from connectors.errors import ValkeyRejected
from connectors.valkey.functions import translate


def test_the_oom_hint_recommends_noeviction_and_more_memory_never_eviction() -> None:
    error = vx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    translated = translate(error, shard="a", command="FCALL cr2_apply")
    assert isinstance(translated, ValkeyRejected)
    text = str(translated)
    assert "raise maxmemory" in text
    assert "such as allkeys-lru" not in text, "allkeys-* evicts fences"
    assert "maxmemory-policy noeviction" in text
    assert "fence" in text and "reconciler doctor" in text
