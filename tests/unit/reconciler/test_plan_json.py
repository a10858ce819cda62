"""`Plan.as_json()` and `plan_record`: the machine-readable contract of SPEC §5."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.debezium import Decoder
from reconciler.pipeline.batch import DeadLetter, plan_record
from reconciler.pipeline.planner import Plan
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import FILES, Recorded, record
from tests.unit.reconciler.planning import LOCAL_PLANNER, canonical, plan, planner

both_files = pytest.mark.parametrize("file", FILES)


def as_nd(rec: Recorded, table: str) -> Recorded:
    return rec.with_raw(topic=f"nd.public.{table}")


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal objects, with the order of `actions` free."""
    assert set(got) == set(expected)
    for name, value in expected.items():
        if name == "actions":
            assert canonical(got[name]) == canonical(value)
        else:
            assert got[name] == value, name


@both_files
def test_update_matches_the_spec_example(file: str) -> None:
    rec = as_nd(record(file, r.POSTS_UPDATE_TITLE), "posts").with_payload(
        lambda p: p["after"].update(id=1, neighborhood_id=1, system_version=4))
    assert_same(plan(rec).as_json(), {
        "topic": "nd.public.posts", "table": "public.posts", "op": "u",
        "actions": [{"shard": "a", "key": "post:1", "kind": "versioned", "version": 4},
                    {"shard": "a", "key": "feed:1", "kind": "unversioned"}],
        "unresolved": []})


@both_files
def test_delete_matches_the_spec_example(file: str) -> None:
    rec = as_nd(record(file, r.POSTS_DELETE), "posts").with_payload(
        lambda p: p["before"].__setitem__("id", 3)).with_key(lambda k: k.__setitem__("id", 3))
    assert_same(plan(rec).as_json(), {
        "topic": "nd.public.posts", "table": "public.posts", "op": "d",
        "actions": [{"shard": "a", "key": "post:3", "kind": "delete"},
                    {"shard": "b", "key": "post:3", "kind": "delete"}],
        "unresolved": ["feed:{neighborhood_id}"]})


@both_files
def test_truncate_matches_the_spec_example(file: str) -> None:
    rec = as_nd(record(file, r.COMMENTS_TRUNCATE), "comments")
    assert_same(plan(rec).as_json(), {
        "topic": "nd.public.comments", "table": "public.comments", "op": "t",
        "actions": [{"shard": "a", "pattern": "comment:*", "kind": "truncate"},
                    {"shard": "b", "pattern": "comment:*", "kind": "truncate"},
                    {"shard": "a", "pattern": "post_comments:*", "kind": "truncate"},
                    {"shard": "b", "pattern": "post_comments:*", "kind": "truncate"}],
        "unresolved": []})


@both_files
def test_heartbeat_matches_the_spec_example(file: str) -> None:
    rec = record(file, r.HEARTBEATS[0]).with_raw(topic="__debezium-heartbeat.nd")
    assert plan(rec).as_json() == {"topic": "__debezium-heartbeat.nd", "skip": "heartbeat"}


@both_files
def test_tombstone_prints_its_key_only_delete(file: str) -> None:
    rec = as_nd(record(file, r.POSTS_DELETE_TOMBSTONE), "posts")
    assert_same(plan(rec).as_json(), {
        "topic": "nd.public.posts", "table": "public.posts", "op": "tombstone",
        "actions": [{"shard": "a", "key": "post:19", "kind": "delete"},
                    {"shard": "b", "key": "post:19", "kind": "delete"}],
        "unresolved": ["feed:{neighborhood_id}"]})


@both_files
def test_tombstone_of_an_unconfigured_topic_is_topic_and_reason(file: str) -> None:
    rec = record(file, r.POSTS_DELETE_TOMBSTONE)
    rec = rec.with_raw(topic="nd.public.audit", key=(rec.key or "").replace("posts", "audit"))
    assert plan(rec).as_json() == {"topic": "nd.public.audit", "skip": "tombstone"}


@pytest.mark.parametrize(("line", "reason"), [(r.MESSAGE, "message"), (4, "transaction")])
@both_files
def test_skipped_record_without_a_table_is_topic_and_reason(file: str, line: int,
                                                            reason: str) -> None:
    rec = record(file, line)
    assert plan(rec).as_json() == {"topic": rec.topic, "skip": reason}


def test_unknown_table_skip_names_the_table_and_op() -> None:
    rec = record(r.SCHEMAS_TRUE, r.POSTS_INSERT).with_payload(
        lambda p: p["source"].__setitem__("table", "audit"))
    assert plan(rec).as_json() == {"topic": rec.topic, "table": "public.audit", "op": "c",
                                   "skip": "unknown_table"}


def test_snapshot_read_says_it_does_not_fence() -> None:
    out = plan(record(r.SCHEMAS_FALSE, r.POSTS_SNAPSHOT)).as_json()
    assert {"shard": "a", "key": "post:18", "kind": "versioned", "version": 1,
            "fence": False} in out["actions"]


def test_versioned_action_of_a_change_has_no_fence_field() -> None:
    out = plan(record(r.SCHEMAS_FALSE, r.POSTS_INSERT)).as_json()
    assert all("fence" not in action for action in out["actions"])


@pytest.mark.parametrize("line", (*r.CHANGES, r.COMMENTS_TRUNCATE))
@both_files
def test_every_plan_is_json_serialisable(file: str, line: int) -> None:
    out = plan(record(file, line)).as_json()
    assert json.loads(json.dumps(out)) == out


