"""Scenarios 2, 6 and 7: the consumer group under faults.

2. A worker SIGSTOPped (by the fault seam, at an exact point of a batch) for longer than
   the session timeout loses its partitions to a second worker; SIGCONT: its late
   offset stores and commits must not rewind the group. Committed offsets are sampled
   every 200 ms for the whole test and must never go back.
6. The group's offsets are lost (the group is deleted while its worker is stopped): the
   worker starts from the earliest offset, never the latest: the changes made while it
   was stopped are reconciled, and it re-processes the topics from their beginning.
7. A rolling restart of three workers under load: SIGTERM one, start its replacement,
   wait until it is ready, next.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import Stack
from tests.e2e.support import end_offsets, start_group_at_end, wait_until
from tests.faults.conftest import REPEAT
from tests.faults.oracle import TOPICS, Oracle
from tests.faults.workers import (
    CommitMonitor,
    Load,
    Worker,
    dead_letter_topic,
    fault_config,
    stop_all,
)
from tests.faults.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
SESSION_TIMEOUT = 10.0  # connectors.kafka.SESSION_TIMEOUT_MS, the worker's default


def first_assignment(worker: Worker) -> int:
    """How many partitions the worker's first `assigned` log line names: all of them,
    for a worker that started alone (its topics plus the heartbeat topics it adds)."""
    def found() -> int:
        for line in worker.log().splitlines():
            if "reconciler.pipeline.worker: assigned " in line:
                return line.split("assigned ", 1)[1].count("[")
        return 0

    return int(wait_until(found, 60, "the worker's first assignment", interval=0.1))


def test_stopped_worker_resumed_after_reassignment_never_rewinds_the_group(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    group = f"fstop-{uid}"
    start_group_at_end(stack, group, TOPICS)
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=20)
    rng = random.Random(uid)
    workers: list[Worker] = []
    with CommitMonitor(stack, group, TOPICS) as monitor:
        try:
            for cycle in range(REPEAT):
                workload.reinsert(workload.gone()[::2])
                rows = workload.create(posts=40, comments=20)
                workload.update(rows)
                workload.churn(rows[3::10])
                workload.delete(rows[::8])
                oracle.published()
                since = oracle.committed(group)  # where this cycle's two workers start
                point = ("acknowledged", "stored", "decoded")[cycle % 3]
                sleeper = Worker(config, tmp_path / f"sleeper{cycle}.log", env={
                    "RECONCILER_FAULT_STOP_AT": point,
                    "RECONCILER_FAULT_STOP_ON": str(rng.randint(2, 4))})
                workers.append(sleeper)
                total = first_assignment(sleeper)
                sleeper.wait_fault_stop()
                stopped = time.monotonic()
                # A second worker joins; the sleeper's partitions are reassigned to it once
                # the sleeper's session expires, and it catches up past the sleeper.
                taker = Worker(config, tmp_path / f"taker{cycle}.log")
                workers.append(taker)
                wait_until(lambda t=taker, n=total: t.ready().get("assigned_partitions") == n,  # type: ignore[misc]
                           SESSION_TIMEOUT * 4, "the second worker to take every partition",
                           interval=0.3)
                more = workload.create(posts=10, comments=10)
                workload.update(more)
                oracle.wait_committed(group, oracle.published())
                assert time.monotonic() - stopped > SESSION_TIMEOUT
                sleeper.signal(signal.SIGCONT)  # wakes up mid-batch, long after its session
                oracle.figures.faults += 1
                # It finishes its stale batch, finds its partitions lost, rejoins, and its
                # auto-commit runs a few times while new changes flow.
                wait_until(lambda s=sleeper: rejoined(s.log()), 60,  # type: ignore[misc]
                           "the resumed worker to lose its partitions and rejoin", interval=0.3)
                time.sleep(3)
                late = workload.create(posts=10, comments=10)
                workload.update(late)
                workload.delete(late[::4])
                oracle.wait_committed(group, oracle.published())
                # The two were the group's only members this cycle: their metrics cover
                # every record since it began (the sleeper's stale batch counted twice).
                oracle.counted(lambda s=sleeper, t=taker: s.processed() + t.processed(),  # type: ignore[misc]
                               since)
                stop_all([sleeper, taker])
            since = oracle.committed(group)
            final = Worker(config, tmp_path / "final.log")
            workers.append(final)
            figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config))
            oracle.counted(final.processed, since)
        finally:
            stop_all(workers)
        rewinds = monitor.finish()
    figures.extra.update(commit_samples=monitor.samples, rewinds=len(rewinds))
    assert monitor.samples > 50
    assert rewinds == [], "\n".join(rewinds)


def rejoined(log: str) -> bool:
    """The log shows the partitions lost, then some assigned again."""
    lost = log.find("reconciler.pipeline.worker: lost ")
    return lost >= 0 and "reconciler.pipeline.worker: assigned " in log[lost:]


def test_lost_group_offsets_restart_from_earliest_never_latest(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    group = f"flost-{uid}"
    start_group_at_end(stack, group, TOPICS)
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=500)
    client = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    reprocessed = []
    for cycle in range(REPEAT):
        worker = Worker(config, tmp_path / f"before{cycle}.log")
        try:
            rows = workload.create(posts=20, comments=10)
            workload.update(rows)
            oracle.wait_committed(group, oracle.published())
        finally:
            assert worker.stop() == 0
        # While it is stopped: changes, and the group's offsets are lost.
        while_stopped = workload.create(posts=30, comments=20)
        workload.update(while_stopped)
        workload.move([r for r in while_stopped if r.table == "comments"][::3])
        workload.churn(while_stopped[1::7])
        workload.reinsert(workload.gone()[::2])
        workload.delete(while_stopped[::6])
        ends = oracle.published()
        client.delete_consumer_groups([group], request_timeout=30)[group].result(30)
        oracle.figures.faults += 1
        low = low_offsets(stack)
        history = sum(ends[tp] - low[tp] for tp in ends)

        worker = Worker(config, tmp_path / f"after{cycle}.log")
        try:
            oracle.wait_committed(group, ends, timeout=300)
            # From the earliest offset: it accounts for every record of the topics' history.
            oracle.counted(worker.processed, low)
            reprocessed.append((worker.processed(), history))
            if cycle == REPEAT - 1:
                # From the earliest offset the worker also replays every TRUNCATE comments
                # in the topics' history (other tests'); a truncate has a null key, so it
                # sits on any partition and may be processed after this test's rows,
                # removing their entries: absent, never stale (the oracle allows absent
                # entries anyway: fences expire). Poison records in that history (other
                # tests') are dead-lettered again: only this test's range must have none.
                figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config),
                                         other_dead_letters=True)
        finally:
            assert worker.stop() == 0
    figures.extra["reprocessed_vs_history"] = reprocessed


def low_offsets(stack: Stack) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "cr-probe"})
    try:
        return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[0]
                for t, p in end_offsets(stack, TOPICS)}
    finally:
        consumer.close()


def test_rolling_restart_of_three_workers_under_load(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    group = f"froll-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=50)
    workers = [Worker(config, tmp_path / "w0.log")]
    total = first_assignment(workers[0])
    workers += [Worker(config, tmp_path / f"w{i}.log") for i in (1, 2)]
    everyone = list(workers)
    with CommitMonitor(stack, group, TOPICS) as monitor:
        try:
            for worker in workers:
                worker.wait_ready()
            with Load(workload):
                for _round in range(REPEAT):
                    for index in range(len(workers)):
                        time.sleep(1)
                        assert workers[index].stop() == 0  # SIGTERM: finish, commit, leave
                        oracle.figures.faults += 1
                        workers[index] = Worker(config, tmp_path / f"w{len(everyone)}.log")
                        everyone.append(workers[index])
                        workers[index].wait_ready()
                        wait_until(lambda: sum(w.ready().get("assigned_partitions", 0)
                                               for w in workers) == total, 60,
                                   "every partition to be assigned", interval=0.3)
            workload.delete(workload.live()[::9])
            figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config))
            # Every worker since the group's start, the stopped ones by their last log
            # tally, accounted for every record.
            stopped = sum(w.processed_at_exit() for w in everyone if w not in workers)
            oracle.counted(lambda: stopped + sum(w.processed() for w in workers), since)
            figures.extra["events_by_worker"] = [w.total("reconciler_events_total",
                                                         w.metrics()) for w in workers]
        finally:
            stop_all(everyone)
        rewinds = monitor.finish()
    figures.extra.update(commit_samples=monitor.samples, rewinds=len(rewinds))
    assert rewinds == [], "\n".join(rewinds)
