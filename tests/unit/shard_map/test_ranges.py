"""The rules of `ranges` and `moving`, and that each problem names its entries."""

from __future__ import annotations

import pytest

from shard_map import validate_document
from tests.unit.shard_map.maps import PATH, example, only_problem, problems


def test_the_spec_example_is_valid() -> None:
    model = validate_document(example(), PATH)
    assert model.version == 7
    assert model.ranges[0].from_ == 1
    assert model.moving[0].target == "b"
    assert model.default is None


def test_optional_sections_default_to_empty() -> None:
    model = validate_document(
        {"version": 0, "shards": {"a": {"url": "redis://h"}}, "default": "a"}, PATH
    )
    assert model.ranges == [] and model.moving == [] and model.default == "a"


# --- ranges ---------------------------------------------------------------------


def test_overlapping_ranges_name_both_entries() -> None:
    doc = example()
    doc["moving"] = []
    doc["ranges"][1] = {"from": 450, "to": 600, "shard": "b"}
    assert only_problem(doc) == (
        "ranges[1] {from: 450, to: 600, shard: b} overlaps ranges[0] {from: 1, to: 500, shard: a}"
    )


def test_an_overlap_is_reported_later_entry_first_whatever_the_file_order() -> None:
    doc = example()
    doc["moving"] = []
    doc["ranges"] = [{"from": 450, "to": 600, "shard": "b"}, {"from": 1, "to": 500, "shard": "a"}]
    assert only_problem(doc) == (
        "ranges[1] {from: 1, to: 500, shard: a} overlaps ranges[0] {from: 450, to: 600, shard: b}"
    )


def test_ranges_sharing_one_id_overlap() -> None:
    doc = example()
    doc["ranges"][1]["from"] = 500
    assert "ranges[1] {from: 500, to: 1000, shard: b} overlaps ranges[0]" in only_problem(doc)


def test_every_overlapping_range_is_named() -> None:
    doc = example()
    doc["moving"] = []
    doc["ranges"] = [
        {"from": 1, "to": 100, "shard": "a"},
        {"from": 10, "to": 20, "shard": "a"},
        {"from": 50, "to": 60, "shard": "b"},
        {"from": 200, "to": 300, "shard": "b"},
    ]
    found = problems(doc)
    assert len(found) == 2
    assert found[0].startswith("ranges[1] {from: 10, to: 20, shard: a} overlaps ranges[0]")
    assert found[1].startswith("ranges[2] {from: 50, to: 60, shard: b} overlaps ranges[0]")


def test_adjacent_ranges_and_single_id_ranges_are_fine() -> None:
    doc = example()
    doc["moving"] = []
    doc["ranges"] = [
        {"from": 5, "to": 5, "shard": "a"},
        {"from": 6, "to": 9, "shard": "b"},
        {"from": -3, "to": 4, "shard": "b"},
    ]
    validate_document(doc, PATH)


def test_range_from_greater_than_to() -> None:
    doc = example()
    doc["ranges"].append({"from": 2000, "to": 1500, "shard": "b"})
    assert only_problem(doc) == (
        "ranges[2] {from: 2000, to: 1500, shard: b}: from is greater than to"
    )


def test_range_with_unknown_shard_lists_the_shards() -> None:
    doc = example()
    doc["ranges"].append({"from": 2000, "to": 3000, "shard": "zz"})
    assert only_problem(doc) == (
        "ranges[2] {from: 2000, to: 3000, shard: zz}: unknown shard 'zz' (shards: a, b)"
    )


def test_unknown_shard_suggests_a_close_name() -> None:
    doc = example()
    doc["shards"] = {"shard-a": {"url": "valkey://h:1"}, "shard-b": {"url": "valkey://h:2"}}
    doc["moving"] = []
    doc["ranges"] = [{"from": 1, "to": 2, "shard": "shard_a"}]
    assert "unknown shard 'shard_a' (did you mean 'shard-a'?)" in only_problem(doc)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("1", 'from must be an integer, got "1"'),
        (1.0, "from must be an integer, got 1.0"),
        (True, "from must be an integer, got true (booleans are not integers)"),
        (None, "from must be an integer, got null"),
    ],
)
def test_range_ids_must_be_integers(value: object, says: str) -> None:
    doc = example()
    doc["ranges"][0]["from"] = value
    problem = only_problem(doc)
    assert problem.startswith("ranges[0] {from: ")
    assert problem.endswith(says)


