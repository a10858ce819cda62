"""The demo: the reconciler against the local stack, with a live workload.

    .venv/bin/python -m demo [--seconds N]      (scripts/demo sets everything up first)

It starts `reconciler run` on config/local/reconciler.yaml with a fresh consumer group,
then runs, side by side:

- readers that load rows from Postgres and cache them through the writer helper
  (`set_if_newer`), as an application's read path does;
- writers that update and delete rows in Postgres (Debezium streams each change);
- a deliberately slow reader that loads a row, changes it, waits until the reconciler's
  freshness watermark (GET /freshness) says the change has been reconciled — the way an
  application asks whether its own write is done — then tries to cache what it loaded
  before the change: the stale set the fences must refuse.

Every second it prints what the reconciler did (repaired / fresh / absent / fenced),
the end-to-end delay over the last 10 s (Postgres commit → invalidation acknowledged:
p50 and p99 read from the worker's own histogram, interpolated as Grafana does), and an
audit of the cache against Postgres: cached data older than its row (stale) must stay at
zero. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.valkey.writer import CacheWriter
from reconciler.observe.metrics import histogram_quantile
from reconciler.settings import load_settings
from shard_map import load_shard_map
from stack import services
from stack.process import LOG_DIR, STACK_DIR

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "config" / "local"  # the demo's config, pointed at the running stack below
CONFIG = STACK_DIR / "demo" / "reconciler.yaml"
ENDPOINTS = services.endpoints()
DSN = str(ENDPOINTS["postgres_dsn"])
METRICS_PORT = int(os.environ.get("CR_DEMO_METRICS_PORT", "9400"))
SLOW_READER_STALL = 1.5  # seconds the slow reader holds its loaded row at least
FRESHNESS_WAIT = 30.0  # seconds it waits for the watermark to pass its change
ROWS = 200  # posts the demo works on
NEIGHBOURHOODS = (7, 120, 420, 640, 880)  # a, a, moving a→b, b, b
WINDOW_SECONDS = 10  # the e2e columns: the delays observed over the last 10 s


@dataclass
class Tally:
    """What the workload did, shared by its threads."""

    cached: int = 0
    updates: int = 0
    deletes: int = 0
    slow_refused: int = 0
    slow_accepted_stale: int = 0
    slow_unconfirmed: int = 0  # the watermark did not vouch for the change in time: not tried
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


def write_config() -> None:
    """config/local, with the endpoints of the stack as it runs (ports can be moved)."""
    config = yaml.safe_load((LOCAL / "reconciler.yaml").read_text())
    config["kafka"]["bootstrap_servers"] = ENDPOINTS["kafka_bootstrap"]
    config["postgres"] = {"dsn": ENDPOINTS["postgres_reconciler_dsn"]}
    shards = yaml.safe_load((LOCAL / "shard_map.yaml").read_text())
    valkey = ENDPOINTS["valkey"]
    assert isinstance(valkey, dict)
    shards["shards"] = {"a": {"url": valkey["valkey-a"]}, "b": {"url": valkey["valkey-b"]}}
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    (CONFIG.parent / "shard_map.yaml").write_text(yaml.safe_dump(shards, sort_keys=False))
    CONFIG.write_text(yaml.safe_dump(config, sort_keys=False))


class Demo:
    def __init__(self) -> None:
        shard_map = load_shard_map(CONFIG.parent / "shard_map.yaml")
        self.shard_map = shard_map
        self.writers = {name: CacheWriter(shard_map.endpoint(name).url)
                        for name in shard_map.shard_names()}
        self.stop = threading.Event()
        self.tally = Tally()
        self.rows: dict[int, int] = {}  # post id → neighbourhood (replaced whole, never mutated)

    # ---------------------------------------------------------------- setup

    def seed(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            for index in range(ROWS):
                neighbourhood = NEIGHBOURHOODS[index % len(NEIGHBOURHOODS)]
                row = conn.execute(
                    "INSERT INTO posts (neighborhood_id, author_id, title, body) "
                    "VALUES (%s, %s, %s, %s) RETURNING id",
                    (neighbourhood, index, f"demo post {index}", "x" * 200)).fetchone()
                assert row is not None
                post_id = row[0]
                self.rows[post_id] = neighbourhood

    def writers_for(self, post_id: int, neighbourhood: int) -> list[CacheWriter]:
        return [self.writers[name] for name in self.shard_map.resolve(neighbourhood)]

    # ---------------------------------------------------------------- workload

    def reader(self) -> None:
        """Read-through caching: load the row, cache it if nothing newer is there."""
        with psycopg.connect(DSN, autocommit=True) as conn:
            while not self.stop.is_set():
                post_id, neighbourhood = random.choice(list(self.rows.items()))
                row = conn.execute("SELECT system_version, title FROM posts WHERE id = %s",
                                   (post_id,)).fetchone()
                if row is not None:
                    for writer in self.writers_for(post_id, neighbourhood):
                        if writer.set_if_newer(f"post:{post_id}", row[0], {"title": row[1]}, 300):
                            self.tally.add("cached")
                time.sleep(0.002)

    def updater(self) -> None:
        with psycopg.connect(DSN, autocommit=True) as conn:
            while not self.stop.is_set():
                post_id, neighbourhood = random.choice(list(self.rows.items()))
                if random.random() < 0.03:
                    conn.execute("DELETE FROM posts WHERE id = %s", (post_id,))
                    inserted = conn.execute(
                        "INSERT INTO posts (neighborhood_id, author_id, title, body) "
                        "VALUES (%s, 0, 'reborn', 'y') RETURNING id",
                        (neighbourhood,)).fetchone()
                    assert inserted is not None
                    new_id = inserted[0]
                    with self.tally.lock:  # readers iterate their own snapshot
                        rows = dict(self.rows)
                        rows.pop(post_id, None)
                        rows[new_id] = neighbourhood
                        self.rows = rows
                    self.tally.add("deletes")
                else:
                    conn.execute("UPDATE posts SET title = %s WHERE id = %s",
                                 (f"edit {time.time():.3f}", post_id))
                    self.tally.add("updates")
                time.sleep(0.01)

    def slow_reader(self) -> None:
        """Loads a row, changes it, waits until the reconciler has reconciled that change
        (its freshness watermark for the table has passed the commit), then tries to
        cache the row as it loaded it: a stale set, which the fence must refuse."""
        with psycopg.connect(DSN, autocommit=True) as conn:
            while not self.stop.is_set():
                post_id, neighbourhood = random.choice(list(self.rows.items()))
                row = conn.execute("SELECT system_version, title FROM posts WHERE id = %s",
                                   (post_id,)).fetchone()
                if row is None:
                    continue
                changed = conn.execute("UPDATE posts SET title = 'changed under the slow "
                                       "reader' WHERE id = %s", (post_id,)).rowcount
                if changed != 1:
                    continue  # deleted meanwhile by an updater
                # A clock reading after the commit: the change's commit time is before it.
                after_commit = conn.execute(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint").fetchone()
                assert after_commit is not None
                if self.stop.wait(SLOW_READER_STALL):
                    return
                if not self.reconciled(after_commit[0]):
                    if self.stop.is_set():
                        return
                    self.tally.add("slow_unconfirmed")
                    continue
                for writer in self.writers_for(post_id, neighbourhood):
                    if writer.set_if_newer(f"post:{post_id}", row[0], {"title": row[1]}, 300):
                        self.tally.add("slow_accepted_stale")
                    else:
                        self.tally.add("slow_refused")

    def reconciled(self, commit_ms: int) -> bool:
        """Whether the reconciler says every change to posts committed before `commit_ms`
        has been reconciled (GET /freshness), waiting up to FRESHNESS_WAIT seconds."""
        deadline = time.monotonic() + FRESHNESS_WAIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                watermark = freshness().get("tables", {}).get("public.posts")
                if watermark is not None and watermark >= commit_ms:
                    return True
            self.stop.wait(0.05)
        return False

    # ---------------------------------------------------------------- audit

    def stale_entries(self) -> set[tuple[str, int]]:
        """(key, cached version) of cached data older than its row, right now.

        Right after a commit, an entry is briefly behind until its change arrives
        through Debezium; one that stays behind is what the reconciler must prevent."""
        stale = set()
        rows = self.rows
        with psycopg.connect(DSN, autocommit=True) as conn:
            versions: dict[int, int] = dict(conn.execute(
                "SELECT id, system_version FROM posts WHERE id = ANY(%s)", (list(rows),)
            ).fetchall())
        for post_id, version in versions.items():
            for name in self.shard_map.resolve(rows[post_id]):
                cached = self.writers[name].get_with_version(f"post:{post_id}")
                if cached is not None and cached[0] < version:
                    stale.add((f"{name}/post:{post_id}", cached[0]))
        return stale


def start_at_end(group: str) -> None:
    """Commit the demo group's offsets at the topics' ends: it reconciles only the demo's
    own changes, not the history other runs left on the topics."""
    settings = load_settings(CONFIG)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": group, "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=10)
        offsets = []
        for topic in settings.kafka.topics:
            for partition in metadata.topics[topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
                offsets.append(TopicPartition(topic, partition, high))
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def freshness() -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/freshness", timeout=2) as r:
        answer: dict[str, Any] = json.load(r)
    return answer


def ready() -> bool:
    """GET /readyz: the worker has joined its group, holds partitions, reaches the shards."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/readyz", timeout=2):
            return True
    except (OSError, ValueError):  # 503 (HTTPError is an OSError) or not listening yet
        return False


