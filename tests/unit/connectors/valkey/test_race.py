"""The delete-then-stale-set race (SPEC section 2): a slow reader must not put back data
older than a change the reconciler has already seen. The second test removes the fence
to show that without it the race is lost, so the first test can fail."""

from __future__ import annotations

import valkey

from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter


def test_fence_stops_a_slow_writer(shard: Shard, writer: CacheWriter, uid: str) -> None:
    key = f"{uid}:post:1"
    assert writer.set_if_newer(key, 4, {"title": "v4"}, 300)
    # A reader misses (the entry is invalidated) and reads row version 5 from Postgres...
    assert shard.apply([key], ["v"], [5]) == ["repaired"]
    read_version, read_row = 5, {"title": "v5"}
    # ...meanwhile the row is updated to 6 and the change is reconciled...
    assert shard.apply([key], ["v"], [6]) == ["fenced"]
    # ...then the slow reader fills the cache with what it read: refused.
    assert writer.set_if_newer(key, read_version, read_row, 300) is False
    assert writer.get(key) is None
    # A reader that reads the row after the change fills the cache.
    assert writer.set_if_newer(key, 6, {"title": "v6"}, 300)
    assert writer.get_with_version(key) == (6, {"title": "v6"})
    # A change that arrives again (at-least-once delivery) leaves fresh data alone.
    assert shard.apply([key], ["v"], [6]) == ["fresh"]
    assert writer.get(key) == {"title": "v6"}


def test_fence_stops_a_slow_writer_after_a_delete(shard: Shard, writer: CacheWriter,
                                                  uid: str) -> None:
    key = f"{uid}:post:1"
    read_version = 5  # a reader read the row at version 5, then the row was deleted
    assert shard.apply([key], ["d"], [0]) == ["absent"]
    assert writer.set_if_newer(key, read_version, {"title": "v5"}, 300) is False
    assert writer.get(key) is None


def test_without_the_fence_the_race_is_lost(shard: Shard, writer: CacheWriter,
                                            client: valkey.Valkey, uid: str) -> None:
    key = f"{uid}:post:1"
    assert shard.apply([key], ["v"], [5]) == ["absent"]
    assert shard.apply([key], ["v"], [6]) == ["fenced"]
    client.delete(key)  # what a reconciler that wrote no fence would have left
    assert writer.set_if_newer(key, 5, {"title": "v5"}, 300) is True
    assert writer.get_with_version(key) == (5, {"title": "v5"})  # stale data survives
