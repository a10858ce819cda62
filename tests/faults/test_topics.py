"""The topic under the worker changes: compaction, a retention gap, partitions added.

Each scenario feeds a topic of its own with the workload's real Debezium change
records (`tests.faults.topics.Relay`, placed as Debezium's producer places them), so it
can configure, cut and grow that topic without touching the Debezium topics.

- Compacted topic: the workload's records go to a topic with ``cleanup.policy=compact``
  whose segments roll every 100 ms; the test waits until the log cleaner has removed
  the delete events — it reads the topic and finds each deleted row's tombstone with
  no delete (and no other record) left of its key — and only then starts the worker:
  the tombstone is all it learns of those deletes, and no stale entry may remain.
  Comments do not move and rows come back where they were: a compacted topic keeps a
  key's last record, which does not name the shard a row left (an entry left there is
  unreachable until the row returns, and its return invalidates it). Derived keys are
  not cached: a tombstone names only the key, so a deleted row's derived-key deletes
  go with its compacted records.
- Retention gap: the worker reconciles the topic and stops; every row of a set of its
  own, cached at its version, then changes once (an update, or a delete) while the
  worker is down; DeleteRecords then removes part of those records on one partition,
  past the group's committed offset, as retention would. The restarted worker must
  count exactly the records it can never see in
  ``reconciler_unseen_records_total{topic,partition}`` and log them ("never seen", the
  offsets); the oracle excuses exactly the rows with a record in the removed range and
  finds every row that lost its only change stale; ``reconciler audit --repair`` (the
  documented repair) then leaves the cache clean for the unexcused oracle. Derived keys
  are not cached: audit cannot repair an unversioned key.
- Partitions added: while the workload runs and the records are copied, the topic grows
  by two partitions per cycle (AdminClient.create_partitions); a key may then land on
  another partition than its earlier records, so a row's records are no longer in
  order (the oracle allows the older fences that leaves). Every change must be
  reconciled within the oracle's timeout — with the worker's own consumer settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack
from tests.e2e.support import committed, end_offsets, wait_until
from tests.faults.conftest import REPEAT
from tests.faults.negative import assert_broken, env, judged
from tests.faults.oracle import Figures, Oracle
from tests.faults.topics import (
    Copy,
    Relay,
    add_partitions,
    create,
    delete_below,
    partitions_of,
    read_all,
)
from tests.faults.workers import Load, Worker, dead_letter_topic, fault_config
from tests.faults.workload import Row, Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": "100",  # a segment closes (and becomes cleanable) 100 ms after it began
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "86400000",  # tombstones stay a day: the worker must see them
}
PARTITIONS = 3  # of the compacted topic
CLEANER_TIMEOUT = 90.0  # seconds the log cleaner gets (it looks every second on the stack)
NOTICE_TIMEOUT = 60.0  # seconds the worker gets to read partitions added to its topic


def key_id(key: bytes | None) -> int | None:
    """The row id in a Debezium key (schemas.enable true or false)."""
    if key is None:
        return None
    data = json.loads(key)
    data = data.get("payload", data)
    return int(data["id"]) if isinstance(data, dict) and "id" in data else None


def rows_by_key(workload: Workload) -> dict[tuple[str, int], Row]:
    return {(row.table, row.id): row for row in workload.rows}


# --------------------------------------------------------------------------- compaction


def compacted_changes(workload: Workload, rows: list[Row]) -> None:
    """Updates, deletes, rows deleted and inserted again where they were (within the
    fence TTL), earlier deletes inserted again, some deleted once more. No moves."""
    workload.update(rows)
    workload.update(rows[::2])
    workload.reinsert(workload.gone()[::2], place="same")
    chosen = [r for r in rows[::5] if not r.deleted]
    workload.delete(chosen)
    workload.reinsert(chosen, place="same")
    workload.update(chosen[::2], recache=0)
    workload.delete(rows[1::4])
    workload.delete(chosen[1::3])


def close_segments(workload: Workload, oracle: Oracle, relay: Relay, topic: str) -> None:
    """Fresh rows until every partition got a record after the others: the segments
    that hold the workload's records close (the cleaner never cleans the active one)."""
    start = len(relay.copies)
    for _ in range(60):
        workload.create(posts=1)
        oracle.published()
        relay.copy()
        if {c.partition for c in relay.copies[start:]} >= set(range(PARTITIONS)):
            return
    raise AssertionError(f"{topic}: 60 fresh rows never reached every partition")


