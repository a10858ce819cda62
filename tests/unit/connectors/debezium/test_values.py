"""`format_value`: column values as Debezium encodes them → the key text users expect."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from connectors.debezium.values import (
    CONNECT_DATE,
    CONNECT_TIMESTAMP,
    DATE,
    DECIMAL,
    MAX_DECIMAL_BYTES,
    MAX_VALUE_CHARS,
    TIMESTAMP_MS,
    TIMESTAMP_NS,
    TIMESTAMP_US,
    UNAVAILABLE,
    UUID,
    VARIABLE_DECIMAL,
    ValueTooLarge,
    decimal_from_base64,
    format_value,
    hint_type,
)
from tests.unit.connectors.debezium.recorded import (
    POSTS_INSERT,
    PROFILES_INSERT,
    SCHEMAS_TRUE,
    decode,
)

ZONED = ("io.debezium.time.ZonedTimestamp", 0)
UUID_T = (UUID, 0)
JSON = ("io.debezium.data.Json", 0)


def b64(unscaled: int) -> str:
    """Kafka Connect's Decimal encoding: minimal big-endian two's complement, base64."""
    return base64.b64encode(
        unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)).decode()


def test_b64_helper_matches_recorded_encodings() -> None:
    # posts.score 12.50 was recorded as "BOI=", 1.50 as "AJY=", the default 0 as "AA==".
    assert (b64(1250), b64(150), b64(0)) == ("BOI=", "AJY=", "AA==")


# --------------------------------------------------------------------------- plain values


@pytest.mark.parametrize(
    ("value", "text"),
    [(42, "42"), (0, "0"), (-7, "-7"), (2**63 - 1, "9223372036854775807"),
     (-(2**63), "-9223372036854775808")],
)
def test_int_is_its_decimal_text(value: int, text: str) -> None:
    assert format_value(value, None) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(42.0, "42"), (-3.0, "-3"), (0.0, "0"), (1e20, "100000000000000000000"), (0.5, "0.5"),
     (-12.25, "-12.25")],
)
def test_float_is_formatted_without_a_spurious_fraction(value: float, text: str) -> None:
    assert format_value(value, None) == text


def test_integral_float_in_a_typed_column_is_still_an_integer() -> None:
    assert format_value(42.0, JSON) == "42"


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false")])
def test_bool_is_lower_case_and_not_an_int(value: bool, text: str) -> None:
    assert format_value(value, None) == text


def test_string_without_a_logical_type_is_kept_as_is() -> None:
    assert format_value("Seeded Sam", None) == "Seeded Sam"


def test_int_with_a_logical_type_that_is_not_temporal_is_its_decimal_text() -> None:
    assert format_value(42, JSON) == "42"


# --------------------------------------------------------------------------- not a value


@pytest.mark.parametrize("logical", [None, (DECIMAL, 2), UUID_T, ZONED])
def test_toast_placeholder_is_unknown(logical: tuple[str, int] | None) -> None:
    assert format_value(UNAVAILABLE, logical) is None


@pytest.mark.parametrize("logical", [None, (DECIMAL, 2), (DATE, 0)])
def test_sql_null_is_unknown(logical: tuple[str, int] | None) -> None:
    assert format_value(None, logical) is None


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], [], {}])
@pytest.mark.parametrize("logical", [None, (DECIMAL, 2), JSON])
def test_nested_structures_cannot_name_a_key(value: object,
                                             logical: tuple[str, int] | None) -> None:
    assert format_value(value, logical) is None


# --------------------------------------------------------------------------- decimals


@pytest.mark.parametrize(
    ("encoded", "scale", "text"),
    [
        ("BOI=", 2, "12.5"),  # posts.score 12.50, recorded
        ("AJY=", 2, "1.5"),  # posts.score 1.50, recorded
        ("AA==", 2, "0"),  # the DEFAULT-identity delete's fake default, recorded
        ("Sw==", 2, "0.75"),  # profiles.karma, recorded
        ("AUU=", 2, "3.25"),  # profiles.karma 3.25, recorded
        ("Cg==", 2, "0.1"),
        ("AMg=", 2, "2"),
        (b64(4200), 2, "42"),
        (b64(-1250), 2, "-12.5"),
        (b64(-1), 2, "-0.01"),
        (b64(-100), 2, "-1"),
        (b64(-128), 0, "-128"),
        (b64(255), 0, "255"),
        (b64(0), 0, "0"),
        (b64(12), -2, "1200"),  # Postgres 15 allows a negative scale: numeric(5, -2)
        (b64(5), 10, "0.0000000005"),
    ],
)
def test_base64_decimal_is_its_canonical_text(encoded: str, scale: int, text: str) -> None:
    assert format_value(encoded, (DECIMAL, scale)) == text


def test_base64_decimal_beyond_28_digits_is_exact() -> None:
    # numeric(38, 2): more digits than the default decimal context keeps.
    unscaled = 123456789012345678901234567890123412
    assert format_value(b64(unscaled), (DECIMAL, 2)) == "1234567890123456789012345678901234.12"
    assert format_value(b64(-unscaled), (DECIMAL, 2)) == "-1234567890123456789012345678901234.12"


def test_two_large_decimals_that_differ_in_the_last_digit_give_different_keys() -> None:
    a, b = 10**37 + 1, 10**37 + 2
    assert format_value(b64(a), (DECIMAL, 0)) != format_value(b64(b), (DECIMAL, 0))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"scale": 2, "value": "BOI="}, "12.5"),
        ({"scale": 0, "value": b64(42)}, "42"),
        ({"scale": 3, "value": b64(-1500)}, "-1.5"),
        ({"scale": 2, "value": "AA=="}, "0"),
    ],
)
def test_variable_scale_decimal_is_its_canonical_text(value: dict[str, object], text: str) -> None:
    assert format_value(value, (VARIABLE_DECIMAL, 0)) == text


@pytest.mark.parametrize(
    "value",
    [
        {"value": "BOI="},
        {"scale": 2},
        {"scale": 2, "value": "not base64!"},
        {"scale": "x", "value": "BOI="},
        {"scale": 2, "value": 1250},
    ],
)
def test_malformed_variable_scale_decimal_is_unknown(value: dict[str, object]) -> None:
    assert format_value(value, (VARIABLE_DECIMAL, 0)) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [("12.50", "12.5"), ("-0.50", "-0.5"), ("42.00", "42"), ("1E3", "1000"), ("0.000", "0"),
     ("-0.00", "0"), ("100", "100"), ("1234567890123456789012345678901234.10",
                                      "1234567890123456789012345678901234.1")],
)
def test_string_mode_decimal_is_its_canonical_text(value: str, text: str) -> None:
    # decimal.handling.mode=string; base64 cannot contain "." or "-", so these are text.
    assert format_value(value, (DECIMAL, 2)) == text


@pytest.mark.parametrize("value", ["abc", "12,50", "NaN", "-Infinity", "1.5.2"])
def test_string_mode_decimal_that_is_not_a_finite_number_is_unknown(value: str) -> None:
    assert format_value(value, (DECIMAL, 2)) is None


@pytest.mark.parametrize(
    ("value", "logical"),
    [
        ("9e99999", (DECIMAL, 2)),  # a string-mode decimal with a huge exponent
        ("1e-999999999", (DECIMAL, 2)),
        ("BOI=", (DECIMAL, -(10**9))),  # a schema that claims an absurd scale
        ("BOI=", (DECIMAL, 10**9)),
        ("BOI=", (DECIMAL, 10**30)),  # more than a C ssize_t
        ({"scale": 10**30, "value": "BOI="}, (VARIABLE_DECIMAL, 0)),
        ({"scale": -(10**9), "value": "BOI="}, (VARIABLE_DECIMAL, 0)),
        ({"scale": 10**9, "value": "BOI="}, (VARIABLE_DECIMAL, 0)),
    ],
)
def test_hostile_decimal_is_unknown_instead_of_raising(value: object,
                                                      logical: tuple[str, int]) -> None:
    assert format_value(value, logical) is None


def test_decimal_from_base64_is_exact() -> None:
    assert decimal_from_base64("BOI=", 2) == Decimal("12.50")
    unscaled = 123456789012345678901234567890123412
    assert decimal_from_base64(b64(unscaled), 2) == Decimal("1234567890123456789012345678901234.12")


# --------------------------------------------------------------------------- dates, times


@pytest.mark.parametrize(
    ("days", "text"), [(7363, "1990-02-28"), (5843, "1985-12-31"), (0, "1970-01-01"),
                       (-1, "1969-12-31")],
)
@pytest.mark.parametrize("name", [DATE, CONNECT_DATE])
def test_date_is_iso(days: int, text: str, name: str) -> None:
    assert format_value(days, (name, 0)) == text


@pytest.mark.parametrize(
    ("value", "logical", "text"),
    [
        (1714979289123, (TIMESTAMP_MS, 0), "2024-05-06T07:08:09.123000"),
        (1714979289123, (CONNECT_TIMESTAMP, 0), "2024-05-06T07:08:09.123000"),
        (1714979289123456, (TIMESTAMP_US, 0), "2024-05-06T07:08:09.123456"),
        (1714979289123456789, (TIMESTAMP_NS, 0), "2024-05-06T07:08:09.123456"),
        (1714979289000, (TIMESTAMP_MS, 0), "2024-05-06T07:08:09"),
        (0, (TIMESTAMP_US, 0), "1970-01-01T00:00:00"),
        (-1, (TIMESTAMP_US, 0), "1969-12-31T23:59:59.999999"),
    ],
)
def test_epoch_timestamp_is_iso(value: int, logical: tuple[str, int], text: str) -> None:
    assert format_value(value, logical) == text


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
@pytest.mark.parametrize("name", [TIMESTAMP_MS, TIMESTAMP_US, CONNECT_TIMESTAMP])
def test_infinite_timestamp_is_unknown_instead_of_raising(value: int, name: str) -> None:
    # Debezium sends Postgres' 'infinity' / '-infinity' as Long.MAX_VALUE / MIN_VALUE.
    assert format_value(value, (name, 0)) is None


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 10**12])
def test_date_out_of_range_is_unknown_instead_of_raising(value: int) -> None:
    assert format_value(value, (DATE, 0)) is None


def test_zoned_timestamp_string_is_kept_as_sent() -> None:
    assert format_value("2026-11-24T06:29:23.851628Z", ZONED) == "2026-11-24T06:29:23.851628Z"


# --------------------------------------------------------------------------- uuids


def test_uuid_is_lower_case() -> None:
    assert format_value("712FEB77-78E7-4B7A-92B1-EBD7D756E2FA", (UUID, 0)) == \
        "712feb77-78e7-4b7a-92b1-ebd7d756e2fa"


def test_lower_case_uuid_is_unchanged() -> None:
    assert format_value("712feb77-78e7-4b7a-92b1-ebd7d756e2fa", UUID_T) == \
        "712feb77-78e7-4b7a-92b1-ebd7d756e2fa"


# --------------------------------------------------------------------------- recorded rows


def test_recorded_profile_values_format_as_the_workload_wrote_them() -> None:
    event = decode(SCHEMAS_TRUE, PROFILES_INSERT)
    assert event.after is not None and event.column_types is not None
    text = {column: format_value(event.after[column], event.column_types.get(column))
            for column in ("user_id", "karma", "birthday", "updated_at", "neighborhood_id")}
    assert text == {
        "user_id": "712feb77-78e7-4b7a-92b1-ebd7d756e2fa",
        "karma": "3.25",
        "birthday": "1990-02-28",
        "updated_at": "2024-05-06T07:08:09.123456",
        "neighborhood_id": "7",
    }


def test_recorded_post_score_formats_as_the_workload_wrote_it() -> None:
    event = decode(SCHEMAS_TRUE, POSTS_INSERT)
    assert event.after is not None and event.column_types is not None
    assert format_value(event.after["score"], event.column_types["score"]) == "12.5"


# --------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    ("hint", "logical"),
    [
        ("decimal:2", (DECIMAL, 2)),
        ("decimal:0", (DECIMAL, 0)),
        ("date", (DATE, 0)),
        ("timestamp-ms", (TIMESTAMP_MS, 0)),
        ("timestamp-us", (TIMESTAMP_US, 0)),
        ("timestamp-ns", (TIMESTAMP_NS, 0)),
        ("string", ("string", 0)),
        ("int", ("int", 0)),
    ],
)
def test_hint_type_maps_config_hints_to_logical_types(hint: str,
                                                      logical: tuple[str, int]) -> None:
    assert hint_type(hint) == logical


def test_unknown_hint_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        hint_type("money")


@pytest.mark.parametrize(
    ("hint", "value", "text"),
    [("decimal:2", "AUU=", "3.25"), ("date", 7363, "1990-02-28"),
     ("timestamp-us", 1714979289123456, "2024-05-06T07:08:09.123456"),
     ("string", "x", "x"), ("int", 5, "5")],
)
def test_hinted_value_formats_like_the_embedded_schema(hint: str, value: object,
                                                       text: str) -> None:
    assert format_value(value, hint_type(hint)) == text


# --------------------------------------------------------------------------- caps


def test_a_decimal_past_the_byte_cap_is_too_large_before_it_is_converted() -> None:
    assert format_value(b64(10 ** 1000), (DECIMAL, 0)) == "1" + "0" * 1000  # 416 bytes
    with pytest.raises(ValueTooLarge) as caught:
        format_value(base64.b64encode(b"\x01" * (MAX_DECIMAL_BYTES + 1)).decode(), (DECIMAL, 0))
    assert caught.value.size == MAX_DECIMAL_BYTES + 1 and caught.value.cap == MAX_DECIMAL_BYTES


@pytest.mark.parametrize("logical", [None, UUID_T, (DECIMAL, 2), JSON])
def test_a_string_past_the_text_cap_is_too_large(logical: tuple[str, int] | None) -> None:
    assert format_value("7" * MAX_VALUE_CHARS, logical if logical != (DECIMAL, 2) else None)
    with pytest.raises(ValueTooLarge) as caught:
        format_value("7" * (MAX_VALUE_CHARS + 1), logical)
    assert "MAX_VALUE_CHARS" in caught.value.message


def test_a_variable_scale_decimal_past_the_caps_is_too_large() -> None:
    with pytest.raises(ValueTooLarge):
        format_value({"scale": 0, "value": "A" * (MAX_VALUE_CHARS + 4)}, (VARIABLE_DECIMAL, 0))
    with pytest.raises(ValueTooLarge):
        format_value({"scale": 0, "value": base64.b64encode(b"\x01" * 600).decode()},
                     (VARIABLE_DECIMAL, 0))


def test_a_formatted_decimal_past_the_text_cap_is_too_large() -> None:
    with pytest.raises(ValueTooLarge):
        format_value("1e2000", (DECIMAL, 2))  # string mode: 2,001 characters once formatted
    with pytest.raises(ValueTooLarge):
        format_value(b64(1), (DECIMAL, -2000))
    assert format_value("1e1000", (DECIMAL, 2)) == "1" + "0" * 1000
