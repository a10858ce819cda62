"""One measured consumer in a process of its own: `python -m bench.runner SPEC.json`.

Kinds (each reads `topic` from the earliest offset with the config's fresh group):

- `ceiling`: `consume()` batches of the worker's size with the worker's consumer
  settings (plus `client` overrides), and discard them: the fastest a Python worker
  with those settings can go on this topic.
- `naive` (`bench.naive`): one message at a time, `json.loads`, one synchronous `FCALL
  cr<N>_apply` per key, a synchronous commit per message; stops at `limit_records` /
  `limit_seconds`.
- `worker`: our `Worker.run()` (serve_metrics off) until its counters account for every
  record of the topic (`Measured`), or until SIGTERM when `ends` is empty (the
  latency benchmark).

The process writes one JSON result to `out`: records, seconds from the first record
to the last, CPU seconds over that span (getrusage: every thread, librdkafka's
included), peak RSS, and for the worker its own counters and histograms. Timing
starts when the first batch arrives, so group joins and connections are left out.

A ceiling or a worker with a `group` folder is one of several in one consumer group
(`bench.group`): it reads only its share, reports its progress, and stops when the
bench process says the group is done.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message
from prometheus_client import CollectorRegistry

from bench.cache import by_shard
from bench.group import Gate, Progress, wake
from bench.meter import STALL_SECONDS, Meter
from bench.naive import naive
from connectors.kafka import consumer_config
from reconciler.logs import configure_logging
from reconciler.settings import Settings, load_settings

try:  # the worker as of the pipeline split: timed through its hooks
    from reconciler.pipeline.clients import kafka_security
    from reconciler.pipeline.hooks import NoHooks
    from reconciler.pipeline.worker import Worker
    LEGACY = False
except ImportError:  # a worker from before it (`--worker-ref`): timed by wrapping it
    from reconciler.clients import kafka_security  # type: ignore[no-redef, import-not-found]
    from reconciler.worker import Worker  # type: ignore[no-redef, import-not-found]
    NoHooks = object  # type: ignore[assignment, misc]
    LEGACY = True

WATCH_EVERY = 0.05  # seconds between the watcher's looks at the worker's counters


@dataclass(frozen=True, slots=True)
class Spec:
    kind: str  # ceiling | naive | worker
    config: str  # reconciler.yaml written by bench.env.write_config
    topic: str
    out: str  # where the JSON result goes
    ends: dict[int, int] = field(default_factory=dict)  # partition -> end offset
    limit_records: int | None = None  # naive: stop after this many records
    limit_seconds: float | None = None  # naive: or after this long
    profile: str | None = None  # worker: write a pyinstrument profile here (.txt)
    ready: str | None = None  # worker: touched once it has joined its group
    progress: str | None = None  # worker: rewritten with the records processed so far
    client: dict[str, Any] = field(default_factory=dict)  # ceiling: librdkafka overrides
    group: str | None = None  # ceiling, worker: one of a group (`bench.group`), its folder
    exact_delays: bool = False  # worker: keep every end-to-end delay the histogram bins

    @property
    def records(self) -> int:
        return sum(self.ends.values())


# --------------------------------------------------------------------------- ceiling


def ceiling(spec: Spec, settings: Settings) -> dict[str, Any]:
    kafka = settings.kafka
    consumer = Consumer(consumer_config(kafka.bootstrap_servers, kafka.group_id,
                                        kafka_security(settings),
                                        {**kafka.client, **spec.client}))
    gate = Gate(spec.group) if spec.group else None
    if gate is None:
        consumer.subscribe([spec.topic])
    else:
        gate.join_paused(consumer, spec.topic, spec.out)
    progress = Progress(spec.progress)
    meter = Meter()

    def done() -> bool:
        return gate.stopping() if gate is not None else meter.records >= spec.records

    batch, timeout = kafka.batch_size, kafka.poll_timeout_seconds
    last = time.perf_counter()
    while not done() and time.perf_counter() - last < STALL_SECONDS:
        messages = _consume(consumer, batch, timeout)
        if messages:
            meter.start()
            meter.records += len(messages)
            last = time.perf_counter()
            if gate is not None:
                meter.lap()
        progress.report(meter.records)
    meter.finish()
    consumer.close()
    return meter.as_json()


def _consume(consumer: Consumer, batch: int, timeout: float) -> list[Message]:
    """As the worker polls: what is ready now, up to a batch; else up to `timeout` for
    one record, and what came with it. (consume(batch, timeout) alone holds the last,
    partial batch of the topic for the whole timeout: half a second on every ceiling.)"""
    messages: list[Message] = consumer.consume(batch, 0)
    if not messages:
        messages = consumer.consume(1, timeout)
        if messages and batch > 1:
            messages += consumer.consume(batch - 1, 0)
    return messages


# --------------------------------------------------------------------------- worker


class Timings(NoHooks):
    """The worker's hooks (`reconciler.pipeline.hooks`): when records first arrive, how
    long the worker waits in consume(), in the invalidator, and completing batches."""

    def __init__(self, meter: Meter, on_first: Callable[[], None],
                 on_poll: Callable[[], None]) -> None:
        self._meter = meter
        self._on_first = on_first
        self._on_poll = on_poll
        self.waiting = 0.0  # seconds inside consume() once records flow (not the group join)
        self.invalidating = 0.0  # seconds inside the invalidator's start and finish
        self.completing = 0.0  # seconds completing the batch in flight

    def polled(self, records: int, seconds: float) -> None:
        if self._meter.started is not None:  # the run's seconds start at the first record
            self.waiting += seconds
        elif records:
            self._on_first()
            self._meter.start()
        self._on_poll()

    def invalidated(self, seconds: float) -> None:
        self.invalidating += seconds

    def completed(self, seconds: float) -> None:
        if self._meter.started is not None:
            self.completing += seconds


class Measured:
    """Our worker, unmodified, observed through its hooks and its metrics (SPEC §6).
    Every record ends up counted once in reconciler_events_total,
    reconciler_skipped_total or reconciler_dead_letters_total, after its offset is
    stored: when they add up to the topic's records, the worker has caught up (or, one
    of a group, when the bench process says the group's counters do)."""

    def __init__(self, settings: Settings, spec: Spec) -> None:
        self.spec = spec
        self.meter = Meter()
        self.timings = Timings(self.meter, self._start_profile, self._check)
        self.gate = Gate(spec.group) if spec.group else None
        self._done = threading.Event()  # worker.run() has returned
        if LEGACY:
            self.worker = Worker(settings, registry=CollectorRegistry(), serve_metrics=False)
            _legacy_timing(self.worker, self.timings)
        else:
            self.worker = Worker(settings, registry=CollectorRegistry(), serve_metrics=False,
                                 hooks=self.timings)
        self.registry = self.worker.metrics.registry
        metrics = self.worker.metrics
        self._counters = (metrics.events, metrics.skipped, metrics.dead_letters)
        self._profiler: Any = None
        self.delays: list[float] = []
        if spec.exact_delays:  # the values the histogram bins, to check its quantiles
            binned = metrics.end_to_end.observe_many

            def observe_many(values: Any) -> None:
                values = list(values)
                self.delays.extend(values)
                binned(values)

            metrics.end_to_end.observe_many = observe_many  # type: ignore[method-assign]

    def run(self) -> int:
        if self.gate is not None:  # join paused, as an operator pauses a worker
            self.worker.install_signal_handlers()
            os.kill(os.getpid(), signal.SIGUSR1)
        threading.Thread(target=self._watch, name="bench-watch", daemon=True).start()
        code = self.worker.run()
        self.meter.finish()
        self._done.set()
        self._stop_profile()
        return code

    def processed(self) -> int:
        """Records accounted for (events + skipped + dead letters)."""
        return int(sum(sample.value for counter in self._counters
                       for metric in counter.collect() for sample in metric.samples
                       if sample.name.endswith("_total")))

    def _check(self) -> None:
        """Stop once caught up. Called after every consume() — exact for a worker that
        finishes a batch before it asks for the next — and by the watcher thread, for
        one that finishes it later. One of a group notes its last record so far, and
        stops when the group does."""
        if self.gate is not None:
            done = self.processed() if self.meter.started is not None else 0
            if done > self.meter.records:
                self.meter.records = done
                self.meter.lap()
            if self.gate.stopping():
                self.worker.stop()
            return
        if self.spec.ends and self.meter.finished is None and self.meter.started is not None:
            self.meter.records = self.processed()
            if self.meter.records >= self.spec.records:
                self.meter.finish()
                self.worker.stop()

    def _watch(self) -> None:
        """Ready file on assignment; progress file; the backstop of `_check()`; one of
        a group: the partitions it holds, and resuming them when the gate opens."""
        ready = Path(self.spec.ready) if self.spec.ready else None
        progress = Progress(self.spec.progress)
        paused = self.gate is not None
        while not self._done.wait(WATCH_EVERY):
            if self.gate is not None and paused:
                self.gate.holding(self.spec.out, int(self.registry.get_sample_value(
                    "reconciler_assigned_partitions") or 0))
                if self.gate.is_open():
                    os.kill(os.getpid(), signal.SIGUSR2)
                    paused = False
            if self.gate is not None and not paused and self.meter.started is None:
                wake(self.worker.consumer, self.spec.topic)  # until the resume is applied
            if ready is not None and self.registry.get_sample_value(
                    "reconciler_assigned_partitions"):
                ready.write_text("joined\n")
                ready = None
            if not self.spec.ends and not self.spec.progress and ready is None:
                return
            self._check()
            progress.report(self.processed())

    def _start_profile(self) -> None:  # in the main thread, with the first records
        if self.spec.profile:
            from pyinstrument import Profiler

            self._profiler = Profiler(interval=0.001)
            self._profiler.start()

    def _stop_profile(self) -> None:
        if self._profiler is None or self.spec.profile is None:
            return
        self._profiler.stop()
        tree = self._profiler.output_text(unicode=True, color=False)
        flat = self._profiler.output_text(unicode=True, color=False, flat=True)
        Path(self.spec.profile).write_text(f"{tree}\n\nThe same, flat (self time):\n{flat}")


