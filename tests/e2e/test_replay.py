"""`reconciler replay` against the real stack: the exact range, its own consumer group,
the dry run's counts equal to the real run's, `--rate`, and a clean stop that prints
the command to resume.

Key templates are prefixed with the test's id: a replay of the shared Debezium topics
then writes only keys no other test reads.
"""

from __future__ import annotations

import io
import json
import os
import pty
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import valkey
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from connectors.valkey.writer import CacheWriter
from reconciler.ops.replay import Bound, Replay, ReplayReport, parse_bound
from reconciler.settings import Settings, load_settings
from tests.conftest import ROOT, Stack
from tests.e2e.support import (
    COMMENTS,
    POSTS,
    PROFILES,
    Rows,
    committed,
    create_topic,
    end_offsets,
    post_insert,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPICS = [POSTS, COMMENTS, PROFILES]
TP = tuple[str, int]


@pytest.fixture
def prefix(uid: str) -> str:
    return f"replay-{uid}:"


@pytest.fixture
def config(stack: Stack, tmp_path: Path, uid: str, prefix: str) -> Path:
    path = write_config(tmp_path, stack, group=f"replay-{uid}", topics=TOPICS)
    data = yaml.safe_load(path.read_text())
    for table in data["tables"].values():
        for key in table["keys"]:
            key["template"] = prefix + key["template"]
    data["logging"] = {"level": "INFO", "format": "text"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def offsets_at(stack: Stack, topics: list[str], when_ms: int) -> dict[TP, int]:
    """What offsets_for_times says for `when_ms`, each partition's end where nothing is."""
    ends = end_offsets(stack, topics)
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "cr-probe"})
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(t, p, when_ms) for t, p in ends], timeout=10)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else ends[tp.topic,
                                                                               tp.partition]
            for tp in found}


def records_between(stack: Stack, starts: dict[TP, int], ends: dict[TP, int]) -> list[Any]:
    """Every record in [start, end) of each partition, read by a plain consumer."""
    wanted = {tp: (start, ends[tp]) for tp, start in starts.items() if start < ends[tp]}
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "cr-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in wanted.items()])
    out: list[Any] = []
    position = {tp: start for tp, (start, _) in wanted.items()}
    deadline = time.monotonic() + 60
    try:
        while any(position[tp] < end for tp, (_, end) in wanted.items()):
            assert time.monotonic() < deadline, f"could not read {wanted}"
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                tp = (message.topic(), message.partition())
                if message.offset() < wanted[tp][1]:
                    out.append(message)
                position[tp] = message.offset() + 1
    finally:
        consumer.close()
    return out


def post_id(message: Any) -> int | None:
    if message.topic() != POSTS or message.key() is None:
        return None
    return int(json.loads(message.key())["payload"]["id"])


class Feeder:
    """Inserts a post every few milliseconds: events keep arriving during a replay."""

    def __init__(self, db: Rows) -> None:
        self.db = db
        self.ids: list[tuple[int, bool]] = []  # (post id, inserted after the mark)
        self.marked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            marked = self.marked
            self.ids.append((self.db.insert_post(7, "feeder")[0], marked))

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_in_thread(replay: Replay) -> tuple[threading.Thread, list[ReplayReport]]:
    result: list[ReplayReport] = []
    thread = threading.Thread(target=lambda: result.append(replay.run()), daemon=True)
    thread.start()
    return thread, result


