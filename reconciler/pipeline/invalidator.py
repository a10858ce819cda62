"""Execute plans against the shards: one pipelined round trip per shard per batch.

Actions are grouped per shard in event order. A truncate is a barrier: the actions
before it run first, then the truncate (SCAN + UNLINK on every shard), then the rest,
so an insert that follows a truncate in the same batch keeps its fence.

Deletes of the same derived (unversioned) key on the same shard within a segment are
coalesced into the last one: every change of the batch is already committed, and a
later plain delete of a key supersedes an earlier one whatever happened between them
(a writer refilling the key between two calls of the batch is removed by the last
delete too). A batch of changes in one busy neighbourhood deletes its feed key once,
not once per change. Versioned operations are never coalesced.

Everything runs on the caller's thread. Each shard's call of a segment is sent before
any answer is read (the shards work in parallel), and `start()` sends a batch's first
segment and returns: the worker decodes and plans the next batch while the shards
run it, and `finish()` reads the answers — no thread handoff, no lock.

Transient Valkey errors are retried with capped exponential backoff inside a budget;
every operation is idempotent, so re-sending a whole shard's call is safe. Past the
budget — or at once for an error no retry can fix — the batch fails and its offsets
are never stored.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.protocols import (
    OP_DELETE,
    OP_SNAPSHOT,
    OP_UNVERSIONED,
    OP_VERSIONED,
    PendingApply,
    ShardClient,
)
from reconciler.errors import FatalError, RetryBudgetExceeded, TransientError
from reconciler.pipeline.hooks import Hooks, NoHooks
from reconciler.pipeline.parking import Parking
from reconciler.pipeline.planner import DELETE, TRUNCATE, UNVERSIONED, VERSIONED, Action

log = logging.getLogger(__name__)

OP_BY_KIND = {VERSIONED: OP_VERSIONED, DELETE: OP_DELETE, UNVERSIONED: OP_UNVERSIONED}
# The fault suite's broken worker (RECONCILER_FAULT_BROKEN=no_fences): every key plainly
# deleted, as a naive invalidator does.
UNFENCED_OPS = dict.fromkeys((VERSIONED, DELETE, UNVERSIONED), OP_UNVERSIONED)
BACKOFF_START = 0.1  # seconds before the first retry
BACKOFF_MAX = 5.0  # longest wait between retries

T = TypeVar("T")


class ShardDown(TransientError):
    """A shard unavailable for valkey.parking.after_seconds: its calls are parked."""


@dataclass(slots=True)
class ShardBatch:
    """Actions for one shard, as the parallel argument lists cr2_apply takes."""

    keys: list[str] = field(default_factory=list)
    ops: list[str | None] = field(default_factory=list)  # None: superseded, dropped by compact()
    versions: list[int] = field(default_factory=list)
    derived: dict[str, int] = field(default_factory=dict)  # derived key → index of its delete
    coalesced: int = 0  # derived-key deletes superseded by a later one of the same key

    def compact(self) -> None:
        """Drop the superseded deletes, keeping the order of the rest."""
        keep = [i for i, op in enumerate(self.ops) if op is not None]
        keys, ops, versions = self.keys, self.ops, self.versions
        self.keys = [keys[i] for i in keep]
        self.ops = [ops[i] for i in keep]
        self.versions = [versions[i] for i in keep]
        self.derived = {}


@dataclass(slots=True)
class Segment:
    """Actions between two truncates, or one truncate (pattern per shard)."""

    shards: dict[str, ShardBatch] = field(default_factory=dict)
    truncates: list[Action] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What the shards answered for one batch."""

    results: Counter[tuple[str, str]] = field(default_factory=Counter)  # (shard, result) → n
    parked: Counter[str] = field(default_factory=Counter)  # shard → actions parked
    truncated: Counter[str] = field(default_factory=Counter)  # shard → keys removed
    coalesced: Counter[str] = field(default_factory=Counter)  # shard → derived deletes saved


