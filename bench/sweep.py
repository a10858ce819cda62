"""How cost grows: the worker's CPU per event and events/s against partitions, shards,
keys per event, event size and workers in one group (`bench.dimensions`).

Per point, one topic of `events` records written once (fewer where they would pass
`max_topic_mb`), the cache pre-populated as in the throughput benchmark; then per run,
in the same run and each with a fresh consumer group: the ceiling (consume and discard
with the worker's own consumer settings: `ceiling_worker_settings` of the throughput
benchmark, as many consumers in one group as the point has workers), then the worker
(the cache reset first), its invalidation counts checked against the model. Every
shard is a Valkey server of the sweep's own (`bench.servers`).

Per dimension the figures are read against the work an event asks for (constant, the
cache operations per event, or the record's bytes): growth beyond `flag_factor` times
that work from the smallest point to the largest is flagged as super-linear, and so is
a group whose events/s per worker falls by that factor. The results go to
`bench/results/sweep-*.json`, the figure beside it (`bench.plot`).
"""

from __future__ import annotations

import statistics
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cache import CacheMix, by_shard, cached_rows, expected
from bench.dimensions import ACTIONS, BASE, BYTES, DIMENSIONS, Point
from bench.env import Code, Endpoints, Router, delete_topic
from bench.events import Envelope, Workload
from bench.harness import Harness, accounted, write_topic
from bench.plot import plot_sweep
from bench.report import RESULTS_DIR, machine, table, write_result
from bench.servers import ValkeyServers

SIZE_SAMPLE = 200  # records encoded to estimate a point's record size
# A group whose members' first records are further apart than this (seconds, or share
# of its span) is disturbed: librdkafka sometimes resumes a paused member's fetching
# only about a second late (see bench.group.wake).
SKEW_SECONDS, SKEW_SHARE = 0.1, 0.1
SKEWED = "the group's members started"  # how such a run's disturbance begins
FIGURES = ("worker_cpu_us_per_event", "worker_events_per_second", "ceiling_events_per_second",
           "ceiling_cpu_us_per_event", "worker_vs_ceiling", "worker_peak_rss_mb")


@dataclass(frozen=True, slots=True)
class SweepOptions:
    dimensions: dict[str, tuple[int, ...]]  # dimension -> its points (bench.dimensions)
    events: int = 200_000  # Kafka records per point, tombstones included
    keys: int = 100_000  # rows at the start
    max_topic_mb: int = 2000  # a point's records are cut to keep its values under this
    runs: int = 1
    seed: int = 1
    compression: str = "lz4"
    flag_factor: float = 1.5  # growth beyond this times the work's is super-linear
    worker_ref: str | None = None  # measure this commit's worker code, not the working tree
    worker_client: dict[str, str] = field(default_factory=dict)  # librdkafka overrides
    mix: CacheMix = field(default_factory=CacheMix)


def run_sweep(endpoints: Endpoints, options: SweepOptions, out_dir: Path = RESULTS_DIR) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    info = machine()
    code = Code.resolve(options.worker_ref)
    servers = max([BASE.shards, *options.dimensions.get("shards", ())])
    print(f"sweep: {', '.join(f'{n} {list(p)}' for n, p in options.dimensions.items())}; "
          f"{options.events:,} records a point, {options.runs} run(s); work files in {workdir}")
    dimensions: dict[str, Any] = {}
    with ValkeyServers(servers) as valkey:
        for name, values in options.dimensions.items():
            points = [_point(endpoints, valkey.urls, BASE.at(name, value), options, code,
                             workdir) for value in values]
            dimensions[name] = {"values": list(values), "points": points,
                                "growth": growth(name, points, options.flag_factor)}
            _print_dimension(name, dimensions[name])
    data = {"kind": "sweep", "options": asdict(options), "base": asdict(BASE),
            "machine": info, "code": code.as_json(),
            "load_average_after": machine()["load_average"], "dimensions": dimensions}
    path = write_result("sweep", data, out_dir)
    figure = plot_sweep(data, path.with_suffix(".png"))
    print(f"results: {path}\nfigure: {figure}")
    return path


