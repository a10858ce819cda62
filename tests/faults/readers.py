"""Application readers beside the worker: the slow writers the fences exist for.

Random readers (threads): pick a random row of the workload, read it from Postgres
(its version and neighbourhood), wait a random read-to-write delay — mostly short,
some close to the fence TTL (up to 0.8 x ``fence_ttl_seconds``) — then cache it with
the writer helper (``CacheWriter.set_if_newer``) on every shard its neighbourhood
lives on, with a long TTL or, for a share of the writes, one shorter than the fence
TTL. Each Postgres read, delay and write races the workload's changes and the worker.
Each thread has clients of its own (`Workload.connect`: shard b may be a cluster or a
Sentinel service), and skips the shards a scenario holds down (`Workload.down`).

Planted races (`race()`): the delete-then-stale-set race made on purpose. The
application has cached a row at version v; the workload changes it; a slow writer
that read v before the change writes v again as soon as it sees the worker has
invalidated the entry (or at the end of its window). With fences the write is refused;
without them it puts stale data back.

The readers' contract (the application's, SPEC section 2): a write follows its read
by less than ``fence_ttl``. A write that took longer (a stalled thread on a busy
machine) is outside it: it is dropped before it is sent when the read is already
0.9 x fence_ttl old, and one that still landed late is remembered (`late`), so the
oracle can name it rather than blame the worker.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.valkey.writer import CacheWriter
from tests.conftest import Stack
from tests.faults.workload import DATA_TTL, SHARDS, Row, Workload, payload, shards_of

WINDOW = 0.8  # longest read-to-write delay, as a share of fence_ttl
GIVE_UP = 0.9  # a write whose read is older than this share of fence_ttl is dropped
THREADS = 4  # random readers (mostly asleep in their delays)


def delay(rng: random.Random, fence_ttl: float) -> float:
    """A read-to-write delay: mostly short, a quarter up to half the fence TTL, some
    close to the window's end."""
    pick = rng.random()
    if pick < 0.6:
        return rng.uniform(0, 0.05 * fence_ttl)
    if pick < 0.85:
        return rng.uniform(0.05 * fence_ttl, 0.5 * fence_ttl)
    return rng.uniform(0.5 * fence_ttl, WINDOW * fence_ttl)


def ttl(rng: random.Random, fence_ttl: float) -> float:
    """The TTL a reader caches with: long, or for one write in five shorter than the
    fence TTL (the reconciler must extend fresh data it relies on)."""
    return rng.uniform(0.2 * fence_ttl, fence_ttl) if rng.random() < 0.2 else DATA_TTL


@dataclass
class Race:
    """A planted slow writer: read `version` at `read_at`, writes it back once the entry
    stops being that data (the worker invalidated it) or at the window's end."""

    shard: str
    key: str
    row_id: int
    version: int
    read_at: float
    initial: dict[bytes, bytes]  # the entry once the application had cached the row
    changed: bool = False