def segments(actions: Iterable[Action],
             codes: Mapping[str, str] = OP_BY_KIND) -> list[Segment]:
    """Group actions per shard, in order, cutting at every truncate, and coalesce the
    deletes of each derived key into the last one (the hot path: one pass, three
    appends per action, a dict lookup per derived key). `codes` maps kinds to op codes."""
    snapshot = OP_SNAPSHOT if codes is OP_BY_KIND else codes[VERSIONED]
    out = [Segment()]
    shards = out[0].shards
    for action in actions:
        kind = action.kind
        if kind == TRUNCATE:
            if out[-1].shards or not out[-1].truncates:
                out.append(Segment())
            out[-1].truncates.append(action)
            continue
        if out[-1].truncates:
            out.append(Segment())
            shards = out[-1].shards
        batch = shards.get(action.shard)
        if batch is None:
            batch = shards[action.shard] = ShardBatch()
        ops = batch.ops
        if kind == UNVERSIONED:
            derived = batch.derived
            earlier = derived.get(action.key)
            if earlier is not None:
                ops[earlier] = None  # superseded by this later delete of the same key
                batch.coalesced += 1
            derived[action.key] = len(ops)
        batch.keys.append(action.key)
        ops.append(codes[kind] if action.fence else snapshot)
        batch.versions.append(action.version or 0)
    kept = [segment for segment in out if segment.shards or segment.truncates]
    for segment in kept:
        for batch in segment.shards.values():
            if batch.coalesced:
                batch.compact()
    return kept


@dataclass(slots=True)
class Flight:
    """A batch between `Invalidator.start()` and `Invalidator.finish()`: its segments,
    and the first segment's calls when they were sent at the start."""

    segments: list[Segment]
    sent: list[tuple[str, ShardBatch, PendingApply]] | None = None


