"""The cache before a run, and what the worker should answer for the workload.

`CacheMix` says which of the workload's rows an application had cached when the
changes started: `stale` rows hold the version from before the run's changes (their
first change repairs them), `fresh` rows hold the row's last version in the run (the
application re-read it since; every change finds it fresh), the rest are absent. Every
neighbourhood's feed key is cached. `populate()` writes those entries through the
writer helper (`CacheWriter.set_if_newer`), pipelined.

`Keys` are the key templates of `public.posts` the worker is configured with (the
local config's `post:{id}` and `feed:{neighborhood_id}` unless a benchmark writes
others into its config).

`expected()` replays the workload through a small model of the cache protocol (SPEC
§2) to predict the `reconciler_invalidations_total` counts. Rows keep their key and so
their partition, so the per-key order the worker sees is the workload's order; feed
keys are only ever deleted, so their counts do not depend on order either.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import valkey

from bench.env import Router
from bench.events import DELETE, TOMBSTONE, Change, Workload
from connectors.valkey.writer import CacheWriter

PIPELINE_KEYS = 2000  # set_if_newer calls per round trip while populating
ENTRY_TTL_SECONDS = 3600  # cached entries outlive any run
MAX_VERSION = 2**63 - 1  # the delete fence
VERSIONED, REMOVE, UNVERSIONED = "v", "d", "u"  # cr<N>_apply op codes

Action = tuple[str, str, str, int]  # shard, key, op code, version


@dataclass(frozen=True, slots=True)
class CacheMix:
    stale: float = 0.4  # share of rows cached at their version before the run
    fresh: float = 0.2  # share cached at their last version in the run; the rest absent


@dataclass(frozen=True, slots=True)
class Keys:
    """The key templates of public.posts: versioned keys built from the row id
    (`<prefix>:{id}`), then unversioned ones built from its neighbourhood
    (`<prefix>:{neighborhood_id}`, derived keys such as a feed)."""

    versioned: tuple[str, ...] = ("post",)
    derived: tuple[str, ...] = ("feed",)

    def templates(self) -> list[dict[str, Any]]:
        """As the worker's config writes them (`tables.public.posts.keys`)."""
        return [{"template": f"{prefix}:{{id}}", "versioned": True}
                for prefix in self.versioned] + \
               [{"template": f"{prefix}:{{neighborhood_id}}", "versioned": False}
                for prefix in self.derived]


LOCAL_KEYS = Keys()  # config/local's: post:{id} versioned, feed:{neighborhood_id} not


def actions(change: Change, router: Router, keys: Keys = LOCAL_KEYS) -> list[Action]:
    """What the reconciler must do for a change to public.posts."""
    if change.op in (DELETE, TOMBSTONE):
        # DEFAULT identity: the neighbourhood is unknown, broadcast the keys built from
        # the id (the others are unresolved); the tombstone after the delete is a
        # key-only delete of its own (the same actions again)
        return [(shard, f"{prefix}:{change.id}", REMOVE, 0)
                for prefix in keys.versioned for shard in router.names]
    out: list[Action] = []
    for shard in router.shards(change.neighborhood_id):
        out += [(shard, f"{prefix}:{change.id}", VERSIONED, change.version)
                for prefix in keys.versioned]
        out += [(shard, f"{prefix}:{change.neighborhood_id}", UNVERSIONED, 0)
                for prefix in keys.derived]
    return out


def cached_rows(workload: Workload, mix: CacheMix) -> dict[int, int]:
    """id -> the version cached for that row at the start."""
    _, initial = workload.initial()
    last = workload.last_versions()
    rng = random.Random(f"{workload.seed}-cache")
    rows: dict[int, int] = {}
    for row in range(1, workload.keys + 1):
        draw = rng.random()
        if draw < mix.stale:
            rows[row] = initial[row]
        elif draw < mix.stale + mix.fresh:
            rows[row] = last.get(row, initial[row])
    return rows


