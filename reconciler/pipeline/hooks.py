"""The points of a batch's life where observers and the fault suite hook in.

One protocol, in the spirit of faust's sensors, called on the production path: the
pipeline and the invalidator call the same hooks whether anything listens or not, so
a fault injected at a point is a fault of the code that runs in production, never of
a test-only variant of it, and the benchmark times the worker without patching it.

Timings (seconds, from `time.perf_counter`):
    polled          a consume() call returned `records` records after `seconds`
    invalidated     a batch's Valkey calls were sent, or their answers read
    completed       the batch in flight was completed (answers read, dead letters
                    confirmed, offsets stored) before the next was sent, or the loop
                    blocked, or a rebalance or a stop

Points, in batch order:
    decoded         every record of the batch decoded and planned; nothing sent
    between_shards  a shard's call written, the next shard's call not yet (only between
                    two shards of a segment; never after the last)
    acknowledged    every Valkey call and dead letter of the batch acknowledged;
                    offsets not stored
    stored          the batch's offsets stored (not yet committed)
"""

from __future__ import annotations

from typing import Protocol

POINTS = ("decoded", "between_shards", "acknowledged", "stored")  # in batch order


class Hooks(Protocol):
    """Called at each point of every batch (see the module docstring)."""

    def polled(self, records: int, seconds: float) -> None: ...

    def invalidated(self, seconds: float) -> None: ...

    def completed(self, seconds: float) -> None: ...

    def decoded(self) -> None: ...

    def between_shards(self) -> None: ...

    def acknowledged(self) -> None: ...

    def stored(self) -> None: ...


class NoHooks:
    """Nothing listens (the default)."""

    def polled(self, records: int, seconds: float) -> None:
        pass

    def invalidated(self, seconds: float) -> None:
        pass

    def completed(self, seconds: float) -> None:
        pass

    def decoded(self) -> None:
        pass

    def between_shards(self) -> None:
        pass

    def acknowledged(self) -> None:
        pass

    def stored(self) -> None:
        pass
