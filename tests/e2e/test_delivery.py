"""Delivery: a crash in the middle of a batch, or a worker leaving its group, loses no
change. Duplicates are allowed (every operation is idempotent); losses are not.

The oracle: every row's cached data was put there at version 1 before the changes, so
a change that were never reconciled would leave that stale data behind. After the
pipeline has caught up, every live row's entry must be a fence at exactly the row's
current version on the row's shard (and nothing on the other), and every deleted row's
entry a delete fence on both shards (a REPLICA IDENTITY DEFAULT delete is broadcast).
A change only counts as evidence if it is its row's last: a later change of the row
would repair the cache whether or not the first was lost.

The workers' key templates carry a prefix of the test's own: other tests' workers
consume the same Debezium topics and would otherwise write the same keys.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import valkey

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    COMMENTS,
    POSTS,
    PROFILES,
    Rows,
    WorkerProcess,
    committed,
    end_offsets,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
TOPICS = [POSTS, COMMENTS, PROFILES]
MAX_VERSION = 2**63 - 1


@dataclass
class Workload:
    """Posts on both shards, cached at version 1, then updated and some deleted."""

    stack: Stack
    db: Rows
    shards: dict[str, valkey.Valkey]  # "a", "b"
    prefix: str  # before every key the test's workers write
    posts: dict[int, int] = field(default_factory=dict)  # id -> neighbourhood
    deleted: set[int] = field(default_factory=set)

    def key(self, post_id: int) -> str:
        return f"{self.prefix}post:{post_id}"

    def create(self, count: int) -> list[int]:
        """`count` posts, half on each shard, each cached at its version by a reader."""
        writers = {name: CacheWriter(client) for name, client in self.shards.items()}
        created = []
        for index in range(count):
            neighbourhood = 7 if index % 2 else 700
            post_id, version = self.db.insert_post(neighbourhood, f"row {index}")
            self.posts[post_id] = neighbourhood
            assert writers[self.shard_of(post_id)].set_if_newer(
                self.key(post_id), version, {"title": f"row {index}"}, 600)
            created.append(post_id)
        return created

    def shard_of(self, post_id: int) -> str:
        return "a" if self.posts[post_id] < 500 else "b"

    def change(self, rounds: int, delete_every: int = 0) -> int:
        """Update every live post `rounds` times; returns the records it produces."""
        records = 0
        for _ in range(rounds):
            for post_id in self.posts:
                if post_id not in self.deleted:
                    self.db.update_post(post_id)
                    records += 1
        if delete_every:
            for post_id in list(self.posts)[::delete_every]:
                self.db.delete_post(post_id)
                self.deleted.add(post_id)
                records += 2  # the delete and its tombstone
        return records

    def settled(self, ids: Iterable[int] | None = None, timeout: float = 30.0) -> list[str]:
        """`stale_entries(ids)` once it is empty, or when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while (wrong := self.stale_entries(ids)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return wrong

    def stale_entries(self, ids: Iterable[int] | None = None) -> list[str]:
        """Entries of `ids` (default: every post) that do not hold what the oracle
        demands, described: a live row's entry is a fence at its current version on its
        shard and absent from the other; a deleted row's entry is a delete fence on both
        shards (a REPLICA IDENTITY DEFAULT delete is broadcast)."""
        wrong = []
        for post_id in self.posts if ids is None else ids:
            home = self.shard_of(post_id)
            other = "b" if home == "a" else "a"
            key = self.key(post_id)
            if post_id in self.deleted:
                expected = {home: {b"v": str(MAX_VERSION).encode()},
                            other: {b"v": str(MAX_VERSION).encode()}}
            else:
                expected = {home: {b"v": str(self.db.post_version(post_id)).encode()},
                            other: {}}
            for shard, wanted in expected.items():
                entry = self.shards[shard].hgetall(key)
                if entry != wanted:
                    wrong.append(f"{key} on {shard} holds {entry!r}, expected {wanted!r}")
        return wrong


@pytest.fixture
def prefix(uid: str) -> str:
    return f"dlv-{uid}:"


@pytest.fixture
def workload(stack: Stack, shards: dict[str, valkey.Valkey], prefix: str) -> Iterator[Workload]:
    db = Rows(stack.postgres_dsn)
    yield Workload(stack, db, shards, prefix)
    db.close()


def wait_published(stack: Stack, start: dict[tuple[str, int], int], records: int) -> None:
    """Wait until Debezium has put at least `records` new records on the posts topic."""
    def published() -> bool:
        now = end_offsets(stack, [POSTS])
        return sum(now.values()) - sum(start.get(tp, 0) for tp in now) >= records

    wait_until(published, 60, f"{records} records on {POSTS}")


def wait_committed_to_end(stack: Stack, group: str, timeout: float = 90.0) -> None:
    ends = end_offsets(stack, TOPICS)
    wait_until(lambda: all(committed(stack, group, TOPICS).get(tp, -1) >= end
                           for tp, end in ends.items() if end > 0),
               timeout, f"group {group} to commit up to {ends}", interval=0.5)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]


