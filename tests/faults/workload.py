"""The fault suite's workload: rows in Postgres, cached by the application, then changed.

Posts (REPLICA IDENTITY DEFAULT) and comments (FULL) in neighbourhoods on shard a only,
on shard b only, and in the range being moved from a to b (on both). The application
caches every row at its creation version (data, long TTL) with its derived key
(``feed:…``, ``post_comments:…``); before some updates it caches the row again at its
current version, as an application that just read it would. Then rows are updated,
comments moved between shards, rows deleted — and deleted rows inserted again with the
same primary key (a new incarnation, at a higher version: versions come from a
sequence), often within the fence TTL of their delete.

The workload remembers every change (`changes`, for the accounting) and, per row and
shard, the version of the last change that fences the row's key there (`Row.fenced`:
the row's version on the shards it lives on, the version of a move on the shard it
left, 2^63-1 after a delete) — what the state oracle (`tests.faults.oracle`) compares
the cache with.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import valkey

from connectors.errors import ConnectorError
from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.e2e.support import Rows

MAX_VERSION = 2**63 - 1  # the delete fence
DATA_TTL = 3600  # TTL of the data the workload caches: stale data never expires mid-test
SHARD_A, SHARD_B = "valkey-a", "valkey-b"
SHARDS = (SHARD_A, SHARD_B)
# Neighbourhoods: on shard a only, on shard b only, and being moved a -> b (on both).
NEIGHBOURHOODS = {"a": 7, "b": 700, "moving": 420}
PLACES = ("a", "b", "moving", "a", "b")  # round-robin placement of new rows
FENCE_TTLS = (2, 3, 4, 5)  # fence_ttl_seconds of a scenario: short, so TTL races show
# What an application's cache write may meet while a shard fails over or is down.
CACHE_ERRORS = (ConnectorError, valkey.ValkeyError, OSError)
Connect = Callable[[], AbstractContextManager[Any]]  # a new client of one shard, closed after


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
    incarnations: int = 1  # inserts of this primary key (a re-insert after a delete: 2…)
    # Per shard, the version of the last change that fenced the key there (MAX: a delete).
    fenced: dict[str, int] = field(default_factory=dict)
    delete_fenced: set[str] = field(default_factory=set)  # shards a delete ever fenced

    @property
    def key(self) -> str:
        return f"{'post' if self.table == 'posts' else 'comment'}:{self.id}"

    @property
    def derived_key(self) -> str:
        return (f"feed:{self.neighbourhood}" if self.table == "posts"
                else f"post_comments:{self.post_id}")

    @property
    def home(self) -> tuple[str, ...]:
        """The shards the row's key lives on now (none once deleted)."""
        return () if self.deleted else shards_of(self.neighbourhood)

    def fence(self, shards: Iterable[str], version: int) -> None:
        for shard in shards:
            self.fenced[shard] = version
            if version == MAX_VERSION:
                self.delete_fenced.add(shard)


@dataclass(frozen=True)
class Change:
    """One change the workload made, as it must appear on the topic."""

    table: str
    id: int
    op: str  # c, u or d
    version: int  # 0 for a delete


