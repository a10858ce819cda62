"""A seam for the fault-injection tests: stop the process at a named point of a batch.

Off unless ``RECONCILER_FAULT_STOP_AT`` is set in the environment (never in a real
deployment). When the Nth batch (``RECONCILER_FAULT_STOP_ON``, default 1) reaches that
point, the process sends itself SIGSTOP; the test then SIGKILLs it — a crash at an
exact place, which a timer can never hit reliably.

Points, in batch order:
    decoded        every record of the batch decoded and planned, no Valkey call yet
    between_shards the first shard's call is acknowledged, the others not yet sent
    acknowledged   every Valkey call and dead letter acknowledged, offsets not stored
    stored         offsets stored (not yet committed)

``RECONCILER_FAULT_SLOW_CLOSE_SECONDS`` makes the worker's shutdown sleep that long
before it commits: a shutdown that hangs (a broker that stopped answering while the
group is left), to prove that ``shutdown_timeout_seconds`` bounds it.
"""

from __future__ import annotations

import os
import signal

STOP_AT = os.environ.get("RECONCILER_FAULT_STOP_AT") or None  # the point to stop at, if any
STOP_ON = int(os.environ.get("RECONCILER_FAULT_STOP_ON", "1"))  # the Nth arrival stops
SLOW_CLOSE = float(os.environ.get("RECONCILER_FAULT_SLOW_CLOSE_SECONDS") or 0)  # a hung close
POINTS = ("decoded", "between_shards", "acknowledged", "stored")  # valid point names
_arrivals = 0

if STOP_AT is not None and STOP_AT not in POINTS:
    raise SystemExit(f"RECONCILER_FAULT_STOP_AT={STOP_AT!r}: expected one of {', '.join(POINTS)}")


def checkpoint(point: str) -> None:
    """Stop the process here if the environment asks for it (call only when STOP_AT)."""
    global _arrivals
    if point != STOP_AT:
        return
    _arrivals += 1
    if _arrivals == STOP_ON:
        os.kill(os.getpid(), signal.SIGSTOP)
