"""Failover safety: re-apply what a shard whose server changed may have lost.

Valkey replicates asynchronously. A primary that acknowledged a batch and died before
its replica copied it leaves the promoted replica without those invalidations, while
the batch's offsets are stored; a primary restarted from an older RDB/AOF is the same
loss. The worker cannot know which writes are gone, but it knows when a shard's server
changed — its run id (`Shard.identity()`) is new after a restart and different on a
promoted replica — so it processes the last ``valkey.failover_replay_seconds`` of every
assigned partition again. Every operation is idempotent and version-aware: a replayed
change never overrides a newer one, so the replay can only repair.

Two ways a change is seen:

- while running: the shard pool asks every shard for its identity every
  ``valkey.identity_check_seconds`` and when it answers again after an outage; the loop
  then seeks every assigned partition back to the offsets of ``since - replay`` (Kafka's
  offsets-for-times), `since` being when the old server was last seen — not when the new
  one was noticed, which may be minutes later after an outage;
- across a restart or a rebalance: every stored offset carries, as its commit metadata,
  the identities of the shards that acknowledged the work before it (`metadata()`). A
  newly assigned partition whose metadata names a shard now served by another server
  starts ``replay`` seconds before that commit instead of at it.

While a partition is processed again below where it had been (its floor), the pipeline
neither stores offsets (the group's committed offset never goes back: a crash mid-replay
replays again after the restart, from the same metadata) nor sends dead letters twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from reconciler.observe.metrics import Metrics
from reconciler.pipeline.pipeline import Pipeline
from reconciler.pipeline.shards import ShardPool, digest

log = logging.getLogger(__name__)

TP = tuple[str, int]
TIME_FIELD = "t"  # the metadata field holding when the offsets were stored (unix ms)
REQUEST_TIMEOUT = 10.0  # seconds for the committed and offsets-for-times queries


def parse_metadata(text: str | None) -> tuple[float | None, dict[str, str]]:
    """(stored at, unix seconds; shard → identity digest) of commit metadata."""
    when: float | None = None
    shards: dict[str, str] = {}
    for part in (text or "").split(";"):
        name, _, value = part.partition("=")
        if not value:
            continue
        if name == TIME_FIELD:
            try:
                when = int(value) / 1000
            except ValueError:
                return None, {}  # not ours
        else:
            shards[name] = value
    return when, shards


class FailoverGuard:
    """Watches the shards' identities for a worker and replays what they may have lost."""

    def __init__(self, shards: ShardPool, metrics: Metrics, *, replay_seconds: float) -> None:
        self._shards = shards
        self._metrics = metrics
        self.replay_seconds = replay_seconds
        self._body = ""  # the metadata's shard part, rebuilt when identities change
        self._known: dict[str, str] = {}

    def metadata(self) -> str:
        """The commit metadata of offsets stored now: when, and each shard's identity."""
        known = self._shards.identities()
        if known != self._known:
            self._known = known
            self._body = "".join(f";{name}={digest(value)}"
                                 for name, value in sorted(known.items()))
        return f"{TIME_FIELD}={int(time.time() * 1000)}{self._body}"

    # ------------------------------------------------------------------ assignment

    def starts(self, consumer: Consumer, partitions: list[TopicPartition], pipeline: Pipeline
               ) -> tuple[list[TopicPartition], dict[TP, int | None]]:
        """Where newly assigned partitions start: before their committed offset when the
        commit metadata names a shard whose server has changed since. Returns the
        partitions to assign (with offsets where they start early) and the committed
        offsets (None: unknown; 0 for a group without one)."""
        committed: dict[TP, int | None] = {(tp.topic, tp.partition): None for tp in partitions}
        if not partitions:
            return partitions, committed
        try:
            found = consumer.committed(partitions, timeout=REQUEST_TIMEOUT)
        except KafkaException as exc:
            log.warning("committed offsets of the assigned partitions unavailable (%s): no "
                        "failover check for them", exc)
            return partitions, committed
        self._shards.watch()
        now = self._shards.identities()
        since: dict[TP, float] = {}
        for tp in found:
            if tp.error is not None:
                continue
            key = (tp.topic, tp.partition)
            committed[key] = tp.offset if tp.offset >= 0 else 0
            when, stored = parse_metadata(tp.metadata)
            if when is None or tp.offset < 0:
                continue
            for shard, value in stored.items():
                if shard not in now:
                    self._shards.expect_digest(shard, value, when)
                elif digest(now[shard]) != value:
                    since[key] = min(since.get(key, when), when)
                    log.warning("%s[%d]@%d: shard %s's server changed since this offset was "
                                "committed: re-applying from %.0fs before that commit",
                                tp.topic, tp.partition, tp.offset, shard, self.replay_seconds)
        if not since or self.replay_seconds <= 0:
            return partitions, committed
        targets = self._offsets(consumer, since)
        out = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            start, floor = targets.get(key), committed.get(key)
            if start is not None and floor is not None and start < floor:
                pipeline.floors[key] = floor
                self._metrics.failover_replayed.inc(floor - start)
                out.append(TopicPartition(tp.topic, tp.partition, start))
            else:
                out.append(tp)
        return out, committed

    # ------------------------------------------------------------------ while running

    def replay_if_changed(self, consumer: Consumer, pipeline: Pipeline) -> int:
        """If a shard's server changed, seek every assigned partition back to
        `replay_seconds` before its old server was last seen (the batch in flight
        completed first). Returns the records to process again."""
        changes = self._shards.take_changes()
        if not changes or self.replay_seconds <= 0:
            return 0
        pipeline.drain()
        since = min(change.since for change in changes)
        positions = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.position(consumer.assignment()) if tp.offset >= 0}
        if not positions:
            return 0
        targets = self._offsets(consumer, dict.fromkeys(positions, since))
        replayed = 0
        for key, position in positions.items():
            start = targets.get(key)
            if start is None or start >= position:
                continue
            pipeline.floors[key] = max(pipeline.floors.get(key, 0), position)
            consumer.seek(TopicPartition(key[0], key[1], start))
            replayed += position - start
        self._metrics.failover_replayed.inc(replayed)
        log.warning("shard(s) %s changed server: processing again the changes from %.0fs "
                    "before the old server was last seen at %s (%d records on %d partitions)",
                    ", ".join(sorted({c.shard for c in changes})), self.replay_seconds,
                    time.strftime("%H:%M:%S", time.localtime(since)), replayed,
                    len(positions))
        return replayed

    def _offsets(self, consumer: Consumer, since: Mapping[TP, float]) -> dict[TP, int]:
        """The first offset at or after `since - replay_seconds`, per partition."""
        wanted = [TopicPartition(t, p, int((when - self.replay_seconds) * 1000))
                  for (t, p), when in since.items()]
        try:
            found = consumer.offsets_for_times(wanted, timeout=REQUEST_TIMEOUT)
        except KafkaException as exc:
            log.error("offsets for the failover replay unavailable (%s): NOT replaying; run "
                      "`reconciler audit --repair` for the tables of the assigned topics", exc)
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in found
                if tp.error is None and tp.offset >= 0}
