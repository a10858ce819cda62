"""Throughput: the ceiling, the naive baseline and our worker on the same topic.

One topic of `events` records (the workload in `bench.events`) is written once; then,
per run, with a fresh consumer group each and the cache reset to the same
pre-populated state before the naive baseline and before the worker:

1. ceiling — consume and discard, with the prefetch limits raised (`CEILING_CLIENT`):
   the fastest a Python consumer goes on this topic; and ceiling_worker_settings —
   the same with the worker's own consumer settings (its 64 MB prefetch bound);
2. naive — capped (`naive_records` / `naive_seconds`), its rate extrapolated;
3. worker — end to end until its stored positions reach the end offsets;
4. peers, only when asked for (`peers`, `bench.peers`): the Camel route, until its
   last record is done, its deletes checked in the cache afterwards.

An optional extra worker run is profiled (pyinstrument: the main thread, wall clock;
py-spy: every thread, only while it holds the GIL); its figures are kept apart.
"""

from __future__ import annotations

import statistics
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import process
from bench.cache import CacheMix, by_shard, cached_rows, expected
from bench.env import Code, Endpoints, delete_topic
from bench.events import Envelope, Workload
from bench.harness import Harness, accounted, write_topic
from bench.peers import camel
from bench.profile import summarize_py_spy
from bench.report import RESULTS_DIR, machine, stamp, table, write_result
from bench.runner import Spec

CEILING_CLIENT = {  # librdkafka prefetch limits raised (the worker keeps 64 MB queued)
    "queued.max.messages.kbytes": 256 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "fetch.max.bytes": 64 * 1024 * 1024,
}
CONSUMERS = ("ceiling", "ceiling_worker_settings", "naive", "worker")
PEERS = ("camel",)  # measured beside them when asked for (bench.peers)


@dataclass(frozen=True, slots=True)
class Options:
    events: int = 500_000  # Kafka records, tombstones included
    keys: int = 100_000  # rows at the start
    partitions: int = 6
    schemas: bool = True  # the JSON converter's schemas.enable (the local connector's)
    compression: str = "lz4"
    naive_records: int = 20_000  # the naive baseline stops after this many records…
    naive_seconds: float = 60.0  # …or this long, and its rate is extrapolated
    runs: int = 1
    seed: int = 1
    profile: tuple[str, ...] = ()  # one more worker run under each of these profilers
    keep_topic: bool = False
    worker_ref: str | None = None  # measure this commit's worker code, not the working tree
    worker_client: dict[str, str] = field(default_factory=dict)  # librdkafka overrides
    mix: CacheMix = field(default_factory=CacheMix)
    peers: tuple[str, ...] = ()  # of PEERS: off by default (they download their runtime)


def run_throughput(endpoints: Endpoints, options: Options,
                   out_dir: Path = RESULTS_DIR) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    uid = uuid.uuid4().hex[:8]
    topic = f"bench.throughput.{uid}"
    workload = Workload(records=options.events, keys=options.keys, seed=options.seed)
    envelope = Envelope(schemas=options.schemas, seed=options.seed)
    info = machine()
    code = Code.resolve(options.worker_ref)
    router = code.router
    print(f"throughput: {options.events:,} records into {topic} ({options.partitions} "
          f"partitions, {options.compression}); work files in {workdir}")
    if "camel" in options.peers:
        camel.prepare()  # its jars, before anything is written
    try:
        produced, ends = write_topic(endpoints, topic, options.partitions, workload,
                                     envelope, options.compression)
        rows = cached_rows(workload, options.mix)
        want, ops = expected(workload, router, rows)
        bench = Harness(endpoints, code, workdir, topic, ends, workload, router, rows,
                        client=options.worker_client, uid=uid)
        entries = bench.reset_cache()
        runs = []
        for index in range(options.runs):
            ceiling = bench.measure("ceiling", f"ceiling-{index}", reset_first=False,
                                    client=CEILING_CLIENT)
            ceiling_worker = bench.measure("ceiling", f"ceiling-ws-{index}", reset_first=False)
            naive = bench.measure("naive", f"naive-{index}", reset_first=True,
                                  timeout=options.naive_seconds + 300,
                                  limit_records=options.naive_records,
                                  limit_seconds=options.naive_seconds)
            worker = bench.measure("worker", f"worker-{index}", reset_first=True)
            figures = {"ceiling": ceiling, "ceiling_worker_settings": ceiling_worker,
                       "naive": naive, "worker": worker}
            if "camel" in options.peers:
                figures["camel"] = _camel(bench, index)
            runs.append(_run_summary(figures, want, options.events))
            _print_run(index, runs[-1])
        profiles = [_profile(profiler, options, bench.spec, bench.reset_cache, workdir,
                             out_dir, code) for profiler in options.profile]
    finally:
        if not options.keep_topic:
            delete_topic(endpoints, topic)
    data = {
        "kind": "throughput",
        "options": {**asdict(options), "topic": topic},
        "machine": info,
        "code": code.as_json(),
        "load_average_after": machine()["load_average"],
        "produced": produced.as_json(),
        "cache": {"entries": entries, **asdict(options.mix)},
        "workload_ops": dict(ops),
        "expected_invalidations": by_shard(want),
        "runs": runs,
        "summary": _summary(runs),
        "profiles": profiles,
    }
    path = write_result("throughput", data, out_dir)
    _print_summary(data["summary"])
    print(f"results: {path}")
    return path