@pytest.mark.parametrize("point", ["decoded", "between_shards", "acknowledged", "stored"])
def test_sigkill_mid_batch_then_restart_loses_no_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, point: str) -> None:
    group = f"kill-{uid}"
    start_group_at_end(stack, group, TOPICS)
    start = end_offsets(stack, [POSTS])
    workload.create(40)
    records = 40 + workload.change(rounds=3, delete_every=8)
    wait_published(stack, start, records)
    config = write_config(tmp_path, stack, group=group, topics=TOPICS,
                          overrides={"kafka.batch_size": 60}, key_prefix=workload.prefix)

    crashed = WorkerProcess(config, tmp_path / "crashed.log",
                            env={"RECONCILER_FAULT_STOP_AT": point})
    wait_until(lambda: process_state(crashed.proc.pid) == "T", 60,
               f"the worker to stop itself at {point}")
    crashed.kill()  # SIGKILL: no shutdown code runs
    if point in ("decoded", "between_shards"):
        # The crash really interrupted the work: some cached data is still stale.
        assert workload.stale_entries(), "the killed batch had nothing left to do"

    restarted = WorkerProcess(config, tmp_path / "restarted.log")
    try:
        wait_committed_to_end(stack, group)
        assert workload.stale_entries() == []
    finally:
        assert restarted.stop() == 0


def owned(worker: WorkerProcess) -> set[str]:
    """The partitions `worker` holds now, as "topic[partition]" (its /readyz lag)."""
    return set(worker.ready()["lag"])


