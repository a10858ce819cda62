"""Latency: Kafka append -> invalidated, and Postgres commit -> invalidated.

Synthetic, per offered rate: a fresh topic (LogAppendTime) and a fresh worker; a paced
producer offers the workload's updates at the rate, with source.ts_ms set to the send
time, so the worker's own `reconciler_end_to_end_seconds` measures send -> acknowledged.
One record every `sample_every` seconds changes a key of its own; the probe
(`bench.probe`) polls those keys and notes when each fence appears, which against the
record's LogAppendTime (from its delivery report) gives append -> invalidated.

Debezium in the loop: the worker consumes the connector's posts topic with a fresh
group placed at its end; rows of `public.posts` are updated at `debezium_rate` per
second, each in its own transaction; the probe notes when each update's version appears
as the fence of `post:{id}`: Postgres commit (the UPDATE returned) -> invalidated.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message

from bench.env import (
    Code,
    Endpoints,
    Router,
    create_topic,
    delete_topic,
    flush,
    retrying,
    shard_clients,
    start_group_at_end,
    write_config,
)
from bench.events import UPDATE, Change, Envelope, Workload, source_ts_ms
from bench.process import Runner
from bench.producer import Callback, Produced, paced
from bench.report import (
    RESULTS_DIR,
    histogram_percentile,
    machine,
    percentiles,
    process_cpu_seconds,
    table,
    write_result,
)
from bench.runner import Spec
from bench.targets import check_targets, relative_error
from bench.targets import rows as target_rows

DEBEZIUM_TOPIC = "nd.public.posts"  # the local connector's posts topic
SAMPLE_BASE = 50_000_000  # ids of the probed rows (never in the workload's key space)
SAMPLE_HOODS = (100, 700)  # neighbourhoods of probed rows: one on shard a, one on b
DEBEZIUM_ROWS = 200  # rows the Debezium run inserts, updates round-robin, then deletes
JOIN_TIMEOUT = 60.0  # seconds for a worker to join its group
IDLE_SETTLE = 3.0  # seconds after the join before the idle worker's CPU is measured


@dataclass(frozen=True, slots=True)
class LatencyOptions:
    rates: tuple[float, ...] = (100.0, 1000.0, 5000.0, 20000.0)
    seconds: float = 20.0
    idle_seconds: float = 20.0  # the idle worker's CPU is measured this long (0: skip it)
    keys: int = 100_000
    partitions: int = 6
    compression: str = "lz4"
    sample_every: float = 0.01  # seconds between probed records (100 per second)
    probe_interval: float = 0.001  # seconds between the probe's polls (synthetic)
    debezium_rate: float = 300.0  # Postgres updates per second (0 skips the run)
    debezium_seconds: float = 20.0
    debezium_probe_interval: float = 0.005
    worker_ref: str | None = None  # measure this commit's worker code, not the working tree
    worker_client: dict[str, str] = field(default_factory=dict)  # librdkafka overrides


def run_latency(endpoints: Endpoints, options: LatencyOptions,
                out_dir: Path = RESULTS_DIR) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    info = machine()
    code = Code.resolve(options.worker_ref)
    print(f"latency: rates {', '.join(f'{r:,.0f}' for r in options.rates)}/s for "
          f"{options.seconds:.0f}s each; work files in {workdir}")
    idle = _idle(endpoints, options, workdir, code) if options.idle_seconds > 0 else None
    synthetic = [_synthetic(endpoints, options, rate, workdir, code) for rate in options.rates]
    debezium = _debezium(endpoints, options, workdir, code) \
        if options.debezium_rate > 0 else None
    rows = [[f"{r['offered_rate']:,.0f}/s", r["achieved_rate"], *_ms(r["append_to_fence"]),
             *_ms(r["worker_histogram"]), *_ms(r["worker_exact"]), *_ms(r["send_to_fence"]),
             r["worker_cpu_percent"]] for r in synthetic]
    if debezium is not None:
        rows.append([f"Debezium {debezium['offered_rate']:,.0f}/s", debezium["achieved_rate"],
                     *_ms(debezium["commit_to_fence"]), *_ms(debezium["worker_histogram"]),
                     None, None, None, None, None, None, debezium["worker_cpu_percent"]])
    if idle is not None:
        rows.insert(0, ["idle", 0, *[None] * 12, idle["worker_cpu_percent"]])
    print("\nappend -> fence: the probe (the targets); hist: read from the worker's "
          "histogram; exact: the delays it binned; send -> fence: the probe, the "
          "histogram's interval")
    print(table(["offered", "achieved/s", "p50 ms", "p99 ms", "max ms", "hist p50",
                 "hist p99", "hist max<=", "exact p50", "exact p99", "exact max",
                 "send p50", "send p99", "send max", "worker CPU %"], rows))
    data = {"kind": "latency", "options": asdict(options), "machine": info,
            "code": code.as_json(),
            "load_average_after": machine()["load_average"], "idle": idle,
            "synthetic": synthetic, "debezium": debezium}
    data["targets"] = check_targets(data)
    print("\n" + table(["target", "limit", "measured", "met"], target_rows(data["targets"])))
    path = write_result("latency", data, out_dir)
    print(f"results: {path}")
    return path


def _ms(figures: dict[str, Any]) -> list[float | None]:
    return [figures.get(k) for k in ("p50_ms", "p99_ms", "max_ms")]


class Probe:
    """A `bench.probe` child, fed the entries to watch as they are written."""

    def __init__(self, workdir: Path, name: str, interval: float) -> None:
        self.out = workdir / f"{name}.json"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.probe", str(self.out),
                                      str(interval)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        if self.proc.stdout.readline().strip() != b"ready":  # imported and listening
            raise RuntimeError("the probe did not start")

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def watch(self, index: int, url: str, key: str, version: int) -> None:
        self._stdin.write(json.dumps([index, url, key, version]).encode() + b"\n")
        self._stdin.flush()

    def seen(self, timeout: float = 90.0) -> dict[int, float]:
        self._stdin.close()
        self.proc.wait(timeout)
        found = json.loads(self.out.read_text())
        return {int(index): at for index, at in found["seen"].items()}


def _start_worker(endpoints: Endpoints, workdir: Path, name: str, topic: str,
                  code: Code, client: dict[str, str]) -> Runner:
    config = write_config(workdir / name, endpoints, group=f"bench-{name}", topics=[topic],
                          client=client, base=code.config)
    ready = workdir / f"{name}.ready"
    runner = Runner(Spec(kind="worker", config=str(config), topic=topic,
                         out=str(workdir / f"{name}.result.json"), ready=str(ready),
                         exact_delays=True),
                    workdir, name, code=code.directory)
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not ready.exists():
        if runner.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker {name} did not join its group\n{runner.tail()}")
        time.sleep(0.1)
    return runner


def _stop_worker(runner: Runner) -> dict[str, Any]:
    runner.proc.send_signal(signal.SIGTERM)
    return runner.result(timeout=60)


def _worker_figures(result: dict[str, Any]) -> dict[str, Any]:
    buckets = result["end_to_end_buckets"]
    hist = {f"p{q}_ms": _round_ms(histogram_percentile(buckets, q)) for q in (50, 99)}
    finite = [(le, n) for le, n in buckets if n == buckets[-1][1]]
    hist["max_ms"] = _round_ms(finite[0][0]) if finite else None  # upper bound of max
    cpu = result["cpu_seconds"] / result["seconds"] * 100 if result["seconds"] else None
    exact = {f"{q}_ms": _round_ms(v) for q, v in (result.get("end_to_end_exact") or {}).items()}
    return {"worker_histogram": hist, "worker_exact": exact,
            "worker_cpu_percent": round(cpu, 1) if cpu else None, "worker": result}


def _histogram_error(figures: dict[str, Any]) -> dict[str, float | None]:
    """The largest relative error (%) of the histogram's p50 and p99 against the exact
    quantiles of what it binned, and against the probe's send -> fence."""
    hist = figures["worker_histogram"]
    out: dict[str, float | None] = {}
    for name, reference in (("exact", figures["worker_exact"]),
                            ("probe", figures["send_to_fence"])):
        errors = [relative_error(hist.get(q), reference.get(q)) for q in ("p50_ms", "p99_ms")]
        known = [e for e in errors if e is not None]
        out[name] = max(known) if known else None
    return out


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _latencies(starts: dict[int, float], seen: dict[int, float]) -> dict[str, Any]:
    values = [(seen[i] - start) * 1000 for i, start in starts.items() if i in seen]
    figures = percentiles(values)
    out = {f"{k}_ms" if k != "count" else k: round(v, 2) if k != "count" else v
           for k, v in figures.items()}
    out["unseen"] = len(starts) - figures["count"]
    return out


