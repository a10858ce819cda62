"""The shard map reloaded by a running worker (SPEC §4): a new version is taken up
without a restart; a bad one is rejected, counted and logged, and the old one kept.

The worker consumes a topic of its own, fed with a recorded Debezium insert of a post
whose id and neighbourhood are changed per step (`support.post_insert`); its key
templates carry the test's id, so only this test's keys are written (and removed) on
the shared shards.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import pytest
import valkey
import yaml
from confluent_kafka import Producer

from tests.conftest import Stack
from tests.e2e.support import (
    InProcessWorker,
    create_topic,
    post_insert,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
MOVED = 350  # a neighbourhood on shard a in version 1, moved to shard b in version 2
RELOAD_SECONDS = 0.2  # shard_map_reload_seconds of the worker under test


@pytest.fixture
def prefix(uid: str) -> str:
    return f"reload-{uid}:"


def shard_map(stack: Stack, version: int, ranges: list[tuple[int, int, str]]) -> str:
    return yaml.safe_dump({
        "version": version,
        "shards": {"a": {"url": stack.valkey["valkey-a"]}, "b": {"url": stack.valkey["valkey-b"]}},
        "ranges": [{"from": low, "to": high, "shard": name} for low, high, name in ranges],
        "moving": [],
        "default": None,
    }, sort_keys=False)


def replace(path: Path, content: str) -> None:
    """Swap the file in one rename, as a ConfigMap update does (never half-written)."""
    staged = path.with_suffix(".staged")
    staged.write_text(content)
    os.replace(staged, path)


class Feed:
    """Inserts of posts (recorded Debezium `c` events), produced to the worker's topic."""

    def __init__(self, stack: Stack, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        self.next_id = random.randrange(10**9, 2 * 10**9)

    def insert(self, neighborhood_id: int) -> int:
        post_id = self.next_id
        self.next_id += 1
        key, value = post_insert(post_id, neighborhood_id)
        self.producer.produce(self.topic, key=key, value=value)
        assert self.producer.flush(30) == 0
        return post_id


def test_a_running_worker_takes_up_a_new_shard_map_and_keeps_it_when_the_next_is_bad(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey], caplog: pytest.LogCaptureFixture) -> None:
    topic = create_topic(stack, f"reload-{uid}", partitions=1)
    config = write_config(tmp_path, stack, group=f"reload-{uid}", topics=[topic],
                          key_prefix=prefix,
                          overrides={"shard_map_reload_seconds": RELOAD_SECONDS})
    map_file = tmp_path / "shard_map.yaml"
    replace(map_file, shard_map(stack, 1, [(1, 500, "a"), (501, 1000, "b")]))
    version_2 = shard_map(stack, 2, [(1, MOVED - 1, "a"), (MOVED, 1000, "b")])
    # Would send MOVED back to a, but two ranges overlap: the whole file is invalid.
    bad = shard_map(stack, 3, [(1, 500, "a"), (501, 1000, "b"), (900, 1200, "b")])
    feed = Feed(stack, topic)
    caplog.set_level(logging.INFO, logger="reconciler.pipeline.worker")

    with InProcessWorker(config) as running:
        def reloads(result: str) -> float:
            return running.metric("reconciler_shard_map_reloads_total", {"result": result})

        def where(neighborhood_id: int) -> set[str]:
            """The shards on which an insert in `neighborhood_id` is now invalidated."""
            post_id = feed.insert(neighborhood_id)
            running.wait_caught_up(stack, [topic])
            return {name for name, client in shards.items()
                    if client.exists(f"{prefix}post:{post_id}")}

        assert running.metric("reconciler_shard_map_version") == 1
        assert where(MOVED) == {"a"}

        # (a) A new version moves the range to b: taken up without a restart.
        replace(map_file, version_2)
        wait_until(lambda: running.metric("reconciler_shard_map_version") == 2, 10,
                   "shard map version 2 to be in use")
        assert reloads("ok") == 1 and reloads("error") == 0
        assert running.metric("reconciler_shard_map_reload_failed") == 0
        assert where(MOVED) == {"b"}
        assert where(7) == {"a"}

        # (b) A bad version is rejected: counted, flagged, logged, and the old one kept.
        replace(map_file, bad)
        wait_until(lambda: reloads("error") == 1, 10, "the bad shard map to be rejected")
        assert running.metric("reconciler_shard_map_reload_failed") == 1
        assert running.metric("reconciler_shard_map_version") == 2
        assert reloads("ok") == 1
        rejected = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.ERROR and "rejected" in r.getMessage()]
        assert len(rejected) == 1, rejected
        assert "keeping version 2" in rejected[0] and str(map_file) in rejected[0]
        assert "overlap" in rejected[0] and "ranges[2]" in rejected[0], rejected[0]
        assert where(MOVED) == {"b"}  # still routed by version 2
        time.sleep(5 * RELOAD_SECONDS)  # polls again: the same bad file is reported once
        assert reloads("error") == 1

        # (c) The file fixed again (back to version 2): the failure clears.
        replace(map_file, version_2)
        wait_until(lambda: running.metric("reconciler_shard_map_reload_failed") == 0, 10,
                   "the reload failure to clear")
        assert reloads("ok") == 2 and reloads("error") == 1
        assert running.metric("reconciler_shard_map_version") == 2
        assert where(MOVED) == {"b"}
    assert running.code == 0