class Readers:
    """The random readers and the planted races of one scenario."""

    def __init__(self, stack: Stack, workload: Workload, *, seed: str,
                 threads: int = THREADS) -> None:
        self.stack = stack
        self.workload = workload
        self.fence_ttl = workload.fence_ttl
        self.seed = seed
        self.threads = threads
        self.stats: Counter[str] = Counter()
        self.late: set[tuple[str, str]] = set()  # (shard, key) written outside the window
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._running = threading.Event()  # set: the random readers read and write
        self._halt = threading.Event()  # set: paused or stopped (ends a pending delay)
        self._done = threading.Event()
        self._busy = [False] * threads
        self._races: list[Race] = []
        self._workers: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Readers:
        self._running.set()
        for index in range(self.threads):
            thread = threading.Thread(target=self._read_loop, args=(index,),
                                      name=f"reader-{index}", daemon=True)
            thread.start()
            self._workers.append(thread)
        racer = threading.Thread(target=self._race_loop, name="racer", daemon=True)
        racer.start()
        self._workers.append(racer)
        return self

    def stop(self) -> None:
        self.pause()
        self._done.set()
        for thread in self._workers:
            thread.join(30)

    def pause(self) -> None:
        """Stop the random readers (a pending delay ends without its write) and wait for
        the planted races to write: then no reader write is in flight."""
        self._running.clear()
        self._halt.set()
        deadline = time.monotonic() + 30
        while (any(self._busy) or self._races) and time.monotonic() < deadline:
            time.sleep(0.02)

    def resume(self) -> None:
        if not self._done.is_set():
            self._halt.clear()
            self._running.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    # ------------------------------------------------------------------ random readers

    def _clients(self, opened: contextlib.ExitStack) -> dict[str, Any]:
        """A client of its own per shard (`Workload.connect`), closed with `opened`."""
        return {name: opened.enter_context(self.workload.connect(name)) for name in SHARDS}

    def _read_loop(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        with contextlib.ExitStack() as opened:
            clients = self._clients(opened)
            writers = {name: CacheWriter(client) for name, client in clients.items()}
            with psycopg.connect(self.stack.postgres_dsn, autocommit=True) as db:
                while not self._done.is_set():
                    if not self._running.wait(0.1):
                        continue
                    self._busy[index] = True
                    try:
                        self._read_once(rng, db, writers)
                    except Exception as exc:  # noqa: BLE001 - a service the test stopped
                        self.stats["errors"] += 1
                        if len(self.errors) < 20:
                            self.errors.append(repr(exc))
                        time.sleep(0.1)
                    finally:
                        self._busy[index] = False

    def _read_once(self, rng: random.Random, db: psycopg.Connection,
                   writers: dict[str, CacheWriter]) -> None:
        with self.workload.lock:
            candidates = self.workload.candidates
            picked = candidates[rng.randrange(len(candidates))] if candidates else None
        if picked is None:
            time.sleep(0.05)
            return
        table, row_id = picked
        read_at = time.monotonic()
        found = db.execute(f"SELECT system_version, neighborhood_id FROM {table} "
                           "WHERE id = %s", (row_id,)).fetchone()
        self.stats["reads"] += 1
        if found is None:
            return  # deleted: nothing to cache
        version, neighbourhood = int(found[0]), int(found[1])
        if not self._halt.wait(delay(rng, self.fence_ttl)):
            key = f"{'post' if table == 'posts' else 'comment'}:{row_id}"
            for shard in shards_of(neighbourhood):
                if shard in self.workload.down:
                    continue  # the scenario holds it down: the application skips it
                self._write(writers[shard], shard, key, row_id, version, read_at,
                            ttl(rng, self.fence_ttl))

    def _write(self, writer: CacheWriter, shard: str, key: str, row_id: int, version: int,
               read_at: float, ttl_seconds: float) -> bool | None:
        """set_if_newer within the window; None when dropped for being too late."""
        if time.monotonic() - read_at > GIVE_UP * self.fence_ttl:
            self.stats["dropped_late"] += 1
            return None
        written = writer.set_if_newer(key, version, payload(row_id, version), ttl_seconds)
        if time.monotonic() - read_at >= self.fence_ttl:
            with self._lock:
                self.late.add((shard, key))
            self.stats["late"] += 1
        self.stats["written" if written else "refused"] += 1
        return written

    # ------------------------------------------------------------------ planted races

    def race(self, rows: list[Row]) -> None:
        """Call before changing `rows`: each is cached at its current version (the
        application read it) and a slow writer will write that version back after the
        change (see the module docstring)."""
        now = time.monotonic()
        races = []
        for row in rows:
            if row.deleted:
                continue
            self.workload.cache(row)
            races += [Race(shard, row.key, row.id, row.version, now,
                           self.workload.shards[shard].hgetall(row.key))
                      for shard in row.home]
        with self._lock:
            self._races += races
        self.stats["races"] += len(races)

    def _race_loop(self) -> None:
        with contextlib.ExitStack() as opened:
            clients = self._clients(opened)
            writers = {name: CacheWriter(client) for name, client in clients.items()}
            while not self._done.is_set() or self._races:
                with self._lock:
                    pending = list(self._races)
                if not pending:
                    time.sleep(0.02)
                    continue
                for race in pending:
                    try:
                        self._step(race, clients[race.shard], writers[race.shard])
                    except Exception as exc:  # noqa: BLE001 - a service the test stopped
                        self.stats["race_errors"] += 1
                        if len(self.errors) < 20:
                            self.errors.append(repr(exc))
                        self._forget(race)
                time.sleep(0.01)

    def _step(self, race: Race, client: Any, writer: CacheWriter) -> None:
        entry = client.hgetall(race.key)
        race.changed = entry != race.initial
        end = race.read_at + WINDOW * self.fence_ttl
        if not race.changed and time.monotonic() < end:
            return
        written = self._write(writer, race.shard, race.key, race.row_id, race.version,
                              race.read_at, DATA_TTL)
        if written is not None:
            # A hit: the write came after the worker had invalidated the entry.
            self.stats[f"race_{'hit' if race.changed else 'miss'}"] += 1
            if race.changed and written:
                self.stats["race_hit_written"] += 1
        self._forget(race)

    def _forget(self, race: Race) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._races.remove(race)

    def figures(self) -> dict[str, int]:
        return dict(self.stats)
