"""The replay run: fix the range, then drive a pipeline over an assigned consumer.

``Replay.plan`` turns the bounds into a start and end offset per partition (a time
through offsets_for_times; a start below the log start moves up to it); ``run``
assigns the partitions, feeds each batch through a ``Pipeline`` built as the worker's
(``reconciler.pipeline.compose``), pauses each partition at its end, and closes the
group (committing its offsets unless failing).
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from reconciler.errors import ConfigError, FatalError, RetryBudgetExceeded, TransientError
from reconciler.observe.metrics import Metrics
from reconciler.ops.progress import Progress
from reconciler.ops.ratelimit import TokenBucket
from reconciler.ops.replay.bounds import EARLIEST, NOW, TP, Bound
from reconciler.ops.replay.report import ReplayReport
from reconciler.pipeline.compose import build_parts, consumer_error
from reconciler.pipeline.hooks import NoHooks
from reconciler.pipeline.pipeline import Pipeline
from reconciler.settings import Settings
from shard_map import ShardMapError, load_shard_map

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds for one metadata / offsets request


def replay_group(group_id: str) -> str:
    """A fresh consumer group for one replay, derived from the live group's name:
    `<group_id>.replay.<UTC time>-<4 hex>` (two replays in one second stay apart)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{group_id}.replay.{stamp}-{secrets.token_hex(2)}"


