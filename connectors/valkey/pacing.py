"""What `truncate()` shares across shard kinds: its arguments checked, and its UNLINKs
paced to at most `max_keys_per_second` on average (`UnlinkPace`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")


class UnlinkPace:
    """The pieces a truncate UNLINKs, at most `max_keys_per_second` on average since it
    was made (None: no limit); ValueError for a `count` or a rate out of range."""

    def __init__(self, shard: str, count: int, max_keys_per_second: float | None) -> None:
        if count < 1:
            raise ValueError(f"shard {shard!r}: truncate count must be >= 1, got {count}")
        if max_keys_per_second is not None and max_keys_per_second <= 0:
            raise ValueError(f"shard {shard!r}: max_keys_per_second must be positive, "
                             f"got {max_keys_per_second}")
        # With a rate limit, UNLINK in pieces of about a tenth of a second's worth so
        # that the load is spread evenly rather than in bursts of `count` keys.
        self.step = count if max_keys_per_second is None else max(
            1, min(count, int(max_keys_per_second / 10)))
        self._rate = max_keys_per_second
        self.started = time.monotonic()
        self._sent = 0  # keys sent to UNLINK: what the rate limit paces

    def pieces(self, found: list[T]) -> Iterator[list[T]]:
        """`found` in pieces of `step` keys; after each piece is UNLINKed, a sleep if
        the truncate is ahead of its rate."""
        for start in range(0, len(found), self.step):
            piece = found[start:start + self.step]
            yield piece
            self._sent += len(piece)
            if self._rate is not None:
                ahead = self._sent / self._rate - (time.monotonic() - self.started)
                if ahead > 0:
                    time.sleep(ahead)
