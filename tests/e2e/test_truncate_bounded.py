"""A TRUNCATE of a big table stays bounded: the shard is parked behind the truncate,
which runs a step at a time between batches, so the loop keeps turning and the other
shard is reconciled meanwhile; a change that came after the truncate lands after it
(its fence survives); and every key the truncate must remove is gone at the end.

The records are the real connector's (a comments TRUNCATE and inserts, recorded),
renamed to a topic of the test's own; the keys are under the test's prefix on the
stack's shards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import valkey
from confluent_kafka import Producer

from tests.conftest import Stack
from tests.e2e.support import InProcessWorker, create_topic, wait_until, write_config
from tests.unit.connectors.debezium import recorded as r

pytestmark = pytest.mark.e2e
KEYS = 100_000  # comment keys on shard a the truncate must remove
RATE = 20_000  # valkey.truncate_max_keys_per_second: a truncate of several seconds


def comment(topic: str, comment_id: int, neighbourhood: int) -> tuple[bytes, bytes]:
    rec = r.record(r.SCHEMAS_TRUE, r.COMMENTS_INSERT).with_raw(topic=topic).with_payload(
        lambda p: p["after"].update(id=comment_id, neighborhood_id=neighbourhood,
                                    system_version=5)).with_key(
        lambda k: k.__setitem__("id", comment_id))
    key, value = rec.key_bytes(), rec.value_bytes()
    assert key is not None and value is not None
    return key, value


def test_a_big_truncate_runs_in_steps_while_the_other_shard_goes_on(
        stack: Stack, tmp_path: Path, uid: str) -> None:
    prefix = f"tb{uid}:"
    topic = create_topic(stack, f"tb{uid}.public.comments", partitions=1)
    a = valkey.Valkey.from_url(stack.valkey["valkey-a"])
    b = valkey.Valkey.from_url(stack.valkey["valkey-b"])
    try:
        pipe = a.pipeline(transaction=False)
        for n in range(KEYS):
            pipe.hset(f"{prefix}comment:{n}", mapping={"v": 1, "d": b"x"})
            if n % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        truncate = r.record(r.SCHEMAS_TRUE, r.COMMENTS_TRUNCATE).with_raw(topic=topic)
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
        producer.produce(topic, key=None, value=truncate.value_bytes())
        after_a = comment(topic, 9_000_001, 7)  # on a, after the truncate: must survive
        producer.produce(topic, key=after_a[0], value=after_a[1])
        producer.flush(30)
        config = write_config(tmp_path, stack, group=f"tb-{uid}", topics=[topic],
                              key_prefix=prefix,
                              overrides={"valkey.truncate_max_keys_per_second": RATE})
        with InProcessWorker(config) as live:
            wait_until(lambda: live.metric("reconciler_truncated_keys_total",
                                           {"shard": "a"}) > 0, 30, "the truncate started")
            # While it runs, shard b (not truncating any more: its keys are few) goes on.
            on_b = comment(topic, 9_000_002, 700)
            producer.produce(topic, key=on_b[0], value=on_b[1])
            producer.flush(30)
            wait_until(lambda: b.hgetall(f"{prefix}comment:9000002") == {b"v": b"5"}, 30,
                       "the change on shard b reconciled during the truncate")
            remaining = sum(1 for _ in a.scan_iter(f"{prefix}comment:*", count=10_000))
            assert remaining > KEYS // 10, f"the truncate was over already ({remaining} left)"
            wait_until(lambda: live.worker._ready().detail["shards"]["a"] == "up", 120,
                       "the truncate to finish and shard a to be unparked")
            removed = live.metric("reconciler_truncated_keys_total", {"shard": "a"})
        left = [k for k in a.scan_iter(f"{prefix}comment:*", count=10_000)]
        # Only the comment written after the truncate, a fence at its version.
        assert left == [f"{prefix}comment:9000001".encode()], left[:5]
        assert a.hgetall(f"{prefix}comment:9000001") == {b"v": b"5"}
        assert removed >= KEYS
    finally:
        for client in (a, b):
            for key in client.scan_iter(f"{prefix}*", count=10_000):
                client.delete(key)
            client.close()
