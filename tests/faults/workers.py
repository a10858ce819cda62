"""Workers for the fault suite: `reconciler run` as a child process that a test can
kill, stop, continue, scrape, or run inside a network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Stack
from tests.e2e.support import end_offsets, wait_until, write_config
from tests.faults.oracle import TOPICS
from tests.faults.workload import Row, Workload

METRICS_MARKER = "/freshness on "  # the start-up log line that names the metrics port
# The line a stopping worker logs last but one: what its counters held.
TALLY = re.compile(r"accounted for \d+ records: (\d+) events, (\d+) skipped "
                   r"\((\d+) heartbeats\), (\d+) dead letters")


def fault_config(directory: Path, stack: Stack, group: str, *, fence_ttl: float,
                 batch_size: int = 50, overrides: Mapping[str, Any] | None = None,
                 shard_map: Mapping[str, Any] | None = None,
                 topics: list[str] | None = None) -> Path:
    """A config for one fault test: its own group and DLQ, the workload's short
    fence_ttl_seconds (2-5 s: fences expire mid-test, so TTL races can show)."""
    return write_config(directory, stack, group=group, topics=topics or TOPICS,
                        shard_map=shard_map, overrides={
                            "fence_ttl_seconds": fence_ttl,
                            "kafka.batch_size": batch_size,
                            "valkey.retry_budget_seconds": 120,
                            **(overrides or {})})


def dead_letter_topic(config: Path) -> str:
    """The dead-letter topic the config's workers write to (``kafka.dead_letter_topic``)."""
    topic = yaml.safe_load(config.read_text())["kafka"]["dead_letter_topic"]
    assert isinstance(topic, str) and topic, f"{config}: no kafka.dead_letter_topic"
    return topic