class Invalidator:
    """Runs segments against the shards, with retries. One thread: each shard's call of
    a segment is sent before any answer is read, so the shards work in parallel, and
    the first segment's calls go out at `start()` — the caller works while they run."""

    def __init__(self, shards: Callable[[], Mapping[str, ShardClient]], *,
                 retry_budget_seconds: float, truncate_max_keys_per_second: float,
                 on_shard_state: Callable[[str, bool], None] = lambda shard, up: None,
                 on_retry: Callable[[], None] = lambda: None,
                 should_stop: Callable[[], bool] = lambda: False,
                 hooks: Hooks | None = None, fences: bool = True,
                 parking: Parking | None = None) -> None:
        self._shards = shards
        self._parking = parking
        self._hooks = hooks or NoHooks()
        self._codes = OP_BY_KIND if fences else UNFENCED_OPS
        self._budget = retry_budget_seconds
        self._truncate_rate = truncate_max_keys_per_second
        self._on_shard_state = on_shard_state
        self._on_retry = on_retry
        self._should_stop = should_stop

    def execute(self, actions: Iterable[Action]) -> Outcome:
        """Run `actions` and wait for every answer."""
        return self.finish(self.start(actions))

    def start(self, actions: Iterable[Action]) -> Flight:
        """Group `actions` per shard and send the first segment's calls; `finish()` reads
        the answers (and runs any later segments). Nothing is retried here: a call that
        cannot be sent fails, and is retried, when its answer is read."""
        parts = segments(actions, self._codes)
        if not parts or parts[0].truncates:
            return Flight(parts)
        return Flight(parts, self._send(parts[0]))

    def finish(self, flight: Flight) -> Outcome:
        """Every answer of a started batch, in order; raises FatalError or
        RetryBudgetExceeded (the batch failed: nothing of it may be acknowledged)."""
        outcome = Outcome()
        for index, segment in enumerate(flight.segments):
            if segment.truncates:
                for action in segment.truncates:
                    outcome.truncated[action.shard] += self._truncate(action)
                continue
            for shard, batch in segment.shards.items():
                if batch.coalesced:
                    outcome.coalesced[shard] += batch.coalesced
            sent = flight.sent if index == 0 and flight.sent is not None \
                else self._send(segment)
            flight.sent = None
            pending = {shard: call for shard, _batch, call in sent}
            try:
                for shard, batch in segment.shards.items():
                    call = pending.pop(shard, None)
                    if call is None:  # parked before this segment was sent
                        self._park(outcome, shard, batch)
                        continue
                    try:
                        self._count(outcome, shard, self._apply(shard, batch, call))
                    except ShardDown as exc:
                        self._begin_parking(shard, exc)
                        self._park(outcome, shard, batch)
            except BaseException:
                for call in pending.values():
                    call.discard()  # the answers not read yet: their connections go
                raise
        return outcome

    def _park(self, outcome: Outcome, shard: str, batch: ShardBatch) -> None:
        assert self._parking is not None
        ops: list[Any] = batch.ops
        outcome.parked[shard] += self._parking.park(shard, batch.keys, ops, batch.versions)

    def _begin_parking(self, shard: str, exc: ShardDown) -> None:
        assert self._parking is not None
        self._parking.begin(shard, str(exc.__cause__ or exc))

    def abandon(self, flight: Flight) -> None:
        """Drop a started batch without reading its answers (it failed elsewhere)."""
        for _shard, _batch, pending in flight.sent or ():
            pending.discard()
        flight.sent = None

    def _send(self, segment: Segment) -> list[tuple[str, ShardBatch, PendingApply]]:
        sent: list[tuple[str, ShardBatch, PendingApply]] = []
        try:
            for shard, batch in segment.shards.items():
                if self._parking is not None and self._parking.parked(shard):
                    continue  # parked: its calls go to Kafka in finish()
                if sent:
                    self._hooks.between_shards()
                ops: list[Any] = batch.ops  # compacted: no None left
                sent.append((shard, batch, self._client(shard).send(batch.keys, ops,
                                                                      batch.versions)))
        except BaseException:
            for _shard, _batch, pending in sent:
                pending.discard()
            raise
        return sent

    @staticmethod
    def _count(outcome: Outcome, shard: str, results: list[str]) -> None:
        for result, n in Counter(results).items():
            outcome.results[shard, result] += n

    def _truncate(self, action: Action) -> int:
        def call(client: ShardClient) -> int:
            return client.truncate(action.key, max_keys_per_second=self._truncate_rate)

        parking = self._parking
        if parking is None:  # inline, while everything else waits
            return self._call(action.shard, call)
        # Parked behind it and run in steps between batches (reconciler.pipeline.parking).
        parking.begin(action.shard, f"truncate {action.key!r}", truncate=True)
        parking.park(action.shard, truncate=action.key)
        return 0

    def _apply(self, shard: str, batch: ShardBatch,
               sent: PendingApply | None = None) -> list[str]:
        """One shard's call, with retries: the answers of `sent` if it was sent already,
        else (and on any retry) the whole call."""
        ops: list[Any] = batch.ops  # compacted: no None left
        first = [sent] if sent is not None else []

        def call(client: ShardClient) -> list[str]:
            if first:
                return first.pop().result()
            return client.apply(batch.keys, ops, batch.versions)

        return self._call(shard, call)

    def _client(self, shard: str) -> ShardClient:
        client = self._shards().get(shard)
        if client is None:
            raise FatalError(f"shard {shard!r} is not in the shard map any more")
        return client

    def _call(self, shard: str, call: Callable[[ShardClient], T]) -> T:
        parking = self._parking is not None
        budget = self._parking.after_seconds if self._parking is not None else self._budget
        deadline = time.monotonic() + budget
        delay = BACKOFF_START
        attempt = 0
        while True:
            client = self._client(shard)
            try:
                result = call(client)
            except ValkeyRejected as exc:
                self._on_shard_state(shard, True)
                raise FatalError(f"shard {shard}: {exc}") from exc
            except ValkeyUnavailable as exc:
                self._on_shard_state(shard, False)
                attempt += 1
                # The shard gets the whole budget: the last wait is cut to end at the
                # deadline, where one more attempt is made, rather than given up on
                # because the next backoff step would overrun it.
                remaining = deadline - time.monotonic()
                if remaining <= 0 and parking:
                    raise ShardDown(f"shard {shard} unavailable for {budget:g}s") from exc
                if remaining <= 0:
                    raise RetryBudgetExceeded(
                        f"shard {shard} still unavailable after {attempt} attempts over "
                        f"{self._budget:g}s (valkey.retry_budget_seconds): {exc}") from exc
                if self._should_stop():
                    raise TransientError(f"shard {shard} unavailable while stopping: {exc}") \
                        from exc
                wait = min(delay, remaining)
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("shard %s unavailable (attempt %d, retrying in %.1fs): %s",
                                shard, attempt, wait, exc)
                self._on_retry()
                time.sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if attempt:
                log.info("shard %s answered again after %d retries", shard, attempt)
            self._on_shard_state(shard, True)
            return result
