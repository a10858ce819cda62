"""The same recorded workload, read from Avro and from JSON, plans the same cache
actions: every line of tests/fixtures/debezium/avro/avro.jsonl against the same line
of twin.jsonl (the same run through the JSON converter), through `plan_record` as the
worker and `reconciler plan` run it (projected decoders, the local config)."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.debezium import Decoder
from reconciler.pipeline.batch import DeadLetter, plan_record
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded_avro import AVRO, TWIN, avro_decoder, line
from tests.unit.reconciler.planning import LOCAL_PLANNER, planner

MAX_BYTES = 8 * 1024 * 1024


def planned(file: str, number: int) -> dict[str, Any]:
    record = line(file, number)
    decoder = (avro_decoder(LOCAL_PLANNER.columns) if file == AVRO
               else Decoder(columns=LOCAL_PLANNER.columns))
    result = plan_record(decoder, LOCAL_PLANNER, MAX_BYTES, record.topic, record.partition,
                         record.offset, record.key, record.value)
    out = result.as_json(record.topic) if isinstance(result, DeadLetter) else result.as_json()
    out["topic"] = out["topic"].replace("capavro", "captwin")
    return out


@pytest.mark.parametrize("number", range(1, r.LINE_COUNT + 1))
def test_avro_plans_what_json_plans(number: int) -> None:
    assert planned(AVRO, number) == planned(TWIN, number)


@pytest.mark.parametrize("number", [r.PROFILES_INSERT, r.POSTS_INSERT, r.COMMENTS_MOVE])
def test_keys_from_uuids_decimals_and_bigints_are_built(number: int) -> None:
    actions = planned(AVRO, number)["actions"]
    assert actions and all(":" in action["key"] for action in actions)
    assert not any(action["key"].endswith(".0") for action in actions)


def _typed_templates(raw: dict[str, Any]) -> None:
    """Keys built from a decimal, a MicroTimestamp, a Date and a uuid."""
    raw["public.profiles"]["keys"].append(
        {"template": "karma:{karma}:{updated_at}:{birthday}:{user_id}", "versioned": False})
    raw["public.posts"]["keys"].append({"template": "score:{score}", "versioned": False})


TYPED = planner(table_change=_typed_templates)


@pytest.mark.parametrize("number", [r.PROFILES_INSERT, r.MULTI_PROFILE_INSERT, r.POSTS_INSERT,
                                    r.MULTI_POST_INSERT])
def test_logical_types_format_keys_as_in_json(number: int) -> None:
    avro, twin = line(AVRO, number), line(TWIN, number)
    found = TYPED.plan(avro.decode(avro_decoder(TYPED.columns)))
    expected = TYPED.plan(twin.decode(Decoder(columns=TYPED.columns)))
    assert found.actions == expected.actions
    assert found.unresolved == expected.unresolved  # the multi-table profile: no birthday
    keys = [action.key for action in found.actions]
    if number == r.PROFILES_INSERT:  # karma 3.25, 2024-05-06 07:08:09.123456, 1990-02-28
        assert any(key.startswith("karma:3.25:2024-05-06T07:08:09.123456:1990-02-28:")
                   for key in keys), keys
    if number == r.POSTS_INSERT:  # score 12.50
        assert "score:12.5" in keys, keys
