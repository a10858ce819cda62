"""Negative controls: the scenarios against a deliberately broken worker.

``RECONCILER_FAULT_BROKEN`` (`reconciler.pipeline.faults`) runs the worker with one
classic bug at a time. A scenario run with `broken` set must end with the oracle
failing on the cache's state — stale entries — which proves the oracle can see that
class of bug; a green suite proves little without it. `judged` runs the oracle's
final check and turns that around: it passes only when the check fails on stale
entries, and keeps the oracle's words in the figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.faults.oracle import Oracle

BROKEN_ENV = "RECONCILER_FAULT_BROKEN"
MODES = ("no_fences", "early_offsets", "ignore_tombstones", "no_ttl_refresh")
T = TypeVar("T")


def env(broken: str | None) -> dict[str, str]:
    """The worker environment for a broken mode (none: a correct worker)."""
    return {} if broken is None else {BROKEN_ENV: broken}


def judged(oracle: Oracle, broken: str | None, check: Callable[[], T]) -> T | None:
    """`check()` for a correct worker; for a broken one, the check must fail on stale
    entries (a failure of another kind — a timeout, the accounting — fails the test)."""
    if broken is None:
        return check()
    oracle.figures.extra["negative_control"] = broken
    with pytest.raises(AssertionError) as failed:
        check()
    said = str(failed.value)
    oracle.figures.extra["oracle_said"] = said.splitlines()[:6]
    assert "stale entries" in said, (
        f"with {BROKEN_ENV}={broken} the oracle failed, but not on the cache's state:\n"
        f"{said[:3000]}")
    return None


def assert_broken(log: str, broken: str | None) -> None:
    """The worker said at start-up that it runs broken (the switch took effect)."""
    if broken is not None:
        assert f"{BROKEN_ENV}={broken}" in log, (
            f"the worker never logged its broken mode {broken}: the switch did not take "
            f"effect\n{log[-2000:]}")
