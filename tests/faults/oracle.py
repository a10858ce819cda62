"""The fault suite's workload and its oracle.

The workload: posts (REPLICA IDENTITY DEFAULT) and comments (FULL) in neighbourhoods on
shard a only, on shard b only, and in the range being moved from a to b (on both),
each cached by the application's writer at version 1 before anything else happens,
with its derived key (``feed:…``, ``post_comments:…``) cached too. Then updates,
comment moves between shards, and deletes, in rounds or on chosen rows.

The oracle has two halves.

State (`Oracle.violations`): with ``fence_ttl_seconds`` large (nothing expires during
a test), after the pipeline has caught up, for every row and every shard it lives on:

- a live row's entry is a fence at exactly the row's current version — or, when the
  test runs a concurrent application writer, data at exactly that version. Never data
  older than the row: the stale data cached at version 1 is repaired only if the last
  change of the row was reconciled, so one lost change leaves it behind;
- a deleted row's entry is a delete fence (``v`` = 2^63-1) on every shard it was
  broadcast to;
- a comment that moved shards holds, on the shard it left, a fence at least as high as
  the version of the move (and no data);
- every derived key seeded before the changes is gone.

Accounting (`Oracle.account`): every change the workload made reached the topic
(Debezium's side: each (table, id, version) or delete is found between the test's start
offsets and the end), the group's committed offset equals the end offset of every
partition of the topics (the commit only moves past acknowledged work, so every record
below it was processed at least once), and the worker group's dead-letter topic (the
config's ``kafka.dead_letter_topic``, read in every scenario) holds exactly the expected
poison records of the test's range.

Counting (`Oracle.counted`): where workers survive to the end of a scenario (not
SIGKILLed), their metrics — events + skips + dead letters, heartbeats left out — cover
every record of the topics from where they started to the end (at least once: a
restarted or rebalanced worker processes some records again).

Rows are spread so that most changes are the *last* change of their row: a lost
change of such a row is a stale entry, whichever batch it was in.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import valkey
from confluent_kafka import Consumer, TopicPartition
from connectors.valkey.writer import CacheWriter
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
    Rows,
    committed,
    end_offsets,
    wait_until,
)

TOPICS = [POSTS, COMMENTS, PROFILES]
TP = tuple[str, int]
MAX_VERSION = 2**63 - 1
FENCE_TTL = 3600  # fence_ttl_seconds of every fault test: nothing expires mid-test
DATA_TTL = 3600  # TTL of the application's cached data
SHARD_A, SHARD_B = "valkey-a", "valkey-b"
# Neighbourhoods: on shard a only, on shard b only, and being moved a -> b (on both).
NEIGHBOURHOODS = {"a": 7, "b": 700, "moving": 420}
PLACES = ("a", "b", "moving", "a", "b")  # round-robin placement of new rows


def shards_of(neighbourhood: int) -> tuple[str, ...]:
    """The shards a neighbourhood's keys live on (the test shard map of write_config)."""
    if 400 <= neighbourhood <= 450:
        return (SHARD_A, SHARD_B)
    return (SHARD_A,) if neighbourhood <= 500 else (SHARD_B,)


@dataclass
class Row:
    table: str  # "posts" or "comments"
    id: int
    neighbourhood: int
    version: int
    post_id: int = 0  # comments: the post they belong to
    deleted: bool = False
    moved_from: dict[str, int] = field(default_factory=dict)  # shard left -> version of move

    @property
    def key(self) -> str:
        return f"{'post' if self.table == 'posts' else 'comment'}:{self.id}"

    @property
    def derived_key(self) -> str:
        return (f"feed:{self.neighbourhood}" if self.table == "posts"
                else f"post_comments:{self.post_id}")


@dataclass(frozen=True)
class Change:
    """One change the workload made, as it must appear on the topic."""

    table: str
    id: int
    op: str  # c, u or d
    version: int  # 0 for a delete


