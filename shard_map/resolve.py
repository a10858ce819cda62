"""`ShardMap`: a validated shard map compiled for `resolve()` on the hot path.

The ranges and the moving entries are cut at every boundary into sorted, disjoint
segments, each with its answer (a tuple of shard names) built once. `resolve` is one
`bisect` over the segment starts and returns a cached tuple: O(log n), no allocation.
Ids in no segment get the default, or raise `ShardResolutionError`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from shard_map._text import redact_url
from shard_map.errors import ShardResolutionError
from shard_map.model import ShardMapFile, ShardSpec

# Segment metadata for "no range" / "no moving entry" covers this segment.
_NONE = -1


@dataclass(frozen=True, slots=True)
class Range:
    """Ids ``first..last`` (inclusive) live on ``shard``."""

    first: int
    last: int
    shard: str


@dataclass(frozen=True, slots=True)
class Move:
    """Ids ``first..last`` (inclusive) are moving from ``source`` to ``target``."""

    first: int
    last: int
    source: str
    target: str


STANDALONE, CLUSTER, SENTINEL = "standalone", "cluster", "sentinel"  # ShardEndpoint.kind


@dataclass(frozen=True, slots=True)
class Wait:
    """WAIT `replicas` (WAITAOF 1 `replicas` with `aof`) after a batch, `timeout_ms` at most."""

    replicas: int
    aof: bool = False
    timeout_ms: int = 1000


@dataclass(frozen=True, slots=True, repr=False)
class ShardEndpoint:
    """Where one shard lives: a standalone primary (one URL), a Valkey Cluster (its
    seed nodes' URLs) or a primary found through Sentinel (the Sentinels' URLs and the
    service name). URLs may hold passwords: `describe()` is the form to show."""

    kind: str  # STANDALONE, CLUSTER or SENTINEL
    urls: tuple[str, ...]
    service: str | None = None  # the Sentinel service name (SENTINEL only)
    wait: Wait | None = None  # acknowledge only once replicas (and AOF) have a batch

    @classmethod
    def standalone(cls, url: str) -> ShardEndpoint:
        return cls(STANDALONE, (url,))

    @property
    def url(self) -> str:
        """The first URL: the standalone primary's, or the first seed or Sentinel."""
        return self.urls[0]

    def describe(self) -> str:
        """``valkey://h:1/0``, ``cluster valkey://h:1, valkey://h:2`` or ``sentinel
        valkey://s:26379 service cache-c``, passwords redacted."""
        urls = ", ".join(redact_url(url) for url in self.urls)
        if self.kind == STANDALONE:
            return urls
        if self.kind == CLUSTER:
            return f"cluster {urls}"
        return f"sentinel {urls} service {self.service}"

    def __repr__(self) -> str:
        return f"ShardEndpoint({self.describe()})"