def _point(endpoints: Endpoints, urls: list[str], point: Point, options: SweepOptions,
           code: Code, workdir: Path) -> dict[str, Any]:
    """One point: its topic written once, then per run the ceiling and the worker."""
    uid = uuid.uuid4().hex[:8]
    topic = f"bench.sweep.{uid}"
    shard_map = point.shard_map()
    router, keys = Router.of(shard_map), point.posts_keys()
    shards = Endpoints(endpoints.kafka, dict(zip(shard_map["shards"], urls, strict=False)),
                       endpoints.postgres_dsn, db=endpoints.db)
    envelope = Envelope(body_chars=point.body_chars(), seed=options.seed)
    records = _records(point, options)
    workload = Workload(records=records, keys=options.keys, seed=options.seed)
    print(f"\n{point.label}: {records:,} records into {topic}")
    try:
        produced, ends = write_topic(endpoints, topic, point.partitions, workload, envelope,
                                     options.compression)
        rows = cached_rows(workload, options.mix)
        want, ops = expected(workload, router, rows, keys)
        bench = Harness(shards, code, workdir, topic, ends, workload, router, rows, keys=keys,
                        shard_map=shard_map, client=options.worker_client, uid=uid)
        runs = []
        for index in range(options.runs):
            label = f"{point.label}-{index}"
            ceiling = bench.measure("ceiling", f"ceiling-{label}", reset_first=False,
                                    consumers=point.workers)
            worker = bench.measure("worker", f"worker-{label}", reset_first=True,
                                   consumers=point.workers)
            runs.append(judge_run(ceiling, worker, want, records))
            for reason in runs[-1]["disturbed"]:
                print(f"DISTURBED: {reason}")
    finally:
        delete_topic(endpoints, topic)
    return {"point": asdict(point), "records": records, "produced": produced.as_json(),
            "workload_ops": dict(ops), "expected_invalidations": by_shard(want),
            "actions_per_event": round(sum(want.values()) / records, 3),
            "runs": runs, "summary": summarise_runs(runs)}


def _records(point: Point, options: SweepOptions) -> int:
    """`events`, or fewer where their values would pass `max_topic_mb`."""
    sample = Workload(records=SIZE_SAMPLE, keys=options.keys, seed=options.seed)
    envelope = Envelope(body_chars=point.body_chars(), seed=options.seed)
    size = statistics.mean(len(envelope.value(change) or b"") for change in sample.changes())
    return min(options.events, int(options.max_topic_mb * 1e6 / size))


def judge_run(ceiling: dict[str, Any], worker: dict[str, Any], want: Mapping[tuple[str, str], int],
         records: int) -> dict[str, Any]:
    disturbed = []  # signs that something else changed the stack under the measurement
    matches = accounted(worker) == want
    if not matches:
        disturbed.append("invalidations differ from the expected ones")
    if worker["records"] != records or worker["exit_code"]:
        disturbed.append(f"the worker did {worker['records']:,} of {records:,} records "
                         f"(exit code {worker['exit_code']})")
    if ceiling["records"] < records:
        disturbed.append(f"the ceiling read {ceiling['records']:,} of {records:,} records")
    if worker.get("retries"):
        disturbed.append(f"the worker retried {worker['retries']} times (a shard down?)")
    for name, result in (("ceiling", ceiling), ("worker", worker)):
        skew = result.get("join_skew_seconds") or 0.0
        if skew > max(SKEW_SECONDS, SKEW_SHARE * result["seconds"]):
            disturbed.append(f"{SKEWED} {skew:.2f} s apart ({name}s, {skew / result['seconds']:.0%}"
                             " of the span): the group's events/s is understated")
    return {
        "worker_cpu_us_per_event": _us(worker),
        "worker_events_per_second": worker["events_per_second"],
        "ceiling_events_per_second": ceiling["events_per_second"],
        "ceiling_cpu_us_per_event": _us(ceiling),
        "worker_vs_ceiling": round(worker["events_per_second"] /
                                   ceiling["events_per_second"], 4),
        "worker_peak_rss_mb": worker["peak_rss_mb"],
        "invalidations_match_expected": matches,
        "disturbed": disturbed,
        "ceiling": ceiling,
        "worker": worker,
    }