# --------------------------------------------------------------------------- synthetic


def _synthetic(endpoints: Endpoints, options: LatencyOptions, rate: float,
               workdir: Path, code: Code) -> dict[str, Any]:
    name = f"latency-{int(rate)}-{uuid.uuid4().hex[:6]}"
    topic = f"bench.{name}"
    retrying(lambda: flush(shard_clients(endpoints)), "flushing the cache")
    create_topic(endpoints, topic, options.partitions,
                 {"message.timestamp.type": "LogAppendTime"})
    print(f"\n{rate:,.0f}/s for {options.seconds:.0f}s into {topic}")
    try:
        with _start_worker(endpoints, workdir, name, topic, code,
                           options.worker_client) as worker, \
                Probe(workdir, f"{name}-probe", options.probe_interval) as probe:
            result, produced, appended, sent, seen = _offer(
                endpoints, options, rate, topic, worker, probe, code.router)
    finally:
        delete_topic(endpoints, topic)
    figures = {"offered_rate": rate, "achieved_rate": round(produced.records / produced.seconds),
               "append_to_fence": _latencies(appended, seen),
               "send_to_fence": _latencies(sent, seen), **_worker_figures(result)}
    figures["histogram_error"] = _histogram_error(figures)
    print(f"append -> fence: {figures['append_to_fence']}")
    return figures


