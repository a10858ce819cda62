"""Failover safety against the real stack: a shard whose server changes under the worker
(here: a Valkey restarted without persistence — every acknowledged fence gone, as after
a lossy failover or a restart from an old snapshot) gets the recent changes again.

Shard a is a Valkey of the test's own (restarting the stack's would disturb others).
After the restart a slow reader writes the version it loaded before the row's last
change: with the fences gone it is accepted. With `valkey.failover_replay_seconds` the
worker sees the new run id — while running, or, after a restart of its own, from the
identities its committed offsets carry — processes the last seconds again, and the stale
entry becomes a fence at the row's version. With the protection off it stays stale (the
loss is real). The group's committed offset never goes back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import valkey

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import (
    POSTS,
    InProcessWorker,
    PrivateValkey,
    Rows,
    committed,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
NEIGHBOURHOOD = 7  # on shard a only


def config(tmp_path: Path, stack: Stack, uid: str, private: PrivateValkey, *,
           replay: float) -> Path:
    group = f"fo-{uid}"
    start_group_at_end(stack, group, [POSTS])
    return write_config(tmp_path, stack, group=group, topics=[POSTS], key_prefix=f"fo{uid}:",
                        shard_map={"shards": {"a": {"url": private.url},
                                              "b": {"url": stack.valkey["valkey-b"]}}},
                        overrides={"valkey.failover_replay_seconds": replay,
                                   "valkey.identity_check_seconds": 0.2,
                                   "valkey.retry_budget_seconds": 30})


def change_a_row(stack: Stack) -> tuple[int, int, int]:
    """A post inserted (v1) and updated (v2); (id, v1, v2)."""
    db = Rows(stack.postgres_dsn)
    try:
        post_id, v1 = db.insert_post(NEIGHBOURHOOD)
        return post_id, v1, db.update_post(post_id)
    finally:
        db.close()


@pytest.mark.parametrize("replay", [60.0, 0.0], ids=["protected", "protection-off"])
def test_a_shard_restarted_under_the_running_worker_gets_the_recent_changes_again(
        stack: Stack, tmp_path: Path, uid: str, private: PrivateValkey, replay: float) -> None:
    path = config(tmp_path, stack, uid, private, replay=replay)
    cache = valkey.Valkey(port=private.port)
    with InProcessWorker(path) as live:
        post_id, v1, v2 = change_a_row(stack)
        key = f"fo{uid}:post:{post_id}"
        wait_until(lambda: cache.hgetall(key) == {b"v": str(v2).encode()}, 30,
                   "the change's fence")
        offsets = [committed(stack, live.worker.group_id, [POSTS]).get((POSTS, p), -1)
                   for p in range(3)]
        private.restart()  # every fence gone: a lossy failover
        # A slow reader that loaded v1 before the update writes it now: accepted.
        assert CacheWriter(valkey.Valkey(port=private.port)).set_if_newer(
            key, v1, {"id": post_id, "stale": True}, 3600)
        if replay:
            wait_until(lambda: cache.hgetall(key) == {b"v": str(v2).encode()}, 30,
                       "the replayed change to repair the stale entry")
            assert live.metric("reconciler_shard_changes_total", {"shard": "a"}) >= 1
            assert live.metric("reconciler_failover_replayed_records_total") >= 2
        else:
            wait_until(lambda: live.metric("reconciler_shard_changes_total",
                                           {"shard": "a"}) >= 1, 30, "the change noticed")
            live.wait_caught_up(stack, [POSTS])
            assert cache.hget(key, "v") == str(v1).encode()  # stale, for good
        after = [committed(stack, live.worker.group_id, [POSTS]).get((POSTS, p), -1)
                 for p in range(3)]
    assert all(a <= b for a, b in zip(offsets, after, strict=True)), (offsets, after)


def test_a_shard_restarted_while_the_worker_was_down_is_noticed_from_the_commit(
        stack: Stack, tmp_path: Path, uid: str, private: PrivateValkey) -> None:
    path = config(tmp_path, stack, uid, private, replay=60.0)
    cache = valkey.Valkey(port=private.port)
    with InProcessWorker(path) as first:
        post_id, v1, v2 = change_a_row(stack)
        key = f"fo{uid}:post:{post_id}"
        wait_until(lambda: cache.hgetall(key) == {b"v": str(v2).encode()}, 30,
                   "the change's fence")
        first.wait_caught_up(stack, [POSTS])
    group = first.worker.group_id
    before = committed(stack, group, [POSTS])
    private.restart()  # while no worker runs
    assert CacheWriter(valkey.Valkey(port=private.port)).set_if_newer(
        key, v1, {"id": post_id, "stale": True}, 3600)
    with InProcessWorker(path) as second:
        wait_until(lambda: cache.hgetall(key) == {b"v": str(v2).encode()}, 30,
                   "the change processed again from before the commit")
        assert second.metric("reconciler_failover_replayed_records_total") >= 2
        second.wait_caught_up(stack, [POSTS])
    after = committed(stack, group, [POSTS])
    assert all(after[tp] >= offset for tp, offset in before.items()), (before, after)


def test_a_shard_down_longer_than_the_replay_window_gets_what_it_acknowledged_before(
        stack: Stack, tmp_path: Path, uid: str, private: PrivateValkey) -> None:
    """The window counts back from when the shard was last seen with its old server, not
    from when the new one is noticed: a shard that stays down longer than
    `failover_replay_seconds` (a crash, a reboot, a restart from an old snapshot) still
    gets again the changes it acknowledged just before it went down. Whether the slow
    reader's write lands before the replay or is refused after it, the row's fence must
    end up there."""
    replay = 4.0
    path = config(tmp_path, stack, uid, private, replay=replay)
    cache = valkey.Valkey(port=private.port)
    with InProcessWorker(path) as live:
        post_id, v1, v2 = change_a_row(stack)
        key = f"fo{uid}:post:{post_id}"
        wait_until(lambda: cache.hgetall(key) == {b"v": str(v2).encode()}, 30,
                   "the change's fence")
        private.stop()  # every fence gone with it
        time.sleep(replay + 3)  # down for longer than the replay window
        private.start()
        CacheWriter(valkey.Valkey(port=private.port)).set_if_newer(
            key, v1, {"id": post_id, "stale": True}, 3600)
        wait_until(lambda: cache.hgetall(key) == {b"v": str(v2).encode()}, 30,
                   "the change acknowledged before the outage to be applied again")
        assert live.metric("reconciler_failover_replayed_records_total") >= 1
