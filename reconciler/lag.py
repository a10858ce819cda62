"""Consumer lag per assigned partition: high watermark minus the group's position.

The position is the worker's own: the next offset after the last record whose
invalidations were acknowledged (what it has stored for commit), or, before it has
processed anything from a partition, the group's committed offset (the earliest
offset for a new group: that is where it will start). Refreshed from a background
thread with an admin client, so the gauge stays true while the worker is idle,
paused, or stuck retrying an unavailable shard. The same thread publishes the
freshness gauge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from reconciler.freshness import Freshness
from reconciler.metrics import Metrics

log = logging.getLogger(__name__)

TP = tuple[str, int]
REQUEST_TIMEOUT = 10.0  # seconds for one admin request
LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # the high watermark
EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]  # the log start offset


class LagMonitor:
    """Computes lag for the partitions the worker owns and publishes the gauge."""

    def __init__(self, admin: AdminClient, group_id: str, metrics: Metrics,
                 freshness: Freshness, positions: Callable[[], Mapping[TP, int | None]]) -> None:
        self._admin = admin
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
        high = self._offsets(positions, LATEST)
        unknown = [tp for tp, position in positions.items() if position is None]
        if unknown:
            committed = self._committed(unknown)
            missing = [tp for tp in unknown if committed.get(tp) is None]
            earliest = self._offsets(dict.fromkeys(missing), EARLIEST) if missing else {}
            for tp in unknown:
                known = committed.get(tp)
                positions[tp] = known if known is not None else earliest.get(tp)
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

    def _offsets(self, partitions: Mapping[TP, object], spec: Any) -> dict[TP, int]:
        request = {TopicPartition(topic, partition): spec for topic, partition in partitions}
        out: dict[TP, int] = {}
        futures = self._admin.list_offsets(request, request_timeout=REQUEST_TIMEOUT)
        for tp, future in futures.items():
            try:
                out[tp.topic, tp.partition] = future.result().offset
            except Exception as exc:  # noqa: BLE001 - one partition's failure is logged, not fatal
                log.debug("list_offsets %s[%d] failed: %s", tp.topic, tp.partition, exc)
        return out

    def _committed(self, partitions: list[TP]) -> dict[TP, int | None]:
        request = [ConsumerGroupTopicPartitions(
            self._group, [TopicPartition(t, p) for t, p in partitions])]
        out: dict[TP, int | None] = {}
        for future in self._admin.list_consumer_group_offsets(
                request, request_timeout=REQUEST_TIMEOUT).values():
            for tp in future.result().topic_partitions:
                out[tp.topic, tp.partition] = tp.offset if tp.offset >= 0 else None
        return out
