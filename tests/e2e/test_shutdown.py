"""How the worker ends (SPEC §5, issue 3): a signal finishes the batch in flight; a
dependency that stays unavailable ends it loudly, with the failed batch left uncommitted.

Each test produces recorded Debezium inserts to a one-partition topic of its own (so it
knows exactly which records a batch holds and which offsets must be committed), and its
worker's key templates carry a prefix of the test's own.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import valkey
from confluent_kafka import Producer

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    WorkerProcess,
    committed,
    create_topic,
    post_insert,
    wait_until,
    write_config,
)
from tests.e2e.test_delivery import process_state

pytestmark = pytest.mark.e2e
STALE, CHANGED = 1, 3  # the version cached by a reader before the events, the events' one
ON_A, ON_B = 7, 700  # neighbourhoods on shard a only, on shard b only


@pytest.fixture
def prefix(uid: str) -> str:
    return f"stop-{uid}:"


def produce(stack: Stack, topic: str, posts: list[tuple[int, int]]) -> None:
    """The inserts of `posts` (id, neighbourhood) at version CHANGED, in order."""
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for post_id, neighbourhood in posts:
        key, value = post_insert(post_id, neighbourhood, CHANGED)
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def cache_stale(shards: dict[str, valkey.Valkey], prefix: str,
                posts: list[tuple[int, int]]) -> None:
    for post_id, neighbourhood in posts:
        assert CacheWriter(shards[home(neighbourhood)]).set_if_newer(
            f"{prefix}post:{post_id}", STALE, {"title": "stale"}, 300)


def home(neighbourhood: int) -> str:
    return "a" if neighbourhood == ON_A else "b"


def entries(shards: dict[str, valkey.Valkey], prefix: str,
            posts: list[tuple[int, int]]) -> dict[int, dict[bytes, bytes]]:
    return {post_id: shards[home(n)].hgetall(f"{prefix}post:{post_id}")  # type: ignore[misc]
            for post_id, n in posts}


def fence(version: int) -> dict[bytes, bytes]:
    return {b"v": str(version).encode()}


def logged_at(line: str) -> float:
    """The time of a text-format log line ("2026-01-31 12:00:00,123 INFO ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_lines(worker: WorkerProcess) -> list[str]:
    return worker.log_path.read_text(errors="replace").splitlines()


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_batch_finishes_the_batch_in_flight_commits_it_and_exits_0(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey], sig: signal.Signals) -> None:
    """The worker stops itself (SIGSTOP) with a batch decoded and planned, before any of
    its Valkey calls; the signal arrives while it is stopped and is handled when it
    continues: the batch must still be applied and committed, and the exit clean."""
    topic = create_topic(stack, f"stop-{uid}.public.posts", partitions=1)
    base = int(uid[:6], 16) * 100
    posts = [(base + i, ON_A if i % 2 else ON_B) for i in range(20)]  # both shards
    cache_stale(shards, prefix, posts)
    produce(stack, topic, posts)
    group = f"stop-{uid}"
    config = write_config(tmp_path, stack, group=group, topics=[topic], key_prefix=prefix,
                          overrides={"kafka.batch_size": 100})

    worker = WorkerProcess(config, tmp_path / "worker.log",
                           env={"RECONCILER_FAULT_STOP_AT": "decoded"})
    try:
        wait_until(lambda: process_state(worker.proc.pid) == "T", 60,
                   "the worker to stop itself with a batch decoded")
        # Caught before the batch's Valkey calls: every entry still holds stale data,
        # and nothing is committed.
        assert all(entry[b"v"] == str(STALE).encode() and b"d" in entry
                   for entry in entries(shards, prefix, posts).values())
        assert committed(stack, group, [topic])[topic, 0] < 0
        worker.signal(sig)  # pending while the process is stopped
        worker.signal(signal.SIGCONT)
        code = worker.proc.wait(60)
    finally:
        if worker.alive():
            worker.kill()
    assert code == 0, "\n".join(log_lines(worker)[-30:])
    # The batch in flight was applied: every record of it, on both shards ...
    assert entries(shards, prefix, posts) == {post_id: fence(CHANGED) for post_id, _ in posts}
    # ... and committed: the group resumes after it, not inside it.
    assert committed(stack, group, [topic]) == {(topic, 0): len(posts)}
    lines = log_lines(worker)
    said = [i for i, line in enumerate(lines)
            if f"{sig.name}: finishing the batch in flight, then stopping" in line]
    assert len(said) == 1, lines[-30:]
    after = lines[said[0] + 1:]
    assert after and after[-1].endswith("stopped"), after
    assert not any(" ERROR " in line or "WARNING" in line for line in after), after


