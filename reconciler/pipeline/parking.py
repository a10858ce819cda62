"""Shard isolation: a shard that stays down is parked, not waited for.

A shard that does not answer for ``valkey.parking.after_seconds`` is *parked*: its
calls of the batch, and of every batch after, go to a Kafka topic of its own
(``<valkey.parking.topic_prefix>.<shard>``, one partition, so in order) instead of to
the shard, and the other shards go on. The parked records are produced and
acknowledged before the batch's offsets are stored, exactly like dead letters, so
"offsets only after acknowledgement" holds: the acknowledgement is Kafka's.

When the shard answers again, the loop drains its topic between batches — a bounded
number of records each time, in order, each applied to the shard and then committed
(consumer group ``<group>.parked``) — while new calls keep being parked behind them;
once the drain reaches the end, the shard is unparked and calls go to it directly
again. A parked call applied late can only repair: versioned operations never lower a
newer version, deletes and fences only remove. The topic is the state: a worker that
restarts finds a shard with records left to drain parked, and drains it.

A TRUNCATE goes the same way, so that it stays bounded: removing every key of a big
table (SCAN + UNLINK, ~50k keys/s) inline would hold the loop past its liveness budget.
The shard is parked behind the truncate, which the drain runs a step at a time
(``TRUNCATE_TURN_SECONDS`` of SCAN/UNLINK per loop turn, from a cursor kept between
turns; after a crash it starts again, idempotent) while the other shards go on; the
calls that came after the truncate wait parked behind it, so they land after it and
nothing it removes was written after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from connectors.valkey.protocols import ShardClient
from reconciler.errors import FatalError, RetryBudgetExceeded
from reconciler.observe.metrics import Metrics
from reconciler.pipeline.clients import ensure_topic
from reconciler.pipeline.shards import ShardPool

log = logging.getLogger(__name__)

DRAIN_RECORDS = 200  # parked records applied per loop turn (each up to a batch's calls)
TRUNCATE_TURN_SECONDS = 0.05  # SCAN/UNLINK time a parked truncate gets per loop turn
TRUNCATE_SCAN_COUNT = 1000  # SCAN COUNT hint of a truncate step
REQUEST_TIMEOUT = 10.0  # seconds for watermark and committed-offset queries


class Parked(msgspec.Struct, frozen=True, gc=False):
    """One parked call of one shard: the arguments of `apply`, or a truncate."""

    keys: list[str] = []
    ops: list[str] = []
    versions: list[int] = []
    truncate: str | None = None  # a SCAN pattern, instead of keys
    at: float = 0.0  # unix seconds it was parked


_ENCODE = msgspec.msgpack.Encoder()
_DECODE = msgspec.msgpack.Decoder(Parked)


@dataclass
class _State:
    parked_at: float  # when the shard was parked (unix seconds)
    reason: str
    oldest: float  # when the oldest call still to apply was parked (about)
    drainer: Consumer | None = None
    truncating: tuple[int, int] | None = None  # (offset of the truncate, its SCAN cursor)
    truncated_at: float = 0.0  # monotonic time of the last truncate step (rate limit)


class Parking:
    """The parked shards of one worker, their topics and their drain."""

    def __init__(self, producer: Producer, consumer: Callable[[str], Consumer], *,
                 topic_prefix: str, group: str, after_seconds: float, metrics: Metrics,
                 retry_budget_seconds: float, truncate_rate: float) -> None:
        self._producer = producer
        self.group = group  # the drain's consumer group
        self._consumer = consumer  # a consumer for a group name (never subscribed)
        self.prefix = topic_prefix
        self.after_seconds = after_seconds
        self._metrics = metrics
        self._budget = retry_budget_seconds
        self._truncate_rate = truncate_rate
        self._states: dict[str, _State] = {}
        self._unconfirmed = 0
        self._failures: list[KafkaError] = []

    def topic(self, shard: str) -> str:
        return f"{self.prefix}.{shard}"

    # ------------------------------------------------------------------ parking

    def parked(self, shard: str) -> bool:
        return shard in self._states

    def shards(self) -> list[str]:
        return sorted(self._states)

    def truncating(self) -> bool:
        """A parked truncate is under way: the loop should not block for records."""
        return any(state.truncating is not None for state in self._states.values())

    def begin(self, shard: str, reason: str, *, truncate: bool = False) -> None:
        """Park `shard` from now on: it stayed unavailable for `after_seconds`, or a
        truncate of it runs in steps (`truncate`)."""
        if shard in self._states:
            return
        now = time.time()
        self._states[shard] = _State(now, reason, now)
        if truncate:
            log.info("shard %s: %s runs in steps between batches; the shard's later calls "
                     "wait behind it on %s", shard, reason, self.topic(shard))
            return
        log.error("shard %s parked: no answer for %gs (valkey.parking.after_seconds): its "
                  "calls go to %s until it answers again, the other shards go on (%s)",
                  shard, self.after_seconds, self.topic(shard), reason)

    def park(self, shard: str, keys: Sequence[str] = (), ops: Sequence[str] = (),
             versions: Sequence[int] = (), *, truncate: str | None = None) -> int:
        """Produce one call of `shard` to its topic; `confirm()` waits for it. Returns
        the actions parked."""
        record = Parked(list(keys), list(ops), list(versions), truncate, time.time())
        while True:
            try:
                self._producer.produce(self.topic(shard), value=_ENCODE.encode(record),
                                       key=shard.encode(), on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._unconfirmed += 1
        actions = 1 if truncate is not None else len(keys)
        self._metrics.parked_actions.labels(shard).inc(actions)
        self._metrics.parked.labels(shard).inc()
        return actions

    def publish(self) -> None:
        """The age of each parked shard's oldest call still to apply (housekeeping)."""
        now = time.time()
        for shard, state in list(self._states.items()):
            self._metrics.parked_oldest.labels(shard).set(max(0.0, now - state.oldest))

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        self._unconfirmed -= 1
        if error is not None:
            self._failures.append(error)

    def confirm(self) -> None:
        """Block until every parked call is acknowledged by Kafka, or raise (the batch's
        offsets are then not stored)."""
        if not self._unconfirmed and not self._failures:
            return
        deadline = time.monotonic() + self._budget
        while self._unconfirmed > 0:
            if time.monotonic() > deadline:
                raise RetryBudgetExceeded(
                    f"{self._unconfirmed} parked call(s) not acknowledged by Kafka within "
                    f"{self._budget:g}s (kafka.retry_budget_seconds)")
            self._producer.flush(1.0)
        if self._failures:
            failures, self._failures = self._failures, []
            raise FatalError(
                f"a parking topic ({self.prefix}.<shard>) refused {len(failures)} record(s) "
                f"({failures[0].str()}): check that the topic exists and this principal may "
                "write to it")

    # ------------------------------------------------------------------ draining

    def prepare(self, admin: AdminClient, existing: Collection[str],
                shards: Sequence[str]) -> None:
        """At start-up: a topic per shard (one partition: a shard's calls stay in order),
        and the shards a previous worker left parked parked again."""
        for shard in shards:
            ensure_topic(admin, self.topic(shard), existing, purpose="parking", partitions=1)
        self.restore(shards)

    def drain_answering(self, shards: ShardPool, complete_in_flight: Callable[[], None]
                        ) -> None:
        """Apply what was parked for the shards that answer again (between batches, the
        batch in flight completed first: new calls are parked behind until drained)."""
        states, clients = shards.states(), shards.clients()
        for shard in self.shards():
            if states.get(shard) and shard in clients:
                complete_in_flight()
                self.drain(shard, clients[shard])

    def restore(self, shards: Sequence[str]) -> None:
        """At start-up: a shard whose topic still holds records the drain has not
        applied is parked (a previous worker parked it)."""
        for shard in shards:
            drainer = self._consumer(self.group)
            try:
                left = self._left(drainer, shard)
            finally:
                drainer.close()
            if left:
                self.begin(shard, f"{left} record(s) left on {self.topic(shard)} from before")

    def drain(self, shard: str, client: ShardClient) -> bool:
        """Apply up to DRAIN_RECORDS parked records of `shard`, in order, committing
        each; True once its topic is drained (the shard is then unparked)."""
        state = self._states[shard]
        if state.drainer is None:
            state.drainer = self._consumer(self.group)
            partition = TopicPartition(self.topic(shard), 0)
            committed = state.drainer.committed([partition], timeout=REQUEST_TIMEOUT)[0].offset
            state.drainer.assign([TopicPartition(partition.topic, 0, committed if committed >= 0
                                                 else OFFSET_BEGINNING)])
            log.info("shard %s answers again: applying what was parked on %s", shard,
                     partition.topic)
        drainer = state.drainer
        for message in drainer.consume(DRAIN_RECORDS, 0.1):
            if message.error() is not None:
                continue
            record = _DECODE.decode(message.value() or b"")
            if record.truncate is not None and not self._truncate(shard, state, client,
                                                                  record.truncate, message):
                # Not finished this turn: read it again next turn, from its cursor.
                drainer.seek(TopicPartition(self.topic(shard), 0, message.offset() or 0))
                return False
            if record.keys:
                client.apply(record.keys, record.ops, record.versions)
            drainer.commit(message=message, asynchronous=False)
            state.oldest = record.at
        left = self._left(drainer, shard)
        self._metrics.parked.labels(shard).set(left)
        if left:
            return False
        drainer.close()
        del self._states[shard]
        self._metrics.parked_oldest.labels(shard).set(0)
        log.warning("shard %s unparked: everything parked for it since %s is applied; calls "
                    "go to it directly again", shard,
                    time.strftime("%H:%M:%S", time.localtime(state.parked_at)))
        return True

    def _truncate(self, shard: str, state: _State, client: ShardClient, pattern: str,
                  message: Message) -> bool:
        """Run a parked truncate for at most TRUNCATE_TURN_SECONDS (and the rate limit);
        True once every key matching `pattern` is removed."""
        offset = message.offset() or 0
        step = getattr(client, "truncate_step", None)
        if step is None:  # a client that can only truncate in one go
            removed = client.truncate(pattern, max_keys_per_second=self._truncate_rate)
            self._metrics.truncated_keys.labels(shard).inc(removed)
            return True
        cursor = state.truncating[1] if state.truncating and state.truncating[0] == offset else 0
        started = time.monotonic()
        # valkey.truncate_max_keys_per_second: the keys this turn may remove, from the time
        # since the last step (at most a second's worth)
        allowed = self._truncate_rate * min(1.0, started - state.truncated_at)
        state.truncated_at = started
        count = max(1, min(TRUNCATE_SCAN_COUNT, int(allowed)))
        while time.monotonic() - started < TRUNCATE_TURN_SECONDS and allowed >= 1:
            following, removed = step(pattern, cursor, count=count)
            allowed -= max(removed, 1)
            self._metrics.truncated_keys.labels(shard).inc(removed)
            if following is None:
                state.truncating = None
                log.info("shard %s: truncate %r done", shard, pattern)
                return True
            cursor = following
        state.truncating = (offset, cursor)
        return False

    def _left(self, consumer: Consumer, shard: str) -> int:
        """Records of `shard`'s topic the drain group has not committed."""
        partition = TopicPartition(self.topic(shard), 0)
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=REQUEST_TIMEOUT)
            committed = consumer.committed([partition], timeout=REQUEST_TIMEOUT)[0].offset
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                return 0  # never parked: no topic
            raise
        return max(0, high - max(low, committed if committed >= 0 else low))

    def close(self) -> None:
        for state in self._states.values():
            if state.drainer is not None:
                state.drainer.close()
                state.drainer = None
