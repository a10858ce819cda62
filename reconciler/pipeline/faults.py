"""The fault suite's seams: stop the process at a point of a batch, or run it broken.

Off unless the environment asks (never in a real deployment):

``RECONCILER_FAULT_STOP_AT`` names a point of `reconciler.pipeline.hooks` (decoded,
between_shards, acknowledged, stored). When the Nth batch (``RECONCILER_FAULT_STOP_ON``,
default 1) reaches it, the process sends itself SIGSTOP; the test then SIGKILLs it — a
crash at an exact place of the production path, which a timer can never hit reliably.

``RECONCILER_FAULT_SLOW_CLOSE_SECONDS`` makes the worker's shutdown sleep that long
before it commits: a shutdown that hangs (a broker that stopped answering while the
group is left), to prove that ``shutdown_timeout_seconds`` bounds it.

``RECONCILER_FAULT_BROKEN`` runs the worker deliberately broken, one classic bug at a
time, for the suite's negative controls: each mode must make some scenario fail, which
proves the oracle can see that class of bug.

    no_fences          keys are plainly deleted, never fenced (the naive invalidator)
    early_offsets      a batch's offsets are stored and committed once it is planned,
                       before its invalidations are sent
    ignore_tombstones  tombstones are skipped (a compacted topic loses its deletes)
    no_ttl_refresh     a change that meets a fence or fresh data never extends its TTL
                       (protocol version 1's hole): a variant of the library, loaded
                       under names of its own (`cr2broken_*`), so other workers and the
                       applications' writers keep the real one
"""

from __future__ import annotations

import os
import signal

from connectors.valkey.functions import PROTOCOL, Library
from reconciler.pipeline.hooks import POINTS, NoHooks

STOP_AT = os.environ.get("RECONCILER_FAULT_STOP_AT") or None  # the point to stop at, if any
STOP_ON = int(os.environ.get("RECONCILER_FAULT_STOP_ON", "1"))  # the Nth arrival stops
SLOW_CLOSE = float(os.environ.get("RECONCILER_FAULT_SLOW_CLOSE_SECONDS") or 0)  # a hung close
BROKEN = os.environ.get("RECONCILER_FAULT_BROKEN") or None  # a deliberately broken worker
BROKEN_MODES = ("no_fences", "early_offsets", "ignore_tombstones", "no_ttl_refresh")

if STOP_AT is not None and STOP_AT not in POINTS:
    raise SystemExit(f"RECONCILER_FAULT_STOP_AT={STOP_AT!r}: expected one of {', '.join(POINTS)}")
if BROKEN is not None and BROKEN not in BROKEN_MODES:
    raise SystemExit(f"RECONCILER_FAULT_BROKEN={BROKEN!r}: expected one of "
                     f"{', '.join(BROKEN_MODES)}")


def broken(mode: str) -> bool:
    """Whether the worker runs with this deliberate bug (`BROKEN_MODES`)."""
    assert mode in BROKEN_MODES, mode
    return mode == BROKEN


class StopAt(NoHooks):
    """Hooks that SIGSTOP the process at the `on`th arrival at `point`."""

    def __init__(self, point: str, on: int) -> None:
        self.point = point
        self.on = on
        self.arrivals = 0

    def _arrive(self, point: str) -> None:
        if point != self.point:
            return
        self.arrivals += 1
        if self.arrivals == self.on:
            os.kill(os.getpid(), signal.SIGSTOP)

    def decoded(self) -> None:
        self._arrive("decoded")

    def between_shards(self) -> None:
        self._arrive("between_shards")

    def acknowledged(self) -> None:
        self._arrive("acknowledged")

    def stored(self) -> None:
        self._arrive("stored")


def hooks() -> NoHooks:
    """The hooks the environment asks for: a `StopAt`, or none."""
    return StopAt(STOP_AT, STOP_ON) if STOP_AT else NoHooks()


# The edits that make the no_ttl_refresh library: every one must apply, so that a change
# to functions.lua cannot leave the negative control silently testing the real thing.
_NO_TTL_REFRESH = (
    (f"#!lua name={PROTOCOL.name}", f"#!lua name={PROTOCOL.name}_broken"),
    (f"'{PROTOCOL.apply}'", "'cr2broken_apply'"),
    (f"'{PROTOCOL.set_if_newer}'", "'cr2broken_set_if_newer'"),
    ("""local function hold_fence(key, ttl_ms)
  if redis.call('PEXPIRE', key, ttl_ms, 'GT') == 0 then
    redis.call('PEXPIRE', key, ttl_ms, 'NX')
  end
end""", """local function hold_fence(key, ttl_ms)
end"""),
    ("""      redis.call('PEXPIRE', key, ttl_ms, 'GT')  -- a shorter TTL raised; none left none
""", ""),
)


def library() -> Library:
    """The Functions library the worker loads: the real one, unless no_ttl_refresh."""
    if not broken("no_ttl_refresh"):
        return PROTOCOL
    source = PROTOCOL.source
    for old, new in _NO_TTL_REFRESH:
        if old not in source:
            raise SystemExit("RECONCILER_FAULT_BROKEN=no_ttl_refresh: functions.lua no longer "
                             f"contains {old.splitlines()[0]!r}; update reconciler/pipeline/"
                             "faults.py")
        source = source.replace(old, new)
    return Library(f"{PROTOCOL.name}_broken", source, "cr2broken_apply",
                   "cr2broken_set_if_newer")
