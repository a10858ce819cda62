"""One consumed batch: decoded and planned (CPU only), then its counts published.

``plan_record`` is one raw record's fate — its size checked, decoded, planned, or
dead-lettered (with the key-only delete its key still allows): what the worker does
per record, and what ``reconciler plan`` prints. ``prepare_batch`` turns a batch of
Kafka messages into the actions to run, the dead letters to send, the offsets to store
once all of it is acknowledged, and the counts and commit times the metrics and the
freshness watermark need. ``BatchMetrics``
publishes a finished batch's counts: one metric update per label set per batch,
never one per record.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Message

from connectors.debezium import model
from connectors.debezium.decode import Decoder, InvalidEvent
from reconciler.errors import PoisonRecordError
from reconciler.observe.metrics import Children, Metrics
from reconciler.pipeline.planner import HEARTBEAT, KEY_ONLY, UNKNOWN_TABLE, Action, Plan, Planner

log = logging.getLogger(__name__)

TP = tuple[str, int]
MAX_KEY_ONLY_BYTES = 64 * 1024  # a dead letter's key larger than this gets no key-only delete
UNRESOLVED_LOG_EVERY = 60.0  # seconds between "unresolved" lines per table (the metric counts all)


@dataclass
class BatchResult:
    """Counts for one batch (also what `replay` reports)."""

    records: int = 0
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    invalidations: Counter[tuple[str, str]] = field(default_factory=Counter)
    coalesced: Counter[str] = field(default_factory=Counter)  # shard → derived deletes saved
    parked: Counter[str] = field(default_factory=Counter)  # shard → actions parked
    actions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # table, shard, kind
    # table, template, cause → templates that could not be built
    unresolved: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # table -> the first record of the batch with unresolved templates, and those templates
    unresolved_at: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    def merge(self, other: BatchResult) -> None:
        """Add `other`'s counts to these (every counter, whatever its name)."""
        self.records += other.records
        for spec in fields(self):
            mine = getattr(self, spec.name)
            if isinstance(mine, Counter):
                mine.update(getattr(other, spec.name))
        for table, first in other.unresolved_at.items():
            self.unresolved_at.setdefault(table, first)


@dataclass
class Prepared:
    """A decoded and planned batch, between planning and its acknowledged completion."""

    started: float  # perf_counter at the start of the batch
    result: BatchResult
    positions: dict[TP, int]  # offset to store per partition, once the batch is done
    actions: list[Action]
    commits: list[int]  # source commit times of the changes in the batch
    latest: dict[TP, tuple[int, str | None]]  # last change per partition, for freshness
    dead: list[tuple[Message, str, str]]
    heartbeat: int | None
    firsts: dict[TP, int]  # the batch's first offset per partition
    jumps: list[tuple[TP, int, int]]  # (partition, expected, found): offsets skipped inside


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """A record that goes to the dead-letter topic, and why — with the key-only delete
    its key still allows (`plan`), so that a dead letter never swallows an
    invalidation."""

    reason: str  # low-cardinality label
    message: str  # the full explanation
    plan: Plan | None = None  # the key-only delete, when the key decodes and names a table

    def as_json(self, topic: str) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": topic, "dead_letter": self.message,
                               "reason": self.reason}
        if self.plan is not None:
            out["table"] = self.plan.event.table
            out["actions"] = [action.as_json() for action in self.plan.actions]
            out["unresolved"] = list(self.plan.unresolved)
        return out


def plan_record(decoder: Decoder, planner: Planner, max_bytes: int, topic: str,
                partition: int, offset: int, key: bytes | None,
                value: bytes | None) -> Plan | DeadLetter:
    """Size check, decode and plan one raw record: exactly what the worker does per
    record, and what `reconciler plan` prints."""
    size = (len(value) if value else 0) + (len(key) if key else 0)
    table = None
    if size > max_bytes:
        dead = DeadLetter("oversized",
                          f"record is {size} bytes, more than max_event_bytes ({max_bytes})")
    else:
        try:
            event = decoder.decode(topic, partition, offset, key, value)
            table = event.table
            return planner.plan(event)
        except (InvalidEvent, PoisonRecordError) as exc:
            dead = DeadLetter(exc.reason, exc.message)
    if key is None or len(key) > MAX_KEY_ONLY_BYTES or dead.reason == UNKNOWN_TABLE:
        return dead
    try:
        known = decoder.key_event(topic, partition, offset, key)
    except InvalidEvent:
        return dead
    if table is not None:  # the value named its table: that one, whatever the key says
        known = msgspec.structs.replace(known, table=table)
    return DeadLetter(dead.reason, dead.message, planner.key_only(known))