class Worker:
    """`python -m reconciler run -c CONFIG` as a child process."""

    def __init__(self, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None,
                 prefix: Sequence[str] = (), metrics_host: str = "127.0.0.1") -> None:
        self.config = config
        self.log_path = log_path
        self.metrics_host = metrics_host
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed when the process ends
        self._offset = log_path.stat().st_size
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "reconciler", "run", "-c", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
            # A crash in C code (librdkafka, the Valkey client) leaves a Python trace.
            env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})})
        self.port: int | None = None
        self.last_metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, "rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode(errors="replace")

    def metrics_port(self, timeout: float = 60.0) -> int:
        if self.port is None:
            def find() -> int | None:
                for line in self.log().splitlines():
                    if METRICS_MARKER in line:
                        return int(line.rsplit(":", 1)[1])
                assert self.alive(), f"worker exited:\n{self.log()[-3000:]}"
                return None

            self.port = wait_until(find, timeout, "the worker's metrics port", interval=0.1)
        return self.port

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        url = f"http://{self.metrics_host}:{self.metrics_port()}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        return status, (body.decode() if path == "/metrics" else json.loads(body))

    def ready(self) -> dict[str, Any]:
        return self.get("/readyz")[1]  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.alive() and self.get("/readyz")[0] == 200, timeout,
                   f"worker {self.pid} to be ready", interval=0.2)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, by (name, sorted labels); remembered for later."""
        text = self.get("/metrics")[1]
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        self.last_metrics = samples
        return samples

    def total(self, name: str, samples: Mapping[Any, float] | None = None) -> float:
        """The sum of a metric over all its labels."""
        data = self.last_metrics if samples is None else samples
        return sum(value for (sample, _), value in data.items() if sample == name)

    def processed(self) -> float:
        """Records this worker accounted for: events (applied or already fresh), skips
        (tombstones…) and dead letters — heartbeats left out: they come from topics of
        their own (the heartbeat topic, the heartbeat table's), which the worker reads
        from their beginning, and would pad the count."""
        samples = self.metrics()
        heartbeats = sum(value for (name, labels), value in samples.items()
                         if name == "reconciler_skipped_total"
                         and ("reason", "heartbeat") in labels)
        return sum(self.total(name, samples) for name in (
            "reconciler_events_total", "reconciler_skipped_total",
            "reconciler_dead_letters_total")) - heartbeats

    def processed_at_exit(self) -> int:
        """What `processed` would have said at the end, from the tally the worker logs
        when it stops (its counters go with the process)."""
        assert not self.alive(), "the worker is still running: use processed()"
        found = TALLY.findall(self.log())
        assert len(found) == 1, f"no tally line in the worker's log:\n{self.log()[-3000:]}"
        events, skipped, heartbeats, dead = map(int, found[0])
        return events + skipped - heartbeats + dead

    def alive(self) -> bool:
        return self.proc.poll() is None

    @contextlib.contextmanager
    def traced(self) -> Iterator[None]:
        """A failure inside (a timeout: the worker stopped making progress) ends a live
        worker with SIGABRT, so that faulthandler writes every thread's stack to its log,
        and adds them to the message."""
        try:
            yield
        except AssertionError as exc:
            if not self.alive():
                raise
            self.proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            raise AssertionError(f"{exc}\n\nthe worker's threads when it failed:\n"
                                 f"{self.log()[-8000:]}") from exc

    def state(self) -> str:
        """The process state letter from /proc (R, S, T for stopped, Z…)."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            return "?"

    def wait_fault_stop(self, timeout: float = 60.0) -> None:
        """Wait until the fault seam has SIGSTOPped the process."""
        wait_until(lambda: self.state() == "T" or not self.alive(), timeout,
                   f"worker {self.pid} to stop itself at its fault point", interval=0.05)
        assert self.alive(), f"worker exited instead:\n{self.log()[-3000:]}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (and SIGCONT, in case it is stopped), then wait for the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        self._log.close()
        return code


def stop_all(workers: Sequence[Worker]) -> None:
    for worker in workers:
        if worker.alive():
            worker.stop(30)


def sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


class CommitMonitor(threading.Thread):
    """Samples a group's committed offsets every `interval` seconds for the whole test,
    and remembers every time one went backwards (a rewind)."""

    def __init__(self, stack: Stack, group: str, topics: Sequence[str],
                 interval: float = 0.2) -> None:
        super().__init__(name=f"commit-monitor-{group}", daemon=True)
        self.interval = interval
        self.samples = 0
        self.rewinds: list[str] = []
        self.last: dict[tuple[str, int], int] = {}
        self._done = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap,
                                   "group.id": group, "enable.auto.commit": False})
        self._partitions = [TopicPartition(t, p) for t, p in end_offsets(stack, list(topics))]

    def run(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    found = self._consumer.committed(self._partitions, timeout=5)
                except KafkaException:
                    continue  # the broker is away (a fault of the test): sample again
                self.samples += 1
                for tp in found:
                    key = (tp.topic, tp.partition)
                    before = self.last.get(key, -1)
                    if tp.offset < 0:
                        continue  # nothing committed yet
                    if tp.offset < before:
                        self.rewinds.append(f"{tp.topic}[{tp.partition}] went back from "
                                            f"{before} to {tp.offset} at sample {self.samples}")
                    self.last[key] = tp.offset
        finally:
            self._consumer.close()

    def __enter__(self) -> CommitMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> list[str]:
        self._done.set()
        self.join(30)
        return self.rewinds


class Load(threading.Thread):
    """Application traffic during a fault: fresh rows, cached at their creation version,
    then updated once (most rows' last change is that update), some moved or deleted,
    deleted rows inserted again with their primary key, some rows deleted and inserted
    again at once. It uses the workload's connection: the test leaves the workload
    alone while the load runs."""

    def __init__(self, workload: Workload, *, pause: float = 0.05) -> None:
        super().__init__(name="load", daemon=True)
        self.workload = workload
        self.pause = pause
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            step = 0
            deleted: list[Row] = []
            while not self._done.is_set():
                rows = self.workload.create(posts=3, comments=2)
                self.workload.update(rows)
                step += 1
                if step % 3 == 0:
                    self.workload.move([r for r in rows if r.table == "comments"][:1])
                    self.workload.delete(rows[:1])
                    deleted += rows[:1]
                if step % 4 == 0 and deleted:
                    self.workload.reinsert(deleted[:1])
                    deleted = deleted[1:]
                if step % 5 == 0:
                    self.workload.churn(rows[1:2])
                time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self._done.set()
        self.join(60)
        if self.error is not None:
            raise AssertionError(f"the load failed: {self.error!r}") from self.error