def _offer(endpoints: Endpoints, options: LatencyOptions, rate: float, topic: str,
           worker: Runner, probe: Probe, router: Router) -> tuple[
               dict[str, Any], Produced, dict[int, float], dict[int, float], dict[int, float]]:
    """Offer the rate; (worker result, what was produced, append times, send times as
    the records carry them, seen times)."""
    every = max(1, round(rate * options.sample_every))
    appended: dict[int, float] = {}
    sent: dict[int, float] = {}

    def delivered(index: int) -> Callback:
        def callback(error: KafkaError | None, message: Message) -> None:
            if error is None:
                appended[index] = message.timestamp()[1] / 1000  # LogAppendTime, ms
                sent[index] = source_ts_ms(message.value()) / 1000  # what the worker reads
        return callback

    def records() -> Iterator[tuple[Change, Callback | None]]:
        workload = Workload(records=10**9, keys=options.keys)
        for count, change in enumerate(workload.changes()):
            if count % every:
                yield change, None
                continue
            index = count // every
            hood = SAMPLE_HOODS[index % 2]
            sample = Change(UPDATE, SAMPLE_BASE + index, hood, 1)
            probe.watch(index, endpoints.shard_url(router.home(hood)), f"post:{sample.id}",
                        sample.version)
            yield sample, delivered(index)

    produced = paced(endpoints.kafka, topic, records(), Envelope(), rate=rate,
                     seconds=options.seconds, compression=options.compression)
    seen = probe.seen()
    return _stop_worker(worker), produced, appended, sent, seen


# --------------------------------------------------------------------------- idle


