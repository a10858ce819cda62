"""`python -m bench wakeups`: what sleeping between batches does to a batch's CPU.

At everyday rates the worker's CPU goes mostly per batch, not per event: a batch comes
with every fetch response, and between two the worker sleeps. This measures, without
Kafka, what that sleep costs: the pipeline in this process (the local config's planner
and decoder, the stack's two Valkey shards, the benchmarks' database, an in-memory
record source) runs `batch`-record batches of the latency benchmark's records (JSON
with schemas, ~5 KB), each prepared, sent and completed, with a sleep of `gap` before
each, as a worker waiting for its next fetch sleeps. The figure is the main thread's
CPU per batch (``time.thread_time``: the sleep itself costs nothing) against the gap.
The gaps are measured in turn, round after round, and each one's median is shown.

Its reading: the same batch costs more CPU the longer the thread slept before it —
caches and branch predictors go cold while other processes run (here: Kafka,
Connect, Postgres, the Valkeys). So at a given event rate, fewer and larger batches cost
less per event twice over: fewer batches, and each one less cold.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.env import Endpoints, write_config
from bench.events import Envelope, Workload
from bench.report import RESULTS_DIR, machine, table, write_result
from connectors.debezium.decode import Decoder
from connectors.valkey.shard import Shard
from reconciler.observe.metrics import Metrics
from reconciler.pipeline.invalidator import Invalidator
from reconciler.pipeline.pipeline import Pipeline
from reconciler.pipeline.planner import Planner
from reconciler.pipeline.testing import MemoryDeadLetters, MemorySource
from reconciler.settings import load_settings
from shard_map import load_shard_map

TOPIC = "bench.wakeups"
GAPS_MS = (0.0, 1.0, 5.0, 20.0)  # sleeps before each batch
KEYS = 100_000


def run_wakeups(endpoints: Endpoints, *, batch: int = 20, batches: int = 200, rounds: int = 5,
                gaps_ms: tuple[float, ...] = GAPS_MS, out_dir: Path = RESULTS_DIR) -> Path:
    settings = load_settings(write_config(Path(tempfile.mkdtemp(prefix="bench-wakeups-")),
                                          endpoints, group="bench.wakeups", topics=[TOPIC]))
    shard_map = load_shard_map(settings.shard_map)
    planner = Planner.for_settings(settings, shard_map)
    decoder = Decoder(columns=planner.columns)
    shards = {name: Shard(name, endpoints.shard_url(name)) for name in sorted(endpoints.valkey)}
    for shard in shards.values():
        shard.ensure_functions()
    envelope = Envelope()
    changes = Workload(records=batch * batches, keys=KEYS).changes()
    records = [(TOPIC, 0, envelope.key(change.id), envelope.value(change))
               for change in changes]
    print(f"wakeups: {batches} batches of {batch} records per point, {rounds} rounds, "
          f"gaps {', '.join(f'{g:g}' for g in gaps_ms)} ms")

    acknowledged: dict[float, int] = {}  # invalidations the shards answered, per gap

    def once(gap_ms: float) -> float:
        """The main thread's CPU per batch, in µs, with `gap_ms` of sleep before each."""
        invalidator = Invalidator(lambda: shards, retry_budget_seconds=5.0,
                                  truncate_max_keys_per_second=1e9)
        metrics = Metrics.create(CollectorRegistry())
        pipeline = Pipeline(MemorySource(records), decoder, planner, invalidator,
                            MemoryDeadLetters(), metrics,
                            max_event_bytes=settings.max_event_bytes)
        cpu, count = 0.0, 0
        while True:
            time.sleep(gap_ms / 1000)
            started = time.thread_time()
            messages = pipeline.poll(batch, 0)
            if not messages:
                break
            pipeline.push(messages)
            pipeline.drain()
            cpu += time.thread_time() - started
            count += 1
        acknowledged[gap_ms] = int(sum(
            sample.value for family in metrics.invalidations.collect()
            for sample in family.samples if sample.name.endswith("_total")))
        return cpu / count * 1e6

    once(0.0)  # warm-up: imports, connections, specialisation
    samples: dict[float, list[float]] = {gap: [] for gap in gaps_ms}
    for _ in range(rounds):
        for gap in gaps_ms:
            samples[gap].append(once(gap))
    for shard in shards.values():
        shard.close()
    base = statistics.median(samples[gaps_ms[0]])
    points: list[dict[str, Any]] = [
        {"gap_ms": gap, "cpu_us_per_batch": round(statistics.median(values), 1),
         "spread_us": [round(min(values), 1), round(max(values), 1)],
         "per_record_us": round(statistics.median(values) / batch, 2),
         "ratio": round(statistics.median(values) / base, 2),
         "acknowledged": acknowledged[gap]}
        for gap, values in samples.items()]
    print(table(["gap ms", "CPU µs/batch", "min..max", "µs/record", f"x gap {gaps_ms[0]:g}"],
                [[p["gap_ms"], p["cpu_us_per_batch"], f"{p['spread_us'][0]}..{p['spread_us'][1]}",
                  p["per_record_us"], p["ratio"]] for p in points]))
    path = write_result("wakeups", {"kind": "wakeups", "machine": machine(), "batch": batch,
                                    "batches": batches, "records": len(records),
                                    "rounds": rounds, "points": points}, out_dir)
    print(f"results: {path}")
    return path
