"""`replay --from/--to`: what each form means (`parse_bound`), and a bad one refused
with a message naming the option, the input and the problem."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from reconciler.cli import main
from reconciler.ops.replay import EARLIEST, NOW, Bound, format_offsets, parse_bound
from tests.unit.reconciler.planning import CONFIG

NOON_UTC_MS = int(datetime(2025, 6, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is UTC+05:30 (a naive time read as local time
    would then be 5.5 hours off)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    assert time.localtime(0).tm_gmtoff == 5 * 3600 + 30 * 60
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_words_are_the_partitions_own_ends() -> None:
    assert parse_bound("earliest", start=True) == Bound(EARLIEST)
    assert parse_bound(" now\n", start=False) == Bound(NOW)


@pytest.mark.parametrize("text", ["2025-06-01T12:00:00Z", "2025-06-01T12:00:00+00:00",
                                  "2025-06-01T14:00:00+02:00", "2025-06-01 07:00:00-05:00",
                                  "2025-06-01T12:00:00.000Z"])
def test_a_time_with_an_offset_is_that_instant(text: str) -> None:
    for start in (True, False):
        assert parse_bound(text, start=start) == Bound("time", time_ms=NOON_UTC_MS)


def test_a_time_without_an_offset_is_utc_not_the_local_time(far_from_utc: None) -> None:
    assert parse_bound("2025-06-01T12:00:00", start=True) == Bound("time", time_ms=NOON_UTC_MS)
    assert parse_bound("2025-06-01T12:00", start=False) == Bound("time", time_ms=NOON_UTC_MS)
    assert parse_bound("2025-06-01", start=True) == Bound(
        "time", time_ms=NOON_UTC_MS - 12 * 3600 * 1000)  # midnight UTC
    assert str(parse_bound("2025-06-01T12:00:00", start=True)) == "2025-06-01T12:00:00+00:00"


def test_a_time_keeps_its_milliseconds() -> None:
    assert parse_bound("2025-06-01T12:00:00.123Z", start=True).time_ms == NOON_UTC_MS + 123
    assert parse_bound("2025-06-01T12:00:00.999999Z", start=True).time_ms == NOON_UTC_MS + 999


def test_pairs_name_exactly_their_partitions_and_offsets() -> None:
    bound = parse_bound("nd.public.posts:0:12,nd.public.posts:2:0 my-topic_v2:10:7",
                        start=True)
    assert bound == Bound("offsets", offsets={("nd.public.posts", 0): 12,
                                              ("nd.public.posts", 2): 0,
                                              ("my-topic_v2", 10): 7})
    # What an interrupted replay prints to resume reads back as the same offsets.
    assert parse_bound(format_offsets(bound.offsets), start=False) == bound
    assert parse_bound("t:0:5, t:0:5", start=True) == Bound("offsets", offsets={("t", 0): 5})


@pytest.mark.parametrize(("text", "start", "says"), [
    ("yesterday", True, "expected earliest, an ISO 8601 time"),
    ("", True, "expected earliest"),
    ("now", True, "expected earliest"),  # --from now would replay nothing
    ("earliest", False, "expected now"),  # and so would --to earliest
    ("nd.public.posts:0", True, "topic:partition:offset"),
    ("nd.public.posts:0:12,nd.public.posts:x:1", False, "topic:partition:offset"),
    ("nd.public.posts:0:-1", True, "topic:partition:offset"),
    ("2025-06-01T12:00:00+25:00", False, "not a valid ISO 8601 time"),
    # Time-shaped but not a time: refused as a time, never read as topic:partition:offset
    # (topic "2025-06-31T12", partition 0, offset 0).
    ("2025-06-31T12:00:00", True, "not a valid ISO 8601 time ("),
    ("2025-13-01 12:00:00", False, "not a valid ISO 8601 time ("),
    ("t:0:5,t:0:7", True, "t:0 is given two offsets (5 and 7)"),
])
def test_bad_input_is_refused_naming_the_option_the_input_and_the_problem(
        text: str, start: bool, says: str) -> None:
    option = "--from" if start else "--to"
    with pytest.raises(ValueError) as raised:
        parse_bound(text, start=start)
    message = str(raised.value)
    assert message.startswith(f"{option} {text.strip()!r}: "), message
    assert says in message, message


@pytest.mark.parametrize(("args", "names"), [
    (["--from", "yesterday"], "--from 'yesterday': expected earliest"),
    (["--from", "earliest", "--to", "earliest"], "--to 'earliest': expected now"),
    (["--from", "2025-02-30T00:00:00Z"], "--from '2025-02-30T00:00:00Z': not a valid ISO 8601"),
])
def test_the_command_refuses_a_bad_bound_with_exit_1_naming_the_option(
        restore_process_logging: None, capsys: pytest.CaptureFixture[str],
        args: list[str], names: str) -> None:
    assert main(["replay", "-c", str(CONFIG), *args]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"reconciler replay: {names}"), err