class Workload:
    """Rows in Postgres, cached in Valkey, then changed; remembers every change.

    `fence_ttl` is the scenario's ``fence_ttl_seconds`` (2-5 s, chosen from `seed`): the
    readers and the oracle scale with it. One thread changes the workload at a time
    (the test, or a `Load` while the test leaves it alone); the readers only read
    `candidates`, under the lock.

    `shards`: the test's client of each shard (a `valkey.Valkey`, or valkey-py's cluster
    client where shard b is a Valkey Cluster); `connect`: how a reader thread opens a
    client of its own, per shard (default: the stack's URL of that shard); `may_fail`:
    the shards a scenario fails over under the application, whose cache writes may
    fail (elsewhere a failed write fails the test). `down`: the shards the application
    does not write to while a scenario holds them down."""

    def __init__(self, stack: Stack, shards: Mapping[str, Any], *,
                 seed: str = "", fence_ttl: float | None = None,
                 connect: Mapping[str, Connect] | None = None,
                 may_fail: Iterable[str] = ()) -> None:
        self.stack = stack
        self.rng = random.Random(seed)
        self.fence_ttl = float(fence_ttl or self.rng.choice(FENCE_TTLS))
        self.db = Rows(stack.postgres_dsn)
        self.shards = dict(shards)
        self.writers = {name: CacheWriter(client) for name, client in self.shards.items()}
        self.connectors = {name: url_client(url) for name, url in stack.valkey.items()}
        self.connectors.update(connect or {})
        self.may_fail = frozenset(may_fail)
        self.down: set[str] = set()
        self.cache_errors = 0  # cache writes that failed on a `may_fail` shard
        self.rows: list[Row] = []
        self.retired: list[Row] = []  # rows checked already, no longer checked
        self.changes: list[Change] = []
        self.derived = True  # cache derived keys (off where the topic loses their deletes)
        self.recache_share = 0.5  # updates preceded by caching the row at its version
        # Derived keys the app cached, per shard, and those a later change must remove.
        self.seeded: dict[str, set[str]] = {SHARD_A: set(), SHARD_B: set()}
        self.due: dict[str, set[str]] = {SHARD_A: set(), SHARD_B: set()}
        self.lock = threading.Lock()
        self.candidates: list[tuple[str, int]] = []  # rows the random readers may pick

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ rows

    def create(self, posts: int, comments: int = 0, *, cache: bool = True,
               readable: bool = True) -> list[Row]:
        """Insert rows spread over the shards; cache each at its creation version (stale
        after its next change). `readable`: the random readers may pick them."""
        created = []
        for index in range(posts):
            neighbourhood = NEIGHBOURHOODS[PLACES[index % len(PLACES)]]
            post_id, version = self.db.insert_post(neighbourhood, f"fault row {index}")
            created.append(Row("posts", post_id, neighbourhood, version))
        parents = [row for row in created if row.table == "posts"] or [
            self._parent()]
        for index in range(comments):
            neighbourhood = NEIGHBOURHOODS[PLACES[(index + 1) % len(PLACES)]]
            post = parents[index % len(parents)]
            comment_id, version = self.db.insert_comment(post.id, neighbourhood)
            created.append(Row("comments", comment_id, neighbourhood, version, post_id=post.id))
        for row in created:
            self.changes.append(Change(row.table, row.id, "c", row.version))
            row.fence(row.home, row.version)
            if cache:
                self.cache(row)
        self._track(created, readable)
        return created

    def _parent(self) -> Row:
        post_id, version = self.db.insert_post(NEIGHBOURHOODS["a"])
        row = Row("posts", post_id, NEIGHBOURHOODS["a"], version)
        row.fence(row.home, version)
        self.changes.append(Change("posts", post_id, "c", version))
        self._track([row], False)
        return row

    def _track(self, rows: list[Row], readable: bool) -> None:
        with self.lock:
            self.rows.extend(rows)
            if readable:
                self.candidates.extend((row.table, row.id) for row in rows)

    def connect(self, shard: str) -> AbstractContextManager[Any]:
        """A new client of `shard` (for a reader thread), closed when the block ends."""
        return self.connectors[shard]()

    def cache(self, row: Row, version: int | None = None) -> None:
        """The application caches the row (at `version`, default its current one) on
        every shard it lives on, and its derived key — except on shards that are `down`.
        A write that fails on a `may_fail` shard (it is failing over) is given up, as an
        application would: the derived key is then no longer checked (it may or may not
        have been written)."""
        version = row.version if version is None else version
        for shard in row.home:
            if shard in self.down:
                continue
            if self.derived:
                self.seeded[shard].add(row.derived_key)
                self.due[shard].discard(row.derived_key)
            try:
                self.writers[shard].set_if_newer(row.key, version, payload(row.id, version),
                                                 DATA_TTL)
                if self.derived:
                    self.shards[shard].set(row.derived_key, b"derived", ex=DATA_TTL)
            except CACHE_ERRORS:
                if shard not in self.may_fail:
                    raise
                self.cache_errors += 1

    def _derived_changed(self, row: Row, shards: Iterable[str]) -> None:
        for shard in shards:
            if row.derived_key in self.seeded[shard]:
                self.due[shard].add(row.derived_key)

    def retire(self) -> None:
        """Stop checking the rows so far (a scenario that wipes a shard checks each
        cycle's rows before the next wipe, then retires them)."""
        with self.lock:
            self.retired.extend(self.rows)
            self.rows = []
            self.candidates = []
        for keys in (*self.seeded.values(), *self.due.values()):
            keys.clear()

    def live(self, table: str | None = None) -> list[Row]:
        return [r for r in self.rows if not r.deleted and (table is None or r.table == table)]

    def gone(self) -> list[Row]:
        return [r for r in self.rows if r.deleted]

    def update(self, rows: Iterable[Row], *, recache: float | None = None) -> int:
        """One update of each live row; returns how many changes that made. A share
        (`recache`, default `recache_share`) of the rows is cached at its current version
        first, so that losing this change leaves stale data behind."""
        share = self.recache_share if recache is None else recache
        count = 0
        for row in rows:
            if row.deleted:
                continue
            if share and self.rng.random() < share:
                self.cache(row)
            if row.table == "posts":
                row.version = self.db.update_post(row.id)
            else:
                row.version = self.db.update_comment(row.id, body=f"b{time.monotonic_ns()}")
            row.fence(row.home, row.version)
            self._derived_changed(row, row.home)
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
            old = row.home
            row.neighbourhood = NEIGHBOURHOODS["b"] if old == (SHARD_A,) else NEIGHBOURHOODS["a"]
            row.version = self.db.update_comment(row.id, neighborhood_id=row.neighbourhood)
            row.fence({*old, *row.home}, row.version)
            self._derived_changed(row, {*old, *row.home})
            self.changes.append(Change(row.table, row.id, "u", row.version))
            count += 1
        return count

    def delete(self, rows: Iterable[Row]) -> int:
        """Delete rows. The delete's key-only part (the tombstone, and a post's delete:
        DEFAULT identity) fences the key on every shard."""
        count = 0
        for row in rows:
            if row.deleted:
                continue
            self.db.conn.execute(f"DELETE FROM {row.table} WHERE id = %s", (row.id,))
            row.deleted = True
            row.fence(SHARDS, MAX_VERSION)
            self.changes.append(Change(row.table, row.id, "d", 0))
            count += 1
        return count

    def reinsert(self, rows: Iterable[Row], *, place: str | None = None,
                 cache: bool = False) -> int:
        """Insert deleted rows again with their primary key (INSERT with an explicit id):
        a new incarnation at a version above every earlier one. `place`: where (a key of
        NEIGHBOURHOODS, "same" for where it was; default: a random place, so a row may
        come back on another shard). `cache`: the application caches it at once."""
        count = 0
        for row in rows:
            if not row.deleted:
                continue
            if place != "same":
                row.neighbourhood = NEIGHBOURHOODS[place or self.rng.choice(PLACES)]
            if row.table == "posts":
                found = self.db.one(
                    "INSERT INTO posts (id, neighborhood_id, author_id, title, body) "
                    "VALUES (%s, %s, 1, 'again', 'b') RETURNING system_version",
                    (row.id, row.neighbourhood))
            else:
                found = self.db.one(
                    "INSERT INTO comments (id, post_id, neighborhood_id, author_id, body) "
                    "VALUES (%s, %s, %s, 1, 'again') RETURNING system_version",
                    (row.id, row.post_id, row.neighbourhood))
            version = int(found[0])
            assert version > row.version, (
                f"{row.key}: inserted again at version {version}, not above its earlier "
                f"version {row.version}: system_version must come from a sequence "
                "(SPEC: versions never go back)")
            row.version, row.deleted = version, False
            row.incarnations += 1
            row.fence(row.home, version)
            self._derived_changed(row, row.home)
            self.changes.append(Change(row.table, row.id, "c", version))
            count += 1
            if cache:
                self.cache(row)
        return count

    def churn(self, rows: Iterable[Row]) -> int:
        """Delete rows and insert them again at once (within the fence TTL), then update
        some of them: the delete fence meets the new incarnation's changes."""
        chosen = [r for r in rows if not r.deleted]
        count = self.delete(chosen)
        count += self.reinsert(chosen)
        return count + self.update(chosen[::2], recache=0)

    def mixed(self, rounds: int = 1, *, delete_every: int = 7, move_every: int = 5,
              reinsert_every: int = 2) -> int:
        """`rounds` updates of every live row, some comment moves and deletes, and some
        rows deleted earlier inserted again."""
        count = self.reinsert(self.gone()[::reinsert_every])
        count += self.rounds(rounds)
        comments = self.live("comments")
        count += self.move(comments[::move_every])
        count += self.delete(self.live()[::delete_every])
        return count

    def truth(self) -> dict[tuple[str, int], tuple[int, int] | None]:
        """(version, neighbourhood) of every row in Postgres, None if it does not exist."""
        out: dict[tuple[str, int], tuple[int, int] | None] = {}
        for table in ("posts", "comments"):
            ids = [r.id for r in self.rows if r.table == table]
            found = {row_id: (int(version), int(neighbourhood))
                     for row_id, version, neighbourhood in self.db.conn.execute(
                         f"SELECT id, system_version, neighborhood_id FROM {table} "
                         "WHERE id = ANY(%s)", (ids,)).fetchall()}
            for row_id in ids:
                out[table, row_id] = found.get(row_id)
        return out


def url_client(url: str) -> Connect:
    """How to open a client of the server at `url` (closed after the block)."""
    return lambda: contextlib.closing(valkey.Valkey.from_url(url))


def payload(row_id: int, version: int) -> dict[str, int]:
    """What the application caches: the row's id and the version it read (the oracle
    checks that the payload under ``v`` is the one written with it)."""
    return {"id": row_id, "v": version}
