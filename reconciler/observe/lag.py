"""Consumer lag per assigned partition: high watermark minus the group's position.

The position is the worker's own: the next offset after the last record whose
invalidations were acknowledged (what it has stored for commit), or, before it has
processed anything from a partition, the group's committed offset (the earliest
offset for a new group: that is where it will start). Refreshed from a background
thread with a consumer of its own that never subscribes, so the gauge stays true while
the worker is idle, paused, or stuck retrying an unavailable shard. The same thread
publishes the freshness gauge.

Not librdkafka's admin API: its requests that time out while a broker restarts can
abort the whole process (``rd_kafka_enq_once_del_source_return: Assertion
`eonce->refcnt > 0' failed``, librdkafka#4605 and #3663, seen with 2.16 by
tests/faults/test_services.py); a consumer's watermark and committed-offset queries
do not go through that code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from reconciler.observe.freshness import Freshness
from reconciler.observe.metrics import Metrics

log = logging.getLogger(__name__)

TP = tuple[str, int]
REQUEST_TIMEOUT = 10.0  # seconds for one request to the cluster


class LagMonitor:
    """Computes lag for the partitions the worker owns and publishes the gauge."""

    def __init__(self, client: Consumer, group_id: str, metrics: Metrics,
                 freshness: Freshness, positions: Callable[[], Mapping[TP, int | None]]) -> None:
        self._client = client  # a consumer of `group_id` that never subscribes
        self._group = group_id
        self._metrics = metrics
        self._freshness = freshness
        self._positions = positions
        self._published: set[TP] = set()
        self.last: dict[TP, int] = {}  # the lag last published, for /readyz and tests

    def refresh(self) -> None:
        """Publish the lag of every assigned partition, then the freshness gauge (which
        the lag just checked may have moved: see ``Freshness.caught_up``)."""
        try:
            self._refresh_lag()
        finally:
            self._freshness.publish(self._metrics.freshness)

    def _refresh_lag(self) -> None:
        positions = dict(self._positions())
        for tp in self._published - positions.keys():
            self._metrics.lag.remove(tp[0], str(tp[1]))
            self.last.pop(tp, None)
        self._published &= positions.keys()
        if not positions:
            return
        checked_at = time.monotonic()
        watermarks = self._watermarks(positions)
        high = {tp: top for tp, (_, top) in watermarks.items()}
        unknown = [tp for tp, position in positions.items() if position is None]
        if unknown:
            committed = self._committed(unknown)
            for tp in unknown:
                known = committed.get(tp)
                if known is None and tp in watermarks:
                    known = watermarks[tp][0]  # a new group starts at the log start
                positions[tp] = known
        caught_up = []
        for tp, position in positions.items():
            top = high.get(tp)
            if top is None or position is None:
                continue
            lag = max(0, top - position)
            self._metrics.lag.labels(tp[0], str(tp[1])).set(lag)
            self._published.add(tp)
            self.last[tp] = lag
            if lag == 0:
                caught_up.append(tp)
        self._freshness.caught_up(caught_up, checked_at)

    def _watermarks(self, partitions: Mapping[TP, object]) -> dict[TP, tuple[int, int]]:
        """(log start, high watermark) per partition; stops at the first failure (the
        cluster is away: the next refresh asks again)."""
        out: dict[TP, tuple[int, int]] = {}
        for topic, partition in partitions:
            try:
                found = self._client.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=REQUEST_TIMEOUT, cached=False)
            except KafkaException as exc:
                log.debug("watermarks of %s[%d] failed: %s", topic, partition, exc)
                break
            if found is None:  # timed out
                break
            out[topic, partition] = (found[0], found[1])
        return out

    def _committed(self, partitions: list[TP]) -> dict[TP, int | None]:
        found = self._client.committed([TopicPartition(t, p) for t, p in partitions],
                                       timeout=REQUEST_TIMEOUT)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
                for tp in found}
