"""Results files, machine information, percentiles and plain-text tables."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from reconciler.observe.metrics import histogram_quantile

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # default home of results
PACKAGES = ("confluent-kafka", "valkey", "libvalkey", "msgspec", "pydantic", "pyinstrument")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPUs, memory, load, versions."""
    import confluent_kafka

    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "packages": {},
    }
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def stamp() -> str:
    """The UTC time, as results files are named."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of all CPUs busy between two cpu_ticks() readings."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total else 0.0


def write_result(kind: str, data: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}-{stamp()}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, Any]:
    """Nearest-rank percentiles, plus max and count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    out: dict[str, Any] = {"count": len(ordered)}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        out[f"p{q:g}"] = ordered[rank - 1]
    out["max"] = ordered[-1]
    return out


def histogram_percentile(buckets: Sequence[Sequence[float]], q: float) -> float | None:
    """The q-th percentile of a Prometheus histogram ((le, cumulative) pairs), as
    histogram_quantile() reads it."""
    return histogram_quantile([(upper, count) for upper, count in buckets], q / 100)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