@dataclass(frozen=True, slots=True, repr=False)
class ShardMap:
    """A valid shard map. Build it with `load_shard_map`, `parse_shard_map` or
    `ShardMap.from_model`; direct construction checks only what `resolve` relies on
    (no overlaps, known names), not the file rules."""

    version: int
    endpoints: Mapping[str, ShardEndpoint]
    ranges: tuple[Range, ...] = ()
    moving: tuple[Move, ...] = ()
    default: str | None = None
    # Compiled in __post_init__; see the module docstring.
    _starts: tuple[int, ...] = field(init=False, compare=False)
    _ends: tuple[int, ...] = field(init=False, compare=False)
    _answers: tuple[tuple[str, ...], ...] = field(init=False, compare=False)
    _range_of: tuple[int, ...] = field(init=False, compare=False)
    _move_of: tuple[int, ...] = field(init=False, compare=False)
    _fallback: tuple[str, ...] | None = field(init=False, compare=False)
    _names: tuple[str, ...] = field(init=False, compare=False)

    @classmethod
    def from_model(cls, model: ShardMapFile) -> ShardMap:
        """Compile a model returned by `validate_document` (so already valid)."""
        return cls(
            version=model.version,
            endpoints={name: _endpoint(spec) for name, spec in model.shards.items()},
            ranges=tuple(Range(r.from_, r.to, r.shard) for r in model.ranges),
            moving=tuple(Move(m.from_, m.to, m.source, m.target) for m in model.moving),
            default=model.default,
        )

    def __post_init__(self) -> None:
        endpoints = MappingProxyType(dict(self.endpoints))
        names = tuple(sorted(endpoints))
        _require_known(names, self.ranges, self.moving, self.default)
        by_name = {name: (name,) for name in names}  # one tuple per answer, shared
        pairs: dict[tuple[str, str], tuple[str, ...]] = {}
        range_order = _disjoint("ranges", [(r.first, r.last) for r in self.ranges])
        move_order = _disjoint("moving", [(m.first, m.last) for m in self.moving])
        range_starts = [self.ranges[i].first for i in range_order]
        move_starts = [self.moving[i].first for i in move_order]
        range_lasts = [r.last for r in self.ranges]
        move_lasts = [m.last for m in self.moving]
        cuts = sorted(
            {r.first for r in self.ranges}
            | {r.last + 1 for r in self.ranges}
            | {m.first for m in self.moving}
            | {m.last + 1 for m in self.moving}
        )
        starts: list[int] = []
        ends: list[int] = []
        answers: list[tuple[str, ...]] = []
        range_of: list[int] = []
        move_of: list[int] = []
        for start, next_start in pairwise(cuts):
            r = _covering(start, range_starts, range_order, range_lasts)
            m = _covering(start, move_starts, move_order, move_lasts)
            if r == _NONE and m == _NONE:
                continue  # a gap: the default applies
            if m != _NONE:
                move = self.moving[m]
                key = (move.source, move.target)
                answer = pairs.setdefault(key, tuple(dict.fromkeys(key)))
            else:
                answer = by_name[self.ranges[r].shard]
            starts.append(start)
            ends.append(next_start - 1)
            answers.append(answer)
            range_of.append(r)
            move_of.append(m)
        fallback = None if self.default is None else by_name[self.default]
        for name, value in (
            ("endpoints", endpoints),
            ("_starts", tuple(starts)),
            ("_ends", tuple(ends)),
            ("_answers", tuple(answers)),
            ("_range_of", tuple(range_of)),
            ("_move_of", tuple(move_of)),
            ("_fallback", fallback),
            ("_names", names),
        ):
            object.__setattr__(self, name, value)

    def resolve(self, neighbourhood_id: int) -> tuple[str, ...]:
        """The shards to invalidate for `neighbourhood_id`.

        One name normally; ``(source, target)`` inside a moving range; ``(default,)``
        outside every range. Raises `ShardResolutionError` when there is no default.
        The same tuple object is returned for every id of a segment.
        """
        i = bisect_right(self._starts, neighbourhood_id) - 1
        if i >= 0 and neighbourhood_id <= self._ends[i]:
            return self._answers[i]
        if self._fallback is not None:
            return self._fallback
        raise ShardResolutionError(neighbourhood_id, self.version)

    def shard_names(self) -> tuple[str, ...]:
        """Every shard of the map, sorted (the targets of a broadcast)."""
        return self._names

    def endpoint(self, name: str) -> ShardEndpoint:
        """Where shard `name` lives (its URLs may hold a password: do not log them)."""
        try:
            return self.endpoints[name]
        except KeyError:
            raise KeyError(
                f"shard map version {self.version} has no shard {name!r} "
                f"(shards: {', '.join(self._names)})"
            ) from None

    def describe(self, neighbourhood_id: int) -> dict[str, Any]:
        """Where `neighbourhood_id` lives and why, as JSON-ready data.

        ``matched`` is ``"moving"``, ``"range"`` or ``"default"``; ``range`` and
        ``moving`` are the entries that cover the id (with their index in the file), or
        None; ``urls`` have passwords redacted. Raises `ShardResolutionError` exactly
        when `resolve` does.
        """
        i = bisect_right(self._starts, neighbourhood_id) - 1
        r = m = _NONE
        if i >= 0 and neighbourhood_id <= self._ends[i]:
            shards, r, m = self._answers[i], self._range_of[i], self._move_of[i]
            matched = "range" if m == _NONE else "moving"
        elif self._fallback is not None:
            shards, matched = self._fallback, "default"
        else:
            raise ShardResolutionError(neighbourhood_id, self.version)
        return {
            "neighbourhood_id": neighbourhood_id,
            "map_version": self.version,
            "matched": matched,
            "shards": list(shards),
            "urls": {name: self.endpoints[name].describe() for name in shards},
            "range": None if r == _NONE else _range_json(r, self.ranges[r]),
            "moving": None if m == _NONE else _move_json(m, self.moving[m]),
            "default": self.default,
        }

    def __repr__(self) -> str:
        # Not the URLs: they may hold passwords.
        return (
            f"ShardMap(version={self.version}, shards={self._names!r}, "
            f"ranges={len(self.ranges)}, moving={len(self.moving)}, default={self.default!r})"
        )


def _range_json(index: int, entry: Range) -> dict[str, Any]:
    return {"index": index, "from": entry.first, "to": entry.last, "shard": entry.shard}


def _move_json(index: int, entry: Move) -> dict[str, Any]:
    return {
        "index": index,
        "from": entry.first,
        "to": entry.last,
        "source": entry.source,
        "target": entry.target,
    }


def _covering(point: int, starts: list[int], order: list[int], lasts: list[int]) -> int:
    """Index (in file order) of the span that contains `point`, or `_NONE`."""
    k = bisect_right(starts, point) - 1
    if k >= 0 and point <= lasts[order[k]]:
        return order[k]
    return _NONE


def _disjoint(what: str, spans: list[tuple[int, int]]) -> list[int]:
    """Indexes of `spans` sorted by start; ValueError if any is inverted or overlaps."""
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    previous: int | None = None
    for i in order:
        first, last = spans[i]
        if first > last:
            raise ValueError(f"{what}[{i}]: from {first} is greater than to {last}")
        if previous is not None and first <= spans[previous][1]:
            raise ValueError(f"{what}[{i}] overlaps {what}[{previous}]")
        previous = i
    return order


def _require_known(
    names: tuple[str, ...], ranges: tuple[Range, ...], moving: tuple[Move, ...], default: str | None
) -> None:
    used = {r.shard for r in ranges} | {m.source for m in moving} | {m.target for m in moving}
    if default is not None:
        used.add(default)
    unknown = sorted(used.difference(names))
    if unknown:
        raise ValueError(f"unknown shards {unknown}: not in endpoints {list(names)}")


def _endpoint(spec: ShardSpec) -> ShardEndpoint:
    wait = None if spec.wait is None else Wait(spec.wait.replicas, spec.wait.aof,
                                               spec.wait.timeout_ms)
    if spec.cluster is not None:
        return ShardEndpoint(CLUSTER, tuple(spec.cluster), wait=wait)
    if spec.sentinel is not None:
        return ShardEndpoint(SENTINEL, tuple(spec.sentinel), spec.service, wait=wait)
    assert spec.url is not None  # validate_document checked exactly one kind
    return ShardEndpoint(STANDALONE, (spec.url,), wait=wait)