def test_a_replay_from_a_time_processes_exactly_that_range_and_its_dry_run_the_same(
        stack: Stack, config: Path, prefix: str, shards: dict[str, valkey.Valkey],
        uid: str) -> None:
    live_group = f"replay-{uid}"
    start_group_at_end(stack, live_group, TOPICS)
    live_before = committed(stack, live_group, TOPICS)
    settings = load_settings(config)
    since = datetime.now(UTC)
    time.sleep(0.2)
    db = Rows(stack.postgres_dsn)
    mine = dict(db.insert_post(7, "replayed") for _ in range(5))  # id -> version
    wait_until(lambda: mine.keys() <= {post_id(m) for m in records_between(
        stack, offsets_at(stack, [POSTS], int(since.timestamp() * 1000)),
        end_offsets(stack, [POSTS]))}, 30, "the posts' events on Kafka")

    with Feeder(db) as feeder:
        ends_before = end_offsets(stack, TOPICS)
        dry = Replay(settings, start=parse_bound(since.isoformat(), start=True),
                     end=parse_bound("now", start=False), dry_run=True,
                     progress_stream=io.StringIO())
        thread, result = run_in_thread(dry)
        assert dry.planned.wait(30)
        feeder.marked = True  # inserted from now on: after the end offsets were captured
        thread.join(120)
        ends_after = end_offsets(stack, TOPICS)
        wait_until(lambda: any(marked for _, marked in feeder.ids), 10, "a later insert")
    report = result[0]
    assert not report.interrupted and report.error is None

    # Exactly [offsets_for_times(since), end offsets at start) on every partition.
    assert report.starts == offsets_at(stack, TOPICS, int(since.timestamp() * 1000))
    for tp, end in report.ends.items():
        assert ends_before[tp] <= end <= ends_after[tp]
    assert report.records == report.total == sum(
        report.ends[tp] - report.starts[tp] for tp in report.ends)
    in_range = records_between(stack, report.starts, report.ends)
    assert len(in_range) == report.records
    replayed = {post_id(m) for m in in_range}
    assert mine.keys() <= replayed
    later = {post for post, marked in feeder.ids if marked}
    assert later and not later & replayed, "events after the captured ends were replayed"
    # The dry run touched no cache entry.
    assert not any(client.exists(f"{prefix}post:{post}") for post in mine
                   for client in shards.values())

    # The real run of the same range performs exactly what the dry run counted.
    real_replay = Replay(settings, start=Bound("offsets", offsets=report.starts),
                         end=Bound("offsets", offsets=report.ends),
                         progress_stream=io.StringIO())
    real = real_replay.run()
    assert real.records == report.records and not real.interrupted
    assert real.totals.actions == report.totals.actions
    assert real.totals.events == report.totals.events
    performed: Counter[str] = Counter()
    for (shard, _result), n in real.totals.invalidations.items():
        performed[shard] += n
    planned: Counter[str] = Counter()
    for (_table, shard, kind), n in report.totals.actions.items():
        if kind != "truncate":
            planned[shard] += n
    # A derived key's deletes in one batch are coalesced into the last one, counted apart
    # (reconciler_coalesced_deletes_total): every planned action was sent or coalesced.
    registry = real_replay.metrics.registry
    coalesced = Counter({shard: int(registry.get_sample_value(
        "reconciler_coalesced_deletes_total", {"shard": shard}) or 0) for shard in planned})
    assert performed + coalesced == planned
    assert real.totals.coalesced == coalesced  # the report says so too
    assert real.as_json()["coalesced"] == {k: n for k, n in sorted(coalesced.items()) if n}
    for post, version in mine.items():  # c on an absent entry: a fence at its version on a
        assert shards["a"].hgetall(f"{prefix}post:{post}") == {b"v": str(version).encode()}
    assert not any(shards["a"].exists(f"{prefix}post:{post}") for post in later)
    # Its own group advanced to the ends; the live group never moved.
    assert committed(stack, live_group, TOPICS) == live_before
    replay_offsets = committed(stack, real.group, TOPICS)
    assert real.group.startswith(f"{live_group}.replay.")
    for tp, end in report.ends.items():
        if end > report.starts[tp]:
            assert replay_offsets[tp] == end
    db.close()


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "replay", "-c", str(config), *args]


def posts_range(stack: Stack, partition: int, count: int) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "cr-probe"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(POSTS, partition), timeout=10)
    finally:
        consumer.close()
    assert high - low >= count, f"{POSTS}[{partition}] holds only {high - low} records"
    return low, low + count