def _legacy_timing(worker: Any, timings: Timings) -> None:
    """A worker from before the pipeline split has no hooks: wrap its consumer, its
    invalidator's calls and its completion of the batch in flight instead (only ever
    for `--worker-ref` comparisons with such a commit)."""

    class TimedConsumer:
        def __init__(self, real: Any) -> None:
            self._real = real

        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
            started = time.perf_counter()
            messages: list[Message] = self._real.consume(num_messages, timeout)
            timings.polled(len(messages), time.perf_counter() - started)
            return messages

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

    def timed(call: Callable[..., Any], note: Callable[[float], None]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args)
            finally:
                note(time.perf_counter() - started)

        return wrapper

    worker.consumer = TimedConsumer(worker.consumer)
    invalidator = worker.invalidator
    for name in ("start", "finish") if hasattr(invalidator, "finish") else ("execute",):
        setattr(invalidator, name, timed(getattr(invalidator, name), timings.invalidated))
    worker._finish_in_flight = timed(worker._finish_in_flight, timings.completed)


def worker(spec: Spec, settings: Settings) -> dict[str, Any]:
    measured = Measured(settings, spec)
    if not spec.ends:
        measured.worker.install_signal_handlers()  # the latency benchmark sends SIGTERM
    code = measured.run()
    measured.meter.records = measured.processed()
    registry = measured.registry
    figures = measured.meter.as_json()
    return {
        **figures,
        "wall_split": {  # where the measured seconds went
            "waiting_in_consume": round(min(measured.timings.waiting, figures["seconds"]), 3),
            "rest_of_the_loop": round(max(0.0, figures["seconds"] - measured.timings.waiting),
                                      3),
            # of the rest: completing batches (mostly waiting for the one in flight)
            "inside_complete": round(measured.timings.completing, 3),
            "inside_invalidator_execute": round(measured.timings.invalidating, 3)},
        "exit_code": code,
        "invalidations": by_shard(_counter(registry, "reconciler_invalidations_total",
                                          "shard", "result")),
        "coalesced": dict(_counter(registry, "reconciler_coalesced_deletes_total", "shard")),
        "events": dict(_counter(registry, "reconciler_events_total", "op")),
        "skipped": dict(_counter(registry, "reconciler_skipped_total", "reason")),
        "unresolved": sum(_counter(registry, "reconciler_unresolved_keys_total").values()),
        "dead_letters": sum(_counter(registry, "reconciler_dead_letters_total").values()),
        "retries": sum(_counter(registry, "reconciler_retries_total").values()),  # disturbed?
        "end_to_end_buckets": _buckets(registry, "reconciler_end_to_end_seconds"),
        "end_to_end_exact": _exact(measured.delays) if spec.exact_delays else None,
        "batches": registry.get_sample_value("reconciler_batch_seconds_count"),
        "batch_seconds": registry.get_sample_value("reconciler_batch_seconds_sum"),
    }


