"""The Camel peer: Apache Camel 4.17.0 running `camel-route.yaml` with camel-main, in a
JVM of its own (no Kafka Connect), on the throughput benchmark's topic and cache.

The route reads the topic with the spec's fresh consumer group from the earliest
offset (otherwise camel-kafka's defaults: the Kafka client's auto-commit), skips
tombstones, takes the row from each event (the schema envelope's payload, or the bare
payload) and DELs the keys the worker invalidates for public.posts (`post:{id}`,
`feed:{neighborhood_id}`) on the shards the worker would pick, with camel-spring-redis.
It does less per key than the worker (docs/benchmarks.md): `check_deletes()` confirms
that it removed what it should have, and nothing else.

How its span is known. The route logs two things itself, each log line stamped with
the wall clock in milliseconds: the first record of each partition (`bench.start`: the
topic is fresh, so offset 0), and, through Camel's throughput logger with a group of
the topic's size, one line once the last record has been through the route, its DELs
answered (`bench.done`). The span runs from the earliest first record to that line:
the JVM's start, Camel's and the group join are left out, as the other runners leave
out their group joins. The bench process samples the JVM's CPU time (/proc/<pid>/stat:
every thread, the JIT compilers and the GC included) every `SAMPLE_EVERY` seconds and
takes the samples on either side of the span, which overstates its CPU by at most two
intervals; peak RSS is the JVM's VmHWM once it is done.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import valkey
import yaml

from bench.cache import LOCAL_KEYS, PIPELINE_KEYS, actions, start_state
from bench.env import Router
from bench.events import Workload
from bench.meter import peak_rss_mb, span
from bench.report import process_cpu_seconds
from bench.runner import Spec
from stack import kafka
from stack.process import StackError

CAMEL_VERSION = "4.17.0"  # what stack/maven/camel/pom.xml resolves
JARS = "camel"  # stack/maven/<JARS>/pom.xml, copied into .stack/lib/<JARS> on first use
ROUTE = Path(__file__).with_name("camel-route.yaml")
MAIN_CLASS = "org.apache.camel.main.Main"
JVM_OPTIONS = ("-Xmx256m",)  # the default heap of a JVM in a 1 GB container
SAMPLE_EVERY = 0.02  # seconds between looks at the JVM's CPU time and its log
SHUTDOWN_SECONDS = 5  # camel.main.shutdownTimeout: the route has nothing left to finish
STOP_SECONDS = 30.0  # then the JVM is killed
START_LOG, DONE_LOG = "bench.start", "bench.done"  # the route's own loggers
LOG_LINE = re.compile(r"^(\d+) (\w+) \[(.*?)\] (\S+) - (.*)$")  # as LOG4J writes them
DONE_LINE = re.compile(r"Received: (\d+) messages so far")  # Camel's throughput logger
LOG4J = """\
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %d{UNIX_MILLIS} %p [%t] %c - %m%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
"""


def prepare() -> tuple[str, Path]:
    """The java command and the folder of Camel's jars, resolved from Maven Central the
    first time; exits saying what is missing (java, mvn, Maven Central unreachable)."""
    try:
        return kafka.java(), kafka.maven_jars(JARS)
    except StackError as exc:
        raise SystemExit(f"the Camel peer cannot run: {exc}") from exc


def run(spec: Spec, workdir: Path, name: str, *, timeout: float) -> dict[str, Any]:
    """Run the route on `spec.topic` until its last record is done; its figures, as
    the other runners report theirs. Output goes to `<workdir>/<name>.log`."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / "application.properties"
    settings.write_text(properties(spec))
    log4j = folder / "log4j2.properties"
    log4j.write_text(LOG4J)
    log_path = workdir / f"{name}.log"
    java, jars = prepare()
    argv = [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}",
            "-cp", str(jars / "*"), MAIN_CLASS, "-pl", f"file:{settings}"]
    started = time.time()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        watch = Watch(proc.pid, log_path)
        deadline = time.monotonic() + timeout
        while watch.done_ms is None:
            if proc.poll() is not None:
                raise RuntimeError(f"camel exited with {proc.returncode}; log: {log_path}\n"
                                   f"{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"camel still running after {timeout:.0f}s; log: "
                                   f"{log_path}\n{_tail(log_path)}")
            time.sleep(SAMPLE_EVERY)
            watch.look()
        watch.look()  # a sample after the last record
        peak_rss = peak_rss_mb(proc.pid)
    finally:
        _stop(proc)
    result = {"kind": "camel", **watch.figures(started), "peak_rss_mb": peak_rss,
              "camel": CAMEL_VERSION, "jvm_options": list(JVM_OPTIONS)}
    if result["records"] != spec.records:
        raise RuntimeError(f"camel counted {result['records']} records, the topic holds "
                           f"{spec.records}; log: {log_path}")
    Path(spec.out).write_text(json.dumps(result, indent=2))
    return result


