"""The worker with shard b behind the stack's real Sentinels reconciles changes made
while its primary is killed (the replica promoted) and while a clean failover moves
it back: at the end every row's entry on the primary the Sentinels name is a fence
at the row's latest version, none stale, none missing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from connectors.valkey.sentinel import close_sentinel_client, sentinel_client
from connectors.valkey.writer import CacheWriter
from stack import sentinel
from tests.conftest import Stack
from tests.e2e.sentinel import Sentinels, fields, retry, sentinels
from tests.e2e.support import (
    COMMENTS,
    POSTS,
    PROFILES,
    InProcessWorker,
    Rows,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
__all__ = ["sentinels"]  # the fixture
TOPICS = [POSTS, COMMENTS, PROFILES]
SHARD_B = 700  # a neighbourhood of shard b
ROWS = 20


class Updates:
    """Updates every row again and again, from a thread of its own, until stopped."""

    def __init__(self, stack: Stack, posts: list[int]) -> None:
        self.db = Rows(stack.postgres_dsn)
        self.posts = posts
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for post in self.posts:
                self.db.update_post(post)
                self.count += 1
            time.sleep(0.05)

    def __enter__(self) -> Updates:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.db.close()


def test_the_worker_reconciles_shard_b_across_failovers(
        stack: Stack, sentinels: Sentinels, tmp_path: Path, uid: str) -> None:
    prefix, group = f"sf-{uid}:", f"sentinel-{uid}"
    config = write_config(tmp_path, stack, group=group, topics=TOPICS, key_prefix=prefix,
                          shard_map={"shards": {
                              "a": {"url": stack.valkey["valkey-a"]},
                              "b": {"sentinel": sentinels.urls, "service": sentinels.service}}})
    start_group_at_end(stack, group, TOPICS)
    db = Rows(stack.postgres_dsn)
    client = sentinel_client(sentinels.urls, sentinels.service)
    writer = CacheWriter(client, name="b")

    def key(post: int) -> str:
        return f"{prefix}post:{post}"

    def settle(worker: InProcessWorker) -> None:
        marker, version = db.insert_post(SHARD_B, "marker")
        wait_until(lambda: fields(sentinels.primary(), key(marker)) == {
            b"v": str(version).encode()}, 60, "the marker's fence on b's primary")
        worker.wait_caught_up(stack, TOPICS)

    try:
        with InProcessWorker(config) as worker:
            created = [db.insert_post(SHARD_B) for _ in range(ROWS)]
            settle(worker)
            for post, version in created:  # readers cache every row
                assert writer.set_if_newer(key(post), version, {"v": version}, 600)
            with Updates(stack, [post for post, _ in created]) as updates:
                time.sleep(1)
                killed = sentinel.kill_primary()
                time.sleep(1)
                sentinel.restart_node(killed.old)
                clean = sentinel.failover()
                time.sleep(2)
            assert updates.count > 2 * ROWS
            settle(worker)
            primary = sentinels.primary()
            assert sentinel.primary() == clean.new
            for post, _ in created:
                latest = db.post_version(post)
                assert fields(primary, key(post)) == {b"v": str(latest).encode()}, (
                    f"post {post} at {latest}")
                assert retry(lambda post=post: writer.get(key(post)))[0] is None  # type: ignore[misc]
            assert worker.metric("reconciler_invalidations_total",
                                 {"shard": "b", "result": "repaired"}) >= ROWS
    finally:
        close_sentinel_client(client)
        db.close()
