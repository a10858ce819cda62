"""The recorded flattened rows plan what their envelope twins plan, where a row can
tell, and the documented differences where it cannot: through `plan_record` as the
worker and `reconciler plan` run it (the projected decoders, the local config).

What a flattened topic cannot do, each pinned here on the real SMT's output:

- without ``add.fields=op`` a row is an upsert: a snapshot read fences an absent entry
  as a change does (and is printed as op ``u``);
- deletes as tombstones only: a FULL-identity table's delete cannot build the
  templates that need non-key columns (left to their TTL, counted key_only);
- no ``before``: a row moving to another shard is invalidated on its new shard only;
- TRUNCATE never arrives (the SMT drops it: see test_flattened).
"""

from __future__ import annotations

from typing import Any

import pytest

from connectors.debezium import Decoder
from reconciler.pipeline.batch import DeadLetter, plan_record
from reconciler.pipeline.planner import DELETE, UNVERSIONED, VERSIONED, Planner
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import Recorded
from tests.unit.connectors.debezium.recorded_flat import (
    PREFIXES,
    REWRITE,
    TOMBSTONES,
    TWIN,
    flat_decoder,
    flat_line,
    record,
    records,
    twin_line,
)
from tests.unit.reconciler.planning import LOCAL_PLANNER, actions, planner

MAX_BYTES = 8 * 1024 * 1024


def planned(rec: Recorded, using: Planner = LOCAL_PLANNER) -> dict[str, Any]:
    decoder = (Decoder(columns=using.columns) if rec.file == TWIN
               else flat_decoder(using.columns))
    result = plan_record(decoder, using, MAX_BYTES, rec.topic, rec.partition, rec.offset,
                         rec.key_bytes(), rec.value_bytes())
    out = result.as_json(rec.topic) if isinstance(result, DeadLetter) else result.as_json()
    out["topic"] = out["topic"].replace(PREFIXES[rec.file], "<prefix>")
    return out


def twin_of(file: str, number: int) -> Recorded:
    return record(TWIN, twin_line(file, number))


@pytest.mark.parametrize("number", [rec.line for rec in records(REWRITE)])
def test_a_rewrite_row_plans_what_its_envelope_plans(number: int) -> None:
    """Deletes as `__deleted` rows, `__op`, `__table`, `__source_ts_ms`: every recorded
    step plans as the envelope does (the local map moves nothing across shards)."""
    assert planned(record(REWRITE, number)) == planned(twin_of(REWRITE, number))


def _as_upsert(plan: dict[str, Any]) -> dict[str, Any]:
    """The envelope's plan as a row without `__op` plans it: op u, every version fenced."""
    if plan.get("op") in ("c", "r"):
        plan = {**plan, "op": "u", "actions": [
            {k: v for k, v in action.items() if k != "fence"} for action in plan["actions"]]}
    return plan


@pytest.mark.parametrize("number", [rec.line for rec in records(TOMBSTONES)])
def test_a_row_without_op_plans_as_an_upsert(number: int) -> None:
    assert planned(record(TOMBSTONES, number)) == _as_upsert(planned(twin_of(TOMBSTONES,
                                                                             number)))


@pytest.mark.parametrize("twin", [r.POSTS_SNAPSHOT, r.COMMENTS_SNAPSHOT, r.PROFILES_SNAPSHOT])
def test_without_op_a_snapshot_read_fences_what_is_absent(twin: int) -> None:
    upsert = planned(record(TOMBSTONES, flat_line(TOMBSTONES, twin) or 0))
    read = planned(record(TWIN, twin))
    assert (read["op"], upsert["op"]) == ("r", "u")
    assert all(a["fence"] is False for a in read["actions"] if a["kind"] == VERSIONED)
    assert all("fence" not in a for a in upsert["actions"])  # fenced: a change's version
    rewrite = planned(record(REWRITE, flat_line(REWRITE, twin) or 0))
    assert rewrite == read  # with __op: a snapshot read, as in the envelope