def test_action_fields_are_exactly_the_contract() -> None:
    for line in (*r.CHANGES, r.COMMENTS_TRUNCATE):
        for action in plan(record(r.SCHEMAS_TRUE, line)).as_json()["actions"]:
            allowed = {"versioned": {"shard", "key", "kind", "version", "fence"},
                       "delete": {"shard", "key", "kind"},
                       "unversioned": {"shard", "key", "kind"},
                       "truncate": {"shard", "pattern", "kind"}}[action["kind"]]
            assert set(action) <= allowed and {"shard", "kind"} <= set(action)


# --------------------------------------------------------------------------- plan_record


def run(rec: Recorded, max_bytes: int = 8 * 1024 * 1024, **planner_options: Any) -> object:
    using = planner(**planner_options) if planner_options else LOCAL_PLANNER
    return plan_record(Decoder(), using, max_bytes, rec.topic, rec.partition, rec.offset,
                       rec.key_bytes(), rec.value_bytes())


def test_plan_record_plans_a_recorded_event() -> None:
    result = run(record(r.SCHEMAS_TRUE, r.POSTS_INSERT))
    assert isinstance(result, Plan)
    assert result.event.offset == record(r.SCHEMAS_TRUE, r.POSTS_INSERT).offset


def test_plan_record_dead_letters_an_undecodable_record() -> None:
    rec = record(r.SCHEMAS_TRUE, r.POSTS_INSERT)
    result = run(rec.with_raw(value=rec.text()[:50]))
    assert isinstance(result, DeadLetter)
    assert result.reason == "invalid_json"
    assert "not valid JSON" in result.message


def test_plan_record_dead_letters_an_unroutable_event() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT).with_payload(
        lambda p: p["after"].__setitem__("neighborhood_id", 5000))
    result = run(rec)
    assert isinstance(result, DeadLetter) and result.reason == "unroutable"


KEY_ONLY_POST_19 = [{"shard": "a", "key": "post:19", "kind": "delete"},
                    {"shard": "b", "key": "post:19", "kind": "delete"}]


@pytest.mark.parametrize(("name", "change"), [
    ("invalid_json", lambda rec: rec.with_raw(value=rec.text()[:50])),
    ("invalid_version", lambda rec: rec.with_payload(
        lambda p: p["after"].__setitem__("system_version", "seven"))),
    ("unroutable", lambda rec: rec.with_payload(
        lambda p: p["after"].__setitem__("neighborhood_id", 5000))),
    ("invalid_envelope", lambda rec: rec.with_payload(lambda p: p.__setitem__("after", None))),
])
@both_files
def test_a_dead_letter_whose_key_decodes_still_deletes_its_keys(file: str, name: str,
                                                                change: Any) -> None:
    """A dead letter never swallows an invalidation: the key-only delete runs for it."""
    result = run(change(record(file, r.POSTS_INSERT)))
    assert isinstance(result, DeadLetter) and result.reason == name
    assert result.plan is not None
    out = result.as_json("nd.public.posts")
    assert (out["reason"], out["table"], out["unresolved"]) == (
        name, "public.posts", ["feed:{neighborhood_id}"])
    assert canonical(out["actions"]) == canonical(KEY_ONLY_POST_19)
    assert list(result.plan.causes()) == [("feed:{neighborhood_id}", "key_only")]


def test_an_oversized_record_with_a_small_key_still_deletes_its_keys() -> None:
    rec = record(r.SCHEMAS_TRUE, r.POSTS_INSERT)
    result = run(rec, max_bytes=100)
    assert isinstance(result, DeadLetter) and result.reason == "oversized"
    assert result.plan is not None
    assert canonical([a.as_json() for a in result.plan.actions]) == canonical(KEY_ONLY_POST_19)


def test_a_dead_letter_without_a_usable_key_or_table_deletes_nothing() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    broken = rec.with_raw(value=rec.text()[:50])
    assert run(broken.with_raw(key="not json")).plan is None  # type: ignore[attr-defined]
    assert run(broken.with_raw(key=None)).plan is None  # type: ignore[attr-defined]
    unknown = broken.with_raw(topic="capbare.public.audit")  # a table not configured
    assert run(unknown).plan is None  # type: ignore[attr-defined]
    table = rec.with_payload(lambda p: p["source"].__setitem__("table", "audit"))
    dead = run(table, unknown_tables_error=True)
    assert isinstance(dead, DeadLetter) and dead.reason == "unknown_table"
    assert dead.plan is None
    assert set(dead.as_json(rec.topic)) == {"topic", "dead_letter", "reason"}


def test_plan_record_dead_letters_an_unknown_table_when_configured() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT).with_payload(
        lambda p: p["source"].__setitem__("table", "audit"))
    result = run(rec, unknown_tables_error=True)
    assert isinstance(result, DeadLetter) and result.reason == "unknown_table"


def test_plan_record_dead_letters_an_oversized_record_before_decoding() -> None:
    rec = record(r.SCHEMAS_TRUE, r.POSTS_INSERT)  # a 20,000-character body
    size = len(rec.text().encode()) + len(rec.key or "")
    result = run(rec, max_bytes=size - 1)
    assert isinstance(result, DeadLetter)
    assert result.reason == "oversized"
    assert str(size) in result.message
    assert isinstance(run(rec, max_bytes=size), Plan)
