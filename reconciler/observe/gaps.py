"""Retention gaps: change records deleted before the worker read them.

A partition's records can disappear before the group reads them: retention
(``retention.ms``/``retention.bytes``) or ``DeleteRecords`` moved the log start offset
past the group's committed offset — a worker that was down or behind for longer than
the topic keeps records, or a new group on a topic whose log no longer starts at 0.
librdkafka then resets to the earliest offset and says nothing to the application.
Whatever those records changed is never invalidated: the cache may stay stale.

The watch knows where each assigned partition should continue (the committed offset at
assignment, 0 for a group without one, then the end of each batch). When a batch starts
further on, or skips offsets inside, the records skipped below the log start offset are
the lost ones: ``min(next seen, log start) - expected``. Skips at or above the log start
are compaction or transaction markers — nothing lost — so a compacted topic costs a
look at librdkafka's cached watermark, no broker round trip.

Lost records are counted in ``reconciler_unseen_records_total{topic,partition}`` and
logged with their offsets; the repair is ``reconciler audit --repair`` of the tables of
that topic (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import Counter

log = logging.getLogger(__name__)

TP = tuple[str, int]
LowWatermark = Callable[[TP], int | None]  # a partition's log start offset, if known


class RetentionGaps:
    """Counts the records of assigned partitions that were deleted before being read."""

    def __init__(self, low_watermark: LowWatermark, unseen: Counter) -> None:
        self._low = low_watermark
        self._unseen = unseen
        self._next: dict[TP, int] = {}  # where each partition should continue
        self.lost: dict[TP, int] = {}  # records never seen, per partition (for tests, logs)

    def assigned(self, starts: Mapping[TP, int | None]) -> None:
        """Partitions assigned, with where they continue (None: unknown, not checked
        until its first batch)."""
        for tp, start in starts.items():
            self._unseen.labels(tp[0], str(tp[1]))  # the series exists from assignment on
            if start is None:
                self._next.pop(tp, None)
            else:
                self._next[tp] = start

    def revoked(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self._next.pop(tp, None)

    def check(self, firsts: Mapping[TP, int], jumps: Iterable[tuple[TP, int, int]],
              positions: Mapping[TP, int]) -> int:
        """After a batch is consumed: `firsts` its first offset per partition, `jumps`
        the skips inside it (partition, expected, found), `positions` where each
        partition continues. Returns the records found lost."""
        holes = [(tp, self._next[tp], first) for tp, first in firsts.items()
                 if tp in self._next and first > self._next[tp]]
        holes.extend(jumps)
        lost = 0
        for tp, expected, found in holes:
            low = self._low(tp)
            if low is None or low <= expected:
                continue  # compaction or a transaction marker: nothing was deleted
            missing = min(found, low) - expected
            lost += missing
            self.lost[tp] = self.lost.get(tp, 0) + missing
            self._unseen.labels(tp[0], str(tp[1])).inc(missing)
            log.error("%s[%d]: %d record(s) at offsets %d-%d were deleted (retention) before "
                      "this group read them: never seen, their changes were not reconciled. "
                      "Run `reconciler audit --repair` for the tables of %s, and keep the "
                      "topic's retention longer than the worker can fall behind",
                      tp[0], tp[1], missing, expected, expected + missing - 1, tp[0])
        self._next.update(positions)
        return lost


def low_watermark(consumer: Consumer, tp: TP) -> int | None:
    """A partition's log start offset: librdkafka's, from its last fetch, else the
    broker's."""
    partition = TopicPartition(*tp)
    try:
        low, _ = consumer.get_watermark_offsets(partition, cached=True)
        if low is None or low < 0:
            low, _ = consumer.get_watermark_offsets(partition, timeout=5, cached=False)
    except KafkaException as exc:
        log.warning("%s[%d]: log start offset unavailable (%s): a retention gap may go "
                    "uncounted", tp[0], tp[1], exc)
        return None
    return low if low is not None and low >= 0 else None