def test_moving_ids_must_be_integers() -> None:
    doc = example()
    doc["moving"][0]["to"] = False
    assert only_problem(doc) == (
        "moving[0] {from: 400, to: false, source: a, target: b}: to must be an integer, "
        "got false (booleans are not integers)"
    )


def test_missing_range_field() -> None:
    doc = example()
    del doc["ranges"][0]["to"]
    assert only_problem(doc) == "ranges[0] {from: 1, shard: a}: to is required"


def test_range_entry_that_is_not_a_mapping() -> None:
    doc = example()
    doc["ranges"].append(5)
    assert only_problem(doc) == "ranges[2] must be a mapping, got 5"


def test_ranges_that_is_not_a_list() -> None:
    doc = example()
    doc["ranges"] = {"from": 1, "to": 2, "shard": "a"}
    assert only_problem(doc).startswith("ranges must be a list, got {from: 1")


# --- moving -------------------------------------------------------------------


def test_moving_source_equal_to_target() -> None:
    doc = example()
    doc["moving"][0]["target"] = "a"
    assert only_problem(doc) == (
        "moving[0] {from: 400, to: 450, source: a, target: a}: source and target are the same shard"
    )


def test_moving_from_greater_than_to() -> None:
    doc = example()
    doc["moving"][0].update({"from": 450, "to": 400})
    assert only_problem(doc) == (
        "moving[0] {from: 450, to: 400, source: a, target: b}: from is greater than to"
    )


@pytest.mark.parametrize("role", ["source", "target"])
def test_moving_with_unknown_shard(role: str) -> None:
    doc = example()
    doc["shards"]["c"] = {"url": "valkey://h:3"}
    doc["moving"][0][role] = "zz"
    found = problems(doc)
    assert "moving[0] {from: 400, to: 450, source: " in found[0]
    assert found[0].endswith(f": {role}: unknown shard 'zz' (shards: a, b, c)")


def test_overlapping_moving_entries() -> None:
    doc = example()
    doc["moving"].append({"from": 450, "to": 460, "source": "a", "target": "b"})
    assert only_problem(doc) == (
        "moving[1] {from: 450, to: 460, source: a, target: b} overlaps "
        "moving[0] {from: 400, to: 450, source: a, target: b}"
    )


def test_moving_may_already_point_at_the_target() -> None:
    doc = example()
    doc["ranges"] = [
        {"from": 1, "to": 399, "shard": "a"},
        {"from": 400, "to": 450, "shard": "b"},  # already switched
        {"from": 451, "to": 1000, "shard": "a"},
    ]
    validate_document(doc, PATH)


def test_moving_across_ranges_of_its_source_and_target() -> None:
    doc = example()
    doc["moving"] = [{"from": 480, "to": 520, "source": "b", "target": "a"}]
    validate_document(doc, PATH)


def test_moving_over_a_range_of_a_third_shard_names_the_range() -> None:
    doc = example()
    doc["shards"]["c"] = {"url": "valkey://h:3"}
    doc["moving"] = [{"from": 400, "to": 600, "source": "a", "target": "c"}]
    assert only_problem(doc) == (
        "moving[0] {from: 400, to: 600, source: a, target: c}: ids 501..600 belong to shard b "
        "by ranges[1] {from: 501, to: 1000, shard: b}, which is neither its source nor its target"
    )


def test_moving_outside_every_range_without_default() -> None:
    doc = example()
    doc["moving"] = [{"from": 990, "to": 1010, "source": "b", "target": "a"}]
    assert only_problem(doc) == (
        "moving[0] {from: 990, to: 1010, source: b, target: a}: ids 1001..1010 are outside "
        "every range and default is null"
    )


def test_moving_outside_every_range_falls_to_the_default() -> None:
    doc = example()
    doc["shards"]["c"] = {"url": "valkey://h:3"}
    doc["moving"] = [{"from": 1001, "to": 1001, "source": "b", "target": "a"}]
    doc["default"] = "a"
    validate_document(doc, PATH)
    doc["default"] = "c"
    assert only_problem(doc) == (
        "moving[0] {from: 1001, to: 1001, source: b, target: a}: id 1001 falls to the default "
        "shard c, which is neither its source nor its target"
    )


def test_moving_gap_with_a_third_default_is_named() -> None:
    doc = example()
    doc["shards"]["c"] = {"url": "valkey://h:3"}
    doc["moving"] = [{"from": 1001, "to": 1005, "source": "b", "target": "a"}]
    doc["default"] = "c"
    assert only_problem(doc) == (
        "moving[0] {from: 1001, to: 1005, source: b, target: a}: ids 1001..1005 fall to the "
        "default shard c, which is neither its source nor its target"
    )
