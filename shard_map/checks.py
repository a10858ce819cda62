"""The rules a well-shaped shard map must follow, each problem naming its entries.

`check` returns every problem, in file order: version, shards (names, URLs), ranges
(``from <= to``, known shard, no overlap), moving (the same, plus source differs from
target and, for every id it covers, the ranges assign it to its source or its target:
during a migration the range may already point at the target), default.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shard_map._text import did_you_mean, ids, redact_url, render

if TYPE_CHECKING:
    from shard_map.model import MovingSpec, RangeSpec, ShardMapFile, ShardSpec

# Shard names become Prometheus label values: keep them to a safe alphabet.
SHARD_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# URL schemes the Valkey client accepts (the `s` forms use TLS).
URL_SCHEMES = ("valkey", "valkeys", "redis", "rediss")
TLS_SCHEMES = ("valkeys", "rediss")
# A URL path may only select a database by number (`/0`).
_DB_PATH = re.compile(r"/\d*")
# Known shard names listed in full in an "unknown shard" problem, at most.
_MAX_LISTED = 10


def check(model: ShardMapFile) -> list[str]:
    """Every rule `model` breaks, as sentences naming the offending entries."""
    known = set(model.shards)
    problems: list[str] = []
    if model.version < 0:
        problems.append(f"version must be 0 or more, got {model.version}")
    problems += _check_shards(model)
    problems += _check_ranges(model.ranges, known)
    problems += _check_moving(model, known)
    if model.default is not None and model.default not in known:
        problems.append(f"default: {_unknown(model.default, known)}")
    if not model.ranges and model.default is None:
        problems.append(
            "ranges is empty and default is null: every neighbourhood id would be dead-lettered"
        )
    return problems


def range_label(index: int, entry: RangeSpec) -> str:
    """``ranges[1] {from: 450, to: 600, shard: b}``."""
    fields = {"from": entry.from_, "to": entry.to, "shard": entry.shard}
    return f"ranges[{index}] {render(fields)}"


def moving_label(index: int, entry: MovingSpec) -> str:
    """``moving[0] {from: 400, to: 450, source: a, target: b}``."""
    fields = {"from": entry.from_, "to": entry.to, "source": entry.source, "target": entry.target}
    return f"moving[{index}] {render(fields)}"


def _check_shards(model: ShardMapFile) -> list[str]:
    if not model.shards:
        return ["shards is empty: at least one shard is required"]
    problems: list[str] = []
    for name, spec in model.shards.items():
        if not SHARD_NAME.fullmatch(name):
            problems.append(
                f"shards: name {name!r} must match {SHARD_NAME.pattern} "
                f"(shard names become Prometheus label values)"
            )
        problems += _check_kind(name, spec)
    return problems


def _check_kind(name: str, spec: ShardSpec) -> list[str]:
    """Exactly one of url, cluster or sentinel (with service); every URL valid."""
    where = f"shards.{render(name)}"
    given = [kind for kind in ("url", "cluster", "sentinel") if getattr(spec, kind) is not None]
    if len(given) != 1:
        return [f"{where}: give exactly one of url (a standalone primary), cluster (the seed "
                f"nodes of a Valkey Cluster) or sentinel (the Sentinels, with service), got "
                f"{', '.join(given) or 'none'}"]
    problems: list[str] = []
    if spec.service is not None and spec.sentinel is None:
        problems.append(f"{where}.service: only a sentinel shard names a service")
    if spec.sentinel is not None and not spec.service:
        problems.append(f"{where}.service is required with sentinel: the name the Sentinels "
                        "monitor the primary under (SENTINEL MONITOR <service> ...)")
    if spec.url is not None:
        urls = [("url", spec.url)]
    else:
        listed = spec.cluster if spec.cluster is not None else spec.sentinel
        assert listed is not None
        if not listed:
            problems.append(f"{where}.{given[0]} is empty: list at least one URL")
        urls = [(f"{given[0]}[{i}]", url) for i, url in enumerate(listed)]
    for field, url in urls:
        problem = _url_problem(url)
        if problem is None and spec.url is None and _database(url):
            problem = ("selects a database: a cluster has only database 0, and a sentinel "
                       "shard's primary is used with database 0")
        if problem:
            problems.append(f"{where}.{field} {render(redact_url(url))} {problem}")
    schemes = {urlsplit(url).scheme.lower() in TLS_SCHEMES for _, url in urls
               if _url_problem(url) is None}
    if len(schemes) > 1:
        problems.append(f"{where}: mixes TLS and plain URLs: use valkeys:// (or rediss://) "
                        "for all of them, or for none")
    return problems


def _database(url: str) -> bool:
    return (urlsplit(url).path or "/").strip("/") not in ("", "0")


def _url_problem(url: str) -> str | None:
    schemes = ", ".join(f"{scheme}://" for scheme in URL_SCHEMES)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in URL_SCHEMES:
        return f"must be a URL with one of the schemes {schemes}"
    if not parts.hostname:
        return "has no host"
    if not _DB_PATH.fullmatch(parts.path or "/"):
        return f"has path {render(parts.path)}: only a database number may follow the host (/0)"
    return None


def _check_ranges(ranges: Sequence[RangeSpec], known: Collection[str]) -> list[str]:
    problems: list[str] = []
    for index, entry in enumerate(ranges):
        label = range_label(index, entry)
        if entry.from_ > entry.to:
            problems.append(f"{label}: from is greater than to")
        if entry.shard not in known:
            problems.append(f"{label}: {_unknown(entry.shard, known)}")
    for later, earlier in _overlaps([(entry.from_, entry.to) for entry in ranges]):
        problems.append(
            f"{range_label(later, ranges[later])} overlaps {range_label(earlier, ranges[earlier])}"
        )
    return problems


def _check_moving(model: ShardMapFile, known: Collection[str]) -> list[str]:
    problems: list[str] = []
    moving = model.moving
    for index, entry in enumerate(moving):
        label = moving_label(index, entry)
        if entry.from_ > entry.to:
            problems.append(f"{label}: from is greater than to")
        for role, name in (("source", entry.source), ("target", entry.target)):
            if name not in known:
                problems.append(f"{label}: {role}: {_unknown(name, known)}")
        if entry.source == entry.target:
            problems.append(f"{label}: source and target are the same shard")
        elif entry.from_ <= entry.to:
            problems += [f"{label}: {p}" for p in _owner_problems(entry, model)]
    for later, earlier in _overlaps([(entry.from_, entry.to) for entry in moving]):
        problems.append(
            f"{moving_label(later, moving[later])} overlaps "
            f"{moving_label(earlier, moving[earlier])}"
        )
    return problems


def _owner_problems(entry: MovingSpec, model: ShardMapFile) -> list[str]:
    """Parts of a move whose ids the ranges (or the default) give to neither end."""
    ends = (entry.source, entry.target)
    first, last = entry.from_, entry.to
    problems: list[str] = []
    covered: list[tuple[int, int]] = []
    for index, spec in enumerate(model.ranges):
        low, high = max(first, spec.from_), min(last, spec.to)
        if low > high:
            continue
        covered.append((low, high))
        if spec.shard not in ends:
            problems.append(
                f"{ids(low, high)} {_verb(low, high, 'belongs', 'belong')} to shard "
                f"{render(spec.shard)} by {range_label(index, spec)}, which is neither its "
                f"source nor its target"
            )
    cursor = first
    for low, high in sorted(covered):
        if low > cursor:
            problems += _gap_problem(cursor, low - 1, ends, model.default)
        cursor = max(cursor, high + 1)
    if cursor <= last:
        problems += _gap_problem(cursor, last, ends, model.default)
    return problems


def _gap_problem(first: int, last: int, ends: tuple[str, str], default: str | None) -> list[str]:
    if default is None:
        return [
            f"{ids(first, last)} {_verb(first, last, 'is', 'are')} outside every range "
            "and default is null"
        ]
    if default not in ends:
        return [
            f"{ids(first, last)} {_verb(first, last, 'falls', 'fall')} to the default shard "
            f"{render(default)}, which is neither its source nor its target"
        ]
    return []


def _verb(first: int, last: int, one: str, many: str) -> str:
    return one if first == last else many


def _overlaps(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(later, earlier)`` index pairs of overlapping inclusive spans, sorted.

    Spans with ``from > to`` are left out (reported on their own). Every span that
    overlaps another appears in at least one pair; O(n log n).
    """
    order = sorted(
        (i for i, (first, last) in enumerate(spans) if first <= last),
        key=lambda i: (spans[i], i),
    )
    pairs: list[tuple[int, int]] = []
    reach: int | None = None  # the span seen so far that ends last
    for i in order:
        if reach is not None and spans[i][0] <= spans[reach][1]:
            pairs.append((max(i, reach), min(i, reach)))
        if reach is None or spans[i][1] > spans[reach][1]:
            reach = i
    return sorted(pairs)


def _unknown(name: str, known: Collection[str]) -> str:
    hint = did_you_mean(name, known)
    if hint or not known:
        return f"unknown shard {name!r}{hint}"
    names = sorted(known)
    listed = ", ".join(names[:_MAX_LISTED]) + (", …" if len(names) > _MAX_LISTED else "")
    return f"unknown shard {name!r} (shards: {listed})"