class Handover(threading.Thread):
    """Changes made while a worker leaves and the other takes over: each the LAST change
    of its row, so a lost one leaves a stale entry that nothing repairs. Every round
    inserts a fresh post (its only change: a lost insert leaves no fence) and updates
    the next post of `once` exactly once (a lost update leaves its cached v1 data)."""

    def __init__(self, workload: Workload, once: list[int]) -> None:
        super().__init__(name="handover-changes", daemon=True)
        self.workload = workload
        self.once = list(once)
        self.inserted: dict[int, tuple[int, int]] = {}  # id -> (neighbourhood, version)
        self.updated: dict[int, int] = {}  # id -> the version its one update made
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        db = Rows(self.workload.stack.postgres_dsn)
        try:
            rounds = 0
            while not self.stopping.is_set():
                neighbourhood = 7 if rounds % 2 else 700
                post_id, version = db.insert_post(neighbourhood, f"handover {rounds}")
                self.inserted[post_id] = (neighbourhood, version)
                if self.once:
                    post_id = self.once.pop(0)
                    self.updated[post_id] = db.update_post(post_id)
                rounds += 1
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc
        finally:
            db.close()


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_two_workers_split_partitions_and_one_takes_over_without_loss(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, protocol: str) -> None:
    """Under both consumer group protocols: the client's (classic, cooperative-sticky)
    and the broker's (KIP-848, kafka.group_protocol: consumer)."""
    group = f"pair-{uid}"
    start_group_at_end(stack, group, TOPICS)
    busy = workload.create(20)  # changed all the time: load, not evidence
    once = workload.create(400)  # each changed exactly once, during the handover or after
    after = workload.create(30)  # each changed exactly once, right after the takeover
    config = write_config(tmp_path, stack, group=group, topics=TOPICS,
                          overrides={"kafka.batch_size": 50, "fence_ttl_seconds": 600,
                                     "kafka.group_protocol": protocol},
                          key_prefix=workload.prefix)
    first = WorkerProcess(config, tmp_path / "first.log")
    second = WorkerProcess(config, tmp_path / "second.log")
    stop_busy = threading.Event()
    handover = Handover(workload, once)
    try:
        # The configured topics, plus the heartbeat topic and the heartbeat table's topic
        # that the worker adds for freshness.
        partitions = {f"{t}[{p}]" for t, p in end_offsets(
            stack, [*TOPICS, "__debezium-heartbeat.nd", "nd.public.debezium_heartbeat"])}
        wait_until(lambda: owned(first) and owned(second)
                   and owned(first) | owned(second) == partitions
                   and not owned(first) & owned(second), 60,
                   "the workers to split every partition between them")
        # The one that leaves must hold posts partitions, or the takeover moves no change.
        leaving, staying = ((first, second) if any(t.startswith(POSTS) for t in owned(first))
                            else (second, first))
        moved = sorted(t for t in owned(leaving) if t.startswith(POSTS))
        assert moved, (owned(first), owned(second))

        def keep_changing() -> None:
            with_rows = Rows(stack.postgres_dsn)
            try:
                while not stop_busy.is_set():
                    for post_id in busy:
                        with_rows.update_post(post_id)
            finally:
                with_rows.close()

        load = threading.Thread(target=keep_changing, daemon=True)
        load.start()
        handover.start()
        time.sleep(2)
        leaving.signal(signal.SIGTERM)  # a graceful leave, under load
        assert leaving.stop() == 0
        left_at = committed(stack, group, [POSTS])
        wait_until(lambda: owned(staying) == partitions, 60,
                   "the remaining worker to take every partition")
        time.sleep(1)
        handover.stopping.set()
        handover.join(30)
        assert handover.error is None, handover.error
        stop_busy.set()
        load.join(30)
        # Right after the takeover: each of these rows changed once, deleted or updated.
        for post_id in after[::2]:
            workload.db.delete_post(post_id)
            workload.deleted.add(post_id)
        last_updates = {post_id: workload.db.update_post(post_id) for post_id in after[1::2]}
        for post_id, (neighbourhood, _) in handover.inserted.items():
            workload.posts[post_id] = neighbourhood
        assert len(handover.inserted) > 100 and len(handover.updated) > 100, \
            "too few changes during the handover to find a loss"

        # A marker committed last: once its fence is there, Debezium has published every
        # change before it; then the worker must commit up to the topics' ends.
        marker, _ = workload.db.insert_post(7, "marker")
        workload.posts[marker] = 7
        wait_until(lambda: workload.shards["a"].exists(workload.key(marker)), 60,
                   "the marker's fence")
        wait_committed_to_end(stack, group)
        evidence = [*handover.inserted, *handover.updated, *after]
        # Each is still its row's last change (the oracle reads the current version).
        for post_id, (_, version) in handover.inserted.items():
            assert workload.db.post_version(post_id) == version
        for post_id, version in [*handover.updated.items(), *last_updates.items()]:
            assert workload.db.post_version(post_id) == version
        # A late change converges; a lost one stays stale.
        assert workload.settled(evidence, timeout=30) == []
        # The remaining worker really processed records of the partitions it took over.
        now = committed(stack, group, [POSTS])
        taken = [(POSTS, int(t[len(POSTS) + 1:-1])) for t in moved]
        assert all(now[tp] > left_at[tp] for tp in taken), (moved, left_at, now)
        assert workload.stale_entries([*busy, marker]) == []  # the load converged too
    finally:
        handover.stopping.set()
        stop_busy.set()
        for worker in (first, second):
            if worker.alive():
                assert worker.stop() == 0