class Workload:
    """Rows in Postgres, cached in Valkey, then changed; remembers every change."""

    def __init__(self, stack: Stack, shards: Mapping[str, valkey.Valkey]) -> None:
        self.stack = stack
        self.db = Rows(stack.postgres_dsn)
        self.shards = dict(shards)
        self.writers = {name: CacheWriter(client) for name, client in self.shards.items()}
        self.rows: list[Row] = []
        self.retired: list[Row] = []  # rows checked already, no longer checked
        self.changes: list[Change] = []
        # Derived keys the app cached, per shard, and those a later update must remove.
        self.seeded: dict[str, set[str]] = {SHARD_A: set(), SHARD_B: set()}
        self.due: dict[str, set[str]] = {SHARD_A: set(), SHARD_B: set()}

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ rows

    def create(self, posts: int, comments: int = 0, *, cache: bool = True) -> list[Row]:
        """Insert rows spread over the shards; cache each at version 1 (stale later)."""
        created = []
        for index in range(posts):
            neighbourhood = NEIGHBOURHOODS[PLACES[index % len(PLACES)]]
            post_id, version = self.db.insert_post(neighbourhood, f"fault row {index}")
            created.append(Row("posts", post_id, neighbourhood, version))
        parents = [row for row in created if row.table == "posts"] or [
            Row("posts", self.db.insert_post(7)[0], 7, 1)]
        for index in range(comments):
            neighbourhood = NEIGHBOURHOODS[PLACES[(index + 1) % len(PLACES)]]
            post = parents[index % len(parents)]
            comment_id, version = self.db.insert_comment(post.id, neighbourhood)
            created.append(Row("comments", comment_id, neighbourhood, version, post_id=post.id))
        for row in created:
            self.changes.append(Change(row.table, row.id, "c", row.version))
            if cache:
                self.cache(row)
        self.rows.extend(created)
        return created

    def cache(self, row: Row, version: int | None = None) -> None:
        """The application caches the row (at `version`, default 1: stale after a change)
        on the first shard of its neighbourhood, and its derived key."""
        shard = shards_of(row.neighbourhood)[0]
        self.writers[shard].set_if_newer(row.key, row.version if version is None else version,
                                         {"id": row.id, "cached": "by the app"}, DATA_TTL)
        self.shards[shard].set(row.derived_key, b"derived", ex=DATA_TTL)
        self.seeded[shard].add(row.derived_key)
        self.due[shard].discard(row.derived_key)

    def _derived_changed(self, row: Row, shards: Iterable[str]) -> None:
        for shard in shards:
            if row.derived_key in self.seeded[shard]:
                self.due[shard].add(row.derived_key)

    def retire(self) -> None:
        """Stop checking the rows so far (a scenario that wipes a shard checks each
        cycle's rows before the next wipe, then retires them)."""
        self.retired.extend(self.rows)
        self.rows = []
        for keys in (*self.seeded.values(), *self.due.values()):
            keys.clear()

    def live(self, table: str | None = None) -> list[Row]:
        return [r for r in self.rows if not r.deleted and (table is None or r.table == table)]

    def update(self, rows: Iterable[Row]) -> int:
        """One update of each row; returns how many changes that made."""
        count = 0
        for row in rows:
            if row.deleted:
                continue
            if row.table == "posts":
                row.version = self.db.update_post(row.id)
            else:
                row.version = self.db.update_comment(row.id, body=f"b{time.monotonic_ns()}")
            self._derived_changed(row, shards_of(row.neighbourhood))
            self.changes.append(Change(row.table, row.id, "u", row.version))
            count += 1
        return count

    def rounds(self, rounds: int, rows: Iterable[Row] | None = None) -> int:
        chosen = list(self.live() if rows is None else rows)
        return sum(self.update(chosen) for _ in range(rounds))

    def move(self, rows: Iterable[Row]) -> int:
        """Move comments to a neighbourhood on the other shard (FULL identity: the old
        shard's key is invalidated too)."""
        count = 0
        for row in rows:
            if row.deleted or row.table != "comments":
                continue
            old = shards_of(row.neighbourhood)
            row.neighbourhood = NEIGHBOURHOODS["b"] if SHARD_A in old and len(old) == 1 \
                else NEIGHBOURHOODS["a"]
            row.version = self.db.update_comment(row.id, neighborhood_id=row.neighbourhood)
            for shard in set(old) - set(shards_of(row.neighbourhood)):
                row.moved_from[shard] = row.version
            self._derived_changed(row, {*old, *shards_of(row.neighbourhood)})
            self.changes.append(Change(row.table, row.id, "u", row.version))
            count += 1
        return count

    def delete(self, rows: Iterable[Row]) -> int:
        count = 0
        for row in rows:
            if row.deleted:
                continue
            table = "posts" if row.table == "posts" else "comments"
            self.db.conn.execute(f"DELETE FROM {table} WHERE id = %s", (row.id,))
            row.deleted = True
            self.changes.append(Change(row.table, row.id, "d", 0))
            count += 1
        return count

    def mixed(self, rounds: int = 1, *, delete_every: int = 7, move_every: int = 5) -> int:
        """`rounds` updates of every live row, then some comment moves and deletes."""
        count = self.rounds(rounds)
        comments = self.live("comments")
        count += self.move(comments[::move_every])
        count += self.delete(self.live()[::delete_every])
        return count

    def versions_in_db(self) -> dict[tuple[str, int], int | None]:
        out: dict[tuple[str, int], int | None] = {}
        for table in ("posts", "comments"):
            ids = [r.id for r in self.rows if r.table == table]
            found = dict(self.db.conn.execute(
                f"SELECT id, system_version FROM {table} WHERE id = ANY(%s)", (ids,)).fetchall())
            for row_id in ids:
                out[table, row_id] = found.get(row_id)
        return out


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

    def __init__(self, stack: Stack, workload: Workload, *, scenario: str) -> None:
        self.stack = stack
        self.workload = workload
        self.start = end_offsets(stack, TOPICS)
        self.reader = TopicReader(stack, self.start)
        self.figures = Figures(scenario)
        self.started = time.monotonic()

    def close(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------------ state

    def violations(self, *, allow_data: bool = False,
                   truncated: frozenset[str] = frozenset()) -> list[str]:
        """Every entry that breaks the state oracle, described (empty when it holds).

        `truncated`: tables whose entries may also be absent, because a TRUNCATE of
        the table was replayed after them (an absent entry is a miss, never stale;
        stale data still fails)."""
        wrong: list[str] = []
        checked = 0
        truth = self.workload.versions_in_db()
        max_fence = {b"v": str(MAX_VERSION).encode()}
        for row in self.workload.rows:
            current = truth[row.table, row.id]
            if row.deleted != (current is None):
                wrong.append(f"{row.key}: the test believes deleted={row.deleted}, "
                             f"the database says version {current}")
                continue
            if current is None:
                home = (SHARD_A, SHARD_B) if row.table == "posts" else shards_of(row.neighbourhood)
                for shard in home:
                    checked += 1
                    entry = self.workload.shards[shard].hgetall(row.key)
                    if entry != max_fence and not (row.table in truncated and not entry):
                        wrong.append(f"{shard} {row.key} (deleted): holds {_show(entry)}, "
                                     "expected a delete fence")
                continue
            version = str(current).encode()
            for shard in shards_of(row.neighbourhood):
                checked += 1
                entry = self.workload.shards[shard].hgetall(row.key)
                fence_ok = entry == {b"v": version}
                data_ok = allow_data and entry.get(b"v") == version and b"d" in entry
                absent_ok = row.table in truncated and not entry
                if not (fence_ok or data_ok or absent_ok):
                    wrong.append(f"{shard} {row.key} (version {current}): holds "
                                 f"{_show(entry)}, expected a fence at {current}")
            for shard, moved_at in row.moved_from.items():
                if shard in shards_of(row.neighbourhood):
                    continue
                checked += 1
                entry = self.workload.shards[shard].hgetall(row.key)
                if row.table in truncated and not entry:
                    continue
                if b"d" in entry or int(entry.get(b"v", b"-1")) < moved_at:
                    wrong.append(f"{shard} {row.key} (moved away at version {moved_at}): "
                                 f"holds {_show(entry)}, expected a fence >= {moved_at}")
        for shard, keys in self.workload.due.items():
            for key in keys:
                checked += 1
                if self.workload.shards[shard].exists(key):
                    wrong.append(f"{shard} {key}: derived key still cached")
        self.figures.entries_checked += checked
        self.figures.rows += len(self.workload.rows)
        return wrong

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
                timeout: float = 60.0) -> int:
        """Workers that were the group's only members from `since` on (and are still
        running) accounted for every record of `since`'s partitions from there to their
        current end: `count()` — the sum of their events, skips and dead letters — reaches
        that many records (at least: records are processed again after a restart or a
        rebalance). Adds both to the figures; returns the records to account for."""
        ends = end_offsets(self.stack, sorted({topic for topic, _ in since}))
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
                other_dead_letters: bool = False, allow_data: bool = False,
                truncated: frozenset[str] = frozenset(), timeout: float = 120.0) -> Figures:
        """The whole oracle: every change published, committed to the end, the state
        exact, the dead letters exactly as expected. Raises AssertionError otherwise.

        `dead_letter_topic` (the worker config's ``kafka.dead_letter_topic``) is read
        whole: `dead_letters` of its records come from the test's range of the topics;
        any other (a record from before the range: a group that re-read the topics'
        history) fails too unless `other_dead_letters`, and is counted in
        ``extra["dead_letters_outside_range"]``."""
        ends = self.published(timeout)
        self.wait_committed(group, ends, timeout)
        final = committed(self.stack, group, TOPICS)
        behind = {tp: (final.get(tp), end) for tp, end in ends.items()
                  if end > 0 and final.get(tp, -1) != end and final.get(tp, -1) < end}
        assert not behind, f"committed offsets short of the end: {behind}"
        self.reader.drain(1.0)
        wrong = self.violations(allow_data=allow_data, truncated=truncated)
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
        figures.seconds = round(time.monotonic() - self.started, 1)
        failures = []  # every part that failed, reported together
        if wrong:
            failures.append(f"{len(wrong)} stale entries, e.g.:\n" + "\n".join(wrong[:20]))
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
        return tp in self.start and offset >= self.start[tp]


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


def _show(entry: Mapping[bytes, bytes]) -> str:
    if not entry:
        return "nothing"
    return "{" + ", ".join(f"{k.decode()}: {'<data>' if k == b'd' else v.decode()}"
                           for k, v in sorted(entry.items())) + "}"