class Replay:
    """One bounded re-processing run with its own consumer group."""

    def __init__(self, settings: Settings, *, start: Bound, end: Bound | None = None,
                 rate: float | None = None, dry_run: bool = False,
                 group_id: str | None = None, topics: Sequence[str] | None = None,
                 progress_stream: TextIO | None = None, progress_interval: float = 10.0,
                 registry: CollectorRegistry | None = None) -> None:
        if start.kind == NOW:
            raise ConfigError("--from cannot be `now`: nothing would be replayed")
        if end is not None and end.kind == EARLIEST:
            raise ConfigError("--to cannot be `earliest`: nothing would be replayed")
        if rate is not None and rate <= 0:
            rate = None
        self.settings = settings
        self.start, self.end = start, end or Bound(NOW)
        self.rate = rate
        self.dry_run = dry_run
        self.group = group_id or replay_group(settings.kafka.group_id)
        if self.group == settings.kafka.group_id:
            raise ConfigError(f"--group {self.group} is the live group (kafka.group_id): a "
                              "replay must never move the live group's offsets")
        self._topics = list(topics or [])
        self._progress_stream = progress_stream
        self._progress_interval = progress_interval
        self._stop = threading.Event()
        self.planned = threading.Event()  # set once the range is fixed (for callers, tests)
        self.report = ReplayReport(self.group, dry_run)
        self.metrics = Metrics.create(registry or CollectorRegistry())
        try:
            shard_map = load_shard_map(settings.shard_map)
        except ShardMapError as exc:
            raise ConfigError(f"shard_map: {exc}") from exc
        self._parts = build_parts(settings, shard_map, self.metrics, group_id=self.group,
                                  hooks=NoHooks(), stopping=self._stop.is_set)
        self.consumer = self._parts.consumer
        self.pipeline = Pipeline(
            self.consumer, self._parts.decoder, self._parts.planner, self._parts.invalidator,
            self._parts.dead_letters, self.metrics, max_event_bytes=settings.max_event_bytes,
            heartbeat_table=settings.freshness.heartbeat_table, dry_run=dry_run,
            count_actions=True, consumer_error=consumer_error)

    def stop(self) -> None:
        """Finish the batch in flight, then stop (signal-safe)."""
        self._stop.set()
        # (the same event interrupts a retry loop waiting for an unavailable shard)

    # ------------------------------------------------------------------ the range

    def topics(self, existing: Mapping[str, Any]) -> list[str]:
        kafka = self.settings.kafka
        if kafka.topic_regex:
            regex = re.compile(kafka.topic_regex)
            configured = [t for t in sorted(existing) if regex.search(t)
                          and t != kafka.dead_letter_topic and not t.startswith("__")]
        else:
            configured = list(kafka.topics)
        if self._topics:
            unknown = [t for t in self._topics if t not in configured]
            if unknown:
                raise ConfigError(f"--topic {', '.join(unknown)}: not among the configured "
                                  f"topics ({', '.join(configured) or 'none'})")
            configured = list(self._topics)
        if not self.dry_run and kafka.dead_letter_topic not in existing:
            log.warning("the dead-letter topic %s does not exist: a poison record would stop "
                        "the replay (the worker creates it at start-up; or create it)",
                        kafka.dead_letter_topic)
        missing = [t for t in configured if t not in existing]
        for topic in missing:
            log.warning("topic %s does not exist: nothing to replay there "
                        "(`reconciler doctor` checks the topics)", topic)
        return [t for t in configured if t in existing]

    def plan(self) -> dict[TP, tuple[int, int]]:
        """Start and end offset of every partition to replay (end exclusive)."""
        consumer = self.consumer
        existing = consumer.list_topics(timeout=REQUEST_TIMEOUT).topics
        topics = self.topics(existing)
        for bound in (self.start, self.end):
            for topic, partition in bound.offsets:
                if topic not in topics or partition not in existing[topic].partitions:
                    raise ConfigError(f"{topic}:{partition}: no such partition among the "
                                      f"replayed topics ({', '.join(topics) or 'none'})")
        partitions = [(t, p) for t in topics for p in sorted(existing[t].partitions)]
        if self.start.kind == "offsets":
            partitions = [tp for tp in partitions if tp in self.start.offsets]
        marks = {tp: consumer.get_watermark_offsets(TopicPartition(*tp),
                                                    timeout=REQUEST_TIMEOUT, cached=False)
                 for tp in partitions}
        starts = self._offsets(self.start, partitions, marks, default_high=False)
        ends = self._offsets(self.end, partitions, marks, default_high=True)
        out = {}
        for tp in partitions:
            low, high = marks[tp]
            start = starts[tp]
            if start < low:
                log.warning("%s[%d]: offset %d is gone (retention); the log now starts at %d",
                            tp[0], tp[1], start, low)
                start = low
            end = min(ends[tp], high)
            if ends[tp] > high:
                log.warning("%s[%d]: --to offset %d is beyond the end (%d); stopping there",
                            tp[0], tp[1], ends[tp], high)
            out[tp] = (min(start, end), end)
        return out

    def _offsets(self, bound: Bound, partitions: list[TP], marks: Mapping[TP, tuple[int, int]],
                 *, default_high: bool) -> dict[TP, int]:
        if bound.kind == EARLIEST:
            return {tp: marks[tp][0] for tp in partitions}
        if bound.kind == NOW:
            return {tp: marks[tp][1] for tp in partitions}
        if bound.kind == "offsets":
            return {tp: bound.offsets.get(tp, marks[tp][1] if default_high else marks[tp][0])
                    for tp in partitions}
        assert bound.time_ms is not None
        found = self.consumer.offsets_for_times(
            [TopicPartition(t, p, bound.time_ms) for t, p in partitions],
            timeout=REQUEST_TIMEOUT)
        # -1: no record at or after that time: the partition's end.
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0
                else marks[tp.topic, tp.partition][1] for tp in found}

    # ------------------------------------------------------------------ the run

    def run(self) -> ReplayReport:
        report = self.report
        try:
            ranges = self.plan()
        except BaseException:
            self._close(commit=False)
            raise
        report.starts = {tp: start for tp, (start, _) in ranges.items()}
        report.ends = {tp: end for tp, (_, end) in ranges.items()}
        report.reached = dict(report.starts)
        self.planned.set()
        log.info("replay%s: %d records on %d partition(s), group %s%s",
                 " (dry run)" if self.dry_run else "", report.total, len(ranges), self.group,
                 f", at most {self.rate:g}/s" if self.rate else "")
        for (topic, partition), (start, end) in sorted(ranges.items()):
            log.debug("%s[%d]: %d → %d", topic, partition, start, end)
        try:
            self._consume(report)
        except (RetryBudgetExceeded, FatalError) as exc:
            report.error = str(exc)
            report.interrupted = True
        except TransientError as exc:  # stopped while retrying an unavailable shard
            log.warning("stopped while retrying: %s", exc)
            report.interrupted = True
        finally:
            self._close(commit=report.error is None)  # never commit while failing
        report.interrupted = report.interrupted or bool(report.remaining())
        return report

    def _consume(self, report: ReplayReport) -> None:
        consumer = self.consumer
        ends, reached = report.ends, report.reached
        active = {tp for tp in ends if reached[tp] < ends[tp]}
        if not active:
            return
        consumer.assign([TopicPartition(t, p, reached[t, p]) for t, p in sorted(active)])
        bucket = TokenBucket(self.rate) if self.rate else None
        chunk = self.settings.kafka.batch_size
        if bucket is not None:
            chunk = min(chunk, bucket.chunk)
        timeout = self.settings.kafka.poll_timeout_seconds
        progress = Progress(report.total, stream=self._progress_stream,
                            interval=self._progress_interval,
                            label="replay (dry run)" if self.dry_run else "replay")
        began = time.monotonic()
        try:
            while active and not self._stop.is_set():
                messages = consumer.consume(chunk, 0)
                if not messages:  # wait for one record, then take what came with it
                    messages = consumer.consume(1, timeout)
                    if messages and chunk > 1:
                        messages += consumer.consume(chunk - 1, 0)
                batch: list[Message] = []
                offsets: dict[TP, int] = {}
                for message in messages:
                    if message.error() is not None:
                        batch.append(message)  # process() reports it, or raises if fatal
                        continue
                    tp: TP = (message.topic(), message.partition())  # type: ignore[assignment]
                    offset: int = message.offset()  # type: ignore[assignment]
                    if tp not in active or offset >= ends[tp]:
                        continue  # past the end captured at start: not part of this replay
                    batch.append(message)
                    offsets[tp] = offset + 1
                records = sum(1 for m in batch if m.error() is None)
                if batch:
                    if bucket is not None and records and not bucket.acquire(records,
                                                                              self._stop):
                        break  # stopped while waiting: this batch was not processed
                    report.add(self.pipeline.process(batch))
                    report.records += records
                    for tp, offset in offsets.items():
                        reached[tp] = max(reached[tp], offset)
                elif active:
                    self._advance_idle(active, reached)
                for tp in [tp for tp in active if reached[tp] >= ends[tp]]:
                    active.discard(tp)
                    consumer.pause([TopicPartition(*tp)])
                progress.update(sum(reached[tp] - report.starts[tp] for tp in ends))
        finally:
            report.elapsed = time.monotonic() - began
            progress.finish(sum(reached[tp] - report.starts[tp] for tp in ends))

    def _close(self, *, commit: bool) -> None:
        """Commit the replay group's stored offsets (unless failing), leave, release."""
        self._stop.set()  # a refusal seen while closing no longer raises
        if commit:
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not (isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET):
                    log.warning("commit failed: %s", exc)
        with contextlib.suppress(Exception):
            self.consumer.close()
        self.pipeline.abandon()
        self._parts.close()

    def _advance_idle(self, active: set[TP], reached: dict[TP, int]) -> None:
        """Nothing arrived: a partition whose position is already past its last record
        (transaction markers, compaction) is done up to that position."""
        for tp in self.consumer.position([TopicPartition(*tp) for tp in active]):
            key = (tp.topic, tp.partition)
            if tp.offset is not None and tp.offset > reached[key]:
                reached[key] = tp.offset
