"""Shard isolation against the real stack: a shard that stops answering is parked — its
calls go to its parking topic, acknowledged by Kafka before the offsets are stored — so
the other shard stays fresh and the group's offsets move on; when it answers again,
what was parked is applied in order and it is unparked.

Shard b is a Valkey of the test's own, frozen with SIGSTOP (connections open, nothing
answered: a network partition, as far as the worker can tell) and thawed with SIGCONT,
so it keeps its data across the outage and the stale entries it held must be repaired
by the parked calls.
"""

from __future__ import annotations

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
    end_offsets,
    start_group_at_end,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e
ON_A, ON_B = 7, 700  # neighbourhoods on shard a only, on shard b only
ROWS = 5


def fence(version: int) -> dict[bytes, bytes]:
    return {b"v": str(version).encode()}


def test_a_shard_that_stops_answering_is_parked_and_the_other_goes_on(
        stack: Stack, tmp_path: Path, uid: str, private: PrivateValkey) -> None:
    group, prefix = f"park-{uid}", f"pk{uid}:"
    start_group_at_end(stack, group, [POSTS])
    config = write_config(
        tmp_path, stack, group=group, topics=[POSTS], key_prefix=prefix,
        shard_map={"shards": {"a": {"url": stack.valkey["valkey-a"]},
                              "b": {"url": private.url}}},
        overrides={"valkey.parking": {"enabled": True, "after_seconds": 1.0},
                   "valkey.socket_timeout_seconds": 0.5,
                   "valkey.retry_budget_seconds": 600})
    a = valkey.Valkey.from_url(stack.valkey["valkey-a"])
    b = valkey.Valkey(port=private.port)
    db = Rows(stack.postgres_dsn)
    try:
        rows = {nbh: [db.insert_post(nbh) for _ in range(ROWS)] for nbh in (ON_A, ON_B)}
        with InProcessWorker(config) as live:
            live.wait_caught_up(stack, [POSTS])
            # The application caches every row at its version (stale after the update).
            for nbh, client in ((ON_A, a), (ON_B, b)):
                for post_id, version in rows[nbh]:
                    assert CacheWriter(client).set_if_newer(
                        f"{prefix}post:{post_id}", version, {"id": post_id}, 3600)
            private.freeze()
            updated = {nbh: [(post_id, db.update_post(post_id)) for post_id, _ in rows[nbh]]
                       for nbh in (ON_A, ON_B)}
            # Shard a stays fresh while b does not answer; b's calls are parked.
            for post_id, version in updated[ON_A]:
                wait_until(lambda k=f"{prefix}post:{post_id}", v=version:  # type: ignore[misc]
                           a.hgetall(k) == fence(v), 30, "shard a's fences while b is down")
            wait_until(lambda: live.metric("reconciler_parked_actions_total",
                                           {"shard": "b"}) >= ROWS, 30, "b's calls parked")
            # Every change is on the topic and processed: the offsets moved past them.
            ends = end_offsets(stack, [POSTS])
            wait_until(lambda: all(committed(stack, group, [POSTS]).get(tp, -1) >= end
                                   for tp, end in ends.items()), 30,
                       "the offsets committed past the changes while b is down")
            assert live.metric("reconciler_parked_records", {"shard": "b"}) >= 1
            status = live.worker._ready()
            assert status.ok and status.detail["shards"] == {"a": "up", "b": "parked"}
            private.thaw()
            for post_id, version in updated[ON_B]:
                wait_until(lambda k=f"{prefix}post:{post_id}", v=version:  # type: ignore[misc]
                           b.hgetall(k) == fence(v), 60, "the parked calls applied on b")
            wait_until(lambda: live.worker._ready().detail["shards"]["b"] == "up", 30,
                       "shard b unparked")
            assert live.metric("reconciler_parked_records", {"shard": "b"}) == 0
    finally:
        db.close()
        a.close()
        b.close()
