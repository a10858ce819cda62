"""Leaf partitions (``tables.<table>.partitions``): a publication that publishes per leaf
names the leaf in ``source.table``, the topic and the key schema; the planner plans it
by its parent's config, and counts it under the parent's name.

The events are recorded ones with the table renamed to a leaf of ``public.posts``, as
the real connector names them for a leaf (``<prefix>.public.<leaf>``, the key schema
``<prefix>.public.<leaf>.Key``; tests/e2e/test_partitions.py runs the real thing).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.debezium import Decoder
from reconciler.errors import PoisonRecordError
from reconciler.pipeline.batch import DeadLetter, plan_record
from reconciler.pipeline.partitions import Partitions, is_partition
from reconciler.pipeline.planner import DELETE, TRUNCATE, Planner
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import FILES, Recorded, record
from tests.unit.reconciler.planning import actions, plan, planner

LEAF = "posts_2026_12"
both_files = pytest.mark.parametrize("file", FILES)


def as_leaf(rec: Recorded, leaf: str = LEAF) -> Recorded:
    """`rec` as Debezium emits it for the leaf `leaf` of its table (public.posts…)."""
    prefix, schema, _ = rec.topic.split(".")
    topic = f"{prefix}.{schema}.{leaf}"
    out = rec.with_raw(topic=topic)
    if rec.value is not None:
        out = out.with_payload(lambda p: p["source"].update(table=leaf))
    if rec.key is not None and rec.embeds_schema:
        key = json.loads(rec.key)
        key["schema"]["name"] = f"{topic}.Key"
        out = out.with_raw(key=json.dumps(key))
    return out


def partitioned(*patterns: str, table: str = "public.posts", **options: Any) -> Planner:
    def change(tables: dict[str, Any]) -> None:
        tables[table]["partitions"] = list(patterns)
    return planner(table_change=change, **options)


PARTITIONED = partitioned(r"posts_\d{4}_\d{2}")


@both_files
@pytest.mark.parametrize("line", [r.POSTS_INSERT, r.POSTS_UPDATE_TITLE, r.POSTS_DELETE])
def test_a_leafs_change_is_planned_by_its_parents_config(file: str, line: int) -> None:
    rec = record(file, line)
    leaf = as_leaf(rec)
    assert leaf.decode().table == f"public.{LEAF}"
    result = plan(leaf, PARTITIONED)
    assert actions(result) == actions(plan(rec)) and actions(result)
    assert result.unresolved == plan(rec).unresolved
    # Counted (and printed by `reconciler plan`) under the configured table.
    assert result.event.table == "public.posts"
    assert result.as_json()["table"] == "public.posts"


@both_files
def test_without_partitions_a_leaf_is_an_unknown_table(file: str) -> None:
    """What happened before `partitions`: skipped, silently, under unknown_tables: skip."""
    leaf = as_leaf(record(file, r.POSTS_INSERT))
    assert plan(leaf).skip == "unknown_table" and not plan(leaf).actions
    with pytest.raises(PoisonRecordError) as caught:
        plan(leaf, planner(unknown_tables_error=True))
    assert caught.value.reason == "unknown_table"


@both_files
def test_a_leaf_the_patterns_do_not_name_stays_unknown(file: str) -> None:
    other = as_leaf(record(file, r.POSTS_INSERT), "posts_archive")
    assert plan(other, PARTITIONED).skip == "unknown_table"
    strict = partitioned(r"posts_\d{4}_\d{2}", unknown_tables_error=True)
    with pytest.raises(PoisonRecordError):
        plan(other, strict)
    assert actions(plan(as_leaf(record(file, r.POSTS_INSERT)), strict))


@both_files
def test_a_leafs_tombstone_is_the_parents_key_only_delete(file: str) -> None:
    """schemas.enable=true: the key schema names the leaf; false: only the topic does."""
    result = plan(as_leaf(record(file, r.POSTS_DELETE_TOMBSTONE)), PARTITIONED)
    assert result.event.table == "public.posts"
    assert actions(result) == [("a", "post:19", DELETE), ("b", "post:19", DELETE)]
    assert result.unresolved == ("feed:{neighborhood_id}",)


@both_files
def test_a_dead_lettered_leaf_record_gets_its_parents_key_only_delete(file: str) -> None:
    rec = as_leaf(record(file, r.POSTS_UPDATE_TITLE)).with_payload(
        lambda p: p["after"].update(system_version="not a number"))
    dead = plan_record(Decoder(), PARTITIONED, 1 << 20, rec.topic, 0, 0, rec.key_bytes(),
                       rec.value_bytes())
    assert type(dead) is DeadLetter and dead.reason == "invalid_version"
    assert dead.plan is not None and dead.plan.event.table == "public.posts"
    assert actions(dead.plan) == [("a", "post:19", DELETE), ("b", "post:19", DELETE)]


@both_files
def test_a_leafs_truncate_clears_every_key_of_the_parents_templates(file: str) -> None:
    """A truncate names one leaf; the keys do not say which leaf their row was in."""
    comments = partitioned(r"comments_\d{4}_\d{2}", table="public.comments")
    result = plan(as_leaf(record(file, r.COMMENTS_TRUNCATE), "comments_2026_12"), comments)
    assert result.event.table == "public.comments"
    assert actions(result) == sorted(
        (shard, pattern, TRUNCATE) for shard in ("a", "b")
        for pattern in ("comment:*", "post_comments:*"))


def test_a_leaf_configured_as_a_table_of_its_own_keeps_its_own_config() -> None:
    def change(tables: dict[str, Any]) -> None:
        tables["public.posts"]["partitions"] = [r"posts_\d{4}_\d{2}"]
        tables[f"public.{LEAF}"] = {**tables["public.posts"], "partitions": [],
                                    "keys": [{"template": "leaf:{id}"}]}

    result = plan(as_leaf(record(r.SCHEMAS_TRUE, r.POSTS_INSERT)), planner(table_change=change))
    assert result.event.table == f"public.{LEAF}"
    assert [action.key for action in result.actions] == ["leaf:19"]


def test_patterns_match_whole_names_in_the_parents_schema_or_whole_schema_tables() -> None:
    patterns = [r"events_\d{4}_\d{2}", "events_default", r"archive\.events_old"]
    assert is_partition("public.events", patterns, "public.events_2026_12")
    assert is_partition("public.events", patterns, "public.events_default")
    assert is_partition("public.events", patterns, "archive.events_old")
    assert not is_partition("public.events", patterns, "public.events_2026_12_x")
    assert not is_partition("public.events", patterns, "other.events_2026_12")
    assert not is_partition("public.events", patterns, "public.events")
    assert not is_partition("public.events", [], "public.events_2026_12")


def test_the_first_configured_parent_wins_and_answers_are_remembered() -> None:
    index = Partitions({"public.a": (["x_.*"], "a"), "public.b": (["x_1"], "b"),
                        "public.c": ([], "c")})
    assert index.parent("public.x_1") == "a"
    assert index.parent("public.y") is None
    assert index._memo == {"public.x_1": "a", "public.y": None}
    assert not Partitions({"public.c": ([], "c")})
