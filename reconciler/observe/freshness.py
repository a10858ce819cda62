"""The freshness watermark: per partition, the source commit time up to which every
change has been reconciled — so an application can ask whether its write is done.

A partition's watermark moves to the commit time of each change reconciled from it
(Debezium writes a partition in commit order). A quiet partition would never move,
so heartbeats carry it forward: once the lag monitor has seen the partition caught
up (position at the high watermark) *after* a heartbeat was consumed, everything
committed before that heartbeat has been reconciled there.

A table's watermark is the minimum over every assigned partition of the topics that
carried its changes, including partitions that have carried none of them yet (a
change waiting there must hold the table back). A table appears once one of its
changes has been reconciled since the partitions were assigned; until then, the
overall ``watermark_ms`` (every assigned partition) is the answer.

Thread-safety: the worker thread records events and heartbeats, the lag monitor
thread marks partitions caught up and publishes the gauge, the HTTP thread reads
snapshots; one lock guards all of it (every call is O(partitions)).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import Gauge

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class PartitionState:
    watermark_ms: int | None = None  # commit time up to which everything is reconciled
    table: str | None = None  # the table whose changes this partition carries


@dataclass
class Freshness:
    """Watermarks per partition, advanced by changes and by heartbeats."""

    _partitions: dict[TopicPartition, PartitionState] = field(default_factory=dict)
    _heartbeat_ms: int | None = None  # newest heartbeat ts_ms consumed
    _heartbeat_seen_at: float = 0.0  # monotonic time it was consumed
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _published: set[TopicPartition] = field(default_factory=set)  # partitions in the gauge

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._partitions.setdefault(tp, PartitionState())

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._partitions.pop(tp, None)

    def reconciled(self, tp: TopicPartition, commit_ms: int, table: str | None) -> None:
        """Everything in this partition up to a change committed at `commit_ms` is done."""
        with self._lock:
            state = self._partitions.get(tp)
            if state is None:
                state = self._partitions[tp] = PartitionState()
            if state.watermark_ms is None or commit_ms > state.watermark_ms:
                state.watermark_ms = commit_ms
            if table is not None:
                state.table = table

    def heartbeat(self, ts_ms: int) -> None:
        with self._lock:
            if self._heartbeat_ms is None or ts_ms > self._heartbeat_ms:
                self._heartbeat_ms = ts_ms
                self._heartbeat_seen_at = time.monotonic()

    def caught_up(self, partitions: Iterable[TopicPartition], checked_at: float) -> None:
        """The lag monitor saw these partitions at their high watermark at `checked_at`
        (monotonic time the offsets were read)."""
        with self._lock:
            heartbeat = self._heartbeat_ms
            if heartbeat is None or checked_at < self._heartbeat_seen_at:
                return
            for tp in partitions:
                state = self._partitions.get(tp)
                if state is not None and (state.watermark_ms is None
                                          or heartbeat > state.watermark_ms):
                    state.watermark_ms = heartbeat

    def snapshot(self) -> dict[TopicPartition, PartitionState]:
        """Every assigned partition; a partition that has carried no change yet takes
        the table of its topic's other partitions."""
        with self._lock:
            tables = {topic: s.table for (topic, _), s in self._partitions.items()
                      if s.table is not None}
            return {tp: PartitionState(s.watermark_ms, s.table or tables.get(tp[0]))
                    for tp, s in self._partitions.items()}

    def publish(self, gauge: Gauge) -> None:
        """Set ``reconciler_freshness_watermark_seconds`` per partition (from the lag
        monitor's thread); partitions no longer assigned lose their series."""
        marks = {tp: state.watermark_ms for tp, state in self.snapshot().items()
                 if state.watermark_ms is not None}
        for topic, partition in self._published - marks.keys():
            gauge.remove(topic, str(partition))
        for (topic, partition), watermark_ms in marks.items():
            gauge.labels(topic, str(partition)).set(watermark_ms / 1000)
        self._published = set(marks)

    def as_json(self) -> dict[str, object]:
        """What GET /freshness answers."""
        snapshot = self.snapshot()
        tables: dict[str, int | None] = {}
        for state in snapshot.values():
            if state.table is None:
                continue
            if state.table not in tables:
                tables[state.table] = state.watermark_ms
            else:
                current = tables[state.table]
                tables[state.table] = (None if current is None or state.watermark_ms is None
                                       else min(current, state.watermark_ms))
        marks = [s.watermark_ms for s in snapshot.values() if s.watermark_ms is not None]
        complete = bool(marks) and len(marks) == len(snapshot)
        return {
            "now_ms": int(time.time() * 1000),
            # The oldest partition's watermark: every change committed before it is done.
            "watermark_ms": min(marks) if complete else None,
            "tables": tables,
            "partitions": [
                {"topic": topic, "partition": partition, "table": state.table,
                 "watermark_ms": state.watermark_ms}
                for (topic, partition), state in sorted(snapshot.items())
            ],
        }
