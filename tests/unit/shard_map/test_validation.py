"""The rules of the rest of the file (shards, version, default, top level), YAML quirks,
and `ShardMapError` itself."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from shard_map import ShardMapError, parse_shard_map, validate_document
from tests.unit.shard_map.maps import PATH, example, only_problem, problems

# How a problem about a top level that is not a mapping begins.
TOP_LEVEL = "the top level must be a mapping with keys version, shards, ranges, moving, default,"


# --- shards ---------------------------------------------------------------------


def test_shards_must_not_be_empty() -> None:
    doc = example()
    doc["shards"] = {}
    doc["ranges"] = []
    doc["moving"] = []
    doc["default"] = None
    found = problems(doc)
    assert "shards is empty: at least one shard is required" in found


@pytest.mark.parametrize("name", ["a b", "", "shard/1", "ü", "a:b"])
def test_shard_names_are_label_safe(name: str) -> None:
    doc = example()
    doc["shards"][name] = {"url": "valkey://h:3"}
    assert only_problem(doc).startswith(f"shards: name {name!r} must match [A-Za-z0-9_.-]+")


def test_shard_names_may_use_dots_dashes_underscores() -> None:
    doc = example()
    doc["shards"]["eu-west_1.shard-07"] = {"url": "valkey://h:3"}
    validate_document(doc, PATH)


@pytest.mark.parametrize(
    "url",
    [
        "valkey://127.0.0.1:6379/0",
        "valkeys://cache.example.com:6380",
        "redis://h",
        "rediss://user:pw@h:6379/15",
        "REDIS://h/",
        "valkey://[::1]:6379/0",
    ],
)
def test_accepted_urls(url: str) -> None:
    doc = example()
    doc["shards"]["a"]["url"] = url
    validate_document(doc, PATH)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", "must be a URL with one of the schemes valkey://, valkeys://, redis://"),
        ("127.0.0.1:6379", "must be a URL with one of the schemes"),
        ("unix:///tmp/valkey.sock", "must be a URL with one of the schemes"),
        ("valkey://", "has no host"),
        ("valkey://h:port/0", "is not a valid URL"),
        ("valkey://h:6379/cache", "has path /cache: only a database number"),
        ("", "must be a URL with one of the schemes"),
    ],
)
def test_rejected_urls(url: str, says: str) -> None:
    doc = example()
    doc["shards"]["a"]["url"] = url
    problem = only_problem(doc)
    assert problem.startswith("shards.a.url ")
    assert says in problem


def test_url_problems_do_not_show_the_password() -> None:
    doc = example()
    doc["shards"]["a"]["url"] = "http://admin:hunter2@h:6379/0"
    problem = only_problem(doc)
    assert "hunter2" not in problem
    assert "admin:***@h:6379" in problem


def test_shard_entry_must_be_a_mapping_with_url() -> None:
    doc = example()
    doc["shards"]["a"] = "valkey://h:1"
    doc["shards"]["b"] = {"url": "valkey://h:2", "password": "x"}
    found = problems(doc)
    assert found == (
        "shards.a must be a mapping, got valkey://h:1",
        "shards.b: unknown key 'password'",
    )


# --- version, default, top level --------------------------------------------------


@pytest.mark.parametrize(
    ("version", "says"),
    [
        (-1, "version must be 0 or more, got -1"),
        ("7", 'version must be an integer, got "7"'),
        (True, "version must be an integer, got true (booleans are not integers)"),
        (7.0, "version must be an integer, got 7.0"),
    ],
)
def test_bad_versions(version: object, says: str) -> None:
    doc = example()
    doc["version"] = version
    assert only_problem(doc) == says


def test_version_zero_is_fine() -> None:
    doc = example()
    doc["version"] = 0
    validate_document(doc, PATH)


def test_missing_version_and_shards() -> None:
    assert problems({"default": "a"}) == ("version is required", "shards is required")


def test_default_must_name_a_shard() -> None:
    doc = example()
    doc["default"] = "bb"
    assert only_problem(doc) == "default: unknown shard 'bb' (did you mean 'b'?)"


def test_default_must_be_a_string() -> None:
    doc = example()
    doc["default"] = 3
    assert only_problem(doc) == "default must be a string, got 3 (quote it)"


def test_no_ranges_and_no_default_would_dead_letter_everything() -> None:
    doc = example()
    doc["ranges"] = []
    doc["moving"] = []
    assert only_problem(doc) == (
        "ranges is empty and default is null: every neighbourhood id would be dead-lettered"
    )
    doc["default"] = "a"
    validate_document(doc, PATH)


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    doc = example()
    doc["defualt"] = "a"
    assert only_problem(doc) == (
        "unknown top-level key 'defualt' (did you mean 'default'?); "
        "allowed: version, shards, ranges, moving, default"
    )


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        (
            "ranges",
            "form",
            "ranges[0] {from: 1, to: 500, shard: a, form: 3}: "
            "unknown key 'form' (did you mean 'from'?)",
        ),
        (
            "moving",
            "targets",
            "moving[0] {from: 400, to: 450, source: a, target: b, targets: 3}: "
            "unknown key 'targets' (did you mean 'target'?)",
        ),
    ],
)
def test_unknown_entry_keys(section: str, key: str, says: str) -> None:
    doc = example()
    doc[section][0][key] = 3
    assert only_problem(doc) == says


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (None, "the file is empty"),
        ([1, 2], f"{TOP_LEVEL} got list [1, 2]"),
        ("version: 7", f'{TOP_LEVEL} got str "version: 7"'),
    ],
)
def test_top_level_must_be_a_mapping(data: object, says: str) -> None:
    assert only_problem(data) == says


# --- YAML-specific shapes -------------------------------------------------------


def test_unquoted_yaml_booleans_are_not_shard_names() -> None:
    text = """
