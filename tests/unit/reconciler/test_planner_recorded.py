"""The plan of every recorded event, against SPEC §2, §3 and §5, with the local config
(posts and profiles: DEFAULT identity; comments: FULL) and the local shard map
(a = 1..500, b = 501..1000; every recorded neighbourhood is 7, 8 or 9, on a)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from reconciler.pipeline.planner import DELETE, TRUNCATE, UNVERSIONED, VERSIONED
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import FILES, decode, record
from tests.unit.reconciler.planning import LOCAL_PLANNER, actions, plan, planner

PROFILE_SEEDED = "profile:bee40a0a-ca8c-41ed-83fc-2735e7e03139"
PROFILE_ADA = "profile:712feb77-78e7-4b7a-92b1-ebd7d756e2fa"
PROFILE_MULTI = "profile:c226143b-0fda-4883-a1c0-5f5c7940b2b5"


def v(shard: str, key: str, version: int) -> tuple[Any, ...]:
    return (shard, key, VERSIONED, version)


def u(shard: str, key: str) -> tuple[Any, ...]:
    return (shard, key, UNVERSIONED)


def d(shard: str, key: str) -> tuple[Any, ...]:
    return (shard, key, DELETE)


# line → (actions, unresolved), written from the SPEC and the recorded rows.
EXPECTED: dict[int, tuple[list[tuple[Any, ...]], list[str]]] = {
    r.POSTS_SNAPSHOT: ([v("a", "post:18", 1), u("a", "feed:7")], []),
    r.COMMENTS_SNAPSHOT: ([v("a", "comment:13", 1), u("a", "post_comments:18")], []),
    r.PROFILES_SNAPSHOT: ([v("a", PROFILE_SEEDED, 1)], []),
    r.POSTS_INSERT: ([v("a", "post:19", 1), u("a", "feed:7")], []),
    r.POSTS_UPDATE_TITLE: ([v("a", "post:19", 2), u("a", "feed:7")], []),
    r.POSTS_UPDATE_NEIGHBORHOOD: ([v("a", "post:19", 3), u("a", "feed:8")], []),
    # DEFAULT identity: the id is real, the neighbourhood (0) is not: broadcast.
    r.POSTS_DELETE: ([d("a", "post:19"), d("b", "post:19")], ["feed:{neighborhood_id}"]),
    r.POSTS_INSERT_FOR_PK_CHANGE: ([v("a", "post:20", 1), u("a", "feed:9")], []),
    r.POSTS_PK_DELETE: ([d("a", "post:20"), d("b", "post:20")], ["feed:{neighborhood_id}"]),
    r.POSTS_PK_CREATE: ([v("a", "post:1000020", 2), u("a", "feed:9")], []),
    r.COMMENTS_INSERT: ([v("a", "comment:14", 1), u("a", "post_comments:1000020")], []),
    r.COMMENTS_UPDATE_BODY: ([v("a", "comment:14", 2), u("a", "post_comments:1000020")], []),
    # FULL identity, 7 -> 8: both on shard a, so before's keys dedupe into after's.
    r.COMMENTS_MOVE: ([v("a", "comment:14", 3), u("a", "post_comments:1000020")], []),
    # FULL identity: the true before routes the delete (neighbourhood 8: a only).
    r.COMMENTS_DELETE: ([d("a", "comment:14"), u("a", "post_comments:1000020")], []),
    r.PROFILES_INSERT: ([v("a", PROFILE_ADA, 1)], []),
    r.PROFILES_UPDATE: ([v("a", PROFILE_ADA, 2)], []),
    r.PROFILES_DELETE: ([d("a", PROFILE_ADA), d("b", PROFILE_ADA)], []),
    r.MULTI_POST_INSERT: ([v("a", "post:21", 1), u("a", "feed:7")], []),
    r.MULTI_COMMENT_INSERT: ([v("a", "comment:15", 1), u("a", "post_comments:21")], []),
    r.MULTI_PROFILE_INSERT: ([v("a", PROFILE_MULTI, 1)], []),
    r.MULTI_POST_UPDATE: ([v("a", "post:21", 2), u("a", "feed:7")], []),
}
assert set(EXPECTED) == set(r.CHANGES)


def each(lines: Iterable[int]) -> list[tuple[str, int]]:
    return [(file, line) for file in FILES for line in lines]


@pytest.mark.parametrize(("file", "line"), each(r.CHANGES))
def test_recorded_change_plans_the_expected_actions(file: str, line: int) -> None:
    result = plan(record(file, line))
    expected_actions, expected_unresolved = EXPECTED[line]
    assert actions(result) == sorted(expected_actions)
    assert list(result.unresolved) == expected_unresolved
    assert result.skip is None


@pytest.mark.parametrize(("file", "line"), each(r.CHANGES))
def test_recorded_change_has_no_duplicate_action(file: str, line: int) -> None:
    result = plan(record(file, line))
    assert len(set(result.actions)) == len(result.actions)


@pytest.mark.parametrize(("file", "line"), each(r.CHANGES))
def test_versioned_actions_carry_the_after_version(file: str, line: int) -> None:
    event = decode(file, line)
    result = LOCAL_PLANNER.plan(event)
    versions = {a.version for a in result.actions if a.kind == VERSIONED}
    if event.op == "d":
        assert versions == set()
    else:
        assert event.after is not None
        assert versions == {event.after["system_version"]}


@pytest.mark.parametrize(("file", "line"), each(
    [n for n in r.CHANGES if decode(r.SCHEMAS_FALSE, n).op in ("c", "u")]))
def test_create_and_update_fence(file: str, line: int) -> None:
    result = plan(record(file, line))
    assert all(a.fence for a in result.actions if a.kind == VERSIONED)
    assert any(a.kind == VERSIONED for a in result.actions)


@pytest.mark.parametrize(("file", "line"), each(
    [r.POSTS_SNAPSHOT, r.COMMENTS_SNAPSHOT, r.PROFILES_SNAPSHOT]))
def test_snapshot_read_is_versioned_without_a_fence(file: str, line: int) -> None:
    result = plan(record(file, line))
    versioned = [a for a in result.actions if a.kind == VERSIONED]
    assert versioned
    assert all(a.fence is False for a in versioned)
    assert all(a.as_json()["fence"] is False for a in versioned)


@pytest.mark.parametrize(("file", "line"), each(
    [r.POSTS_DELETE, r.POSTS_PK_DELETE, r.COMMENTS_DELETE, r.PROFILES_DELETE]))
def test_delete_never_emits_a_versioned_action(file: str, line: int) -> None:
    kinds = {a.kind for a in plan(record(file, line)).actions}
    assert kinds <= {DELETE, UNVERSIONED}
    assert DELETE in kinds


@pytest.mark.parametrize("file", FILES)
def test_default_identity_delete_never_uses_the_fake_neighbourhood(file: str) -> None:
    # neighbourhood 0 is outside every range: routing on it would be `unroutable`.
    rec = record(file, r.POSTS_DELETE)
    assert rec.payload()["before"]["neighborhood_id"] == 0
    result = plan(rec)
    assert {a.shard for a in result.actions} == {"a", "b"}
    assert not any(a.key.startswith("feed:") for a in result.actions)


@pytest.mark.parametrize("file", FILES)
def test_primary_key_change_invalidates_the_old_and_the_new_key(file: str) -> None:
    delete, create = record(file, r.POSTS_PK_DELETE), record(file, r.POSTS_PK_CREATE)
    assert delete.header("__debezium.newkey") == '{"id":1000020}'
    assert create.header("__debezium.oldkey") == '{"id":20}'
    old = plan(delete)
    new = plan(create)
    tombstone = plan(record(file, r.POSTS_PK_TOMBSTONE))
    assert {(a.shard, a.key, a.kind) for a in old.actions} == {
        ("a", "post:20", DELETE), ("b", "post:20", DELETE)}
    assert ("a", "post:1000020", VERSIONED, 2) in actions(new)
    # The old key's tombstone deletes it again (idempotent beside the delete).
    assert {(a.shard, a.key, a.kind) for a in tombstone.actions} == {
        ("a", "post:20", DELETE), ("b", "post:20", DELETE)}


@pytest.mark.parametrize("file", FILES)
def test_truncate_removes_every_template_on_every_shard(file: str) -> None:
    result = plan(record(file, r.COMMENTS_TRUNCATE))
    assert actions(result) == sorted([
        ("a", "comment:*", TRUNCATE), ("b", "comment:*", TRUNCATE),
        ("a", "post_comments:*", TRUNCATE), ("b", "post_comments:*", TRUNCATE)])
    assert result.unresolved == ()


@pytest.mark.parametrize(
    ("line", "reason"),
    [*((n, "heartbeat") for n in r.HEARTBEATS),
     (r.MESSAGE, "message"), (4, "transaction"), (6, "transaction")],
)
@pytest.mark.parametrize("file", FILES)
def test_records_without_a_row_are_skipped_with_their_reason(file: str, line: int,
                                                             reason: str) -> None:
    result = plan(record(file, line))
    assert (result.skip, result.actions, result.unresolved) == (reason, (), ())


# A tombstone is a key-only delete: the keys buildable from the key, deleted and fenced
# on every shard; the others unresolved, and expected (cause key_only).
TOMBSTONE_PLANS: dict[int, tuple[list[tuple[Any, ...]], list[str]]] = {
    r.POSTS_DELETE_TOMBSTONE: ([d("a", "post:19"), d("b", "post:19")],
                               ["feed:{neighborhood_id}"]),
    r.POSTS_PK_TOMBSTONE: ([d("a", "post:20"), d("b", "post:20")], ["feed:{neighborhood_id}"]),
    r.COMMENTS_TOMBSTONE: ([d("a", "comment:14"), d("b", "comment:14")],
                           ["post_comments:{post_id}"]),
    r.PROFILES_TOMBSTONE: ([d("a", PROFILE_ADA), d("b", PROFILE_ADA)], []),
}


@pytest.mark.parametrize(("file", "line"), each(sorted(TOMBSTONE_PLANS)))
def test_a_tombstone_is_a_key_only_delete_on_every_shard(file: str, line: int) -> None:
    result = plan(record(file, line))
    wanted, unresolved = TOMBSTONE_PLANS[line]
    assert result.skip is None
    assert actions(result) == sorted(wanted)
    assert list(result.unresolved) == unresolved
    assert list(result.causes()) == [(template, "key_only") for template in unresolved]
    # The table: from the key schema's name, or (schemas.enable=false) the topic's name.
    delete = decode(file, line - 1)
    assert (result.event.table, result.event.op) == (delete.table, "tombstone")


@pytest.mark.parametrize("line", sorted(TOMBSTONE_PLANS))
def test_a_tombstone_deletes_what_the_delete_before_it_deleted(line: int) -> None:
    """On a compacted topic the tombstone may be all that is left of the delete: it must
    invalidate at least every versioned key the delete did (FULL identity's delete also
    knows the derived keys; those are the tombstone's unresolved ones)."""
    for file in FILES:
        delete = plan(record(file, line - 1))
        tombstone = plan(record(file, line))
        deleted = {(a.shard, a.key) for a in delete.actions if a.kind == DELETE}
        assert deleted <= {(a.shard, a.key) for a in tombstone.actions}


@pytest.mark.parametrize("file", FILES)
def test_a_tombstone_of_an_unconfigured_table_is_skipped(file: str) -> None:
    rec = record(file, r.POSTS_DELETE_TOMBSTONE)
    other = rec.with_raw(topic="capx.public.audit",
                         key=rec.key.replace("public.posts", "public.audit")
                         if rec.key else None)
    assert plan(other).skip == "tombstone" and plan(other).actions == ()
    assert plan(rec, planner(tombstones=False)).skip == "tombstone"


@pytest.mark.parametrize("line", (*r.CHANGES, r.COMMENTS_TRUNCATE))
def test_schemas_true_and_false_plan_the_same_actions(line: int) -> None:
    with_schema = plan(record(r.SCHEMAS_TRUE, line))
    bare = plan(record(r.SCHEMAS_FALSE, line))
    assert with_schema.actions == bare.actions
    assert with_schema.unresolved == bare.unresolved


def test_plan_is_pure_the_same_event_gives_the_same_plan() -> None:
    event = decode(r.SCHEMAS_TRUE, r.COMMENTS_MOVE)
    assert LOCAL_PLANNER.plan(event) == LOCAL_PLANNER.plan(event)