def _idle(endpoints: Endpoints, options: LatencyOptions, workdir: Path,
          code: Code) -> dict[str, Any]:
    """The worker's CPU while it has nothing to do: joined to an empty topic."""
    name = f"latency-idle-{uuid.uuid4().hex[:6]}"
    topic = f"bench.{name}"
    create_topic(endpoints, topic, options.partitions)
    print(f"\nidle for {options.idle_seconds:.0f}s on {topic}")
    try:
        with _start_worker(endpoints, workdir, name, topic, code,
                           options.worker_client) as worker:
            time.sleep(IDLE_SETTLE)  # the join's own work is not idle
            before, started = process_cpu_seconds(worker.pid), time.monotonic()
            time.sleep(options.idle_seconds)
            cpu = process_cpu_seconds(worker.pid) - before
            seconds = time.monotonic() - started
            _stop_worker(worker)
    finally:
        delete_topic(endpoints, topic)
    figures = {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 3),
               "worker_cpu_percent": round(cpu / seconds * 100, 2)}
    print(f"idle: {figures}")
    return figures


# --------------------------------------------------------------------------- Debezium


def _debezium(endpoints: Endpoints, options: LatencyOptions, workdir: Path,
              code: Code) -> dict[str, Any]:
    name = f"latency-debezium-{uuid.uuid4().hex[:6]}"
    router = code.router
    retrying(lambda: flush(shard_clients(endpoints)), "flushing the cache")
    print(f"\nDebezium: {options.debezium_rate:,.0f} updates/s for "
          f"{options.debezium_seconds:.0f}s on {DEBEZIUM_ROWS} rows of public.posts")
    with psycopg.connect(endpoints.postgres_dsn, autocommit=True) as db:
        rows = [db.execute("INSERT INTO posts (neighborhood_id, author_id, title, body) "
                           "VALUES (%s, 1, 'bench', 'latency benchmark row') RETURNING id",
                           (SAMPLE_HOODS[i % 2],)).fetchone()[0]  # type: ignore[index]
                for i in range(DEBEZIUM_ROWS)]
        try:
            time.sleep(3)  # let the inserts reach the topic before the group starts at its end
            start_group_at_end(endpoints, f"bench-{name}", DEBEZIUM_TOPIC)
            with _start_worker(endpoints, workdir, name, DEBEZIUM_TOPIC, code,
                               options.worker_client) as worker, \
                    Probe(workdir, f"{name}-probe", options.debezium_probe_interval) as probe:
                committed, wrong = _update_rows(db, rows, router, endpoints, probe, options)
                seen = probe.seen()
                result = _stop_worker(worker)
        finally:
            db.execute("DELETE FROM posts WHERE id = ANY(%s)", (rows,))
    figures = {"offered_rate": options.debezium_rate,
               "achieved_rate": round(len(committed) / options.debezium_seconds),
               "commit_to_fence": _latencies(committed, seen), "unexpected_versions": wrong,
               **_worker_figures(result)}
    print(f"commit -> fence: {figures['commit_to_fence']}")
    return figures


def _update_rows(db: psycopg.Connection[Any], rows: list[int], router: Router,
                 endpoints: Endpoints, probe: Probe,
                 options: LatencyOptions) -> tuple[dict[int, float], int]:
    """Update the rows round-robin at the rate; return (index -> commit time, number
    of updates whose version was not the one the round-robin predicts)."""
    total = int(options.debezium_rate * options.debezium_seconds)
    committed: dict[int, float] = {}
    wrong = 0
    started = time.perf_counter()
    for index, (slot, row) in zip(range(total), itertools.cycle(enumerate(rows)),
                                  strict=False):
        due = started + index / options.debezium_rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        (version,) = db.execute("UPDATE posts SET title = %s WHERE id = %s "
                                "RETURNING system_version",
                                (f"bench update {index}", row)).fetchone()  # type: ignore[misc]
        committed[index] = time.time()
        wrong += version != 2 + index // len(rows)
        hood = SAMPLE_HOODS[slot % 2]
        probe.watch(index, endpoints.shard_url(router.home(hood)), f"post:{row}", version)
    return committed, wrong
