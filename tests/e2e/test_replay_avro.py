"""`reconciler replay` on an Avro topic: the real Avro connector's records (the stack's
nd-avro, through the schema registry) re-processed from a time, repairing the stale
entries of exactly the rows written since, as on a JSON topic."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import valkey
from confluent_kafka import Consumer, TopicPartition

from connectors.valkey.writer import CacheWriter
from reconciler.pipeline.decoders import build_decoder
from reconciler.settings import load_settings
from tests.conftest import ROOT, Stack
from tests.e2e.support import AVRO_PREFIX, avro_overrides, rows, wait_until, write_config

pytestmark = pytest.mark.e2e
AVRO_POSTS = f"{AVRO_PREFIX}.public.posts"
HOME = {7: "a", 700: "b"}  # neighbourhood → its shard


@pytest.fixture
def prefix(uid: str) -> str:
    return f"replay-avro-{uid}:"


def avro_post_ids(stack: Stack, config: Path, since: datetime) -> set[int]:
    """The post ids of the Avro topic's records since `since`, decoded as the worker does."""
    decoder = build_decoder(load_settings(config), None)
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": "cr-probe",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(AVRO_POSTS, timeout=10).topics[AVRO_POSTS].partitions
        wanted = consumer.offsets_for_times(
            [TopicPartition(AVRO_POSTS, p, int(since.timestamp() * 1000)) for p in partitions],
            timeout=10)
        found: set[int] = set()
        for tp in wanted:
            if tp.offset < 0:
                continue
            _, end = consumer.get_watermark_offsets(tp, timeout=10)
            consumer.assign([tp])
            while tp.offset < end:
                for message in consumer.consume(100, 1.0):
                    offset, partition = message.offset(), message.partition()
                    assert offset is not None and partition is not None
                    tp.offset = offset + 1
                    event = decoder.decode(AVRO_POSTS, partition, offset, message.key(),
                                           message.value())
                    if event.after is not None:
                        found.add(int(event.after["id"]))
        return found
    finally:
        consumer.close()


def test_a_replay_of_an_avro_topic_repairs_the_rows_written_since(
        stack: Stack, tmp_path: Path, uid: str, prefix: str,
        shards: dict[str, valkey.Valkey]) -> None:
    config = write_config(tmp_path, stack, group=f"replay-avro-{uid}", topics=[AVRO_POSTS],
                          key_prefix=prefix, overrides=avro_overrides(stack))
    since = datetime.now(UTC) - timedelta(seconds=1)
    with rows(stack) as db:
        posts = [(*db.insert_post(hood, "replayed"), hood) for hood in (7, 700, 7, 700)]
    wanted = {post_id for post_id, _, _ in posts}
    wait_until(lambda: wanted <= avro_post_ids(stack, config, since), 60,
               "the Avro connector to publish the inserts")
    for post_id, version, hood in posts:  # a reader cached each row one version back
        shard = shards[HOME[hood]]
        assert CacheWriter(shard).set_if_newer(f"{prefix}post:{post_id}", version - 1,
                                               {"title": "stale"}, 300)

    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "replay", "-c", str(config), "--from",
         since.isoformat(), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert not report["interrupted"] and report["records"] == report["total"] > 0
    events = {(e["table"], e["op"]): e["count"] for e in report["events"]}
    assert events[("public.posts", "c")] >= len(posts)
    assert report["dead_letters"] == {}, report
    for post_id, version, hood in posts:
        entry = shards[HOME[hood]].hgetall(f"{prefix}post:{post_id}")
        assert entry == {b"v": str(version).encode()}, (post_id, entry)  # the fence at v
        other = shards["b" if HOME[hood] == "a" else "a"]
        assert not other.exists(f"{prefix}post:{post_id}")
