"""Delivery: a crash in the middle of a batch, or a worker leaving its group, loses no
change. Duplicates are allowed (every operation is idempotent); losses are not.

The oracle: every row's cached data was put there at version 1 before the changes, so
a change that were never reconciled would leave that stale data behind. After the
pipeline has caught up, every live row's entry must be a fence at exactly the row's
current version, and every deleted row's entry a delete fence.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    shards: dict[str, valkey.Valkey]
    posts: dict[int, int] = field(default_factory=dict)  # id -> neighbourhood
    deleted: set[int] = field(default_factory=set)

    def create(self, count: int) -> None:
        writers = {name: CacheWriter(client) for name, client in self.shards.items()}
        for index in range(count):
            neighbourhood = 7 if index % 2 else 700
            post_id, version = self.db.insert_post(neighbourhood, f"row {index}")
            self.posts[post_id] = neighbourhood
            writers[self.shard_of(post_id)].set_if_newer(
                f"post:{post_id}", version, {"title": f"row {index}"}, 600)

    def shard_of(self, post_id: int) -> str:
        return "valkey-a" if self.posts[post_id] < 500 else "valkey-b"

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

    def stale_entries(self) -> list[str]:
        """Entries that do not hold what the oracle demands, described."""
        wrong = []
        for post_id in self.posts:
            entry = self.shards[self.shard_of(post_id)].hgetall(f"post:{post_id}")
            if post_id in self.deleted:
                expected = {b"v": str(MAX_VERSION).encode()}
            else:
                expected = {b"v": str(self.db.post_version(post_id)).encode()}
            if entry != expected:
                wrong.append(f"post:{post_id} holds {entry!r}, expected {expected!r}")
        return wrong


@pytest.fixture
def workload(stack: Stack, valkey_clients: dict[str, Any]) -> Iterator[Workload]:
    db = Rows(stack.postgres_dsn)
    yield Workload(stack, db, valkey_clients)
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
                          overrides={"kafka.batch_size": 60})

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


def test_two_workers_split_partitions_and_one_takes_over_without_loss(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload) -> None:
    group = f"pair-{uid}"
    start_group_at_end(stack, group, TOPICS)
    workload.create(30)
    config = write_config(tmp_path, stack, group=group, topics=TOPICS,
                          overrides={"kafka.batch_size": 50})
    first = WorkerProcess(config, tmp_path / "first.log")
    second = WorkerProcess(config, tmp_path / "second.log")
    try:
        wait_until(lambda: first.ready()["assigned_partitions"] > 0
                   and second.ready()["assigned_partitions"] > 0, 60,
                   "both workers to own partitions")
        # The configured topics, plus the heartbeat topic and the heartbeat table's topic
        # that the worker adds for freshness.
        partitions = len(end_offsets(stack, [*TOPICS, "__debezium-heartbeat.nd",
                                             "nd.public.debezium_heartbeat"]))
        assert (first.ready()["assigned_partitions"]
                + second.ready()["assigned_partitions"]) == partitions

        stop_changes = threading.Event()

        def keep_changing() -> None:
            with_rows = Rows(stack.postgres_dsn)
            try:
                while not stop_changes.is_set():
                    for post_id in workload.posts:
                        with_rows.update_post(post_id)
            finally:
                with_rows.close()

        writer = threading.Thread(target=keep_changing, daemon=True)
        writer.start()
        time.sleep(2)
        first.signal(signal.SIGTERM)  # a graceful leave, under load
        assert first.stop() == 0
        wait_until(lambda: second.ready()["assigned_partitions"] == partitions, 60,
                   "the second worker to take every partition")
        time.sleep(2)
        stop_changes.set()
        writer.join(30)
        workload.change(rounds=1, delete_every=10)
        # Debezium may still be publishing the writer's burst: a change that is only
        # late converges; a lost one would stay stale forever.
        wait_until(lambda: workload.stale_entries() == [], 120, "no stale entry", interval=1)
        wait_committed_to_end(stack, group)
        assert workload.stale_entries() == []
    finally:
        for worker in (first, second):
            if worker.alive():
                worker.stop()
