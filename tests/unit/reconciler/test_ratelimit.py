"""TokenBucket on a simulated clock: never more than rate·t + capacity units in any
window of t seconds, and no slower than the rate when there is always demand."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.ops.ratelimit import TokenBucket

EPSILON = 1e-6  # float slack on a count of units
MIN_SLEEP = 1e-6  # a real sleep always lasts a little: the simulated one at least this


class SimClock:
    """A monotonic clock that moves only when the bucket sleeps or the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"asked to sleep {seconds}s"
        self.sleeps += 1
        assert self.sleeps < 100_000, "the bucket keeps sleeping without granting"
        self.now += max(seconds, MIN_SLEEP)


def bucket_on(clock: SimClock, rate: float, capacity: float | None = None) -> TokenBucket:
    return TokenBucket(rate, capacity=capacity, clock=clock, sleep=clock.sleep)


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.5, 20_000), capacity=st.one_of(st.none(), st.floats(1, 500)),
       requests=st.lists(st.tuples(st.floats(0, 3), st.floats(0, 1)), min_size=1,
                         max_size=60))
def test_no_window_of_t_seconds_lets_more_than_rate_times_t_plus_capacity_through(
        rate: float, capacity: float | None, requests: list[tuple[float, float]]) -> None:
    # Capacity at least 1 (the default always is): a request is then never above it.
    clock = SimClock()
    bucket = bucket_on(clock, rate, capacity)
    granted: list[tuple[float, int]] = []  # (when acquire returned, units)
    for idle, share in requests:
        clock.now += idle  # the caller was busy elsewhere: tokens accumulate, up to capacity
        n = max(1, round(share * bucket.chunk))  # replay asks for at most `chunk` at a time
        assert bucket.acquire(n)
        granted.append((clock.now, n))
    sums = [0, *itertools.accumulate(n for _, n in granted)]
    for i, j in itertools.combinations_with_replacement(range(len(granted)), 2):
        window = granted[j][0] - granted[i][0]
        units = sums[j + 1] - sums[i]
        assert units <= rate * window + bucket.capacity + EPSILON, (
            f"{units} units in {window:.6f}s at {rate}/s, capacity {bucket.capacity}")


def test_the_default_capacity_is_a_tenth_of_a_second_and_at_least_one() -> None:
    assert bucket_on(SimClock(), 50).capacity == 5 and bucket_on(SimClock(), 50).chunk == 5
    assert bucket_on(SimClock(), 3).capacity == 1 and bucket_on(SimClock(), 3).chunk == 1


def test_constant_demand_runs_at_the_rate_after_the_initial_burst() -> None:
    clock = SimClock()
    bucket = bucket_on(clock, 50)  # capacity 5: replay's --rate 50 asks 5 records at a time
    began = clock.now
    for _ in range(100):
        assert bucket.acquire(bucket.chunk)
    # 500 units: 5 at once from the full bucket, then 495 at 50/s.
    assert clock.now - began == pytest.approx(495 / 50, abs=1e-3)


def test_idle_time_buys_no_more_than_the_capacity() -> None:
    clock = SimClock()
    bucket = bucket_on(clock, 10, capacity=5)
    clock.now += 3600  # an hour idle
    began = clock.now
    for _ in range(5):
        assert bucket.acquire(1)
    assert clock.now == began  # the capacity, at once
    assert bucket.acquire(1)
    assert clock.now - began == pytest.approx(0.1)  # then one more token at 10/s


def test_asking_for_more_than_the_capacity_waits_for_the_deficit() -> None:
    clock = SimClock()
    bucket = bucket_on(clock, 10, capacity=5)
    began = clock.now
    assert bucket.acquire(25)  # 5 in the bucket, 20 more at 10/s
    assert clock.now - began == pytest.approx(2.0)
    assert bucket.acquire(1)  # and it was all taken
    assert clock.now - began == pytest.approx(2.1)


def test_a_wait_interrupted_by_stop_takes_nothing() -> None:
    clock = SimClock()
    bucket = bucket_on(clock, 1, capacity=1)
    stop = threading.Event()
    assert bucket.acquire(1, stop)
    stop.set()
    assert not bucket.acquire(1, stop)  # empty: it would wait, and stop is set
    clock.now += 1.0
    assert bucket.acquire(1, stop)  # the token that refilled is still there: no wait
    assert not bucket.acquire(1, stop)


@pytest.mark.parametrize("rate", [0, -5])
def test_a_rate_that_is_not_positive_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        TokenBucket(rate)
