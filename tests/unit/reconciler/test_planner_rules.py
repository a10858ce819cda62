"""Planner rules on variants of recorded events: routing, moves, TOAST, NULL, bad
versions and shard keys, unknown tables (SPEC §2, §3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectors.debezium.values import UNAVAILABLE
from reconciler.errors import PoisonRecordError, ReconcilerError
from reconciler.pipeline.planner import DELETE, TRUNCATE, UNVERSIONED, VERSIONED, Planner
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import FILES, Recorded, record
from tests.unit.reconciler.planning import (
    LOCAL_PLANNER,
    actions,
    plan,
    planner,
    shard_map,
)

MAX_VERSION = 2**63 - 1
Json = dict[str, Any]


def set_after(**columns: Any) -> Callable[[Json], None]:
    return lambda payload: payload["after"].update(columns)


def set_before(**columns: Any) -> Callable[[Json], None]:
    return lambda payload: payload["before"].update(columns)


def poison(rec: Recorded, using: Planner = LOCAL_PLANNER) -> PoisonRecordError:
    with pytest.raises(PoisonRecordError) as caught:
        plan(rec, using)
    return caught.value


def add_key(table: str, template: str, *, versioned: bool = False) -> Callable[[Json], None]:
    def change(tables: Json) -> None:
        tables[table]["keys"].append({"template": template, "versioned": versioned})
    return change


both_files = pytest.mark.parametrize("file", FILES)


# --------------------------------------------------------------------------- routing


@both_files
def test_full_identity_move_across_shards_invalidates_both_shards(file: str) -> None:
    # comments_move, moved further: neighbourhood 7 (shard a) -> 700 (shard b).
    rec = record(file, r.COMMENTS_MOVE).with_payload(set_after(neighborhood_id=700))
    assert actions(plan(rec)) == sorted([
        ("b", "comment:14", VERSIONED, 3), ("b", "post_comments:1000020", UNVERSIONED),
        ("a", "comment:14", VERSIONED, 3), ("a", "post_comments:1000020", UNVERSIONED)])


@both_files
def test_full_identity_move_fences_the_old_shard_too(file: str) -> None:
    rec = record(file, r.COMMENTS_MOVE).with_payload(set_after(neighborhood_id=700))
    old_shard = [a for a in plan(rec).actions if a.shard == "a" and a.kind == VERSIONED]
    assert [(a.key, a.version, a.fence) for a in old_shard] == [("comment:14", 3, True)]


@both_files
def test_full_identity_update_of_a_key_column_invalidates_old_and_new_keys(file: str) -> None:
    rec = record(file, r.COMMENTS_UPDATE_BODY).with_payload(set_after(post_id=21))
    assert actions(plan(rec)) == sorted([
        ("a", "comment:14", VERSIONED, 2), ("a", "post_comments:21", UNVERSIONED),
        ("a", "post_comments:1000020", UNVERSIONED)])


@both_files
def test_same_key_on_the_same_shard_is_planned_once(file: str) -> None:
    result = plan(record(file, r.COMMENTS_UPDATE_BODY))
    assert len(result.actions) == 2


@both_files
def test_moving_neighbourhood_is_invalidated_on_source_and_target(file: str) -> None:
    rec = record(file, r.POSTS_UPDATE_TITLE).with_payload(set_after(neighborhood_id=420))
    assert actions(plan(rec)) == sorted([
        ("a", "post:19", VERSIONED, 2), ("b", "post:19", VERSIONED, 2),
        ("a", "feed:420", UNVERSIONED), ("b", "feed:420", UNVERSIONED)])


@pytest.mark.parametrize(("neighbourhood", "shards"),
                         [(1, {"a"}), (399, {"a"}), (400, {"a", "b"}), (450, {"a", "b"}),
                          (451, {"a"}), (500, {"a"}), (501, {"b"}), (1000, {"b"})])
def test_after_image_is_routed_by_the_shard_map(neighbourhood: int, shards: set[str]) -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT_FOR_PK_CHANGE).with_payload(
        set_after(neighborhood_id=neighbourhood))
    assert {a.shard for a in plan(rec).actions} == shards


@both_files
def test_full_identity_move_into_a_moving_range_covers_all_three_placements(file: str) -> None:
    rec = record(file, r.COMMENTS_MOVE).with_payload(set_after(neighborhood_id=420))
    result = plan(rec)
    assert {(a.shard, a.key) for a in result.actions} == {
        ("a", "comment:14"), ("b", "comment:14"),
        ("a", "post_comments:1000020"), ("b", "post_comments:1000020")}
    assert len(result.actions) == 4


@pytest.mark.parametrize("neighbourhood", [0, -1, 1001, 5000, 2**63 - 1])
@both_files
def test_neighbourhood_outside_every_range_without_default_is_unroutable(
        file: str, neighbourhood: int) -> None:
    rec = record(file, r.POSTS_INSERT).with_payload(set_after(neighborhood_id=neighbourhood))
    error = poison(rec)
    assert error.reason == "unroutable"
    assert "public.posts" in error.message
    assert str(neighbourhood) in error.message


def test_unroutable_is_a_reconciler_error() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT).with_payload(set_after(neighborhood_id=5000))
    assert isinstance(poison(rec), ReconcilerError)


@both_files
def test_neighbourhood_outside_every_range_goes_to_the_default_shard(file: str) -> None:
    with_default = planner(map_change=lambda m: m.__setitem__("default", "b"))
    rec = record(file, r.POSTS_INSERT).with_payload(set_after(neighborhood_id=5000))
    assert actions(plan(rec, with_default)) == sorted([
        ("b", "post:19", VERSIONED, 1), ("b", "feed:5000", UNVERSIONED)])


def test_with_shard_map_replans_on_the_new_map_with_the_same_tables() -> None:
    def all_on_b(raw: Json) -> None:
        raw["ranges"] = [{"from": 1, "to": 1000, "shard": "b"}]
        raw["moving"] = []

    moved = LOCAL_PLANNER.with_shard_map(shard_map(all_on_b))
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT)
    assert {a.shard for a in plan(rec, moved).actions} == {"b"}
    assert moved.tables is LOCAL_PLANNER.tables
    assert {a.shard for a in plan(rec).actions} == {"a"}


@both_files
def test_default_identity_update_routes_by_the_after_image_only(file: str) -> None:
    # DEFAULT identity has no `before`: the old shard is unknown (SPEC §3: a move is
    # seen only with FULL identity; `doctor` says which tables need it).
    rec = record(file, r.POSTS_UPDATE_NEIGHBORHOOD).with_payload(set_after(neighborhood_id=700))
    assert actions(plan(rec)) == sorted([
        ("b", "post:19", VERSIONED, 3), ("b", "feed:700", UNVERSIONED)])


# --------------------------------------------------------------------------- deletes


@both_files
def test_full_identity_delete_is_routed_by_the_true_before(file: str) -> None:
    rec = record(file, r.COMMENTS_DELETE).with_payload(set_before(neighborhood_id=700))
    assert actions(plan(rec)) == sorted([
        ("b", "comment:14", DELETE), ("b", "post_comments:1000020", UNVERSIONED)])


@both_files
def test_full_identity_delete_outside_every_range_is_unroutable(file: str) -> None:
    rec = record(file, r.COMMENTS_DELETE).with_payload(set_before(neighborhood_id=0))
    assert poison(rec).reason == "unroutable"


@both_files
def test_default_identity_delete_ignores_a_plausible_before_neighbourhood(file: str) -> None:
    rec = record(file, r.POSTS_DELETE).with_payload(set_before(neighborhood_id=600))
    result = plan(rec)
    assert actions(result) == sorted([("a", "post:19", DELETE), ("b", "post:19", DELETE)])
    assert result.unresolved == ("feed:{neighborhood_id}",)


@both_files
def test_default_identity_delete_with_the_shard_key_in_the_primary_key_is_routed(
        file: str) -> None:
    def composite(tables: dict[str, Any]) -> None:
        tables["public.posts"]["primary_key"] = ["id", "neighborhood_id"]

    rec = record(file, r.POSTS_DELETE).with_payload(set_before(neighborhood_id=600)) \
        .with_key(lambda key: key.__setitem__("neighborhood_id", 600))
    result = plan(rec, planner(table_change=composite))
    assert actions(result) == sorted([("b", "post:19", DELETE), ("b", "feed:600", UNVERSIONED)])
    assert result.unresolved == ()


@both_files
def test_default_identity_delete_takes_the_primary_key_from_the_record_key(file: str) -> None:
    rec = record(file, r.PROFILES_DELETE).with_payload(lambda p: p["before"].pop("user_id"))
    result = plan(rec)
    assert actions(result) == sorted([
        ("a", "profile:712feb77-78e7-4b7a-92b1-ebd7d756e2fa", DELETE),
        ("b", "profile:712feb77-78e7-4b7a-92b1-ebd7d756e2fa", DELETE)])


# --------------------------------------------------------------------------- TOAST and NULL


@both_files
def test_toast_placeholder_in_a_template_column_is_unresolved(file: str) -> None:
    # posts_update_title: the unchanged TOASTed body arrives as the placeholder.
    rec = record(file, r.POSTS_UPDATE_TITLE)
    assert rec.payload()["after"]["body"] == UNAVAILABLE
    result = plan(rec, planner(table_change=add_key("public.posts", "post_body:{body}")))
    assert result.unresolved == ("post_body:{body}",)
    assert actions(result) == sorted([("a", "post:19", VERSIONED, 2), ("a", "feed:7", UNVERSIONED)])


@both_files
def test_toast_placeholder_is_never_used_as_key_text(file: str) -> None:
    rec = record(file, r.POSTS_UPDATE_TITLE)
    result = plan(rec, planner(table_change=add_key("public.posts", "post_body:{body}")))
    assert not any(UNAVAILABLE in a.key for a in result.actions)


@both_files
def test_null_in_a_template_column_is_unresolved(file: str) -> None:
    rec = record(file, r.POSTS_INSERT_FOR_PK_CHANGE)
    assert rec.payload()["after"]["metadata"] is None
    result = plan(rec, planner(table_change=add_key("public.posts", "meta:{metadata}")))
    assert result.unresolved == ("meta:{metadata}",)


@pytest.mark.parametrize("unknown", [UNAVAILABLE, None])
@both_files
def test_unknown_shard_key_broadcasts_to_every_shard(file: str, unknown: object) -> None:
    rec = record(file, r.POSTS_UPDATE_TITLE).with_payload(set_after(neighborhood_id=unknown))
    result = plan(rec)
    assert actions(result) == sorted([("a", "post:19", VERSIONED, 2),
                                      ("b", "post:19", VERSIONED, 2)])
    assert result.unresolved == ("feed:{neighborhood_id}",)


@both_files
def test_unknown_shard_key_in_a_full_before_broadcasts_the_old_keys(file: str) -> None:
    rec = record(file, r.COMMENTS_MOVE).with_payload(set_before(neighborhood_id=None))
    assert {(a.shard, a.key) for a in plan(rec).actions} == {
        ("a", "comment:14"), ("b", "comment:14"),
        ("a", "post_comments:1000020"), ("b", "post_comments:1000020")}


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["2", 2.0, 2.5, True, None, [2], {"v": 2}, UNAVAILABLE])
@both_files
def test_version_that_is_not_an_integer_is_invalid(file: str, version: object) -> None:
    rec = record(file, r.POSTS_UPDATE_TITLE).with_payload(set_after(system_version=version))
    error = poison(rec)
    assert error.reason == "invalid_version"
    assert "system_version" in error.message


@pytest.mark.parametrize("version", [-1, -(2**63)])
def test_negative_version_is_invalid(version: int) -> None:
    rec = record(r.SCHEMAS_TRUE, r.POSTS_UPDATE_TITLE).with_payload(
        set_after(system_version=version))
    assert poison(rec).reason == "invalid_version"


def test_missing_version_column_is_invalid() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE).with_payload(
        lambda p: p["after"].pop("system_version"))
    assert poison(rec).reason == "invalid_version"


@both_files
def test_largest_version_is_kept_exactly(file: str) -> None:
    rec = record(file, r.POSTS_UPDATE_TITLE).with_payload(set_after(system_version=MAX_VERSION))
    versions = {a.version for a in plan(rec).actions if a.kind == VERSIONED}
    assert versions == {9223372036854775807}


@pytest.mark.parametrize("version", [2**63, 2**64, 10**30])
def test_version_above_the_protocol_maximum_is_invalid(version: int) -> None:
    # The cache functions reject versions above 2^63-1 (the delete fence): such an event
    # must be dead-lettered, not fail the whole batch on the server.
    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE).with_payload(
        set_after(system_version=version))
    assert poison(rec).reason == "invalid_version"


def test_version_zero_is_valid() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE).with_payload(set_after(system_version=0))
    assert {a.version for a in plan(rec).actions if a.kind == VERSIONED} == {0}


def test_configured_version_column_is_used() -> None:
    def author_version(tables: dict[str, Any]) -> None:
        tables["public.posts"]["version_column"] = "author_id"

    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE)
    result = plan(rec, planner(table_change=author_version))
    assert {a.version for a in result.actions if a.kind == VERSIONED} == {42}


# --------------------------------------------------------------------------- shard keys


@pytest.mark.parametrize("value", ["seven", "7.5", "", "0x7", True])
@both_files
def test_shard_key_that_is_not_an_integer_is_invalid(file: str, value: object) -> None:
    rec = record(file, r.POSTS_UPDATE_TITLE).with_payload(set_after(neighborhood_id=value))
    error = poison(rec)
    assert error.reason == "invalid_shard_key"
    assert "neighborhood_id" in error.message


def test_shard_key_error_message_is_bounded() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE).with_payload(
        set_after(neighborhood_id="x" * 100_000))
    assert len(poison(rec).message) < 300


@pytest.mark.parametrize("value", ["7", 7.0, " 7"])
def test_shard_key_that_reads_as_an_integer_is_routed(value: object) -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE).with_payload(
        set_after(neighborhood_id=value))
    assert {a.shard for a in plan(rec).actions} == {"a"}


def test_huge_numeric_string_shard_key_is_invalid_not_a_crash() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_UPDATE_TITLE).with_payload(
        set_after(neighborhood_id="9" * 10_000))
    assert poison(rec).reason == "invalid_shard_key"


# --------------------------------------------------------------------------- tables


def rename_table(rec: Recorded, table: str) -> Recorded:
    return rec.with_payload(lambda p: p["source"].__setitem__("table", table))


@pytest.mark.parametrize("line", [r.POSTS_INSERT, r.POSTS_DELETE, r.COMMENTS_TRUNCATE])
@both_files
def test_unknown_table_is_skipped(file: str, line: int) -> None:
    result = plan(rename_table(record(file, line), "audit_log"))
    assert (result.skip, result.actions) == ("unknown_table", ())
    assert result.event.table == "public.audit_log"


@pytest.mark.parametrize("line", [r.POSTS_INSERT, r.POSTS_DELETE, r.COMMENTS_TRUNCATE])
@both_files
def test_unknown_table_is_poison_when_configured_as_an_error(file: str, line: int) -> None:
    error = poison(rename_table(record(file, line), "audit_log"),
                   planner(unknown_tables_error=True))
    assert error.reason == "unknown_table"
    assert "public.audit_log" in error.message


def test_known_tables_plan_normally_with_unknown_tables_error() -> None:
    strict = planner(unknown_tables_error=True)
    assert plan(record(r.SCHEMAS_TRUE, r.POSTS_INSERT), strict).actions


def test_table_in_another_schema_is_another_table() -> None:
    rec = record(r.SCHEMAS_FALSE, r.POSTS_INSERT).with_payload(
        lambda p: p["source"].__setitem__("schema", "archive"))
    assert plan(rec).skip == "unknown_table"


# --------------------------------------------------------------------------- truncate, types


def test_truncate_patterns_escape_glob_characters() -> None:
    def starred(tables: dict[str, Any]) -> None:
        tables["public.comments"]["keys"] = [{"template": "c*[{post_id}]:{id}"}]

    result = plan(record(r.SCHEMAS_FALSE, r.COMMENTS_TRUNCATE), planner(table_change=starred))
    assert actions(result) == [("a", "c\\*\\[*\\]:*", TRUNCATE), ("b", "c\\*\\[*\\]:*", TRUNCATE)]


def test_truncate_covers_shards_used_by_no_range() -> None:
    spare = planner(map_change=lambda m: m["shards"].__setitem__(
        "c", {"url": "valkey://127.0.0.1:26381/0"}))
    result = plan(record(r.SCHEMAS_TRUE, r.COMMENTS_TRUNCATE), spare)
    assert {a.shard for a in result.actions} == {"a", "b", "c"}


def typed_profile_key(tables: dict[str, Any]) -> None:
    tables["public.profiles"]["keys"].append(
        {"template": "bday:{birthday}:{karma}:{updated_at}", "versioned": False})


@both_files
def test_typed_columns_render_the_same_with_schema_or_hints(file: str) -> None:
    # schemas.enable=false relies on the config's column_types hints (date, decimal:2,
    # timestamp-us); schemas.enable=true on the embedded schema.
    result = plan(record(file, r.PROFILES_INSERT), planner(table_change=typed_profile_key))
    assert ("a", "bday:1990-02-28:3.25:2024-05-06T07:08:09.123456", UNVERSIONED) in \
        actions(result)


def test_embedded_schema_wins_over_a_wrong_hint() -> None:
    def wrong_hint(tables: dict[str, Any]) -> None:
        typed_profile_key(tables)
        tables["public.profiles"]["column_types"]["birthday"] = "int"

    result = plan(record(r.SCHEMAS_TRUE, r.PROFILES_INSERT), planner(table_change=wrong_hint))
    assert any(a.key.startswith("bday:1990-02-28:") for a in result.actions)


def test_decimal_key_from_the_schema_is_canonical() -> None:
    result = plan(record(r.SCHEMAS_TRUE, r.POSTS_INSERT),
                  planner(table_change=add_key("public.posts", "score:{score}")))
    assert ("a", "score:12.5", UNVERSIONED) in actions(result)


def test_composite_template_renders_every_column() -> None:
    result = plan(record(r.SCHEMAS_FALSE, r.COMMENTS_INSERT),
                  planner(table_change=add_key("public.comments", "pc:{post_id}:{id}")))
    assert ("a", "pc:1000020:14", UNVERSIONED) in actions(result)
