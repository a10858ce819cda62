"""What a measured consumer counts: records, and wall and CPU time from its first record
to its last (`Meter`), and its peak resident set."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

STALL_SECONDS = 60.0  # ceiling, naive: give up when nothing arrives for this long


@dataclass(slots=True)
class Meter:
    """Records, wall and CPU time from the first record to the last.

    Times are `time.perf_counter()` readings: CLOCK_MONOTONIC on Linux, the same clock
    in every process of the machine, so that the spans of a group's members (in
    `window`) can be laid side by side.
    """

    records: int = 0
    started: float | None = None
    finished: float | None = None
    cpu_started: float = 0.0
    cpu_finished: float = 0.0

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_started = _cpu()

    def finish(self) -> None:
        if self.finished is None:
            self.lap()

    def lap(self) -> None:
        """The last record so far is done now: the span ends here unless more follow
        (a member of a group cannot tell on its own which record is its last)."""
        self.finished = time.perf_counter()
        self.cpu_finished = _cpu()

    def as_json(self) -> dict[str, Any]:
        seconds = self.finished - self.started \
            if self.finished is not None and self.started is not None else 0.0
        return {**span(self.records, seconds, self.cpu_finished - self.cpu_started),
                "cpu_seconds_total": round(_cpu(), 3),
                "peak_rss_mb": peak_rss_mb(),
                "window": [self.started, self.finished]}  # perf_counter() readings


def span(records: int, seconds: float, cpu: float) -> dict[str, Any]:
    """The figures of `records` done in `seconds` using `cpu` CPU seconds."""
    return {
        "records": records,
        "seconds": round(seconds, 3),
        "events_per_second": round(records / seconds) if seconds > 0 else None,
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_100k": round(cpu * 100_000 / records, 3) if records else None,
    }


def peak_rss_mb(pid: int | None = None) -> float:
    """The peak resident set of this process (or of `pid`): VmHWM. Not ru_maxrss: Linux
    carries it over exec from the process that forked us, so a child of a 300 MB parent
    reports 300 MB at least (the bench's own process held the workload when it started
    the runs)."""
    try:
        with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        if pid is not None:  # gone: the fallback below is this process's
            raise
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB (Linux)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