def test_a_shutdown_that_hangs_ends_at_its_budget_with_exit_2(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey]) -> None:
    """shutdown_timeout_seconds bounds a signalled shutdown (the chart keeps the pod's
    grace period longer): a close that hangs — injected by the fault seam, as a broker
    that stops answering while the group is left would — ends at the budget, exit 2,
    with a line that says why, and the batches already done stay done."""
    topic = create_topic(stack, f"stop-{uid}.public.posts", partitions=1)
    base = int(uid[:6], 16) * 100
    posts = [(base + i, ON_A) for i in range(5)]
    cache_stale(shards, prefix, posts)
    produce(stack, topic, posts)
    group = f"stop-{uid}"
    budget = 2.0
    config = write_config(tmp_path, stack, group=group, topics=[topic], key_prefix=prefix,
                          overrides={"shutdown_timeout_seconds": budget})
    worker = WorkerProcess(config, tmp_path / "worker.log",
                           env={"RECONCILER_FAULT_SLOW_CLOSE_SECONDS": "120"})
    try:
        wait_until(lambda: entries(shards, prefix, posts)
                   == {post_id: fence(CHANGED) for post_id, _ in posts}, 60,
                   "the batch to be reconciled")
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.proc.wait(60)
        took = time.monotonic() - signalled
    finally:
        if worker.alive():
            worker.kill()
    lines = log_lines(worker)
    assert code == 2, lines[-20:]
    assert budget <= took < budget + 10, f"exited {took:.1f}s after SIGTERM"
    assert any("shutdown took longer than shutdown_timeout_seconds (2s): exiting now"
               in line for line in lines), lines[-20:]
    assert entries(shards, prefix, posts) == {post_id: fence(CHANGED) for post_id, _ in posts}


# --------------------------------------------------------------------------- failure


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port bound but not listening: connections to it are refused (and no other
    process can take it while the test runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_shard_unavailable_past_the_retry_budget_exits_2_without_committing_the_batch(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey], closed_port: int) -> None:
    """With shard isolation off (valkey.parking.enabled: false): what a down shard does
    then. With it on (the default) the shard is parked instead: tests/e2e/test_parking.py."""
    topic = create_topic(stack, f"fail-{uid}.public.posts", partitions=1)
    base = int(uid[:6], 16) * 100
    # Offsets 0 and 1 live on shard a, which answers; offset 2 on shard b, which never does.
    posts = [(base, ON_A), (base + 1, ON_A), (base + 2, ON_B)]
    failed_offset = 2
    produce(stack, topic, posts)
    group = f"fail-{uid}"
    good_map = {"a": {"url": stack.valkey["valkey-a"]}, "b": {"url": stack.valkey["valkey-b"]}}
    bad_map = {**good_map, "b": {"url": f"valkey://127.0.0.1:{closed_port}/0"}}
    overrides = {"kafka.batch_size": 1, "valkey.retry_budget_seconds": 3,
                 "valkey.parking.enabled": False}
    config = write_config(tmp_path / "bad", stack, group=group, topics=[topic],
                          key_prefix=prefix, overrides=overrides,
                          shard_map={"shards": bad_map})

    failing = WorkerProcess(config, tmp_path / "failing.log")
    try:
        code = failing.proc.wait(60)  # 3 s of retries, then it must end by itself
    finally:
        if failing.alive():
            failing.kill()
    lines = log_lines(failing)
    assert code == 2, lines[-30:]  # reconciler.worker.EXIT_FAILED
    why = [line for line in lines if "stopping: shard b still unavailable" in line]
    assert len(why) == 1, lines[-30:]
    assert "over 3s (valkey.retry_budget_seconds)" in why[0], why[0]
    assert "offsets of the failed batch were not stored" in why[0], why[0]
    # It gave the shard the whole budget: from the first failed call to giving up.
    first = next(line for line in lines if "shard b unavailable (attempt 1," in line)
    retried = logged_at(why[0]) - logged_at(first)
    assert retried >= 3 - 0.2, f"gave up after {retried:.2f}s of a 3s budget"
    # The records before it were reconciled; the failed one was not committed: the
    # group resumes at it (or before it), so a restart processes it.
    entry = entries(shards, prefix, posts)
    assert entry[posts[0][0]] == entry[posts[1][0]] == fence(CHANGED)
    assert entry[posts[2][0]] == {}
    offset = committed(stack, group, [topic])[topic, 0]
    assert offset <= failed_offset, f"committed {offset}: the failed record would be skipped"

    # A worker with a shard map that works processes the record the failed one left.
    fixed = write_config(tmp_path / "good", stack, group=group, topics=[topic],
                         key_prefix=prefix, overrides=overrides,
                         shard_map={"shards": good_map})
    restarted = WorkerProcess(fixed, tmp_path / "restarted.log")
    try:
        wait_until(lambda: committed(stack, group, [topic])[topic, 0] == len(posts), 60,
                   "the restarted worker to commit the failed record")
        assert entries(shards, prefix, posts)[posts[2][0]] == fence(CHANGED)
    finally:
        assert restarted.stop() == 0