version: 1
shards:
  no: {url: "valkey://h:1"}
ranges:
  - {from: 1, to: 2, shard: no}
"""
    with pytest.raises(ShardMapError) as info:
        parse_shard_map(text, PATH)
    hint = "(YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
    assert info.value.problems == (
        f"shards: shard name false must be a string {hint}",
        f"ranges[0] {{from: 1, to: 2, shard: false}}: shard must be a string, got false {hint}",
    )


def test_numeric_shard_names_must_be_quoted() -> None:
    text = 'version: 1\nshards:\n  1: {url: "valkey://h:1"}\ndefault: "1"\n'
    with pytest.raises(ShardMapError) as info:
        parse_shard_map(text, PATH)
    assert info.value.problems[0] == "shards: shard name 1 must be a string (quote it)"
    parse_shard_map(text.replace("  1:", '  "1":'), PATH)


# --- all problems at once, and the error itself -------------------------------------


def test_all_problems_are_reported_together() -> None:
    doc: dict[str, Any] = example()
    doc["version"] = -3
    doc["shards"]["a"]["url"] = "http://h"
    doc["ranges"].append({"from": 900, "to": 1100, "shard": "c"})
    doc["moving"][0]["target"] = "a"
    doc["default"] = "c"
    found = problems(doc)
    assert len(found) == 6, found
    assert found[0] == "version must be 0 or more, got -3"
    assert found[1].startswith("shards.a.url http://h must be a URL")
    assert found[2] == "ranges[2] {from: 900, to: 1100, shard: c}: unknown shard 'c' (shards: a, b)"
    assert found[3] == (
        "ranges[2] {from: 900, to: 1100, shard: c} overlaps "
        "ranges[1] {from: 501, to: 1000, shard: b}"
    )
    assert found[4].endswith("source and target are the same shard")
    assert found[5] == "default: unknown shard 'c' (shards: a, b)"


def test_all_shape_problems_are_reported_together() -> None:
    doc = example()
    doc["version"] = "7"
    doc["ranges"][0]["from"] = "1"
    doc["ranges"][1]["shard"] = 2
    doc["extra"] = True
    assert len(problems(doc)) == 4


def test_the_error_message_lists_the_file_and_every_problem() -> None:
    error = ShardMapError("/etc/shard-map/shard_map.yaml", ["first", "second"])
    assert str(error) == (
        "invalid shard map /etc/shard-map/shard_map.yaml (2 problems):\n  - first\n  - second"
    )
    assert str(ShardMapError("f.yaml", ["only"])) == "invalid shard map f.yaml: only"
    assert isinstance(error, ValueError)


def test_the_error_survives_pickling() -> None:
    error = ShardMapError("f.yaml", ["a", "b"])
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.problems, str(copy)) == (error.path, error.problems, str(error))