@pytest.mark.parametrize("twin", [r.POSTS_DELETE, r.POSTS_PK_DELETE, r.PROFILES_DELETE])
def test_default_identity_deletes_as_tombstones_lose_nothing(twin: int) -> None:
    """The envelope's DEFAULT-identity delete knows only the key: its tombstone plans
    the same key-only delete."""
    tombstone = planned(record(TOMBSTONES, flat_line(TOMBSTONES, twin + 1) or 0))
    delete = planned(record(TWIN, twin))
    assert tombstone["actions"] == delete["actions"]
    assert tombstone["unresolved"] == delete["unresolved"]


def test_a_full_identity_delete_as_a_tombstone_loses_its_non_key_templates() -> None:
    assert flat_line(TOMBSTONES, r.COMMENTS_DELETE) is None  # the SMT left its tombstone only
    tombstone = LOCAL_PLANNER.plan(record(TOMBSTONES, flat_line(
        TOMBSTONES, r.COMMENTS_TOMBSTONE) or 0).decode(flat_decoder(LOCAL_PLANNER.columns)))
    delete = LOCAL_PLANNER.plan(record(TWIN, r.COMMENTS_DELETE).decode(Decoder()))
    comment = next(a.key for a in delete.actions if a.kind == DELETE)
    derived = next(a.key for a in delete.actions if a.kind == UNVERSIONED)
    assert derived.startswith("post_comments:")
    assert actions(delete) == sorted([("a", comment, DELETE), ("a", derived, UNVERSIONED)])
    # The tombstone: the comment's key on every shard; post_comments:{post_id} unknown.
    assert actions(tombstone) == sorted([("a", comment, DELETE), ("b", comment, DELETE)])
    assert list(tombstone.causes()) == [("post_comments:{post_id}", "key_only")]
    # With __deleted rows (rewrite) the delete carries the true old row: nothing lost.
    rewrite = planned(record(REWRITE, flat_line(REWRITE, r.COMMENTS_DELETE) or 0))
    assert rewrite == planned(record(TWIN, r.COMMENTS_DELETE))


# Neighbourhood 8 on shard b: the recorded move of the comment (7 -> 8) crosses shards.
EIGHT_ON_B = planner(map_change=lambda m: m.__setitem__("ranges", [
    {"from": 1, "to": 7, "shard": "a"}, {"from": 8, "to": 8, "shard": "b"},
    {"from": 9, "to": 1000, "shard": "a"}]))


@pytest.mark.parametrize("file", [REWRITE, TOMBSTONES])
def test_a_move_is_invalidated_on_the_new_shard_only(file: str) -> None:
    """FULL identity: the envelope's `before` names the old shard too; a row cannot."""
    envelope = EIGHT_ON_B.plan(record(TWIN, r.COMMENTS_MOVE).decode(Decoder()))
    row = EIGHT_ON_B.plan(record(file, flat_line(file, r.COMMENTS_MOVE) or 0).decode(
        flat_decoder()))
    assert {a.shard for a in envelope.actions} == {"a", "b"}  # old (7) and new (8)
    assert {a.shard for a in row.actions} == {"b"}  # the new one only
    assert {(a.key, a.kind) for a in row.actions} == {
        (a.key, a.kind) for a in envelope.actions if a.shard == "b"}


def test_a_topic_given_the_wrong_format_is_dead_lettered_never_planned() -> None:
    rec = record(REWRITE, flat_line(REWRITE, r.POSTS_INSERT) or 0)
    as_json = plan_record(Decoder(columns=LOCAL_PLANNER.columns), LOCAL_PLANNER, MAX_BYTES,
                          rec.topic, 0, 0, rec.key_bytes(), rec.value_bytes())
    assert isinstance(as_json, DeadLetter) and as_json.reason == "invalid_envelope"
    twin = record(TWIN, r.POSTS_INSERT)
    as_row = plan_record(flat_decoder(LOCAL_PLANNER.columns), LOCAL_PLANNER, MAX_BYTES,
                         twin.topic, 0, 0, twin.key_bytes(), twin.value_bytes())
    assert isinstance(as_row, DeadLetter) and as_row.reason == "invalid_version"