def _counter(registry: CollectorRegistry, name: str, *labels: str) -> Counter[Any]:
    out: Counter[Any] = Counter()
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                key = tuple(sample.labels.get(label, "") for label in labels)
                out[key[0] if len(key) == 1 else key] += int(sample.value)
    return out


def _buckets(registry: CollectorRegistry, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram."""
    out = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                out.append((float(sample.labels["le"]), sample.value))
    return sorted(out)


def _exact(delays: list[float]) -> dict[str, float | None]:
    """The exact p50, p99 (nearest rank) and max of the delays observed (seconds)."""
    ordered = sorted(delays)
    out = {f"p{q}": ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] if ordered
           else None for q in (50, 99)}
    return {**out, "max": ordered[-1] if ordered else None}


KINDS = {"ceiling": ceiling, "naive": naive, "worker": worker}


def main(argv: list[str]) -> int:
    spec_json = json.loads(Path(argv[0]).read_text())
    spec = Spec(**{**spec_json, "ends": {int(p): e for p, e in spec_json["ends"].items()}})
    settings = load_settings(spec.config)
    configure_logging(settings.logging.level, settings.logging.format == "json")
    result = {"kind": spec.kind, **KINDS[spec.kind](spec, settings)}
    Path(spec.out).write_text(json.dumps(result, indent=2))
    return 0


def write_spec(spec: Spec, path: Path) -> Path:
    path.write_text(json.dumps(asdict(spec)))
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
