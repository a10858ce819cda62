"""The fault suite's oracle: what must hold after every scenario.

Fences expire (every scenario runs with ``fence_ttl_seconds`` of 2-5 s) and readers
cache rows beside the worker (`tests.faults.readers`), so the cache's state is not one
exact entry per row: an entry may have expired, or hold data a reader cached. The
rules say which states a correct pipeline can leave and which only a lost or
misapplied change can.

State, part 1 (`Oracle.violations`), once the worker group has committed the end of
its topics and the readers have stopped with their last writes landed. For every row
of the workload and every shard (a and b), the entry under the row's key is one of:

- nothing: a fence expired, or nobody cached the row since its last change;
- data at exactly the row's current version in Postgres, on a shard the row lives on
  (a reader cached it; the payload's version is the one written with it). Any other
  data is a stale entry: data older than the row (a lost change), data of a deleted
  row (a lost delete), data on a shard the row has left (a lost move), data ahead of
  the row;
- a fence at exactly the version of the last change that fenced the key on that
  shard (`Row.fenced`): the row's version on the shards it lives on, the version of
  the move on a shard it left, 2^63-1 after a delete. A lower fence is a lost change.
  Higher is allowed only for the delete fence of an earlier incarnation: a row
  deleted and inserted again meets its delete fence, which stays (extended to
  fence_ttl by every change that meets it) until fence_ttl after the worker last
  touched the key. Where a scenario processes a row's records out of order (a replay
  beside the live worker, partitions added to a topic), an older change may also
  fence an expired key at its older version: `older_fences` allows fences below.

Rows are cached by the workload at their creation version and, before a share of
their updates, at their current version, so a lost *last* change leaves stale data
behind whatever expired: that is what the state check detects, and what the planted
races and the negative controls (tests/faults/test_negative.py) rely on.

State, part 2, fence_ttl (+0.5 s) after the group committed the end: no fence is left
on any of those keys — every fence expires fence_ttl after the worker last touched
it, so its row's current version is cacheable again (SPEC, fence lifetime).

Derived keys (``feed:…``, ``post_comments:…``) the application cached before a later
change on that shard are gone.

A reader write that landed fence_ttl or more after its read is outside the
application's contract; a stale entry under such a key is reported as excused, not
blamed on the worker (`Readers.late`; figures: ``extra["excused_late"]``).

Accounting (`Oracle.account`): every change the workload made reached the Debezium
topics (each (table, id, version) or delete is found between the test's start offsets
and the end), the group's committed offset equals the end offset of every partition
of the topics it reads (the commit only moves past acknowledged work, so every record
below it was processed at least once), and the group's dead-letter topic (the config's
``kafka.dead_letter_topic``, read whole in every scenario) holds exactly the expected
poison records of the test's range.

Counting (`Oracle.counted`): where workers survive to the end of a scenario (not
SIGKILLed), their metrics — events + skips + dead letters, heartbeats left out — cover
every record of the topics from where they started to the end (at least once: a
restarted or rebalanced worker processes some records again).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from confluent_kafka import Consumer, TopicPartition

from connectors.valkey.writer import decode_payload
from reconciler.pipeline.deadletter import (
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
)
from tests.conftest import Stack
from tests.e2e.support import (
    COMMENTS,
    POSTS,
    PROFILES,
    committed,
    end_offsets,
    wait_until,
)
from tests.faults.readers import Readers
from tests.faults.workload import MAX_VERSION, SHARDS, Change, Row, Workload

TOPICS = [POSTS, COMMENTS, PROFILES]
TP = tuple[str, int]
EXPIRY_SLACK = 0.5  # seconds past fence_ttl after which no fence may be left


@dataclass
class Figures:
    """What one scenario run proved (collected for the suite's summary)."""

    scenario: str
    changes: int = 0  # changes the workload made in Postgres
    records: int = 0  # change records found for them on the topics (duplicates included)
    rows: int = 0
    entries_checked: int = 0
    stale: int = 0
    dead_letters_expected: int = 0
    dead_letters_found: int = 0
    faults: int = 0  # faults injected (kills, restarts, flushes, toxics…)
    unseen: int = 0  # records a retention gap removed before the group read them
    counted: int = 0  # records surviving workers' metrics accounted for (events+skips+DLQ)
    to_count: int = 0  # records of the topics they had to account for (counted >= this)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class TopicReader:
    """Reads the change topics from fixed start offsets, remembering every change seen.

    Each pass reads with a new consumer from where the last pass stopped: a consumer
    assigned across a broker restart was seen to stop fetching for good (librdkafka
    2.16, manual assignment), and the oracle must not depend on that."""

    def __init__(self, stack: Stack, start: Mapping[tuple[str, int], int]) -> None:
        self.stack = stack
        self.positions = dict(start)
        self.seen: Counter[Change] = Counter()
        self.records = 0

    def close(self) -> None:
        pass

    def drain(self, seconds: float = 0.5) -> None:
        """Read up to the current end offsets (or until `seconds` pass with nothing)."""
        try:
            ends = end_offsets(self.stack, sorted({t for t, _ in self.positions}))
        except Exception:  # noqa: BLE001 - the broker is away: read nothing this pass
            time.sleep(seconds)
            return
        todo = {tp: end for tp, end in ends.items() if end > self.positions.get(tp, 0)}
        if not todo:
            time.sleep(seconds)
            return
        consumer = Consumer({"bootstrap.servers": self.stack.kafka_bootstrap,
                             "group.id": f"cr-fault-reader-{time.monotonic_ns()}",
                             "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            consumer.assign([TopicPartition(t, p, self.positions.get((t, p), 0))
                             for (t, p) in todo])
            idle_until = time.monotonic() + max(seconds, 5.0)
            while todo and time.monotonic() < idle_until:
                for message in consumer.consume(500, 0.2):
                    if message.error() is not None:
                        continue
                    tp = (message.topic() or "", message.partition() or 0)
                    self.positions[tp] = message.offset() + 1
                    if self.positions[tp] >= todo.get(tp, 0):
                        todo.pop(tp, None)
                    idle_until = time.monotonic() + max(seconds, 5.0)
                    if message.value() is None:
                        continue
                    self.records += 1
                    change = parse_change(tp[0], message.value())
                    if change is not None:
                        self.seen[change] += 1
        finally:
            consumer.close()

    def wait_for(self, changes: Iterable[Change], timeout: float = 120.0) -> None:
        wanted = set(changes)
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            missing = wanted - set(self.seen)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} changes never reached the topics "
                    f"(Debezium side), e.g. {sorted(missing, key=repr)[:5]}")


