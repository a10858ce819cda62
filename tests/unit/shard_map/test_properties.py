"""Properties over random maps: `resolve` agrees with a linear scan of the file, and the
overlap check names exactly the overlapping ranges."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shard_map import ShardMap, ShardMapError, ShardResolutionError, validate_document
from tests.unit.shard_map.maps import PATH

# Ids drawn for ranges and moves; probes go a little beyond on each side.
LOW, HIGH = -20, 60
# Shard names the random maps choose from.
NAMES = ("a", "b", "c", "d")


def owner(doc: dict[str, Any], neighbourhood_id: int) -> str | None:
    """The shard the ranges (then the default) give an id, by linear scan."""
    for entry in doc["ranges"]:
        if entry["from"] <= neighbourhood_id <= entry["to"]:
            return str(entry["shard"])
    default: str | None = doc["default"]
    return default


def brute_resolve(doc: dict[str, Any], neighbourhood_id: int) -> tuple[str, ...] | None:
    """What the file says about an id, by linear scan; None means dead-letter."""
    for entry in doc["moving"]:
        if entry["from"] <= neighbourhood_id <= entry["to"]:
            return tuple(dict.fromkeys((entry["source"], entry["target"])))
    shard = owner(doc, neighbourhood_id)
    return None if shard is None else (shard,)


def spans(draw: st.DrawFn, low: int, high: int, max_size: int) -> list[tuple[int, int]]:
    """Sorted, disjoint inclusive spans within low..high: some of one id, some adjacent."""
    result = []
    cursor = low + draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, max_size))):
        last = cursor + draw(st.integers(0, 6))
        if last > high:
            break
        result.append((cursor, last))
        cursor = last + 1 + draw(st.integers(0, 4))
    return result


@st.composite
def valid_maps(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=4, unique=True))
    ranges: list[dict[str, Any]] = [
        {"from": first, "to": last, "shard": draw(st.sampled_from(names))}
        for first, last in spans(draw, LOW, HIGH, 8)
    ]
    default = draw(st.none() | st.sampled_from(names))
    if not ranges and default is None:
        default = names[0]
    doc: dict[str, Any] = {
        "version": draw(st.integers(0, 2**63)),
        "shards": {
            name: {"url": f"valkey://127.0.0.1:{6379 + i}/0"} for i, name in enumerate(names)
        },
        "ranges": draw(st.permutations(ranges)),
        "moving": [],
        "default": default,
    }
    moving = []
    if draw(st.integers(0, 2)) == 0:  # anywhere: across ranges, gaps and the default
        candidates = spans(draw, LOW - 5, HIGH + 5, 4)
    else:  # inside ranges (the common migration), so that most candidates are kept
        candidates = []
        for entry in sorted(ranges, key=lambda entry: entry["from"]):
            first = draw(st.integers(entry["from"], entry["to"]))
            if draw(st.integers(0, 3)) > 0:
                candidates.append((first, draw(st.integers(first, entry["to"]))))
    for first, last in candidates:
        owners = {owner(doc, i) for i in range(first, last + 1)}
        if None in owners or len(owners) > 2:
            continue  # no valid move over these ids
        if len(owners) == 1:
            (only,) = owners
            others = [name for name in names if name != only]
            if not others:
                continue
            owners.add(draw(st.sampled_from(others)))
        source, target = draw(st.permutations(sorted(str(o) for o in owners)))
        moving.append({"from": first, "to": last, "source": source, "target": target})
    doc["moving"] = draw(st.permutations(moving))
    return doc


@settings(max_examples=300)
@given(valid_maps())
def test_resolve_agrees_with_a_linear_scan(doc: dict[str, Any]) -> None:
    shard_map = ShardMap.from_model(validate_document(doc, PATH))
    for neighbourhood_id in range(LOW - 10, HIGH + 10):
        expected = brute_resolve(doc, neighbourhood_id)
        if expected is None:
            for call in (shard_map.resolve, shard_map.describe):
                try:
                    call(neighbourhood_id)
                except ShardResolutionError as exc:
                    assert exc.neighbourhood_id == neighbourhood_id
                else:
                    raise AssertionError(f"{neighbourhood_id} resolved, expected an error")
        else:
            assert shard_map.resolve(neighbourhood_id) == expected, neighbourhood_id
            described = shard_map.describe(neighbourhood_id)
            assert tuple(described["shards"]) == expected
            in_move = any(m["from"] <= neighbourhood_id <= m["to"] for m in doc["moving"])
            assert (described["matched"] == "moving") == in_move
    assert shard_map.shard_names() == tuple(sorted(doc["shards"]))


@st.composite
def ranges_maybe_overlapping(draw: st.DrawFn) -> list[dict[str, Any]]:
    entries = draw(
        st.lists(st.tuples(st.integers(LOW, HIGH), st.integers(0, 8)), min_size=1, max_size=8)
    )
    return [{"from": first, "to": first + length, "shard": "a"} for first, length in entries]


@settings(max_examples=300)
@given(ranges_maybe_overlapping())
def test_the_overlap_check_names_exactly_the_overlapping_ranges(
    ranges: list[dict[str, Any]],
) -> None:
    overlapping = {
        i
        for i, one in enumerate(ranges)
        for j, other in enumerate(ranges)
        if i != j and one["from"] <= other["to"] and other["from"] <= one["to"]
    }
    doc = {"version": 1, "shards": {"a": {"url": "valkey://h"}}, "ranges": ranges}
    try:
        validate_document(doc, PATH)
    except ShardMapError as exc:
        named = {
            int(index)
            for problem in exc.problems
            for index in re.findall(r"ranges\[(\d+)\]", problem)
        }
        assert all(" overlaps " in problem for problem in exc.problems)
        assert named == overlapping
    else:
        assert not overlapping


def test_shard_map_imports_neither_reconciler_nor_connectors() -> None:
    code = (
        "import sys, shard_map\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('reconciler', 'connectors'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