def _camel(bench: Harness, index: int) -> dict[str, Any]:
    """The Camel route from the same start state, and what its DELs left in the cache."""
    result = bench.measure("camel", f"camel-{index}", reset_first=True)
    return {**result, "deletes": camel.check_deletes(bench.clients, bench.workload,
                                                     bench.router, bench.rows)}


def _names(runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The consumers measured in every one of `runs`."""
    return CONSUMERS + tuple(name for name in PEERS if all(name in run for run in runs))


def _run_summary(figures: dict[str, dict[str, Any]], want: Counter[tuple[str, str]],
                 events: int) -> dict[str, Any]:
    worker = figures["worker"]
    counted = accounted(worker)
    by_result: Counter[str] = Counter()
    for results in worker["invalidations"].values():
        by_result.update(results)
    total = sum(by_result.values())
    eps = {name: run["events_per_second"] for name, run in figures.items()}
    disturbed = []  # signs that something else changed the stack under the measurement
    if counted != want:
        disturbed.append("invalidations differ from the expected ones (cache flushed?)")
    if worker.get("retries"):
        disturbed.append(f"the worker retried {worker['retries']} times (a shard down?)")
    if (figures["naive"].get("seconds_in") or {}).get("shard_down"):
        disturbed.append("a shard refused the naive baseline's connections for a while")
    deletes = figures.get("camel", {}).get("deletes")
    if deletes and (deletes["left"] or deletes["lost"]):
        disturbed.append(f"the Camel route left {deletes['left']} entries it should have "
                         f"deleted, and deleted {deletes['lost']} it should have kept")
    return {
        **figures,
        "disturbed": disturbed,
        "worker_vs_ceiling": round(eps["worker"] / eps["ceiling"], 4),
        "worker_vs_ceiling_worker_settings": round(
            eps["worker"] / eps["ceiling_worker_settings"], 4),
        "worker_vs_naive": round(eps["worker"] / eps["naive"], 1),
        "worker_complete": worker["records"] == events and worker["exit_code"] == 0,
        "invalidations_match_expected": counted == want,
        "invalidation_fractions": {r: round(n / total, 4) for r, n in
                                   sorted(by_result.items())} if total else {},
        **{f"worker_vs_{peer}": round(eps["worker"] / eps[peer], 2)
           for peer in PEERS if peer in figures},
    }


def _summary(all_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the undisturbed runs (over all of them if every run was)."""
    runs = [run for run in all_runs if not run["disturbed"]] or all_runs

    def median(path: tuple[str, ...]) -> float:
        values = []
        for run in runs:
            value: Any = run
            for part in path:
                value = value[part]
            values.append(value)
        return float(statistics.median(values))

    out: dict[str, Any] = {"runs": len(runs), "disturbed_runs_left_out": len(all_runs) - len(runs)
                           if len(runs) < len(all_runs) else 0}
    names = _names(runs)
    for name in names:
        for figure in ("events_per_second", "cpu_seconds_per_100k", "peak_rss_mb"):
            out[f"{name}_{figure}"] = median((name, figure))
    for ratio in ("ceiling", "ceiling_worker_settings", "naive",
                  *(name for name in names if name in PEERS)):
        out[f"worker_vs_{ratio}"] = median((f"worker_vs_{ratio}",))
    for name in ("worker", *(name for name in names if name in PEERS)):
        out[f"{name}_cpu_us_per_event"] = round(out[f"{name}_cpu_seconds_per_100k"] * 10, 2)
    return out


def _print_run(index: int, run: dict[str, Any]) -> None:
    rows = []
    for name in _names([run]):
        figures = run[name]
        note = ""
        if name == "naive" and figures.get("capped"):
            note = f"capped at {figures['records']:,} records: extrapolated"
        rows.append([name, figures["events_per_second"], figures["records"],
                     figures["seconds"], figures["cpu_seconds_per_100k"],
                     figures["peak_rss_mb"], note])
    print(f"\nrun {index + 1}")
    print(table(["", "events/s", "records", "seconds", "CPU s/100k", "peak RSS MB", ""], rows))
    print(f"worker / ceiling = {run['worker_vs_ceiling']:.1%} (with the worker's settings: "
          f"{run['worker_vs_ceiling_worker_settings']:.1%})   worker / naive = "
          f"{run['worker_vs_naive']:.1f}x   invalidations as expected: "
          f"{run['invalidations_match_expected']}   seen: {run['invalidation_fractions']}")
    _print_peers(run)
    for reason in run["disturbed"]:
        print(f"DISTURBED: {reason}")


def _print_summary(summary: dict[str, Any]) -> None:
    left_out = summary["disturbed_runs_left_out"]
    print(f"\nmedian of {summary['runs']} run(s)"
          + (f" ({left_out} disturbed run(s) left out)" if left_out else ""))
    print(table(["", "events/s", "CPU s/100k", "peak RSS MB"],
                [[name, summary[f"{name}_events_per_second"],
                  summary[f"{name}_cpu_seconds_per_100k"], summary[f"{name}_peak_rss_mb"]]
                 for name in CONSUMERS + PEERS if f"{name}_events_per_second" in summary]))
    print(f"worker / ceiling = {summary['worker_vs_ceiling']:.1%} (with the worker's settings: "
          f"{summary['worker_vs_ceiling_worker_settings']:.1%})   worker / naive = "
          f"{summary['worker_vs_naive']:.1f}x   worker CPU per event = "
          f"{summary['worker_cpu_us_per_event']:.1f} µs")
    _print_peers(summary)


def _print_peers(figures: dict[str, Any]) -> None:
    """worker / peer, for a run or the summary; and what the Camel route's DELs left."""
    for peer in PEERS:
        if f"worker_vs_{peer}" in figures:
            print(f"worker / {peer} = {figures[f'worker_vs_{peer}']:.2f}x (the {peer} peer does "
                  "less per key: docs/benchmarks.md)")
    if deletes := figures.get("camel", {}).get("deletes"):
        print(f"camel's DELs: {deletes['entries_to_delete'] - deletes['left']:,} of "
              f"{deletes['entries_to_delete']:,} entries to delete gone, "
              f"{deletes['lost']:,} of {deletes['entries_to_keep']:,} others lost")


def _profile(profiler: str, options: Options, spec: Callable[..., Spec],
             reset: Callable[[], int], workdir: Path, out_dir: Path,
             code: Code) -> dict[str, Any]:
    reset()
    when = stamp()
    out_dir.mkdir(parents=True, exist_ok=True)
    if profiler == "pyinstrument":
        path = out_dir / f"profile-pyinstrument-{when}.txt"
        result = process.run(spec("worker", "worker-pyinstrument", profile=str(path)),
                             workdir, "worker-pyinstrument", timeout=300 + options.events / 1000,
                             code=code.directory)
        print(f"pyinstrument profile: {path}")
        return {"profiler": "pyinstrument", "file": path.name, "worker": result}
    raw = workdir / "py-spy.raw"
    result = process.run(spec("worker", "worker-py-spy"), workdir, "worker-py-spy",
                         timeout=300 + options.events / 1000, py_spy=raw,
                         code=code.directory)
    path = out_dir / f"profile-py-spy-{when}.txt"
    path.write_text(summarize_py_spy(raw))
    print(f"py-spy profile: {path}")
    return {"profiler": "py-spy", "file": path.name, "worker": result}
