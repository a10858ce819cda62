"""A batch's life, from Kafka records to acknowledged invalidations and stored offsets.

    consume ─► prepare ─► send ─► finish ─► complete
               decode      one      read     dead letters confirmed,
               + plan      call     the      counts published,
               (CPU)       per      answers  offsets stored
                           shard

One batch is in flight at a time: while its Valkey calls run on the shards the next
batch is consumed, decoded and planned; then the first one's answers are read and it
completes before the next one is sent. So each shard sees every key's operations in
order, and — the offset rule, here and nowhere else — a batch's offsets are stored
only after every invalidation and dead letter of it is acknowledged. A batch completes
whole, so stored offsets are contiguous by construction. A batch that fails is
abandoned with its offsets unstored: it is processed again after a restart
(every operation is idempotent).

Everything a pipeline uses is handed in (the composition root is
`reconciler.pipeline.compose.build_parts`): a record source (a confluent Consumer, or
`testing.MemorySource`), the decoder, the planner, the invalidator over the shards,
the dead-letter sink, the metrics and freshness bundles, and the hooks its fault and
timing points call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from connectors.debezium.decode import Decoder
from reconciler.observe.freshness import Freshness
from reconciler.observe.gaps import RetentionGaps
from reconciler.observe.metrics import Metrics
from reconciler.pipeline import faults
from reconciler.pipeline.batch import BatchMetrics, BatchResult, Prepared, prepare_batch
from reconciler.pipeline.hooks import Hooks, NoHooks
from reconciler.pipeline.invalidator import Flight, Invalidator, Outcome
from reconciler.pipeline.parking import Parking
from reconciler.pipeline.planner import Planner

log = logging.getLogger(__name__)

TP = tuple[str, int]
DEAD_LETTER_LOGS_PER_BATCH = 10  # dead letters logged one by one per batch; the rest summed


class RecordSource(Protocol):
    """Where a pipeline's records come from and its offsets go (a confluent Consumer)."""

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Message]: ...

    def store_offsets(self, message: Message | None = ...,
                      offsets: list[TopicPartition] | None = ...) -> None: ...

    def commit(self, *, asynchronous: Literal[False]) -> list[TopicPartition]: ...


class DeadLetterSink(Protocol):
    """Where poison records go (`reconciler.pipeline.deadletter.DeadLetters`)."""

    @property
    def topic(self) -> str: ...

    def send(self, message: Message, reason: str, error: str) -> None: ...

    def confirm(self) -> None: ...


