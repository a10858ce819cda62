"""Backlog: `events` records waiting, the worker started — catch-up time and memory.

The topic is generated once (deterministically from the options) and reused by later
runs when it is complete. The cache is reset to the pre-populated state, then a
worker with a fresh group reads the topic from the start until it is caught up, while
its VmRSS (/proc/<pid>/status) and progress are sampled every `sample_every` seconds.
The RSS curve is summarised per tenth of progress: it must stay flat.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cache import CacheMix, cached_rows, populate
from bench.env import (
    Code,
    Endpoints,
    create_topic,
    delete_topic,
    end_offsets,
    flush,
    retrying,
    shard_clients,
    topic_exists,
    write_config,
)
from bench.events import Envelope, Workload
from bench.process import Runner
from bench.producer import produce
from bench.report import RESULTS_DIR, machine, table, write_result
from bench.runner import Spec


@dataclass(frozen=True, slots=True)
class BacklogOptions:
    events: int = 1_000_000
    keys: int = 100_000
    partitions: int = 6
    compression: str = "lz4"
    schemas: bool = True
    seed: int = 1
    sample_every: float = 0.5  # seconds between RSS samples
    worker_ref: str | None = None  # measure this commit's worker code, not the working tree
    worker_client: dict[str, str] = field(default_factory=dict)  # librdkafka overrides


def run_backlog(endpoints: Endpoints, options: BacklogOptions,
                out_dir: Path = RESULTS_DIR) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    envelope = "schema" if options.schemas else "bare"
    topic = (f"bench.backlog.{options.events}.{envelope}.{options.compression}"
             f".k{options.keys}.p{options.partitions}.s{options.seed}")
    workload = Workload(records=options.events, keys=options.keys, seed=options.seed)
    info = machine()
    code = Code.resolve(options.worker_ref)
    produced = _ensure_topic(endpoints, topic, workload, options)
    ends = end_offsets(endpoints, topic)
    clients = shard_clients(endpoints)
    rows = cached_rows(workload, CacheMix())

    def reset() -> int:
        flush(clients)
        return populate(clients, workload, code.router, rows)

    entries = retrying(reset, "resetting the cache")
    name = f"backlog-{uuid.uuid4().hex[:6]}"
    config = write_config(workdir / name, endpoints, group=f"bench-{name}", topics=[topic],
                          client=options.worker_client, base=code.config)
    progress = workdir / f"{name}.progress"
    runner = Runner(Spec(kind="worker", config=str(config), topic=topic, ends=ends,
                         out=str(workdir / f"{name}.result.json"), progress=str(progress)),
                    workdir, name, code=code.directory)
    print(f"backlog: worker {runner.pid} catching up on {options.events:,} records of {topic}")
    samples = _sample(runner, progress, options.sample_every)
    result = runner.result(timeout=600)
    curve = _curve(samples, options.events)
    print(table(["progress", "samples", "RSS min MB", "median", "max"],
                [[f"{c['progress']}%", c["samples"], c["rss_min_mb"], c["rss_median_mb"],
                  c["rss_max_mb"]] for c in curve]))
    print(f"caught up in {result['seconds']:.1f}s ({result['events_per_second']:,}/s), "
          f"CPU {result['cpu_seconds_per_100k']:.2f}s/100k, peak RSS "
          f"{result['peak_rss_mb']:.0f} MB")
    data = {"kind": "backlog", "options": {**asdict(options), "topic": topic},
            "machine": info, "code": code.as_json(),
            "load_average_after": machine()["load_average"],
            "produced": produced, "cache_entries": entries, "worker": result,
            "rss_curve": curve, "rss_samples": samples}
    path = write_result("backlog", data, out_dir)
    print(f"results: {path}")
    return path


def _ensure_topic(endpoints: Endpoints, topic: str, workload: Workload,
                  options: BacklogOptions) -> dict[str, Any] | str:
    if topic_exists(endpoints, topic):
        if sum(end_offsets(endpoints, topic).values()) == options.events:
            print(f"reusing {topic}")
            return "reused"
        delete_topic(endpoints, topic)  # incomplete: a run was interrupted while writing
        time.sleep(2)
    create_topic(endpoints, topic, options.partitions)
    print(f"writing {options.events:,} records into {topic}")
    produced = produce(endpoints.kafka, topic, workload.changes(),
                       Envelope(schemas=options.schemas, seed=options.seed),
                       compression=options.compression)
    return produced.as_json()


def _sample(runner: Runner, progress: Path, every: float) -> list[tuple[float, int, float]]:
    """(seconds since start, records done, VmRSS MB) until the worker exits."""
    samples = []
    started = time.monotonic()
    while runner.proc.poll() is None:
        rss = _vm_rss_mb(runner.pid)
        try:
            done = int(progress.read_text() or 0)
        except (OSError, ValueError):
            done = 0
        if rss is not None:
            samples.append((round(time.monotonic() - started, 2), done, rss))
        time.sleep(every)
    return samples


def _vm_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                kib = int(line.split()[1])
                return round(kib / 1024, 1) if kib else None  # 0 while the process exits
    except OSError:
        pass
    return None


def _curve(samples: list[tuple[float, int, float]], events: int) -> list[dict[str, Any]]:
    curve = []
    for decile in range(1, 11):
        low, high = (decile - 1) * events / 10, decile * events / 10
        rss = [r for _, done, r in samples if low < done <= high]
        if rss:
            curve.append({"progress": decile * 10, "samples": len(rss),
                          "rss_min_mb": min(rss), "rss_median_mb": statistics.median(rss),
                          "rss_max_mb": max(rss)})
    return curve
