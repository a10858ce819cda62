"""A token bucket: at most `rate` units per second on average, small bursts allowed.

Used by `replay --rate` (records per second, so a backfill cannot flatten Valkey) and
by `audit` (rows per second read from Postgres).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_SECONDS = 0.1  # the bucket holds this many seconds' worth of tokens (at least 1)


class TokenBucket:
    """Tokens refill continuously at `rate` per second, up to `capacity`."""

    def __init__(self, rate: float, *, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate * BURST_SECONDS)
        self._clock = clock
        self._sleep = sleep  # waits without a `stop` event (with one: stop.wait)
        self._tokens = self.capacity
        self._last = clock()

    @property
    def chunk(self) -> int:
        """The largest whole number of units one acquire() should ask for."""
        return max(1, int(self.capacity))

    def acquire(self, n: float, stop: threading.Event | None = None) -> bool:
        """Wait until `n` tokens are available and take them; False if `stop` was set
        while waiting (nothing is taken then). More than `capacity` may be asked for:
        the wait is then the deficit at `rate`."""
        while True:
            now = self._clock()
            self._tokens = min(max(self.capacity, n), self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            wait = (n - self._tokens) / self.rate
            if stop is None:
                self._sleep(wait)
            elif stop.wait(wait):
                return False