def test_rate_is_honoured_within_ten_percent_with_a_progress_bar_on_a_terminal(
        stack: Stack, config: Path, shards: dict[str, valkey.Valkey]) -> None:
    rate, count = 50, 1100  # 22 s
    start, end = posts_range(stack, 0, count)
    master, slave = pty.openpty()  # stderr is a terminal: the bar is drawn
    began = time.monotonic()
    proc = subprocess.Popen(cli(config, "--from", f"{POSTS}:0:{start}", "--to",
                                f"{POSTS}:0:{end}", "--rate", str(rate), "--json"),
                            stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
    os.close(slave)
    terminal: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            terminal.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=90)
    wall = time.monotonic() - began
    reader.join(5)
    os.close(master)
    assert proc.returncode == 0, b"".join(terminal).decode(errors="replace")[-3000:]
    report = json.loads(out)
    assert report["records"] == count and not report["interrupted"]
    assert report["elapsed_seconds"] >= 20
    measured = count / report["elapsed_seconds"]
    assert abs(measured - rate) / rate < 0.10, f"{measured:.1f}/s for --rate {rate}"
    assert abs(count / wall - rate) / rate < 0.10, f"{count / wall:.1f}/s wall clock"
    screen = b"".join(terminal).decode(errors="replace")
    bars = [frame for frame in screen.split("\r") if frame.startswith("replay [")]
    assert len(bars) > 20, screen[-2000:]
    assert re.search(r"\] +100\.0% 1100/1100 records \d+/s ETA 0:00", bars[-1]), bars[-1]
    middle = bars[len(bars) // 2]
    assert re.search(r"\d+\.\d% \d+/1100 records (4[5-9]|5[0-5])/s ETA 0:\d\d", middle), middle


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_replay_prints_the_command_that_resumes_it_exactly(
        stack: Stack, config: Path, shards: dict[str, valkey.Valkey], sig: int) -> None:
    count = 600
    start, end = posts_range(stack, 1, count)
    proc = subprocess.Popen(cli(config, "--from", f"{POSTS}:1:{start}", "--to",
                                f"{POSTS}:1:{end}", "--rate", "100", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    first = json.loads(out)
    assert first["interrupted"] and 0 < first["records"] < count
    lines = err.splitlines()
    hint = lines.index("reconciler replay: stopped before the end; to resume run:")
    command = lines[hint + 1].strip()
    argv = shlex.split(command)
    reached = start + first["records"]
    assert argv[:4] == ["reconciler", "replay", "-c", str(config)]
    assert argv[argv.index("--from") + 1] == f"{POSTS}:1:{reached}"
    assert argv[argv.index("--to") + 1] == f"{POSTS}:1:{end}"
    assert argv[argv.index("--group") + 1] == first["group"]
    assert argv[argv.index("--rate") + 1] == "100"
    assert first["resume"] == command

    resumed = subprocess.run([sys.executable, "-m", "reconciler", *argv[1:], "--json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = json.loads(resumed.stdout)
    assert first["records"] + second["records"] == count
    assert second["partitions"] == [{"topic": POSTS, "partition": 1, "from": reached,
                                     "to": end, "reached": end}]
    assert committed(stack, first["group"], [POSTS])[POSTS, 1] == end


# --------------------------------------------------------------------------- own topics

ON_A, ON_B, MOVING = 7, 700, 420  # neighbourhoods on shard a, on shard b, on both
HOME = {ON_A: ("a",), ON_B: ("b",), MOVING: ("a", "b")}
STALE, CHANGED = 1, 2  # the version cached before the events, the version they carry


@dataclass(frozen=True)
class Post:
    """One recorded insert, at version CHANGED, produced to a test's own topic."""

    id: int
    neighborhood: int
    partition: int
    timestamp_ms: int | None = None  # the record's timestamp; None: the producer's clock


class ProducingAfterPlan(Replay):
    """A replay that calls `then` as soon as its range is fixed, before it reads a record:
    what `then` produces sits on the topic, in the same fetches as the range's records."""

    def __init__(self, settings: Settings, *, then: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.then = then

    def plan(self) -> dict[TP, tuple[int, int]]:
        ranges = super().plan()
        self.then()
        return ranges


def own_topic(config: Path, topic: str) -> Settings:
    """The `config` fixture's file, replaying `topic` only."""
    data = yaml.safe_load(config.read_text())
    data["kafka"]["topics"] = [topic]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_settings(config)


def produce_posts(stack: Stack, topic: str, posts: list[Post]) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for post in posts:
        key, value = post_insert(post.id, post.neighborhood, CHANGED)
        producer.produce(topic, key=key, value=value, partition=post.partition,
                         timestamp=post.timestamp_ms or 0)
    assert producer.flush(30) == 0


def cache_stale(shards: dict[str, valkey.Valkey], prefix: str, posts: list[Post]) -> None:
    """A reader cached every post at the version before its event, on each of its shards."""
    for post in posts:
        for name in HOME[post.neighborhood]:
            assert CacheWriter(shards[name]).set_if_newer(f"{prefix}post:{post.id}", STALE,
                                                          {"title": "stale"}, 300)


def cached(shards: dict[str, valkey.Valkey], prefix: str, post: Post) -> dict[str, Any]:
    """What each shard holds for the post: "fence 2", "data 1" or None."""
    out: dict[str, Any] = {}
    for name, client in shards.items():
        entry = client.hgetall(f"{prefix}post:{post.id}")
        out[name] = None if not entry else (
            f"{'data' if b'd' in entry else 'fence'} {int(entry[b'v'])}")
    return out


def repaired(posts: list[Post]) -> dict[str, int]:
    """Per shard, how many of `posts` turn cached stale data into a fence."""
    out: Counter[str] = Counter()
    for post in posts:
        out.update(HOME[post.neighborhood])
    return dict(out)


def test_a_real_replay_from_a_time_repairs_exactly_the_events_from_then_to_the_ends_seen_at_start(
        stack: Stack, config: Path, prefix: str, shards: dict[str, valkey.Valkey],
        uid: str) -> None:
    topic = create_topic(stack, f"replay-time-{uid}", partitions=2)
    settings = own_topic(config, topic)
    since_ms = int(time.time() * 1000) - 60_000  # the records' timestamps are set explicitly
    base = random.randrange(10**9, 2 * 10**9)
    before = [Post(base + i, (ON_A, ON_B)[i % 2], i % 2, since_ms - 5_000 + 100 * i)
              for i in range(6)] + [Post(base + 6, ON_A, 0, since_ms - 1)]
    within = [Post(base + 10 + i, (ON_A, ON_B, MOVING)[i % 3], i % 2, since_ms + 250 * i)
              for i in range(20)]  # the first two exactly at the time, one per partition
    within[1] = Post(within[1].id, within[1].neighborhood, 1, since_ms)
    later = [Post(base + 40 + i, (ON_A, ON_B)[i % 2], i % 2) for i in range(6)]
    cache_stale(shards, prefix, before + within + later)
    produce_posts(stack, topic, before + within)
    ends_at_start = end_offsets(stack, [topic])

    registry = CollectorRegistry()
    since = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat()  # with milliseconds
    replay = ProducingAfterPlan(settings, start=parse_bound(since, start=True),
                                end=parse_bound("now", start=False),
                                progress_stream=io.StringIO(), registry=registry,
                                then=lambda: produce_posts(stack, topic, later))
    report = replay.run()
    assert end_offsets(stack, [topic]) == {
        tp: end + sum(1 for post in later if post.partition == tp[1])
        for tp, end in ends_at_start.items()}, "the later events are on the topic"

    assert not report.interrupted and report.error is None
    assert report.ends == ends_at_start
    assert report.starts == {(topic, 0): 4, (topic, 1): 3}  # the records before `since`
    assert report.records == report.total == len(within)
    assert report.as_json()["events"] == [{"table": "public.posts", "op": "c",
                                           "count": len(within)}]
    assert registry.get_sample_value("reconciler_events_total",
                                     {"table": "public.posts", "op": "c"}) == len(within)
    for shard, n in repaired(within).items():
        assert registry.get_sample_value("reconciler_invalidations_total",
                                         {"shard": shard, "result": "repaired"}) == n
    for post in within:
        assert cached(shards, prefix, post) == {
            name: f"fence {CHANGED}" if name in HOME[post.neighborhood] else None
            for name in shards}, post
    for post in before + later:  # never replayed: the stale data is still there
        assert cached(shards, prefix, post) == {
            name: f"data {STALE}" if name in HOME[post.neighborhood] else None
            for name in shards}, post


def test_replay_from_earliest_processes_every_event_of_the_topic(
        stack: Stack, config: Path, prefix: str, shards: dict[str, valkey.Valkey],
        uid: str) -> None:
    topic = create_topic(stack, f"replay-all-{uid}", partitions=3)
    own_topic(config, topic)
    base = random.randrange(10**9, 2 * 10**9)
    posts = [Post(base + i, (ON_A, ON_B, MOVING)[i % 3], i % 3 if i < 20 else 0)
             for i in range(30)]  # partitions of 17, 7 and 6 records
    cache_stale(shards, prefix, posts)
    produce_posts(stack, topic, posts)

    done = subprocess.run(cli(config, "--from", "earliest", "--json"), capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["records"] == report["total"] == len(posts) and not report["interrupted"]
    sizes = Counter(post.partition for post in posts)
    assert report["partitions"] == [{"topic": topic, "partition": p, "from": 0,
                                     "to": sizes[p], "reached": sizes[p]} for p in range(3)]
    assert report["events"] == [{"table": "public.posts", "op": "c", "count": len(posts)}]
    assert {i["shard"]: i["count"] for i in report["invalidations"]
            if i["result"] == "repaired"} == repaired(posts)
    for post in posts:
        assert cached(shards, prefix, post) == {
            name: f"fence {CHANGED}" if name in HOME[post.neighborhood] else None
            for name in shards}, post
    assert committed(stack, report["group"], [topic]) == {(topic, p): sizes[p] for p in range(3)}