class Pipeline:
    """Drives batches through prepare, send, finish and complete, one in flight."""

    def __init__(self, source: RecordSource, decoder: Decoder, planner: Planner,
                 invalidator: Invalidator, dead_letters: DeadLetterSink, metrics: Metrics,
                 *, max_event_bytes: int, heartbeat_table: str | None = None,
                 freshness: Freshness | None = None, gaps: RetentionGaps | None = None,
                 hooks: Hooks | None = None, dry_run: bool = False,
                 count_actions: bool = False,
                 consumer_error: Callable[[KafkaError], None] = lambda error: None,
                 on_stored: Callable[[Sequence[TopicPartition]], None] = lambda stored: None,
                 offset_metadata: Callable[[], str] | None = None,
                 parking: Parking | None = None) -> None:
        self.source = source
        self.decoder = decoder
        self.planner = planner  # replaced by the worker when the shard map is reloaded
        self.invalidator = invalidator
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.freshness = freshness or Freshness()
        self.gaps = gaps
        self.hooks = hooks or NoHooks()
        self.dry_run = dry_run
        self.count_actions = dry_run or count_actions  # per table/shard/kind, for replay
        self._max_bytes = max_event_bytes
        self._heartbeat_table = heartbeat_table
        self._consumer_error = consumer_error
        self._on_stored = on_stored
        self._offset_metadata = offset_metadata
        self.parking = parking
        self._publish = BatchMetrics(metrics)
        # Partitions processed again below where they had been (a failover replay): no
        # offset at or below the floor is stored, no dead letter below it sent twice.
        self.floors: dict[TP, int] = {}
        # The batch whose Valkey calls are out while the next one is prepared (its Flight
        # is None when it sent nothing).
        self._in_flight: tuple[Prepared, Flight | None] | None = None
        self._full = True  # the last poll returned a full batch: more may be waiting

    # ------------------------------------------------------------------ the loop's steps

    def poll(self, batch_size: int, timeout: float) -> list[Message]:
        """Whatever is ready now, up to batch_size; else the batch in flight completes
        and up to `timeout` is spent waiting for one record (with whatever arrived with
        it). consume(n, timeout) alone waits the whole timeout for a full batch: half a
        second of delay on a quiet topic.

        Only after a full batch is the queue asked first: after a partial one it was
        empty a moment ago, so the batch in flight completes before the wait without
        asking again — one call fewer per batch at everyday rates, where every batch is
        partial, and the overlap kept where it pays, when batches are full."""
        if self._full:
            messages = self._consume(batch_size, 0)
            if messages:
                self._full = len(messages) >= batch_size
                return messages
        self.drain()  # nothing waiting: complete the batch in flight, then block
        messages = self._consume(1, timeout)
        if messages and batch_size > 1:
            messages += self._consume(batch_size - 1, 0)
        self._full = len(messages) >= batch_size
        return messages

    def _consume(self, batch_size: int, timeout: float) -> list[Message]:
        started = time.perf_counter()
        messages = self.source.consume(batch_size, timeout)
        self.hooks.polled(len(messages), time.perf_counter() - started)
        return messages

    def push(self, messages: list[Message]) -> None:
        """Prepare `messages`, complete the batch in flight, then send this one."""
        prepared = self.prepare(messages)
        if self.gaps is not None:
            self.gaps.check(prepared.firsts, prepared.jumps, prepared.positions)
        self.drain()
        if faults.broken("early_offsets"):  # stored and committed before any call
            self.store(prepared.positions)
            self.source.commit(asynchronous=False)
        self.hooks.decoded()
        self._in_flight = (prepared, self.send(prepared))

    def drain(self) -> None:
        """Complete the batch in flight, if any (before blocking, a rebalance, a stop)."""
        if self._in_flight is not None:
            started = time.perf_counter()
            prepared, flight = self._in_flight
            self._in_flight = None
            self.complete(prepared, self.finish(flight))
            self.hooks.completed(time.perf_counter() - started)

    def abandon(self) -> None:
        """Drop the batch in flight without reading its answers or storing its offsets
        (it failed: it is processed again after a restart)."""
        if self._in_flight is not None:
            flight = self._in_flight[1]
            self._in_flight = None
            if flight is not None:
                self.invalidator.abandon(flight)

    def process(self, messages: list[Message]) -> BatchResult:
        """One batch, start to finish (what replay calls)."""
        prepared = self.prepare(messages)
        self.hooks.decoded()
        return self.complete(prepared, self.finish(self.send(prepared)))

    # ------------------------------------------------------------------ one batch

    def prepare(self, messages: list[Message]) -> Prepared:
        """Decode and plan a batch: CPU only, nothing sent anywhere."""
        return prepare_batch(
            messages, self.decoder, self.planner, max_bytes=self._max_bytes,
            dead_letter_topic=self.dead_letters.topic, heartbeat_table=self._heartbeat_table,
            count_actions=self.count_actions, consumer_error=self._consumer_error)

    def send(self, prepared: Prepared) -> Flight | None:
        """Send the batch's Valkey calls (None: nothing to send)."""
        if not prepared.actions or self.dry_run:
            return None
        started = time.perf_counter()
        try:
            return self.invalidator.start(prepared.actions)
        finally:
            self.hooks.invalidated(time.perf_counter() - started)

    def finish(self, flight: Flight | None) -> Outcome | None:
        """Read a sent batch's answers (None: it sent nothing)."""
        if flight is None:
            return None
        started = time.perf_counter()
        try:
            return self.invalidator.finish(flight)
        finally:
            self.hooks.invalidated(time.perf_counter() - started)

    def complete(self, prepared: Prepared, outcome: Outcome | None) -> BatchResult:
        """With the batch's invalidations acknowledged (`outcome`, None when nothing was
        sent), confirm its dead letters, then publish its counts and store its offsets."""
        result = prepared.result
        if outcome is not None:
            result.invalidations = outcome.results
            result.coalesced = outcome.coalesced
            for shard, removed in outcome.truncated.items():
                self.metrics.truncated_keys.labels(shard).inc(removed)
            for shard, saved in outcome.coalesced.items():
                self.metrics.coalesced.labels(shard).inc(saved)
            if outcome.parked:
                result.parked = outcome.parked
                assert self.parking is not None
                self.parking.confirm()  # parked calls acknowledged by Kafka
        if prepared.dead:
            self._dead_letter(prepared.dead, result)
        acknowledged = time.time()
        self.hooks.acknowledged()
        # Counted before the offsets are stored: once an offset is committed, the work
        # before it shows in the metrics.
        self._publish.publish(result, prepared.commits, acknowledged,
                              observe_delay=not self.dry_run)
        if not self.dry_run:
            self.store(prepared.positions)
            self.hooks.stored()
        for tp, (commit_ms, source_table) in prepared.latest.items():
            self.freshness.reconciled(tp, commit_ms, source_table)
        if prepared.heartbeat is not None:
            self.freshness.heartbeat(prepared.heartbeat)
        self.metrics.batch.observe(time.perf_counter() - prepared.started)
        return result

    def store(self, positions: dict[TP, int]) -> None:
        """Store the offsets to commit (the next offset to read, per partition)."""
        floors = self.floors
        if floors:
            positions = self._above_floors(positions)
        if not positions:
            return
        if self._offset_metadata is None:
            offsets = [TopicPartition(topic, partition, offset)
                       for (topic, partition), offset in positions.items()]
        else:
            metadata = self._offset_metadata()
            offsets = [TopicPartition(topic, partition, offset, metadata=metadata)
                       for (topic, partition), offset in positions.items()]
        try:
            self.source.store_offsets(offsets=offsets)
            stored = offsets
        except KafkaException:
            # A partition was revoked while the batch ran: store the others; the new
            # owner re-processes the rest from the committed offset (idempotent).
            stored = []
            for tp in offsets:
                try:
                    self.source.store_offsets(offsets=[tp])
                    stored.append(tp)
                except KafkaException as exc:
                    log.info("%s[%d]@%d: offset not stored (partition no longer assigned: "
                             "%s)", tp.topic, tp.partition, tp.offset, exc)
        self._on_stored(stored)

    def _above_floors(self, positions: dict[TP, int]) -> dict[TP, int]:
        """The positions past their partition's floor (a floor reached is dropped)."""
        out = {}
        for tp, offset in positions.items():
            floor = self.floors.get(tp)
            if floor is None:
                out[tp] = offset
            elif offset > floor:
                del self.floors[tp]
                out[tp] = offset
        return out

    def _below_floor(self, message: Message) -> bool:
        floor = self.floors.get((message.topic() or "", message.partition() or 0))
        return floor is not None and (message.offset() or 0) < floor

    def _dead_letter(self, dead: list[tuple[Message, str, str]], result: BatchResult) -> None:
        if self.floors:  # below a floor the dead letter was sent the first time round
            dead = [entry for entry in dead if not self._below_floor(entry[0])]
            if not dead:
                return
        for index, (message, reason, error) in enumerate(dead):
            if index < DEAD_LETTER_LOGS_PER_BATCH:
                log.warning("%s[%d]@%d: dead-lettered (%s): %s", message.topic(),
                            message.partition(), message.offset(), reason, error)
            result.dead_letters[reason] += 1
            if not self.dry_run:
                self.dead_letters.send(message, reason, error)
        if len(dead) > DEAD_LETTER_LOGS_PER_BATCH:
            log.warning("%d more records dead-lettered in this batch",
                        len(dead) - DEAD_LETTER_LOGS_PER_BATCH)
        if not self.dry_run:
            self.dead_letters.confirm()
