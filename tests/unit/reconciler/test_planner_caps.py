"""Hostile records cannot stall planning: what a key is built from is capped (issue 16).

Column types come from the record's own embedded schema, so a record can declare its
key column a decimal and send megabytes of digits: converting them took time quadratic
in their number (400 KB of bytes: 19 s; 8 MiB: over an hour), holding the partition
past max.poll.interval and then hanging the next owner the same way. Every case here
starts as a recorded event, changed programmatically. No timing is asserted (the
figures are printed by `python -m bench planning`): these tests pin down that such a
record is dead-lettered with a reason and a message naming the column, the size and
the cap, and that the keys still built come only from what is under the caps.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from connectors.debezium import values
from connectors.debezium.decode import Decoder
from reconciler.observe.metrics import DEAD_LETTER_REASONS
from reconciler.pipeline import planner as planner_module
from reconciler.pipeline.batch import DeadLetter, plan_record
from reconciler.pipeline.planner import DELETE, Plan
from tests.unit.connectors.debezium import recorded as r
from tests.unit.connectors.debezium.recorded import Recorded, record
from tests.unit.reconciler.planning import LOCAL_PLANNER, actions, planner

DECIMAL = "org.apache.kafka.connect.data.Decimal"
VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
MAX_EVENT_BYTES = 8 * 1024 * 1024
Json = dict[str, Any]


def planned(rec: Recorded) -> Plan | DeadLetter:
    """What the worker does with the record (`plan_record`, the projecting decoder that
    has seen the topic's recorded schema, as a running worker has)."""
    decoder = Decoder(columns=LOCAL_PLANNER.columns)
    seen = record(rec.file, r.POSTS_INSERT)
    decoder.decode(seen.topic, 0, 0, seen.key_bytes(), seen.value_bytes())
    return plan_record(decoder, LOCAL_PLANNER, MAX_EVENT_BYTES, rec.topic, rec.partition,
                       rec.offset, rec.key_bytes(), rec.value_bytes())


def dead(rec: Recorded) -> DeadLetter:
    result = planned(rec)
    assert isinstance(result, DeadLetter), (
        f"planned, not dead-lettered: {[a.key[:40] for a in result.actions]}")
    return result


def digits(n: int) -> str:
    """`n` bytes of a positive unscaled decimal, base64, as Debezium sends it."""
    return base64.b64encode(b"\x01" + b"\x23" * (n - 1)).decode()


def typed(column: str, name: str | None, scale: str | None = "0") -> Callable[[Json], None]:
    """Declare `column` of both row images with the logical type `name`."""
    def change(value: Json) -> None:
        for image in value["schema"]["fields"]:
            if image["field"] in ("before", "after"):
                for field in image["fields"]:
                    if field["field"] == column:
                        field["name"] = name
                        if scale is not None:
                            field["parameters"] = {"scale": scale}
    return change


def with_after(rec: Recorded, schema: Callable[[Json], None] | None = None,
               **columns: Any) -> Recorded:
    def change(value: Json) -> None:
        if schema is not None:
            schema(value)
        payload = value["payload"] if rec.embeds_schema else value
        payload["after"].update(columns)
    return rec.with_value(change)


INSERT = record(r.SCHEMAS_TRUE, r.POSTS_INSERT)  # post 19, neighbourhood 7 (shard a)


def test_the_reasons_are_metric_labels_created_at_zero() -> None:
    assert {"key_too_large", "schema_too_large"} <= set(DEAD_LETTER_REASONS)
    assert planner_module.KEY_TOO_LARGE == "key_too_large"


# --------------------------------------------------------------------------- decimals


@pytest.mark.parametrize(("size", "said"), [
    (513, "a decimal of 513 bytes, more than MAX_DECIMAL_BYTES (512)"),
    (400_000, "a decimal (base64) of 533,336 characters, more than MAX_VALUE_CHARS (1,024)"),
])
def test_a_key_column_declared_a_huge_decimal_is_dead_lettered(size: int, said: str) -> None:
    rec = with_after(INSERT, typed("id", DECIMAL), id=digits(size))
    letter = dead(rec)
    assert letter.reason == "key_too_large"
    assert letter.message == (f"public.posts: key template 'post:{{id}}': column 'id' is "
                              f"{said}; no key is built")
    # The record key ({"id": 19}) is under every cap: its key-only delete still runs.
    assert letter.plan is not None
    assert actions(letter.plan) == [("a", "post:19", DELETE), ("b", "post:19", DELETE)]


def test_a_variable_scale_decimal_key_column_is_capped_alike() -> None:
    rec = with_after(INSERT, typed("id", VARIABLE_DECIMAL, None),
                     id={"scale": 0, "value": digits(4096)})
    letter = dead(rec)
    assert letter.reason == "key_too_large"
    assert "5,464 characters" in letter.message and "MAX_VALUE_CHARS" in letter.message


def test_base64_of_a_decimal_past_the_text_cap_is_not_even_decoded() -> None:
    rec = with_after(INSERT, typed("id", DECIMAL), id=digits(1024 * 1024))
    letter = dead(rec)
    assert letter.reason == "key_too_large"
    assert "MAX_VALUE_CHARS" in letter.message


def test_a_decimal_of_few_digits_but_a_long_text_is_capped() -> None:
    # scale -16000 (Postgres allows a negative scale): "1" followed by 16,000 zeros.
    rec = with_after(INSERT, typed("id", DECIMAL, "-16000"), id=digits(1))
    letter = dead(rec)
    assert letter.reason == "key_too_large"
    assert "16,001 characters" in letter.message


def test_the_largest_accepted_decimal_builds_its_key() -> None:
    # 420 bytes: ~1,011 digits, so `post:<digits>` is just under MAX_KEY_BYTES.
    rec = with_after(INSERT, typed("id", DECIMAL), id=digits(420))
    result = planned(rec)
    assert isinstance(result, Plan)
    key = result.actions[0].key
    assert key.startswith("post:1") and len(key) <= planner_module.MAX_KEY_BYTES


# --------------------------------------------------------------------------- text, keys


@pytest.mark.parametrize("file", r.FILES)
def test_a_huge_string_in_a_key_column_is_dead_lettered(file: str) -> None:
    rec = with_after(record(file, r.POSTS_INSERT), id="7" * (MAX_EVENT_BYTES // 2))
    letter = dead(rec)
    assert letter.reason == "key_too_large"
    assert "'id'" in letter.message and "4,194,304 characters" in letter.message
    assert f"MAX_VALUE_CHARS ({values.MAX_VALUE_CHARS:,})" in letter.message


def test_a_key_is_capped_in_bytes_not_characters() -> None:
    fits = "7" * (planner_module.MAX_KEY_BYTES - len("post:"))
    result = planned(with_after(INSERT, id=fits))
    assert isinstance(result, Plan)
    assert len(result.actions[0].key) == planner_module.MAX_KEY_BYTES
    letter = dead(with_after(INSERT, id=fits + "7"))
    assert letter.reason == "key_too_large"
    assert "1,025 bytes" in letter.message
    assert "MAX_KEY_BYTES (1,024)" in letter.message
    # 600 characters, 1,200 bytes in UTF-8.
    assert dead(with_after(INSERT, id="é" * 600)).reason == "key_too_large"


def test_a_multi_column_key_is_capped_as_a_whole() -> None:
    def add(tables: Json) -> None:
        tables["public.posts"]["keys"].append({"template": "post:{id}:{title}",
                                               "versioned": False})

    wide = planner(table_change=add)
    rec = with_after(INSERT, id="7" * 600, title="t" * 600)  # each under MAX_VALUE_CHARS
    result = plan_record(Decoder(columns=wide.columns), wide, MAX_EVENT_BYTES, rec.topic, 0,
                         1, rec.key_bytes(), rec.value_bytes())
    assert isinstance(result, DeadLetter) and result.reason == "key_too_large"
    assert "'post:{id}:{title}': its key would be 1,206 bytes" in result.message


def test_a_huge_shard_key_is_an_invalid_shard_key_named_with_its_size() -> None:
    rec = with_after(INSERT, typed("neighborhood_id", DECIMAL), neighborhood_id=digits(65536))
    letter = dead(rec)
    assert letter.reason == "invalid_shard_key"
    assert "neighborhood_id" in letter.message and "MAX_VALUE_CHARS" in letter.message


# --------------------------------------------------------------------------- key-only


def hostile_key(rec: Recorded, value: Any, name: str | None = DECIMAL) -> Recorded:
    """`rec` whose record key holds `value` as `id`, declared `name` in its schema."""
    assert rec.key is not None
    key = json.loads(rec.key)
    key["schema"]["fields"][0].update(type="bytes", name=name, parameters={"scale": "0"})
    key["payload"]["id"] = value
    return rec.with_raw(key=json.dumps(key))


def test_a_tombstone_with_a_huge_decimal_key_is_dead_lettered_not_replanned() -> None:
    tombstone = record(r.SCHEMAS_TRUE, r.POSTS_DELETE_TOMBSTONE)
    letter = dead(hostile_key(tombstone, digits(40_000)))  # under MAX_KEY_ONLY_BYTES
    assert letter.reason == "key_too_large" and "MAX_VALUE_CHARS" in letter.message
    # Its key-only delete builds nothing from the oversized column: unresolved.
    assert letter.plan is not None and letter.plan.actions == ()
    assert "post:{id}" in letter.plan.unresolved


def test_a_dead_letter_whose_key_is_past_a_cap_gets_no_key_from_it() -> None:
    rec = hostile_key(INSERT, "7" * 10_000, None).with_value(
        lambda value: value["payload"].update(op="x"))
    letter = dead(rec)
    assert letter.reason == "unknown_op"
    assert letter.plan is not None and letter.plan.actions == ()
    assert "post:{id}" in letter.plan.unresolved


# --------------------------------------------------------------------------- decoder


def test_a_record_key_past_the_cap_is_dead_lettered_before_it_is_parsed() -> None:
    from connectors.debezium.decode import MAX_RECORD_KEY_BYTES

    rec = hostile_key(INSERT, "7" * MAX_RECORD_KEY_BYTES, None)
    letter = dead(rec)
    assert letter.reason == "key_too_large"
    assert "MAX_RECORD_KEY_BYTES" in letter.message
    assert letter.plan is None


def test_an_embedded_schema_past_the_cap_is_dead_lettered() -> None:
    from connectors.debezium.decode import MAX_SCHEMA_BYTES

    def grow(value: Json) -> None:
        extra = [{"type": "string", "optional": True, "field": f"c{i}"}
                 for i in range(MAX_SCHEMA_BYTES // 40)]
        for image in value["schema"]["fields"]:
            if image["field"] == "after":
                image["fields"] = image["fields"] + extra

    letter = dead(INSERT.with_value(grow))
    assert letter.reason == "schema_too_large"
    assert "MAX_SCHEMA_BYTES" in letter.message
    assert letter.plan is not None  # the key-only delete of post 19
    assert actions(letter.plan) == [("a", "post:19", DELETE), ("b", "post:19", DELETE)]
