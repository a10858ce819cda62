"""The protocol's invariant, driven through the REAL functions by hypothesis.

One row per example. A timeline interleaves: commits (the row's version goes up, a
change event is emitted), reads (a reader sees the version current at that moment and
will later `set_if_newer` it: possibly long after newer changes), snapshot events (op
`s` at the version current then), a delete, and deliveries of any emitted event, in
any order and any number of times. At the end every event is delivered at least once
(with the remaining slow writers still interleaved), then:

- no entry holds data older than the row's latest version (none at all if deleted);
- no change event (v/s) ever removed or altered data at least as new as its version,
  in particular data at the row's latest version; only a delete removes data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import hypothesis.strategies as st
import valkey
from hypothesis import HealthCheck, event, given, settings

from connectors.valkey.protocols import parse_version
from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter
from tests.unit.connectors.valkey.helpers import entry

rows = itertools.count()


@dataclass
class Row:
    key: str
    latest: int = 1
    deleted: bool = False
    events: list[tuple[str, int]] = field(default_factory=lambda: [("v", 1)])  # the create
    delivered: set[int] = field(default_factory=set)
    readers: list[int] = field(default_factory=list)  # versions read, not yet written


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
    event(f"{op}:{result}")
    if op == "d":
        assert after is None
    elif before is not None and before[0] >= version:
        assert result == "fresh" and after == before, (op, version, before, after)
        if before[0] == row.latest:
            event("fresh data at the latest version kept")
    elif before is not None:
        assert result == "repaired" and after is None


def write(writer: CacheWriter, row: Row, read_version: int) -> None:
    written = writer.set_if_newer(row.key, read_version, {"version": read_version}, 300)
    event(f"slow writer {'wrote' if written else 'refused'}"
          f"{' (stale)' if read_version < row.latest else ''}")


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
            write(writer, row, row.readers.pop(i))
        else:
            deliver(shard, client, row, data.draw(st.integers(0, len(row.events) - 1)))
    # Every event at least once, in any order, the slow writers still interleaved.
    pending = [i for i in range(len(row.events)) if i not in row.delivered]
    order = data.draw(st.permutations(pending), label="final deliveries")
    for index in order:
        if row.readers and data.draw(st.booleans()):
            write(writer, row, row.readers.pop(0))
        deliver(shard, client, row, index)
    while row.readers:
        write(writer, row, row.readers.pop(0))
    found = data_version(client, row.key)
    if row.deleted:
        assert found is None, found
    elif found is not None:
        assert found[0] == row.latest, (found, row)
        event("ends with data at the latest version")
