"""`ShardMap.resolve` at every kind of boundary, and the rest of its interface."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from shard_map import (
    Move,
    Range,
    ShardEndpoint,
    ShardMap,
    ShardResolutionError,
    parse_shard_map,
    validate_document,
)
from tests.unit.shard_map.maps import EXAMPLE_YAML, PATH, example


def build(doc: dict[str, Any]) -> ShardMap:
    return ShardMap.from_model(validate_document(doc, PATH))


@pytest.fixture
def spec_map() -> ShardMap:
    return parse_shard_map(EXAMPLE_YAML, PATH)


@pytest.mark.parametrize(
    ("neighbourhood_id", "shards"),
    [
        (1, ("a",)),  # first id of ranges[0]
        (399, ("a",)),  # just before the move
        (400, ("a", "b")),  # first id of the move: source, then target
        (425, ("a", "b")),
        (450, ("a", "b")),  # last id of the move
        (451, ("a",)),  # just after the move
        (500, ("a",)),  # last id of ranges[0]
        (501, ("b",)),  # first id of ranges[1]
        (1000, ("b",)),  # last id of ranges[1]
    ],
)
def test_spec_example(spec_map: ShardMap, neighbourhood_id: int, shards: tuple[str, ...]) -> None:
    assert spec_map.resolve(neighbourhood_id) == shards


@pytest.mark.parametrize("neighbourhood_id", [0, 1001, -1, 10**30, -(10**30)])
def test_outside_every_range_without_default_raises(
    spec_map: ShardMap, neighbourhood_id: int
) -> None:
    with pytest.raises(ShardResolutionError) as info:
        spec_map.resolve(neighbourhood_id)
    error = info.value
    assert error.neighbourhood_id == neighbourhood_id
    assert error.map_version == 7
    assert f"neighbourhood id {neighbourhood_id} " in str(error)
    assert "shard map version 7" in str(error)
    assert isinstance(error, LookupError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.neighbourhood_id, copy.map_version, str(copy)) == (
        neighbourhood_id,
        7,
        str(error),
    )


def test_gaps_between_ranges_take_the_default() -> None:
    doc = example()
    doc["shards"]["c"] = {"url": "valkey://h:3"}
    doc["ranges"] = [{"from": 1, "to": 10, "shard": "a"}, {"from": 20, "to": 30, "shard": "b"}]
    doc["moving"] = []
    doc["default"] = "c"
    shard_map = build(doc)
    expected = {0: "c", 1: "a", 10: "a", 11: "c", 19: "c", 20: "b", 30: "b", 31: "c"}
    for neighbourhood_id, shard in expected.items():
        assert shard_map.resolve(neighbourhood_id) == (shard,), neighbourhood_id
    assert shard_map.resolve(-5) == ("c",)


def test_gaps_between_ranges_raise_without_default() -> None:
    doc = example()
    doc["ranges"] = [{"from": 1, "to": 10, "shard": "a"}, {"from": 20, "to": 30, "shard": "b"}]
    doc["moving"] = []
    shard_map = build(doc)
    for neighbourhood_id in (11, 15, 19):
        with pytest.raises(ShardResolutionError):
            shard_map.resolve(neighbourhood_id)


def test_a_move_whose_range_already_points_at_the_target_keeps_source_first() -> None:
    doc = example()
    doc["ranges"] = [{"from": 1, "to": 1000, "shard": "b"}]
    doc["moving"] = [{"from": 400, "to": 450, "source": "a", "target": "b"}]
    shard_map = build(doc)
    assert shard_map.resolve(399) == ("b",)
    assert shard_map.resolve(400) == ("a", "b")
    assert shard_map.resolve(451) == ("b",)


def test_a_move_over_the_default_covers_both_shards() -> None:
    doc = example()
    doc["ranges"] = [{"from": 1, "to": 10, "shard": "a"}]
    doc["moving"] = [{"from": 8, "to": 15, "source": "a", "target": "b"}]
    doc["default"] = "b"
    shard_map = build(doc)
    assert [shard_map.resolve(i) for i in (7, 8, 10, 11, 15, 16)] == [
        ("a",),
        ("a", "b"),
        ("a", "b"),
        ("a", "b"),
        ("a", "b"),
        ("b",),
    ]


def test_answers_are_cached_tuples(spec_map: ShardMap) -> None:
    assert spec_map.resolve(1) is spec_map.resolve(399)
    assert spec_map.resolve(1) is spec_map.resolve(451)  # same shard, another segment
    assert spec_map.resolve(400) is spec_map.resolve(450)
    defaulted = dataclasses.replace(spec_map, default="b")
    assert defaulted.resolve(5000) is defaulted.resolve(-5000) is defaulted.resolve(501)


def test_shard_names_lists_every_shard_sorted() -> None:
    doc = example()
    doc["shards"] = {"z": {"url": "valkey://h:9"}, **doc["shards"], "m": {"url": "redis://h"}}
    shard_map = build(doc)
    assert shard_map.shard_names() == ("a", "b", "m", "z")


def test_url(spec_map: ShardMap) -> None:
    assert spec_map.endpoint("b").url == "valkey://127.0.0.1:6380/0"
    with pytest.raises(KeyError, match="no shard 'c' "):
        spec_map.endpoint("c")


def test_describe_a_moving_id(spec_map: ShardMap) -> None:
    assert spec_map.describe(420) == {
        "neighbourhood_id": 420,
        "map_version": 7,
        "matched": "moving",
        "shards": ["a", "b"],
        "urls": {"a": "valkey://127.0.0.1:6379/0", "b": "valkey://127.0.0.1:6380/0"},
        "range": {"index": 0, "from": 1, "to": 500, "shard": "a"},
        "moving": {"index": 0, "from": 400, "to": 450, "source": "a", "target": "b"},
        "default": None,
    }


def test_describe_a_range_id(spec_map: ShardMap) -> None:
    described = spec_map.describe(501)
    assert described["matched"] == "range"
    assert described["shards"] == ["b"]
    assert described["range"] == {"index": 1, "from": 501, "to": 1000, "shard": "b"}
    assert described["moving"] is None


def test_describe_an_unmapped_id(spec_map: ShardMap) -> None:
    with pytest.raises(ShardResolutionError, match="neighbourhood id 5000 "):
        spec_map.describe(5000)
    defaulted = dataclasses.replace(spec_map, default="b")
    described = defaulted.describe(5000)
    assert (described["matched"], described["shards"]) == ("default", ["b"])


def test_describe_and_repr_hide_passwords() -> None:
    doc = example()
    doc["shards"]["a"]["url"] = "rediss://app:hunter2@cache:6379/0"
    shard_map = build(doc)
    assert shard_map.describe(1)["urls"] == {"a": "rediss://app:***@cache:6379/0"}
    assert "hunter2" not in repr(shard_map)
    assert repr(shard_map) == (
        "ShardMap(version=7, shards=('a', 'b'), ranges=2, moving=1, default=None)"
    )
    assert shard_map.endpoint("a").url == "rediss://app:hunter2@cache:6379/0"


def test_the_map_is_immutable(spec_map: ShardMap) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec_map.version = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec_map.endpoints["c"] = ShardEndpoint.standalone("valkey://h")  # type: ignore[index]


def test_maps_from_the_same_content_are_equal(spec_map: ShardMap) -> None:
    assert parse_shard_map(EXAMPLE_YAML, "elsewhere.yaml") == spec_map
    assert dataclasses.replace(spec_map, version=8) != spec_map


def test_direct_construction() -> None:
    shard_map = ShardMap(
        version=1,
        endpoints={"a": ShardEndpoint.standalone("valkey://h:1"),
                   "b": ShardEndpoint.standalone("valkey://h:2")},
        ranges=(Range(10, 19, "b"), Range(0, 9, "a")),
        moving=(Move(5, 12, "a", "b"),),
    )
    assert [shard_map.resolve(i) for i in (0, 5, 12, 13)] == [
        ("a",),
        ("a", "b"),
        ("a", "b"),
        ("b",),
    ]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"ranges": (Range(0, 9, "a"), Range(9, 12, "a"))}, r"ranges\[1\] overlaps ranges\[0\]"),
        ({"ranges": (Range(9, 0, "a"),)}, r"ranges\[0\]: from 9 is greater than to 0"),
        ({"moving": (Move(0, 9, "a", "b"), Move(5, 6, "a", "b"))}, r"moving\[1\] overlaps"),
        ({"ranges": (Range(0, 9, "x"),)}, r"unknown shards \['x'\]"),
        ({"default": "y"}, r"unknown shards \['y'\]"),
    ],
)
def test_direct_construction_refuses_what_resolve_cannot_handle(
    kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        ShardMap(version=1, endpoints={"a": ShardEndpoint.standalone("valkey://h:1"),
                   "b": ShardEndpoint.standalone("valkey://h:2")}, **kwargs)
