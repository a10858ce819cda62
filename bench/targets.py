"""The performance targets (issue 17, docs/benchmarks.md) and whether a latency run met
them: each target with its measured value, printed as a table and kept in the result.

- CPU at everyday rates: the worker's CPU-seconds over wall-clock seconds, in percent
  of one core — idle (joined, nothing to read), and at offered rates of 1k and 5k/s;
- latency added from Kafka append to invalidation (the probe's append → fence) at
  5k/s and 20k/s, and Postgres commit → invalidated with Debezium in the loop;
- the worker's own histogram: p50 and p99 read from reconciler_end_to_end_seconds
  within 10% of the exact quantiles of the delays it binned, and of the probe's
  figures for the same interval (record send → fence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HISTOGRAM_TOLERANCE = 0.10  # the histogram's quantiles vs the exact ones, relative


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    limit: float
    unit: str
    measure: Callable[[dict[str, Any]], float | None]  # from the run's result; None: not run

    def check(self, result: dict[str, Any]) -> dict[str, Any]:
        value = self.measure(result)
        return {"target": self.name, "limit": self.limit, "unit": self.unit,
                "measured": None if value is None else round(value, 2),
                "met": None if value is None else value <= self.limit}


def _rate(result: dict[str, Any], rate: float) -> dict[str, Any] | None:
    for run in result.get("synthetic") or []:
        if run["offered_rate"] == rate:
            return run  # type: ignore[no-any-return]
    return None


def _cpu_at(rate: float) -> Callable[[dict[str, Any]], float | None]:
    def measure(result: dict[str, Any]) -> float | None:
        run = _rate(result, rate)
        return None if run is None else run["worker_cpu_percent"]
    return measure


def _probe_at(rate: float, quantile: str) -> Callable[[dict[str, Any]], float | None]:
    def measure(result: dict[str, Any]) -> float | None:
        run = _rate(result, rate)
        return None if run is None else run["append_to_fence"].get(f"{quantile}_ms")
    return measure


def _idle(result: dict[str, Any]) -> float | None:
    idle = result.get("idle")
    return None if idle is None else idle["worker_cpu_percent"]


def _debezium_p99(result: dict[str, Any]) -> float | None:
    debezium = result.get("debezium")
    return None if debezium is None else debezium["commit_to_fence"].get("p99_ms")


def _histogram_error(against: str) -> Callable[[dict[str, Any]], float | None]:
    """The largest relative error of the histogram's p50/p99 over the synthetic rates,
    in percent, against the exact quantiles or the probe's send → fence."""
    def measure(result: dict[str, Any]) -> float | None:
        errors = [run["histogram_error"][against] for run in result.get("synthetic") or []
                  if run.get("histogram_error", {}).get(against) is not None]
        return max(errors) if errors else None
    return measure


TARGETS = (
    Target("idle CPU", 1.0, "% of a core", _idle),
    Target("CPU at 1k/s", 5.0, "% of a core", _cpu_at(1000.0)),
    Target("CPU at 5k/s", 15.0, "% of a core", _cpu_at(5000.0)),
    Target("append -> invalidated p50 at 5k/s", 5.0, "ms", _probe_at(5000.0, "p50")),
    Target("append -> invalidated p99 at 5k/s", 15.0, "ms", _probe_at(5000.0, "p99")),
    Target("append -> invalidated p99 at 20k/s", 30.0, "ms", _probe_at(20000.0, "p99")),
    Target("Debezium commit -> invalidated p99", 500.0, "ms", _debezium_p99),
    Target("histogram p50/p99 vs exact", HISTOGRAM_TOLERANCE * 100, "% off",
           _histogram_error("exact")),
    Target("histogram p50/p99 vs probe send -> fence", HISTOGRAM_TOLERANCE * 100, "% off",
           _histogram_error("probe")),
)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [target.check(result) for target in TARGETS]


def rows(checks: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows: target, limit, measured, met (yes / NO / not run)."""
    return [[c["target"], f"<= {c['limit']:g} {c['unit']}",
             "-" if c["measured"] is None else f"{c['measured']:g}",
             "not run" if c["met"] is None else "yes" if c["met"] else "NO"] for c in checks]


def relative_error(read: float | None, reference: float | None) -> float | None:
    """|read - reference| / reference, in percent (None when either is missing)."""
    if read is None or not reference:
        return None
    return round(abs(read - reference) / reference * 100, 1)
