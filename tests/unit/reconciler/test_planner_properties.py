"""Properties of the planner over random row images built from recorded events."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.debezium import Decoder
from connectors.debezium.model import Event
from connectors.valkey.protocols import MAX_VERSION
from reconciler.errors import PoisonRecordError
from reconciler.pipeline.planner import DELETE, VERSIONED, Plan
from shard_map import ShardResolutionError
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import FILES, record
from tests.unit.reconciler.planning import LOCAL_PLANNER

SHARD_MAP = LOCAL_PLANNER.shard_map
SHARDS = set(SHARD_MAP.shard_names())
DECODER = Decoder()  # shared on purpose: its schema cache is part of what is exercised

IDS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Mostly inside the map (1..1000, with the 400..450 move), sometimes just outside, sometimes
# anywhere.
NEIGHBOURHOODS = st.one_of(st.integers(-5, 1005), st.sampled_from([399, 400, 450, 451, 500, 501]),
                           st.integers())
VERSIONS = st.one_of(st.integers(0, 2**63 - 1), st.integers(-(2**64), 2**64))
POST_LINES = [r.POSTS_SNAPSHOT, r.POSTS_INSERT_FOR_PK_CHANGE, r.POSTS_UPDATE_NEIGHBORHOOD,
              r.POSTS_DELETE, r.MULTI_POST_UPDATE]
COMMENT_LINES = [r.COMMENTS_SNAPSHOT, r.COMMENTS_INSERT, r.COMMENTS_UPDATE_BODY,
                 r.COMMENTS_MOVE, r.COMMENTS_DELETE]


def routable(neighbourhood: int) -> bool:
    try:
        SHARD_MAP.resolve(neighbourhood)
    except ShardResolutionError:
        return False
    return True


def event(file: str, line: int, row_id: int, neighbourhood: int, version: int,
          before_neighbourhood: int) -> Event:
    def change(payload: dict[str, Any]) -> None:
        for image, hood in (("after", neighbourhood), ("before", before_neighbourhood)):
            if payload.get(image) is not None:
                payload[image].update(id=row_id, neighborhood_id=hood, system_version=version)

    rec = record(file, line).with_payload(change).with_key(lambda k: k.__setitem__("id", row_id))
    return rec.decode(DECODER)


def plan_or_poison(ev: Event, version: int, hoods: list[int]) -> Plan | None:
    """The plan, or None when the planner refused the event for a reason that holds."""
    try:
        result = LOCAL_PLANNER.plan(ev)
    except PoisonRecordError as exc:
        if exc.reason == "invalid_version":
            assert ev.op != "d"
            assert not 0 <= version <= MAX_VERSION
        else:
            assert exc.reason == "unroutable", exc.reason
            assert not all(routable(h) for h in hoods)
        return None
    # Planned: every version it carries is one the cache functions accept.
    assert all(0 <= a.version <= MAX_VERSION for a in result.actions if a.version is not None)
    return result


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FILES), st.sampled_from(POST_LINES), IDS, NEIGHBOURHOODS, VERSIONS)
def test_posts_plans_are_routed_versioned_and_round_trip_the_id(
        file: str, line: int, row_id: int, neighbourhood: int, version: int) -> None:
    ev = event(file, line, row_id, neighbourhood, version, neighbourhood)
    # A DEFAULT-identity delete never looks at the neighbourhood or the version.
    hoods = [] if ev.op == "d" else [neighbourhood]
    result = plan_or_poison(ev, version, hoods)
    if result is None:
        return
    assert result.actions
    assert {a.shard for a in result.actions} <= SHARDS
    post_keys = [a for a in result.actions if a.key.startswith("post:")]
    assert post_keys
    assert {int(a.key.removeprefix("post:")) for a in post_keys} == {row_id}
    if ev.op == "d":
        assert {(a.shard, a.kind) for a in post_keys} == {(s, DELETE) for s in SHARDS}
    else:
        assert {a.shard for a in post_keys} == set(SHARD_MAP.resolve(neighbourhood))
        assert {a.version for a in post_keys} == {version}
        assert all(a.kind == VERSIONED and a.fence == (ev.op != "r") for a in post_keys)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FILES), st.sampled_from(COMMENT_LINES), IDS, NEIGHBOURHOODS,
       NEIGHBOURHOODS, VERSIONS)
def test_full_identity_plans_cover_the_old_and_the_new_shard(
        file: str, line: int, row_id: int, neighbourhood: int, before_neighbourhood: int,
        version: int) -> None:
    ev = event(file, line, row_id, neighbourhood, version, before_neighbourhood)
    if ev.op == "d":
        hoods = [before_neighbourhood]
    elif ev.op == "u":
        hoods = [neighbourhood, before_neighbourhood]
    else:
        hoods = [neighbourhood]
    result = plan_or_poison(ev, version, hoods)
    if result is None:
        return
    assert {a.shard for a in result.actions} <= SHARDS
    comment_keys = [a for a in result.actions if a.key.startswith("comment:")]
    assert {int(a.key.removeprefix("comment:")) for a in comment_keys} == {row_id}
    expected = set().union(*(SHARD_MAP.resolve(h) for h in hoods))
    assert {a.shard for a in comment_keys} == expected
    assert len(set(result.actions)) == len(result.actions)
    if ev.op == "d":
        assert {a.kind for a in comment_keys} == {DELETE}
    else:
        assert {a.version for a in comment_keys} == {version}