def wait_compacted(stack: Stack, topic: str, workload: Workload) -> dict[str, int]:
    """Wait until, for every deleted row, the topic holds its tombstone and no other
    record of its key; returns what the topic holds."""
    deleted = {(row.table, row.id) for row in workload.rows if row.deleted}
    state: dict[str, int] = {}

    def done() -> bool:
        by_key: dict[tuple[str, int], list[bytes | None]] = defaultdict(list)
        records = read_all(stack, topic)
        for _partition, _offset, key, value in records:
            row_id = key_id(key)
            if row_id is None or key is None:
                continue
            table = "posts" if b"posts.Key" in key else "comments"
            by_key[table, row_id].append(value)
        left = [k for k in deleted if by_key.get(k) != [None]]
        state.update(records=len(records), deleted_rows=len(deleted),
                     deletes_left=len(left))
        return not left

    try:
        wait_until(done, CLEANER_TIMEOUT, "the log cleaner", interval=1.0)
    except AssertionError:
        raise AssertionError(f"the log cleaner did not leave only the tombstones of the "
                             f"{len(deleted)} deleted rows on {topic} in {CLEANER_TIMEOUT:.0f}s "
                             f"(last: {state})") from None
    return state


def run_compacted(stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
                  *, cycles: int, broken: str | None = None) -> Figures | None:
    workload.derived = False
    topic = create(stack, f"fcompact-{uid}", partitions=PARTITIONS, config=COMPACTED)
    relay = Relay(stack, topic, oracle.start)
    group = f"fcompact-{uid}"
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=50,
                          topics=[topic])
    seen: list[dict[str, int]] = []
    for _cycle in range(cycles):
        rows = workload.create(posts=25, comments=15)
        compacted_changes(workload, rows)
        oracle.published()
        relay.copy()
        time.sleep(0.3)  # past segment.ms: the next record of a partition rolls its segment
        close_segments(workload, oracle, relay, topic)
        seen.append(wait_compacted(stack, topic, workload))
        oracle.figures.faults += 1
        # Only now does a worker read the topic.
        worker = Worker(config, tmp_path / "worker.log", env=env(broken))
        try:
            worker.wait_ready()
            assert_broken(worker.log(), broken)
            since = oracle.committed(group, [topic]) if _cycle else None
            records = sum(1 for p, o, _, _ in read_all(stack, topic)
                          if since is None or o >= since[topic, p])
            oracle.wait_committed(group, end_offsets(stack, [topic]), alive=worker.alive)
            if broken is None:
                start = since or {(topic, p): 0 for p in range(PARTITIONS)}
                oracle.counted(worker.processed, start, records=records)
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
    assert relay.misplaced == [], relay.misplaced[:5]
    oracle.figures.extra["compacted"] = seen
    return judged(oracle, broken, lambda: oracle.account(
        group, dead_letter_topic=dead_letter_topic(config), topics=[topic]))


def test_compacted_topic_whose_cleaner_removed_the_deletes_leaves_nothing_stale(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    run_compacted(stack, tmp_path, uid, workload, oracle, cycles=REPEAT)


# --------------------------------------------------------------------------- retention gap


def audit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "audit", "-c", str(config), "--table",
         "public.posts", "--table", "public.comments", "--json", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)