def scrape() -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=2) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "reconciler_invalidations_total":
                key = sample.labels["result"]
            elif sample.name.startswith("reconciler_end_to_end_seconds"):
                key = sample.name + sample.labels.get("le", "")
            elif sample.name == "reconciler_events_total":
                key = "events"
            else:
                continue
            values[key] = values.get(key, 0.0) + sample.value
    return values


def buckets(values: dict[str, float]) -> list[tuple[float, float]]:
    """reconciler_end_to_end_seconds's (le, cumulative count) pairs from a scrape."""
    prefix = "reconciler_end_to_end_seconds_bucket"
    return sorted((float(k.removeprefix(prefix)), v) for k, v in values.items()
                  if k.startswith(prefix))


def window_quantile(now: list[tuple[float, float]], before: list[tuple[float, float]],
                    q: float) -> float | None:
    """The q-quantile of the delays observed between two scrapes (what Grafana's
    histogram_quantile over a rate shows), interpolated inside its bucket."""
    earlier = dict(before)
    return histogram_quantile([(le, n - earlier.get(le, 0.0)) for le, n in now], q)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop after this long (default: until Ctrl-C)")
    args = parser.parse_args()

    write_config()
    group = f"cache-reconciler-demo-{int(time.time())}"
    start_at_end(group)
    log_path = LOG_DIR / "demo-reconciler.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RECONCILER_KAFKA__GROUP_ID": group,
           "RECONCILER_METRICS__PORT": str(METRICS_PORT)}
    demo = Demo()
    print(f"seeding {ROWS} posts across neighbourhoods {NEIGHBOURHOODS} …", flush=True)
    demo.seed()
    print(f"starting `reconciler run -c {CONFIG}` (config/local pointed at the stack; "
          f"group {group}; log {log_path}) …", flush=True)
    with open(log_path, "ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "reconciler", "run", "-c", str(CONFIG)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    threads = [threading.Thread(target=target, daemon=True)
               for target in (demo.reader, demo.reader, demo.updater, demo.updater,
                              demo.slow_reader)]
    started = time.monotonic()
    stuck_total = 0
    try:
        deadline = time.monotonic() + 60
        while not interrupted.is_set() and not ready():  # joined, partitions, shards
            if worker.poll() is not None or time.monotonic() > deadline:
                print(f"the reconciler did not become ready (/readyz); see {log_path}",
                      file=sys.stderr)
                return 1
            time.sleep(0.3)
        for thread in threads:
            thread.start()
        print("workload running — Ctrl-C to stop\n", flush=True)
        print(f"{'time':>5} {'events':>7} {'repaired':>8} {'fresh':>6} {'absent':>6} "
              f"{'fenced':>6} {'e2e p50':>8} {'e2e p99':>8} {'slow refused':>12} "
              f"{'in flight':>9} {'stale>3s':>8}")
        seen: dict[tuple[str, int], float] = {}  # stale (key, version) → first seen
        history: deque[list[tuple[float, float]]] = deque(maxlen=WINDOW_SECONDS + 1)
        while not interrupted.wait(1.0):
            elapsed = time.monotonic() - started
            values = scrape()
            history.append(buckets(values))
            p50, p99 = (window_quantile(history[-1], history[0], q) for q in (0.5, 0.99))
            now = time.monotonic()
            stale = demo.stale_entries()
            seen = {entry: seen.get(entry, now) for entry in stale}
            stuck = sum(1 for first in seen.values() if now - first > 3.0)
            stuck_total = max(stuck_total, stuck)
            print(f"{elapsed:5.0f} {values.get('events', 0):7.0f} "
                  f"{values.get('repaired', 0):8.0f} {values.get('fresh', 0):6.0f} "
                  f"{values.get('absent', 0):6.0f} {values.get('fenced', 0):6.0f} "
                  f"{_ms(p50):>8} {_ms(p99):>8} {demo.tally.slow_refused:12d} "
                  f"{len(stale) - stuck:9d} {stuck:8d}", flush=True)
            if args.seconds is not None and elapsed >= args.seconds:
                break
    finally:
        demo.stop.set()
        for thread in threads:
            thread.join(5)
        print("\nstopping: letting the reconciler catch up …", flush=True)
        time.sleep(3)
        remaining = len(demo.stale_entries())
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
        tally = demo.tally
        print(f"workload: {tally.updates} updates, {tally.deletes} deletes, {tally.cached} "
              f"cache fills; the slow reader's stale sets: {tally.slow_refused} refused, "
              f"{tally.slow_accepted_stale} accepted"
              + (f", {tally.slow_unconfirmed} not tried (the watermark did not pass the change "
                 f"within {FRESHNESS_WAIT:.0f} s)" if tally.slow_unconfirmed else ""))
        print(f"stale entries at the end: {remaining} (longest-lived stale while running: "
              f"{stuck_total} over 3 s); reconciler exit code {code}")
    return 0 if remaining == 0 and code == 0 else 1


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 0.1 else f"{seconds * 1000:.0f}ms"


if __name__ == "__main__":
    sys.exit(main())
