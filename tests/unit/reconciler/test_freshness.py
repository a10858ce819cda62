"""Freshness watermarks: moved by changes, carried by heartbeats over quiet
partitions, and never claiming a table is done while one of its partitions is not."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from reconciler.observe.freshness import Freshness
from reconciler.observe.metrics import Metrics

POSTS, HEARTBEATS = "nd.public.posts", "__debezium-heartbeat.nd"


def fresh() -> Freshness:
    freshness = Freshness()
    freshness.assigned([(POSTS, 0), (POSTS, 1), (HEARTBEATS, 0)])
    return freshness


def marks(freshness: Freshness) -> dict[tuple[str, int], int | None]:
    return {tp: s.watermark_ms for tp, s in freshness.snapshot().items()}


def test_a_change_moves_its_partition_forward_only() -> None:
    freshness = fresh()
    freshness.reconciled((POSTS, 0), 2000, "public.posts")
    freshness.reconciled((POSTS, 0), 1500, "public.posts")  # a replayed, older change
    assert marks(freshness)[POSTS, 0] == 2000


def test_a_heartbeat_moves_quiet_partitions_once_they_are_seen_caught_up() -> None:
    freshness = fresh()
    freshness.reconciled((POSTS, 0), 2000, "public.posts")
    before = time.monotonic()
    freshness.heartbeat(5000)
    freshness.caught_up([(POSTS, 1)], before)  # offsets read before the heartbeat: no
    assert marks(freshness)[POSTS, 1] is None
    freshness.caught_up([(POSTS, 0), (POSTS, 1), (HEARTBEATS, 0)], time.monotonic())
    assert marks(freshness) == {(POSTS, 0): 5000, (POSTS, 1): 5000, (HEARTBEATS, 0): 5000}


def test_a_table_waits_for_every_partition_of_its_topic() -> None:
    """Partition 1 has carried no change yet: a change may be waiting there, so the
    table's watermark is unknown, not partition 0's."""
    freshness = fresh()
    freshness.reconciled((POSTS, 0), 2000, "public.posts")
    body = freshness.as_json()
    assert body["tables"] == {"public.posts": None}
    assert body["watermark_ms"] is None
    freshness.heartbeat(1800)
    freshness.caught_up([(POSTS, 1), (HEARTBEATS, 0)], time.monotonic())
    body = freshness.as_json()
    assert body["tables"] == {"public.posts": 1800}  # partition 1 holds it back
    assert body["watermark_ms"] == 1800
    assert [p["table"] for p in body["partitions"]] == [None, "public.posts", "public.posts"]


def test_revoked_partitions_leave_the_json_and_the_gauge() -> None:
    metrics = Metrics.create(CollectorRegistry())
    freshness = fresh()
    freshness.reconciled((POSTS, 0), 2000, "public.posts")
    freshness.reconciled((POSTS, 1), 3000, "public.posts")
    freshness.publish(metrics.freshness)
    value = metrics.registry.get_sample_value
    labels = {"topic": POSTS, "partition": "1"}
    assert value("reconciler_freshness_watermark_seconds", labels) == 3.0
    assert value("reconciler_freshness_watermark_seconds",
                 {"topic": HEARTBEATS, "partition": "0"}) is None  # no watermark yet
    freshness.revoked([(POSTS, 1)])
    freshness.publish(metrics.freshness)
    assert value("reconciler_freshness_watermark_seconds", labels) is None
    assert [p["partition"] for p in freshness.as_json()["partitions"]
            if p["topic"] == POSTS] == [0]