def test_retention_gap_is_counted_logged_and_repaired_by_audit(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    workload.derived = False  # unversioned: audit cannot repair one a gap left behind
    topic = create(stack, f"fgap-{uid}", partitions=3)
    relay = Relay(stack, topic, oracle.start)
    group = f"fgap-{uid}"
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=50,
                          topics=[topic])
    gaps = []
    for cycle in range(REPEAT):
        rows = workload.create(posts=20, comments=15)
        quiet = workload.create(posts=30, comments=20, readable=False)  # changed in the gap
        workload.update(rows)
        workload.churn(rows[::4])
        workload.reinsert(workload.gone()[::2])
        oracle.published()
        relay.copy()
        worker = Worker(config, tmp_path / f"before{cycle}.log")
        try:
            oracle.wait_committed(group, end_offsets(stack, [topic]), alive=worker.alive)
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
        at = oracle.committed(group, [topic])
        # While the worker is down, each quiet row changes once (its last change), cached
        # at its version just before: an update, or a delete.
        workload.update(quiet[::3], recache=1.0)
        workload.update(quiet[1::3], recache=1.0)
        for row in quiet[2::3]:
            workload.cache(row)
        workload.delete(quiet[2::3])
        oracle.published()
        before = len(relay.copies)
        relay.copy()
        per_partition: dict[int, list[Copy]] = defaultdict(list)
        for copied in relay.copies[before:]:
            per_partition[copied.partition].append(copied)
        partition = max(per_partition, key=lambda p: len(per_partition[p]))
        first = at[topic, partition]
        assert min(c.offset for c in per_partition[partition]) == first
        cut = first + max(1, len(per_partition[partition]) // 2)
        assert delete_below(stack, topic, partition, cut) == cut
        oracle.figures.faults += 1
        index = rows_by_key(workload)
        lost = {row_key(c) for c in per_partition[partition] if c.offset < cut}
        kept = {row_key(c) for c in per_partition[partition] if c.offset >= cut}
        excused = [index[key] for key in sorted(lost)]  # a record of theirs was removed
        lost_rows = [index[key] for key in sorted(lost - kept)]  # every record removed

        worker = Worker(config, tmp_path / f"after{cycle}.log")
        try:
            worker.wait_ready()
            since = {tp: offset for tp, offset in at.items()} | {(topic, partition): cut}
            figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config),
                                     topics=[topic], excused=excused)
            oracle.counted(worker.processed, since)
            unseen = {int(dict(labels)["partition"]): value
                      for (name, labels), value in worker.metrics().items()
                      if name == "reconciler_unseen_records_total"
                      and dict(labels).get("topic") == topic}
            log = worker.log()
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
        count = cut - first
        assert unseen.get(partition) == count, (unseen, partition, count)
        assert all(v == 0 for p, v in unseen.items() if p != partition), unseen
        line = (f"{topic}[{partition}]: {count} record(s) at offsets {first}-{cut - 1} were "
                "deleted (retention) before this group read them: never seen")
        assert line in log, f"no log line {line!r} in:\n{log[-3000:]}"
        figures.unseen += count
        # Every row that lost every record of its change is stale.
        problems = oracle.problems_of(lost_rows)
        assert set(problems) == {row.key for row in lost_rows}, (
            "rows whose only change the gap removed, not found stale: "
            f"{sorted({row.key for row in lost_rows} - set(problems))}")
        # The documented repair, then the whole oracle with nothing excused.
        repaired = audit(config, "--repair")
        assert repaired.returncode in (0, 1), repaired.stderr[-3000:]
        clean = audit(config)
        assert clean.returncode == 0, f"audit after --repair:\n{clean.stdout}\n{clean.stderr}"
        oracle.account(group, dead_letter_topic=dead_letter_topic(config), topics=[topic])
        gaps.append({"partition": partition, "offsets": [first, cut - 1], "unseen": count,
                     "excused_rows": len(excused), "stale_rows_found": len(problems),
                     "log": line})
    oracle.figures.extra["gaps"] = gaps


def row_key(copied: Copy) -> tuple[str, int]:
    """The (table, id) of a copied record, a tombstone included."""
    if copied.change is not None:
        return copied.change.table, copied.change.id
    table = "posts" if b"posts.Key" in (copied.key or b"") else "comments"
    row_id = key_id(copied.key)
    assert row_id is not None, copied
    return table, row_id


# --------------------------------------------------------------------------- partitions


class Copier(threading.Thread):
    """Copies new records into the scenario's topic every 200 ms."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(name="relay", daemon=True)
        self.relay = relay
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            while not self._done.wait(0.2):
                self.relay.copy()
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def __enter__(self) -> Copier:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(60)
        if self.error is not None:
            raise AssertionError(f"the relay failed: {self.error!r}") from self.error


@pytest.fixture
def grown(stack: Stack, uid: str) -> Iterator[str]:
    yield create(stack, f"fparts-{uid}", partitions=2)


def test_partitions_added_mid_stream_are_read_and_every_change_reconciled(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        grown: str) -> None:
    topic = grown
    relay = Relay(stack, topic, oracle.start)
    group = f"fparts-{uid}"
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=50,
                          topics=[topic])
    worker = Worker(config, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        with Load(workload, pause=0.05), Copier(relay):
            for _cycle in range(REPEAT):
                time.sleep(2)
                add_partitions(stack, topic, partitions_of(stack, topic) + 2)
                oracle.figures.faults += 1
                time.sleep(3)
        workload.delete(workload.live()[::9])
        oracle.published()
        relay.copy()
        moved = sum(1 for c in relay.copies if c.partition >= 2)
        assert moved > 0, "no record went to an added partition"
        total = partitions_of(stack, topic)
        try:
            oracle.wait_committed(group, end_offsets(stack, [topic]), timeout=NOTICE_TIMEOUT,
                                  alive=worker.alive)
        except AssertionError:
            read = committed(stack, group, [topic])
            raise AssertionError(
                f"the worker did not read the added partitions within {NOTICE_TIMEOUT:.0f}s "
                f"(committed {read}): librdkafka notices new partitions of a subscribed "
                "topic only on a metadata refresh (topic.metadata.refresh.interval.ms, "
                "5 minutes by default)") from None
        figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config),
                                 topics=[topic], older_fences=True, timeout=90)
        oracle.counted(worker.processed, {(topic, p): 0 for p in range(total)})
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert relay.misplaced == [], relay.misplaced[:5]
    figures.extra.update(partitions=total, records_in_added_partitions=moved)