def properties(spec: Spec) -> str:
    """The route's properties (`{{...}}` in camel-route.yaml) from the spec's worker
    config: its brokers, group and shards, and its shard map's ranges."""
    config_path = Path(spec.config)
    config = yaml.safe_load(config_path.read_text())
    shard_map = yaml.safe_load((config_path.parent / config["shard_map"]).read_text())
    router = Router.of(shard_map)
    values: dict[str, Any] = {
        "camel.main.name": "bench-camel",
        "camel.main.routesIncludePattern": f"file:{ROUTE}",
        "camel.main.shutdownTimeout": SHUTDOWN_SECONDS,
        "topic": spec.topic,
        "brokers": config["kafka"]["bootstrap_servers"],
        "group": config["kafka"]["group_id"],
        "records": spec.records,
        **_ranges(router),
    }
    for shard, entry in shard_map["shards"].items():
        url = urlsplit(entry["url"])
        values.update({f"shard.{shard}.host": url.hostname, f"shard.{shard}.port": url.port,
                       f"shard.{shard}.database": int(url.path.strip("/") or 0)})
    return "".join(f"{key} = {value}\n" for key, value in values.items())


def _ranges(router: Router) -> dict[str, str]:
    """The route's `shard.a.range`, `shard.b.range` and `moving.range`. It is written
    for the local shard map's shape: two shards a and b, a range each, and one range
    moving from a to b (invalidated on both)."""
    own = {shard: [(low, high) for low, high, name in router.ranges if name == shard]
           for shard in router.names}
    moving = [(low, high) for low, high, source, target in router.moving
              if (source, target) == ("a", "b")]
    if router.names != ("a", "b") or any(len(r) != 1 for r in own.values()) \
            or len(router.moving) != 1 or not moving:
        raise ValueError(f"{ROUTE.name} routes over shards a and b, one range each, one "
                         f"range moving from a to b; this shard map differs ({router}): "
                         "adapt the route")
    (a_low, a_high), (b_low, b_high), (m_low, m_high) = own["a"][0], own["b"][0], moving[0]
    return {"shard.a.range": f"{a_low}..{a_high}", "shard.b.range": f"{b_low}..{b_high}",
            "moving.range": f"{m_low}..{m_high}"}


@dataclass(slots=True)
class Watch:
    """What the bench process sees of the JVM: the route's marks in its log, and its
    CPU time over the wall clock."""

    pid: int
    log_path: Path
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time(), CPU s)
    first_ms: int | None = None  # the earliest first record of a partition
    done_ms: int | None = None  # the last record through the route
    records: int = 0  # as Camel's throughput logger counted them
    _offset: int = 0  # bytes of the log read so far
    _partial: bytes = b""  # a line not finished yet

    def look(self) -> None:
        self.samples.append((time.time(), process_cpu_seconds(self.pid)))
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._note(line.decode(errors="replace"))

    def _note(self, line: str) -> None:
        match = LOG_LINE.match(line)
        if match is None:  # a stack trace's line, or a banner
            return
        millis, level, _, logger, message = match.groups()
        if level in ("ERROR", "FATAL"):  # a failed exchange: its keys were not deleted
            raise RuntimeError(f"camel logged an error ({logger}: {message[:300]}); log: "
                               f"{self.log_path}\n{_tail(self.log_path)}")
        if logger == START_LOG:
            self.first_ms = min(self.first_ms or int(millis), int(millis))
        elif logger == DONE_LOG and (done := DONE_LINE.search(message)):
            self.done_ms, self.records = int(millis), int(done.group(1))

    def figures(self, started: float) -> dict[str, Any]:
        """Records, the span's seconds and CPU, the JVM's start-up and total CPU."""
        if self.first_ms is None or self.done_ms is None:
            raise RuntimeError(f"camel never logged its first or last record: {self.log_path}")
        first, done = self.first_ms / 1000, self.done_ms / 1000
        cpu_before = max((cpu for wall, cpu in self.samples if wall <= first), default=0.0)
        cpu_after = min(cpu for wall, cpu in self.samples if wall >= done)
        return {**span(self.records, done - first, cpu_after - cpu_before),
                "cpu_seconds_total": round(self.samples[-1][1], 3),
                "startup_seconds": round(first - started, 3)}  # JVM, Camel, group join


def check_deletes(clients: Mapping[str, valkey.Valkey], workload: Workload, router: Router,
                  rows: Mapping[int, int]) -> dict[str, int]:
    """After a run: of the entries cached at the start, those a change of the workload
    names on their shard (the worker's keys for it) should be gone, and the others
    still there. `left` and `lost` count the entries for which that is not so."""
    named = {(shard, key) for change in workload.changes()
             for shard, key, _, _ in actions(change, router)}
    entries = [(shard, key) for shard, key, _ in start_state(workload, router, rows,
                                                              LOCAL_KEYS)]
    present = _present(clients, entries)
    doomed = [entry for entry in entries if entry in named]
    kept = [entry for entry in entries if entry not in named]
    return {"entries_to_delete": len(doomed), "left": sum(e in present for e in doomed),
            "entries_to_keep": len(kept), "lost": sum(e not in present for e in kept)}


def _present(clients: Mapping[str, valkey.Valkey],
             entries: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of `entries` (shard, key) that exist, asked in pipelines."""
    found: set[tuple[str, str]] = set()
    for shard, client in clients.items():
        keys = [key for name, key in entries if name == shard]
        for start in range(0, len(keys), PIPELINE_KEYS):
            pipe: Any = client.pipeline(transaction=False)
            for key in keys[start:start + PIPELINE_KEYS]:
                pipe.exists(key)
            found.update((shard, key) for key, exists in
                         zip(keys[start:start + PIPELINE_KEYS], pipe.execute(), strict=True)
                         if exists)
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # Camel shuts down: the consumer leaves its group
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