def populate(clients: Mapping[str, valkey.Valkey], workload: Workload, router: Router,
             rows: Mapping[int, int], keys: Keys = LOCAL_KEYS) -> int:
    """Write the start state (each cached row's keys on its home shard, every
    neighbourhood's derived keys on each of its shards) through the writer helper;
    returns the number of entries written."""
    written = 0
    entries = start_state(workload, router, rows, keys)
    for shard, client in clients.items():
        mine = [entry for entry in entries if entry[0] == shard]
        for start in range(0, len(mine), PIPELINE_KEYS):
            pipe: Any = client.pipeline(transaction=False)
            writer = CacheWriter(pipe, name=shard)  # queues each call on the pipeline
            for _, key, version in mine[start:start + PIPELINE_KEYS]:
                writer.set_if_newer(key, version, _payload(key, version), ENTRY_TTL_SECONDS)
            replies = pipe.execute()
            if not all(reply == 1 for reply in replies):
                raise RuntimeError(f"shard {shard}: set_if_newer refused some writes on an "
                                   "empty database (is another benchmark running?)")
            written += len(replies)
    return written


def start_state(workload: Workload, router: Router, rows: Mapping[int, int],
                 keys: Keys) -> list[tuple[str, str, int]]:
    """(shard, key, version) of every entry cached at the start."""
    hoods, _ = workload.initial()
    entries = [(router.home(hoods[row]), f"{prefix}:{row}", version)
               for row, version in rows.items() for prefix in keys.versioned]
    for hood in range(1, workload.neighborhoods + 1):
        entries += [(shard, f"{prefix}:{hood}", 1) for shard in router.shards(hood)
                    for prefix in keys.derived]
    return entries


def _payload(key: str, version: int) -> dict[str, object]:
    """About what an application caches for a post: ~1 KB of MessagePack."""
    return {"key": key, "system_version": version, "title": "a cached title",
            "body": f"{key} " * 120, "score": "12.50", "tags": ["cdc", "cache"]}


class Model:
    """The cache protocol over a dict (no fence TTL: runs are shorter than it)."""

    def __init__(self, workload: Workload, router: Router, rows: Mapping[int, int],
                 keys: Keys = LOCAL_KEYS) -> None:
        self.data: dict[tuple[str, str], tuple[bool, int]] = {  # -> (has data, version)
            (shard, key): (True, version)
            for shard, key, version in start_state(workload, router, rows, keys)}

    def apply(self, shard: str, key: str, op: str, version: int) -> str:
        found = self.data.get((shard, key))
        if op == UNVERSIONED:
            return "absent" if self.data.pop((shard, key), None) is None else "repaired"
        if op == REMOVE:
            self.data[shard, key] = (False, MAX_VERSION)
            return "repaired" if found is not None and found[0] else "absent"
        if found is None:
            self.data[shard, key] = (False, version)
            return "absent"
        has_data, current = found
        if has_data and current >= version:
            return "fresh"
        self.data[shard, key] = (False, max(current, version) if not has_data else version)
        return "fenced" if not has_data else "repaired"


def expected(workload: Workload, router: Router, rows: Mapping[int, int],
             keys: Keys = LOCAL_KEYS) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """((shard, result) -> n, op -> n) the worker should count for the workload."""
    model = Model(workload, router, rows, keys)
    results: Counter[tuple[str, str]] = Counter()
    ops: Counter[str] = Counter()
    for change in workload.changes():
        ops[change.op] += 1
        for shard, key, op, version in actions(change, router, keys):
            results[shard, model.apply(shard, key, op, version)] += 1
    return results, ops


def by_shard(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """(shard, result) -> n as {shard: {result: n}}, the way results files hold them."""
    out: dict[str, dict[str, int]] = {}
    for (shard, result), n in sorted(counts.items()):
        out.setdefault(shard, {})[result] = n
    return out