def _us(result: Mapping[str, Any]) -> float:
    return round(float(result["cpu_seconds"] * 1e6 / result["records"]), 2)


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the undisturbed runs (over all of them if every run was), and the
    spread of each figure over those runs."""
    kept = [run for run in runs if not run["disturbed"]] or runs
    out: dict[str, Any] = {"runs": len(kept), "disturbed": len(kept) < len(runs) or
                           any(run["disturbed"] for run in kept)}
    for figure in FIGURES:
        values = [run[figure] for run in kept]
        out[figure] = round(statistics.median(values), 4)
        out[f"{figure}_range"] = [min(values), max(values)]
    return out


def growth(name: str, points: list[dict[str, Any]], factor: float) -> dict[str, Any]:
    """How the figures grow from the smallest point to the largest, against the work an
    event asks for; the super-linear growths found."""
    dimension = DIMENSIONS[name]
    work = [_work(dimension.work, point) for point in points]
    first, last = points[0]["summary"], points[-1]["summary"]
    low, high = points[0]["point"][name], points[-1]["point"][name]
    work_growth = work[-1] / work[0]
    cpu_growth = last["worker_cpu_us_per_event"] / first["worker_cpu_us_per_event"]
    rate_fall = first["worker_events_per_second"] / last["worker_events_per_second"]
    flags = []
    if cpu_growth > factor * work_growth:
        flags.append(f"CPU per event grows {cpu_growth:.2f}x from {name} {low} to {high}, "
                     f"the work per event {work_growth:.2f}x")
    if name == "workers":
        per_worker = [p["summary"]["worker_events_per_second"] / p["point"][name]
                      for p in points]
        if per_worker[-1] * factor < per_worker[0]:
            flags.append(f"events/s per worker falls from {per_worker[0]:,.0f} to "
                         f"{per_worker[-1]:,.0f} with {high} workers")
    elif rate_fall > factor * work_growth:
        flags.append(f"events/s falls {rate_fall:.2f}x from {name} {low} to {high}, the "
                     f"work per event grows {work_growth:.2f}x")
    return {
        "work": dimension.work,
        "work_per_event": work,
        "work_growth": round(work_growth, 3),
        "cpu_growth": round(cpu_growth, 3),
        "events_per_second_fall": round(rate_fall, 3),
        "cpu_per_work_vs_first": [  # 1.0 all along: CPU grows exactly as the work does
            round(p["summary"]["worker_cpu_us_per_event"] / w /
                  (first["worker_cpu_us_per_event"] / work[0]), 3)
            for p, w in zip(points, work, strict=True)],
        "super_linear": [flag + " (from a disturbed point: measure again)"
                         if first["disturbed"] or last["disturbed"] else flag
                         for flag in flags],
    }


def _work(kind: str, point: Mapping[str, Any]) -> float:
    if kind == ACTIONS:
        return float(point["actions_per_event"])
    if kind == BYTES:
        return float(point["produced"]["mean_value_bytes"])
    return 1.0


def _print_dimension(name: str, result: Mapping[str, Any]) -> None:
    growth_ = result["growth"]
    rows = []
    for point, normalised in zip(result["points"], growth_["cpu_per_work_vs_first"],
                                 strict=True):
        summary = point["summary"]
        rows.append([point["point"][name], point["records"],
                     summary["worker_cpu_us_per_event"], summary["worker_events_per_second"],
                     summary["ceiling_events_per_second"], summary["ceiling_cpu_us_per_event"],
                     f"{summary['worker_vs_ceiling']:.1%}", summary["worker_peak_rss_mb"],
                     normalised, "DISTURBED" if summary["disturbed"] else ""])
    print(f"\n{DIMENSIONS[name].title} (work per event: {growth_['work']})")
    print(table([name, "records", "CPU µs/event", "events/s", "ceiling ev/s",
                 "ceiling µs/ev", "worker/ceiling", "RSS MB", "CPU/work x", ""], rows))
    for flag in growth_["super_linear"]:
        print(f"SUPER-LINEAR: {flag}")
    if not growth_["super_linear"]:
        print(f"no super-linear growth (CPU per event {growth_['cpu_growth']:.2f}x, work "
              f"per event {growth_['work_growth']:.2f}x)")