def prepare_batch(messages: list[Message], decoder: Decoder, planner: Planner, *,
                  max_bytes: int, dead_letter_topic: str, heartbeat_table: str | None,
                  count_actions: bool, consumer_error: Callable[[KafkaError], None]) -> Prepared:
    """Decode and plan a batch: CPU only, nothing sent anywhere. With a heartbeat table,
    only its WAL-ordered changes vouch for freshness (not the heartbeat topic)."""
    started = time.perf_counter()
    result = BatchResult(records=len(messages))
    positions: dict[TP, int] = {}
    actions: list[Action] = []
    commits: list[int] = []  # source commit times of the changes in this batch
    latest: dict[TP, tuple[int, str | None]] = {}
    dead: list[tuple[Message, str, str]] = []
    heartbeat: int | None = None
    firsts: dict[TP, int] = {}
    jumps: list[tuple[TP, int, int]] = []
    for message in messages:
        error = message.error()
        if error is not None:
            consumer_error(error)
            continue
        # Never None for a message without an error.
        topic: str = message.topic()  # type: ignore[assignment]
        partition: int = message.partition()  # type: ignore[assignment]
        offset: int = message.offset()  # type: ignore[assignment]
        tp = (topic, partition)
        expected = positions.get(tp)
        if expected is None:
            firsts[tp] = offset
        elif offset != expected:  # compaction, transaction markers — or retention
            jumps.append((tp, expected, offset))
        positions[tp] = offset + 1
        if topic == dead_letter_topic:
            result.skipped["dead_letter_topic"] += 1
            continue
        plan = plan_record(decoder, planner, max_bytes, topic, partition, offset,
                           message.key(), message.value())
        if type(plan) is DeadLetter:
            dead.append((message, plan.reason, plan.message))
            if plan.plan is None:
                continue
            plan = plan.plan  # the key-only delete the dead letter's key allows
            _unresolved(result, plan, topic, partition, offset)
            actions.extend(plan.actions)
            continue
        assert type(plan) is Plan
        event = plan.event
        if plan.skip is not None:
            result.skipped[plan.skip] += 1
            if plan.skip == HEARTBEAT and event.ts_ms is not None and (
                    event.kind == model.CHANGE or not heartbeat_table):
                heartbeat = max(heartbeat or 0, event.ts_ms)
            continue
        table: str = event.table or ""
        result.events[table, event.op or ""] += 1
        if plan.unresolved:
            _unresolved(result, plan, topic, partition, offset)
        if event.op == "t":
            log.info("%s[%d]@%d: %s truncated: removing every key of its templates on "
                     "every shard", topic, partition, offset, table)
        actions.extend(plan.actions)
        if count_actions:
            for action in plan.actions:
                result.actions[table, action.shard, action.kind] += 1
        if event.ts_ms is not None:
            commits.append(event.ts_ms)
            latest[tp] = (event.ts_ms, event.table)
    return Prepared(started, result, positions, actions, commits, latest, dead, heartbeat,
                    firsts, jumps)


def _unresolved(result: BatchResult, plan: Plan, topic: str, partition: int,
                offset: int) -> None:
    table = plan.event.table or ""
    for template, cause in plan.causes():
        result.unresolved[table, template, cause] += 1
    if table not in result.unresolved_at and plan.unresolved != plan.key_only:
        result.unresolved_at[table] = (f"{topic}[{partition}]@{offset}", plan.unresolved)


class BatchMetrics:
    """Publishes each finished batch's counts, and logs unresolved templates at most
    once a minute per table."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._events = Children(metrics.events)
        self._skipped = Children(metrics.skipped)
        self._dead_letters = Children(metrics.dead_letters)
        self._unresolved = Children(metrics.unresolved)
        self._invalidations = Children(metrics.invalidations)
        self._unresolved_logged: dict[str, float] = {}  # table → when last logged
        self._unresolved_since_log: dict[str, int] = {}  # table → count since then

    def publish(self, result: BatchResult, commits: list[int], acknowledged: float, *,
                observe_delay: bool = True) -> None:
        metrics = self.metrics
        for (table, op), n in result.events.items():
            self._events(table, op).inc(n)
        for reason, n in result.skipped.items():
            self._skipped(reason).inc(n)
        for reason, n in result.dead_letters.items():
            self._dead_letters(reason).inc(n)
        for (table, template, cause), n in result.unresolved.items():
            self._unresolved(table, template, cause).inc(n)
            if cause == KEY_ONLY:
                continue  # expected: a DEFAULT-identity delete, a tombstone
            self._unresolved_since_log[table] = self._unresolved_since_log.get(table, 0) + n
            if time.monotonic() < self._unresolved_logged.get(table, 0.0) + UNRESOLVED_LOG_EVERY:
                continue
            self._unresolved_logged[table] = time.monotonic()
            where, templates = result.unresolved_at.get(table, ("?", ()))
            log.warning("%s: %d key template(s) unresolved since the last such line, latest "
                        "%s: %s (a column the event does not carry: renamed or dropped? NULL? "
                        "an unchanged TOASTed value? `reconciler plan` shows it per record)",
                        table, self._unresolved_since_log.pop(table), where,
                        ", ".join(templates))
        for (shard, outcome), n in result.invalidations.items():
            self._invalidations(shard, outcome).inc(n)
        if observe_delay:
            metrics.end_to_end.observe_many(
                [max(0.0, acknowledged - commit_ms / 1000) for commit_ms in commits])
