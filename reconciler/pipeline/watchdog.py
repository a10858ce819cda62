"""The shutdown watchdog: a signalled shutdown gets `shutdown_timeout_seconds`, then the
process ends by itself (exit 2) — before an orchestrator's SIGKILL can land in the
middle of a commit. Offsets not committed yet are processed again after a restart."""

from __future__ import annotations

import contextlib
import logging
import os
import threading

log = logging.getLogger(__name__)

EXIT_FAILED = 2  # what the process exits with when the shutdown overran


class Watchdog:
    """Armed once, on the first stop signal; cancelled by a shutdown that finished."""

    def __init__(self, budget_seconds: float) -> None:
        self.budget = budget_seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is not None:
            return
        self._timer = threading.Timer(self.budget, self._overrun)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _overrun(self) -> None:
        log.error("shutdown took longer than shutdown_timeout_seconds (%gs): exiting now "
                  "(offsets not committed yet are processed again after a restart)",
                  self.budget)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_FAILED)
