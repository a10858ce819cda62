"""Column values as Debezium encodes them, formatted the way key templates expect.

Debezium's JSON converter sends decimals as base64 two's-complement bytes, dates as
days since the epoch, timestamps as epoch numbers or ISO strings, UUIDs lower-case,
JSON columns as strings, and an unchanged TOASTed column as a placeholder string.
Keys are built by applications from the values they read (``post:42``, not
``post:42.0``), so each value is formatted back to that canonical text here.

``format_value`` returns ``None`` for a value that cannot name a key: the TOAST
placeholder (unknown, never a value), SQL NULL, nested structures. It raises
``ValueTooLarge`` for one past the caps below, before any work on it: converting a
decimal's bytes to digits (``Decimal(int)``) takes time quadratic in their number —
400 KB of them took 19 s — and no cache key is that long anyway.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from decimal import Decimal
from typing import Any

from connectors.errors import DecodeError

UNAVAILABLE = "__debezium_unavailable_value"  # Debezium's stand-in for an unchanged TOASTed column

# Logical type names (the Connect schema `name` of a field).
DECIMAL = "org.apache.kafka.connect.data.Decimal"  # base64 unscaled bytes, parameters.scale
VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"  # {"scale": n, "value": base64}
DATE = "io.debezium.time.Date"  # int days since 1970-01-01
CONNECT_DATE = "org.apache.kafka.connect.data.Date"  # int days since 1970-01-01
TIMESTAMP_MS = "io.debezium.time.Timestamp"  # int ms since the epoch, no zone
CONNECT_TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"  # int ms since the epoch
TIMESTAMP_US = "io.debezium.time.MicroTimestamp"  # int µs since the epoch, no zone
TIMESTAMP_NS = "io.debezium.time.NanoTimestamp"  # int ns since the epoch, no zone
UUID = "io.debezium.data.Uuid"  # lower-case string
HINTS = {  # column_types hints in the config (topics without embedded schemas)
    "date": DATE, "timestamp-ms": TIMESTAMP_MS, "timestamp-us": TIMESTAMP_US,
    "timestamp-ns": TIMESTAMP_NS, "string": "string", "int": "int",
}
EPOCH_DATE = dt.date(1970, 1, 1)
EPOCH = dt.datetime(1970, 1, 1)
MAX_EXPONENT = 16383  # Postgres numeric's largest scale: a larger exponent is not a Postgres value
MAX_VALUE_CHARS = 1024  # a key column's text (as sent, and as formatted) past this names no key
MAX_DECIMAL_BYTES = 512  # a decimal's unscaled bytes (~1,233 digits) past this are never converted

LogicalType = tuple[str, int]  # (schema name, decimal scale or 0)


class ValueTooLarge(DecodeError):
    """A column value past a cap: it names no key, and is not converted."""

    def __init__(self, what: str, size: int, unit: str, cap: int, cap_name: str) -> None:
        super().__init__(f"{what} of {size:,} {unit}, more than {cap_name} ({cap:,})")
        self.size = size
        self.cap = cap


def hint_type(hint: str) -> LogicalType:
    """A ``column_types`` config hint (``decimal:2``, ``date`` …) as a logical type."""
    if hint.startswith("decimal:"):
        return (DECIMAL, int(hint.split(":", 1)[1]))
    return (HINTS[hint], 0)


def format_value(value: Any, logical: LogicalType | None) -> str | None:
    """The canonical key text of a column value, or None if it cannot name a key."""
    kind = type(value)
    if kind is int and logical is None:  # the hot path: bigint ids and neighbourhoods
        return str(value)
    if kind is str:
        if len(value) > MAX_VALUE_CHARS:
            what = "a decimal (base64)" if logical is not None and logical[0] == DECIMAL else (
                "a string")
            raise ValueTooLarge(what, len(value), "characters", MAX_VALUE_CHARS,
                                "MAX_VALUE_CHARS")
        if value == UNAVAILABLE:
            return None
        if logical is None:
            return value  # type: ignore[no-any-return]
        return _format_str(value, logical)
    if value is None:
        return None
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        assert logical is not None
        return _format_int(value, logical)
    if kind is float:
        return str(int(value)) if value.is_integer() else repr(value)
    if kind is dict and logical is not None and logical[0] == VARIABLE_DECIMAL:
        digits = value.get("value")
        if type(digits) is str and len(digits) > MAX_VALUE_CHARS:
            raise ValueTooLarge("a decimal (base64)", len(digits), "characters",
                                MAX_VALUE_CHARS, "MAX_VALUE_CHARS")
        try:
            raw = base64.b64decode(digits, validate=True)
            scale = int(value["scale"])
        except (KeyError, ValueError, TypeError, binascii.Error):
            return None
        return _decimal_text(raw, scale)
    return None


def _format_str(value: str, logical: LogicalType) -> str | None:
    name, scale = logical
    if name == DECIMAL:
        try:
            raw = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            return _plain_decimal(value)  # decimal.handling.mode=string
        return _decimal_text(raw, scale)
    if name == UUID:
        return value.lower()
    return value


def _format_int(value: int, logical: LogicalType) -> str | None:
    name = logical[0]
    try:
        if name in (DATE, CONNECT_DATE):
            return (EPOCH_DATE + dt.timedelta(days=value)).isoformat()
        if name in (TIMESTAMP_MS, CONNECT_TIMESTAMP):
            return (EPOCH + dt.timedelta(milliseconds=value)).isoformat()
        if name == TIMESTAMP_US:
            return (EPOCH + dt.timedelta(microseconds=value)).isoformat()
        if name == TIMESTAMP_NS:
            return (EPOCH + dt.timedelta(microseconds=value // 1000)).isoformat()
    except OverflowError:  # 'infinity' (sent as Long.MAX_VALUE / MIN_VALUE): no datetime
        return None
    return str(value)


def _decimal_text(raw: bytes, scale: int) -> str | None:
    if abs(scale) > MAX_EXPONENT:
        return None
    if len(raw) > MAX_DECIMAL_BYTES:  # checked before Decimal(int), which is quadratic
        raise ValueTooLarge("a decimal", len(raw), "bytes", MAX_DECIMAL_BYTES,
                            "MAX_DECIMAL_BYTES")
    return _canonical(_exact_decimal(raw, scale))


def _exact_decimal(raw: bytes, scale: int) -> Decimal:
    # Built from its digits: scaleb() would round to the context's 28 digits.
    digits = Decimal(int.from_bytes(raw, "big", signed=True)).as_tuple()
    return Decimal((digits.sign, digits.digits, -scale))


def _plain_decimal(value: str) -> str | None:
    try:
        return _canonical(Decimal(value))
    except ArithmeticError:
        return None


def _canonical(number: Decimal) -> str | None:
    """42.00 → "42", 12.50 → "12.5", never an exponent, never rounded; None for NaN,
    infinities and exponents no Postgres numeric has."""
    exponent = number.as_tuple().exponent  # a letter for NaN and the infinities
    if not isinstance(exponent, int) or abs(exponent) > MAX_EXPONENT:
        return None
    text = format(number, "f")  # exact: no precision given, so no context rounding
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if len(text) > MAX_VALUE_CHARS:  # 1e16000: a few digits, but 16,001 characters
        raise ValueTooLarge("a decimal", len(text), "characters once formatted",
                            MAX_VALUE_CHARS, "MAX_VALUE_CHARS")
    return "0" if text == "-0" else text


def decimal_from_base64(value: str, scale: int) -> Decimal:
    """A precise-mode decimal as a Decimal (used by audit and tests)."""
    return _exact_decimal(base64.b64decode(value, validate=True), scale)
