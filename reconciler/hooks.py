"""The points of a batch's life where observers and the fault suite hook in.

One protocol, called on the production path: the worker and the invalidator call the
same hooks whether anything listens or not, so a fault injected at a point is a fault
of the code that runs in production, never of a test-only variant of it.

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

    def decoded(self) -> None: ...

    def between_shards(self) -> None: ...

    def acknowledged(self) -> None: ...

    def stored(self) -> None: ...


class NoHooks:
    """Nothing listens (the default)."""

    def decoded(self) -> None:
        pass

    def between_shards(self) -> None:
        pass

    def acknowledged(self) -> None:
        pass

    def stored(self) -> None:
        pass