def parse_change(topic: str, value: bytes) -> Change | None:
    try:
        envelope = json.loads(value)
    except ValueError:
        return None
    payload = envelope.get("payload", envelope) if isinstance(envelope, dict) else None
    if not isinstance(payload, dict) or payload.get("op") not in ("c", "u", "d", "r"):
        return None
    table = topic.rsplit(".", 1)[-1]
    if payload["op"] == "d":
        before = payload.get("before") or {}
        return Change(table, int(before.get("id", -1)), "d", 0)
    after = payload.get("after") or {}
    op = "c" if payload["op"] == "r" else payload["op"]
    return Change(table, int(after.get("id", -1)), op, int(after.get("system_version", -1)))


class Oracle:
    """Checks a workload's cache state and accounts for its changes and dead letters."""

    def __init__(self, stack: Stack, workload: Workload, *, scenario: str,
                 readers: Readers | None = None) -> None:
        self.stack = stack
        self.workload = workload
        self.readers = readers
        self.start = end_offsets(stack, TOPICS)
        self.reader = TopicReader(stack, self.start)
        self.figures = Figures(scenario)
        self.figures.extra["fence_ttl_seconds"] = workload.fence_ttl
        self.started = time.monotonic()

    def close(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------------ state

    def violations(self, *, older_fences: bool = False, excused: Iterable[Row] = (),
                   shards: Iterable[str] = SHARDS) -> list[str]:
        """Every entry that breaks part 1 of the state rules, described (empty when
        it holds). `excused`: rows whose changes the scenario lost on purpose (a
        retention gap); their entries are not checked (figures: ``extra["excused"]``).
        `shards`: the shards checked (a scenario holding one down checks the others)."""
        shards = tuple(shards)
        wrong: list[str] = []
        checked = 0
        skip = {(row.table, row.id) for row in excused}
        late = set(self.readers.late) if self.readers is not None else set()
        truth = self.workload.truth()
        for row in self.workload.rows:
            if (row.table, row.id) in skip:
                continue
            found = truth[row.table, row.id]
            if row.deleted != (found is None) or (
                    found is not None and (found[0], found[1]) != (row.version,
                                                                   row.neighbourhood)):
                wrong.append(f"{row.key}: the test believes version {row.version} in "
                             f"{row.neighbourhood} (deleted={row.deleted}), the database "
                             f"says {found}")
                continue
            for shard in shards:
                checked += 1
                entry = self.workload.shards[shard].hgetall(row.key)
                problem = judge(row, shard, entry, older_fences=older_fences)
                if problem is None:
                    continue
                if (shard, row.key) in late and b"d" in entry:
                    self.figures.extra["excused_late"] = \
                        self.figures.extra.get("excused_late", 0) + 1
                    continue
                wrong.append(f"{shard} {row.key} ({describe(row)}): {problem}")
        for shard, keys in self.workload.due.items():
            for key in keys if shard in shards else ():
                checked += 1
                if self.workload.shards[shard].exists(key):
                    wrong.append(f"{shard} {key}: derived key still cached after a later "
                                 "change (a lost invalidation)")
        self.figures.entries_checked += checked
        self.figures.rows += len(self.workload.rows)
        return wrong

    def problems_of(self, rows: Iterable[Row]) -> dict[str, list[str]]:
        """What breaks the state rules for each of `rows` (by key; rows without a
        problem left out): how a scenario shows that changes it lost on purpose were
        seen to be lost."""
        found: dict[str, list[str]] = {}
        for row in rows:
            for shard in SHARDS:
                problem = judge(row, shard, self.workload.shards[shard].hgetall(row.key))
                if problem is not None:
                    found.setdefault(row.key, []).append(f"{shard}: {problem}")
        return found

    def lingering_fences(self, excused: Iterable[Row] = (),
                         shards: Iterable[str] = SHARDS) -> list[str]:
        """Part 2: the fences still there (call fence_ttl after the last change was
        processed)."""
        skip = {(row.table, row.id) for row in excused}
        shards = tuple(shards)
        left = []
        for row in self.workload.rows:
            if (row.table, row.id) in skip:
                continue
            for shard in shards:
                entry = self.workload.shards[shard].hgetall(row.key)
                if entry and b"d" not in entry:
                    ttl = self.workload.shards[shard].pttl(row.key)
                    left.append(f"{shard} {row.key} ({describe(row)}): {show(entry)} still "
                                f"there {self.workload.fence_ttl:g}s after the group caught "
                                f"up (PTTL {ttl} ms): a fence outlived fence_ttl")
        return left

    # ------------------------------------------------------------------ accounting

    def published(self, timeout: float = 120.0) -> dict[tuple[str, int], int]:
        """Wait until every change of the workload is on the topics; their end offsets."""
        self.reader.wait_for(self.workload.changes, timeout)
        return end_offsets(self.stack, TOPICS)

    def wait_committed(self, group: str, ends: Mapping[tuple[str, int], int],
                       timeout: float = 120.0, *, alive: Callable[[], bool] | None = None) -> None:
        """Wait for `group` to commit up to `ends`; fail at once if `alive()` turns False
        (the worker that should get there has died)."""
        topics = sorted({topic for topic, _ in ends})

        def done() -> bool:
            assert alive is None or alive(), "the worker died (see its log)"
            return all(committed(self.stack, group, topics).get(tp, -1) >= end
                       for tp, end in ends.items() if end > 0)

        wait_until(done, timeout, f"group {group} to commit up to {dict(ends)}", interval=0.3)

    def committed(self, group: str, topics: list[str] | None = None) -> dict[TP, int]:
        """The group's committed offsets (where a worker joining it alone starts)."""
        found = committed(self.stack, group, topics or TOPICS)
        missing = {tp: offset for tp, offset in found.items() if offset < 0}
        assert not missing, f"group {group} has no committed offset for {missing}"
        return found

    def counted(self, count: Callable[[], float], since: Mapping[TP, int], *,
                records: int | None = None, timeout: float = 60.0) -> int:
        """Workers that were the group's only members from `since` on (and are still
        running) accounted for every record of `since`'s partitions from there to their
        current end: `count()` — the sum of their events, skips and dead letters — reaches
        that many records (at least: records are processed again after a restart or a
        rebalance). `records`: how many there are, where offsets do not say (a compacted
        topic has gaps). Adds both to the figures; returns the records to account for."""
        ends = end_offsets(self.stack, sorted({topic for topic, _ in since}))
        if records is None:
            records = sum(max(0, end - since[tp]) for tp, end in ends.items() if tp in since)
        last = [0.0]

        def enough() -> bool:
            last[0] = count()
            return last[0] >= records

        try:
            wait_until(enough, timeout, "the workers' metrics to count every record",
                       interval=0.3)
        except AssertionError:
            raise AssertionError(
                f"the workers' metrics account for {last[0]:g} records (events + skips + "
                f"dead letters), fewer than the {records} on the topics from {dict(since)} "
                f"to {ends}") from None
        self.figures.counted += int(last[0])
        self.figures.to_count += records
        return records

    def account(self, group: str, *, dead_letter_topic: str, dead_letters: int = 0,
                other_dead_letters: bool = False, topics: list[str] | None = None,
                older_fences: bool = False, excused: Iterable[Row] = (),
                shards: Iterable[str] = SHARDS, timeout: float = 120.0) -> Figures:
        """The whole oracle: every change published, committed to the end of `topics`
        (default the Debezium topics), both parts of the state rules, the dead letters
        exactly as expected. Raises AssertionError otherwise, every failed part named.

        The readers keep racing the worker while it catches up; they are paused for
        the check and resumed after it. `dead_letter_topic` (the worker config's
        ``kafka.dead_letter_topic``) is read whole: `dead_letters` of its records come
        from the test's range of the topics; any other (a record from before the range:
        a group that re-read the topics' history) fails too unless
        `other_dead_letters`, and is counted in ``extra["dead_letters_outside_range"]``.
        `shards`: the shards whose entries are checked (default both: a scenario that
        holds one down checks the other meanwhile)."""
        excused, shards = list(excused), tuple(shards)
        ends = self.published(timeout)
        if topics is not None:
            ends = end_offsets(self.stack, topics)
        self.wait_committed(group, ends, timeout)
        caught_up = time.monotonic()
        final = committed(self.stack, group, sorted({t for t, _ in ends}))
        behind = {tp: (final.get(tp), end) for tp, end in ends.items()
                  if end > 0 and final.get(tp, -1) < end}
        assert not behind, f"committed offsets short of the end: {behind}"
        if self.readers is not None:
            self.readers.pause()
        try:
            self.reader.drain(1.0)
            wrong = self.violations(older_fences=older_fences, excused=excused,
                                    shards=shards)
            time.sleep(max(0.0, caught_up + self.workload.fence_ttl + EXPIRY_SLACK
                           - time.monotonic()))
            lingering = self.lingering_fences(excused, shards)
        finally:
            if self.readers is not None:
                self.readers.resume()
        figures = self.figures
        figures.changes = len(self.workload.changes)
        figures.records = sum(self.reader.seen[c] for c in set(self.workload.changes))
        figures.stale = len(wrong)
        figures.dead_letters_expected = dead_letters
        letters = read_dead_letters(self.stack, dead_letter_topic)
        inside = [letter for letter in letters if self.in_range(letter)]
        outside = len(letters) - len(inside)
        figures.dead_letters_found = len(inside)
        figures.extra["dead_letter_topic"] = dead_letter_topic
        figures.extra["dead_letters_outside_range"] = outside
        figures.extra["dead_letters_by_reason"] = dict(Counter(
            letter.get(HEADER_REASON, "?") for letter in inside))
        figures.extra["lingering_fences"] = len(lingering)
        if excused:
            figures.extra["excused"] = len(excused)
        if self.workload.cache_errors:
            figures.extra["cache_errors"] = self.workload.cache_errors
        if self.readers is not None:
            figures.extra["readers"] = self.readers.figures()
        figures.seconds = round(time.monotonic() - self.started, 1)
        failures = []  # every part that failed, reported together
        if wrong:
            failures.append(f"{len(wrong)} stale entries, e.g.:\n" + "\n".join(wrong[:20]))
        if lingering:
            failures.append(f"{len(lingering)} fences outlived fence_ttl, e.g.:\n"
                            + "\n".join(lingering[:10]))
        if figures.dead_letters_found != dead_letters:
            failures.append(f"dead letters on {dead_letter_topic} from the test's records: "
                            f"expected {dead_letters}, found {figures.dead_letters_found} "
                            f"({figures.extra['dead_letters_by_reason']})")
        if outside and not other_dead_letters:
            failures.append(f"{outside} dead letters on {dead_letter_topic} from records "
                            "outside the test's range")
        assert not failures, "\n".join(failures)
        return figures

    def in_range(self, letter: Mapping[str, str]) -> bool:
        """The dead letter's original record is on the topics at or after the test's
        start offsets."""
        try:
            tp = (letter[HEADER_TOPIC], int(letter[HEADER_PARTITION]))
            offset = int(letter[HEADER_OFFSET])
        except (KeyError, ValueError):
            return True  # unreadable headers: never excused as someone else's record
        return tp not in self.start or offset >= self.start[tp]


def judge(row: Row, shard: str, entry: Mapping[bytes, bytes], *,
          older_fences: bool = False) -> str | None:
    """Why `entry` (the row's key on `shard`) breaks the state rules, or None."""
    if not entry:
        return None
    try:
        version = int(entry.get(b"v", b"-1"))
    except ValueError:
        version = -1
    if b"d" in entry:
        try:
            written = decode_payload(entry[b"d"])
        except (ValueError, msgpack.UnpackException) as exc:
            return f"holds data that does not decode: {exc}"
        if isinstance(written, dict) and written.get("v") != version:
            return f"holds data of version {written.get('v')} under v={version}"
        if row.deleted:
            return (f"holds data at {version} for a deleted row (a lost delete, or a stale "
                    "write let through)")
        if shard not in row.home:
            return (f"holds data at {version} on a shard the row does not live on (a lost "
                    "move or delete, or a stale write let through)")
        if version < row.version:
            return (f"holds stale data at {version} (a lost change, or a stale write let "
                    "through)")
        if version > row.version:
            return f"holds data at {version}, ahead of the row"
        return None
    expected = row.fenced.get(shard)
    if version == expected:
        return None
    if version == MAX_VERSION and shard in row.delete_fenced:
        return None  # an earlier incarnation's delete fence, not yet expired
    if expected is None:
        return f"holds {show(entry)}, but no change of the row fenced this shard"
    if version < expected:
        if older_fences:
            return None
        return (f"holds a fence at {version}, below the last change that fenced this "
                f"shard ({expected}): a lost change")
    return f"holds a fence at {version}, above the last change that fenced it ({expected})"


def describe(row: Row) -> str:
    if row.deleted:
        return f"deleted, incarnation {row.incarnations}"
    return (f"version {row.version} in {row.neighbourhood}"
            + (f", incarnation {row.incarnations}" if row.incarnations > 1 else ""))


def read_dead_letters(stack: Stack, topic: str, timeout: float = 120.0) -> list[dict[str, str]]:
    """The headers of every record on `topic` (none when it does not exist)."""
    consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap,
                         "group.id": f"cr-dlq-read-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "fetch.message.max.bytes": 4 << 20})
    found: list[dict[str, str]] = []
    try:
        metadata = consumer.list_topics(timeout=10)
        if topic not in metadata.topics:
            return found
        todo: dict[TP, int] = {}
        starts = []
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10)
            if high > low:
                todo[topic, partition] = high
                starts.append(TopicPartition(topic, partition, low))
        if not todo:
            return found
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while todo:
            assert time.monotonic() < deadline, f"{topic}: not read to {todo} in {timeout}s"
            for message in consumer.consume(1000, 1.0):
                if message.error() is not None:
                    continue
                found.append({k: (v or b"").decode(errors="replace")
                              for k, v in message.headers() or []})
                tp = (message.topic() or "", message.partition() or 0)
                if message.offset() + 1 >= todo.get(tp, 0):
                    todo.pop(tp, None)
    finally:
        consumer.close()
    return found



def show(entry: Mapping[bytes, bytes]) -> str:
    if not entry:
        return "nothing"
    return "{" + ", ".join(f"{k.decode()}: {'<data>' if k == b'd' else v.decode()}"
                           for k, v in sorted(entry.items())) + "}"
