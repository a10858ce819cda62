"""The protocol's invariant, driven through the REAL functions by hypothesis.

One row per example. A timeline interleaves: commits (the row's version goes up, a
change event is emitted), reads (a reader sees the version current at that moment and
will later `set_if_newer` it, with a TTL of 20 s, 300 s or none: possibly long after
newer changes), snapshot events (op `s` at the version current then), a delete,
deliveries of any emitted event, in any order and any number of times, and time
passing (10, 30 or 60 s at once: `helpers.age` lowers the key's TTL, so fences and
short-lived data expire as they would). At the end every event is delivered at least
once (with the remaining slow writers still interleaved), then:

- while a change's fence lives — a write of a version below a change (v, or d:
  every version) applied less than fence_ttl ago is refused, whatever was delivered
  or written since (duplicates, replays, older events, writers);
- no over-blocking — fence_ttl after the last delivery, a reader of the latest
  version fills the cache unless that version is cached already;
- no entry holds data older than the row's latest version (none at all if deleted),
  unless a writer was slower than fence_ttl (wrote a version below a change applied
  fence_ttl or more before: what fence_ttl must be chosen to exceed);
- no change event (v/s) ever removed or altered data at least as new as its version,
  in particular data at the row's latest version; only a delete removes data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import hypothesis.strategies as st
import valkey
from hypothesis import HealthCheck, event, given, settings

from connectors.valkey.protocols import MAX_VERSION, parse_version
from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter
from tests.unit.connectors.valkey.conftest import FENCE_TTL_MS
from tests.unit.connectors.valkey.helpers import age, entry

rows = itertools.count()
# Time steps, in ms: multiples of 10 s, so that "less than fence_ttl ago" is at most
# 50 s of simulated time, 10 s clear of the real milliseconds an example takes.
AGES = [10_000, 30_000, 60_000]


@dataclass
class Row:
    key: str
    latest: int = 1
    deleted: bool = False
    events: list[tuple[str, int]] = field(default_factory=lambda: [("v", 1)])  # the create
    delivered: set[int] = field(default_factory=set)
    readers: list[int] = field(default_factory=list)  # versions read, not yet written
    now: int = 0  # simulated time, ms
    changes: list[tuple[int, int]] = field(default_factory=list)  # (version, applied at)
    last_delivery: int | None = None  # when any event was last applied
    late: bool = False  # a writer slower than fence_ttl wrote


def data_version(client: valkey.Valkey, key: str) -> tuple[int, bytes] | None:
    """(version, payload) if `key` holds data, else None."""
    kind, value = entry(client, key)
    if kind != "hash" or b"d" not in value:
        return None
    version = parse_version(value.get(b"v"))
    assert version is not None, value
    return version, value[b"d"]


def deliver(shard: Shard, client: valkey.Valkey, row: Row, index: int) -> None:
    op, version = row.events[index]
    before = data_version(client, row.key)
    [result] = shard.apply([row.key], [op], [version])
    after = data_version(client, row.key)
    row.delivered.add(index)
    row.last_delivery = row.now
    if op != "s":
        row.changes.append((MAX_VERSION if op == "d" else version, row.now))
    event(f"{op}:{result}")
    if op == "d":
        assert after is None
    elif before is not None and before[0] >= version:
        assert result == "fresh" and after == before, (op, version, before, after)
        if before[0] == row.latest:
            event("fresh data at the latest version kept")
    elif before is not None:
        assert result == "repaired" and after is None


def write(writer: CacheWriter, client: valkey.Valkey, row: Row, read_version: int,
          ttl_seconds: int | None) -> None:
    newer = [row.now - at for version, at in row.changes if version > read_version]
    before = data_version(client, row.key)
    written = writer.set_if_newer(row.key, read_version, {"version": read_version},
                                  ttl_seconds)
    current = read_version == row.latest and not row.deleted
    if any(ago < FENCE_TTL_MS for ago in newer):
        assert not written, ("a write below a change applied less than fence_ttl ago",
                             read_version, newer, row)
        event("writer refused: a change's fence lives")
    elif newer and not current:
        row.late = True
        event(f"writer slower than fence_ttl {'wrote' if written else 'refused'}")
    if current and (row.last_delivery is None
                    or row.now - row.last_delivery >= FENCE_TTL_MS):
        cached = before is not None and before[0] >= read_version
        assert written is not cached, ("over-blocked", read_version, before, row)
        event(f"fence_ttl after the last delivery: the latest version "
              f"{'was cached' if cached else 'cached'}"
              f"{' (after a delete)' if newer else ''}")
    event(f"slow writer {'wrote' if written else 'refused'}"
          f"{' (stale)' if read_version < row.latest else ''}")


def wait(client: valkey.Valkey, row: Row, ms: int) -> None:
    age(client, row.key, ms)
    row.now += ms


def assert_no_stale_data_while_a_fence_lives(client: valkey.Valkey, row: Row) -> None:
    """No data below a change applied less than fence_ttl ago (none at all for a
    delete's): what the fence of each change, or the data that replaced it, holds off."""
    live = [version for version, at in row.changes if row.now - at < FENCE_TTL_MS]
    found = data_version(client, row.key)
    if live and found is not None:
        assert found[0] >= max(live), ("stale data while a fence lives", found, row)


TTLS = st.sampled_from([20, 300, None])  # a writer's TTL, in seconds (None: none)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_stale_entry_survives_and_no_fresh_entry_is_removed(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str,
        data: st.DataObject) -> None:
    row = Row(f"{uid}:post:{next(rows)}")
    steps = data.draw(st.integers(1, 40), label="steps")
    delete_at = data.draw(st.none() | st.integers(0, steps), label="delete at step")
    for step in range(steps):
        actions = ["deliver"]
        if step == delete_at:
            actions = ["delete"]
        elif not row.deleted:
            actions += ["commit", "commit", "read", "read", "snapshot"]
        if row.readers:
            actions += ["write", "write"]
        if step != delete_at:
            actions.append("wait")
        action = data.draw(st.sampled_from(actions))
        if action == "commit":
            row.latest += 1
            row.events.append(("v", row.latest))
        elif action == "read":
            row.readers.append(row.latest)
        elif action == "snapshot":
            row.events.append(("s", row.latest))
        elif action == "delete":
            row.deleted = True
            row.events.append(("d", 0))
        elif action == "write":
            i = data.draw(st.integers(0, len(row.readers) - 1))
            write(writer, client, row, row.readers.pop(i), data.draw(TTLS))
        elif action == "wait":
            wait(client, row, data.draw(st.sampled_from(AGES)))
        else:
            deliver(shard, client, row, data.draw(st.integers(0, len(row.events) - 1)))
        assert_no_stale_data_while_a_fence_lives(client, row)
    # Every event at least once, in any order, the slow writers still interleaved.
    pending = [i for i in range(len(row.events)) if i not in row.delivered]
    order = data.draw(st.permutations(pending), label="final deliveries")
    for index in order:
        if row.readers and data.draw(st.booleans()):
            write(writer, client, row, row.readers.pop(0), data.draw(TTLS))
        if data.draw(st.booleans()):
            wait(client, row, data.draw(st.sampled_from(AGES)))
        deliver(shard, client, row, index)
        assert_no_stale_data_while_a_fence_lives(client, row)
    while row.readers:
        write(writer, client, row, row.readers.pop(0), data.draw(TTLS))
    found = data_version(client, row.key)
    if row.late:
        event("a writer slower than fence_ttl: stale data allowed")
    elif row.deleted:
        assert found is None, found
    elif found is not None:
        assert found[0] == row.latest, (found, row)
        event("ends with data at the latest version")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fences_hold_for_fence_ttl_whatever_the_order(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str,
        data: st.DataObject) -> None:
    """The fence lifetime alone: the row's changes have all happened — v1..vn, maybe a
    delete after vk and, if k < n, the row re-inserted at vk+1 (versions keep rising) —
    and two readers of each version are still to write; the events are delivered in
    any order, any number of times, with time passing and the writers interleaved.
    After every step, no data below a change applied less than fence_ttl ago; at every
    write, the checks of `write` (refused while a newer change's fence lives, and no
    over-blocking: fence_ttl after the last delivery the latest version is cached)."""
    n = data.draw(st.integers(1, 4), label="versions")
    events = [("v", version) for version in range(1, n + 1)]
    deleted_after = data.draw(st.none() | st.integers(1, n), label="deleted after")
    if deleted_after is not None:
        events.insert(deleted_after, ("d", 0))
    row = Row(f"{uid}:post:{next(rows)}", latest=n, deleted=deleted_after == n,
              events=events, readers=[version for version in range(1, n + 1) for _ in "ab"])
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        actions = ["deliver", "deliver", "wait"] + (["write"] if row.readers else [])
        action = data.draw(st.sampled_from(actions))
        if action == "deliver":
            deliver(shard, client, row, data.draw(st.integers(0, len(row.events) - 1)))
        elif action == "wait":
            wait(client, row, data.draw(st.sampled_from(AGES)))
        else:
            i = data.draw(st.integers(0, len(row.readers) - 1))
            write(writer, client, row, row.readers.pop(i), data.draw(TTLS))
        assert_no_stale_data_while_a_fence_lives(client, row)
