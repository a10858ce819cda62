"""A sentinel shard against the stack's real Sentinels (valkey-sentinel: a primary, its
replica, three Sentinels): calls reach the primary they name, and after a clean
failover, a killed primary or a lossy failover the invalidator's retries succeed on
the new primary, with the end state right there; the writer helper follows too.
Credentials: the Sentinels' from their URLs, the primary's from the shard's settings.
"""

from __future__ import annotations

import time

import pytest

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.commands import WaitFor
from connectors.valkey.functions import LIBRARY_NAME
from connectors.valkey.sentinel import (
    FOLLOW_SECONDS,
    SentinelShard,
    close_sentinel_client,
    sentinel_client,
)
from connectors.valkey.writer import CacheWriter
from stack import security, sentinel
from tests.e2e.sentinel import Sentinels, fields, retry, sentinels
from tests.e2e.support import wait_until

pytestmark = pytest.mark.e2e
__all__ = ["sentinels"]  # the fixture


def open_shard(s: Sentinels, **options: object) -> SentinelShard:
    return SentinelShard("s", s.urls, s.service, fence_ttl_ms=60_000, **options)  # type: ignore[arg-type]


def copied(s: Sentinels, key: str, version: bytes) -> None:
    replica = s.node(sentinel.replica())
    wait_until(lambda: replica.hget(key, "v") == version, 10, f"the replica to copy {key}")


def test_calls_reach_the_primary_the_sentinels_name(sentinels: Sentinels, uid: str) -> None:
    keys = [f"{uid}:{i}" for i in range(3)]
    with open_shard(sentinels) as shard:
        assert shard.apply(keys, ["v", "v", "d"], [3, 4, 0]) == ["absent"] * 3
        port = sentinel.primary()
        assert shard.primary() == ("127.0.0.1", port)
        assert fields(sentinels.node(port), keys[0]) == {b"v": b"3"}
        assert shard.identity() == sentinels.node(port).info("server")["run_id"]
        copied(sentinels, keys[1], b"4")
        assert shard.send(keys, ["v"] * 3, [5] * 3).result() == ["fenced"] * 3
        assert shard.truncate(f"{uid}:*") == 3
        assert shard.ping()


def test_a_clean_failover_moves_the_calls_to_the_new_primary(
        sentinels: Sentinels, uid: str) -> None:
    key = f"{uid}:post"
    with open_shard(sentinels) as shard:
        assert shard.apply([key], ["v"], [3]) == ["absent"]
        before = shard.identity()
        copied(sentinels, key, b"3")
        event = sentinel.failover()
        # The old primary still takes writes until the Sentinels convert it (~10 s):
        # only asking them again moves the shard.
        assert sentinel.role(event.old) == "master"
        time.sleep(FOLLOW_SECONDS)  # at most this long after the Sentinels switched
        results, took, failures = retry(lambda: shard.apply([key], ["v"], [4]))
        assert results == ["fenced"]
        assert shard.primary() == ("127.0.0.1", event.new)
        assert fields(sentinels.node(event.new), key) == {b"v": b"4"}
        assert fields(sentinels.node(event.old), key) == {b"v": b"3"}
        assert shard.identity() != before
    print(f"clean failover: Sentinels agreed in {event.seconds:.2f}s, then the call took "
          f"{took:.3f}s ({failures} failed attempts)")


def test_after_the_primary_is_killed_calls_succeed_on_the_promoted_replica(
        sentinels: Sentinels, uid: str) -> None:
    key = f"{uid}:post"
    with open_shard(sentinels) as shard:
        assert shard.apply([key], ["v"], [3]) == ["absent"]
        copied(sentinels, key, b"3")
        event = sentinel.kill_primary(wait=False)
        results, took, failures = retry(
            lambda: shard.send([key], ["v"], [4]).result())  # as the invalidator calls
        assert results == ["fenced"], "the promoted replica had the fence at 3"
        new = sentinel.primary()
        assert new != event.old and shard.primary() == ("127.0.0.1", new)
        assert failures >= 1
        assert took < sentinel.DOWN_AFTER_MS / 1000 + 10
        assert fields(sentinels.node(new), key) == {b"v": b"4"}
        # The library is reloaded on the new primary when it is missing there.
        sentinels.node(new).function_delete(LIBRARY_NAME)
        assert shard.apply([key], ["d"], [0]) == ["absent"]  # a fence is not data
        assert sentinels.node(new).function_list(library=LIBRARY_NAME)
    print(f"killed primary: calls succeeded {took:.2f}s after the kill, {failures} failed "
          "attempts")


def test_a_held_back_replica_is_promoted_without_writes_the_primary_acknowledged(
        sentinels: Sentinels, uid: str) -> None:
    kept, lost = f"{uid}:kept", f"{uid}:lost"
    with open_shard(sentinels) as shard, open_shard(
            sentinels, wait=WaitFor(1, timeout_ms=200)) as waiting:
        assert shard.apply([kept], ["v"], [1]) == ["absent"]
        copied(sentinels, kept, b"1")
        held = sentinel.hold_back_replica()
        assert shard.apply([lost], ["v"], [2]) == ["absent"]  # acknowledged by the primary
        assert sentinels.primary().hget(lost, "v") == b"2"
        with pytest.raises(ValkeyUnavailable, match="0 of 1 replicas"):
            waiting.apply([f"{uid}:waited"], ["v"], [1])  # WAIT 1 sees no replica have it
        event = sentinel.kill_primary()
        assert event.new == held
        promoted = sentinels.node(event.new)
        assert promoted.hget(kept, "v") == b"1"
        assert not promoted.exists(lost), "the promoted replica has the held-back write"
        results, _, _ = retry(lambda: shard.apply([lost], ["v"], [2]))
        assert results == ["absent"]  # the fence was lost with the failover


def test_the_writer_follows_a_failover(sentinels: Sentinels, uid: str) -> None:
    key = f"{uid}:post"
    client = sentinel_client(sentinels.urls, sentinels.service)
    writer = CacheWriter(client, name="s")
    try:
        assert writer.set_if_newer(key, 3, {"title": "old"}, ttl_seconds=60)
        copied(sentinels, key, b"3")
        event = sentinel.failover()
        time.sleep(FOLLOW_SECONDS)
        written, _, _ = retry(lambda: writer.set_if_newer(key, 4, {"title": "new"}, 60))
        assert written
        assert writer.get(key) == {"title": "new"}
        assert sentinels.node(event.new).hget(key, "v") == b"4"
    finally:
        close_sentinel_client(client)


def test_credentials_the_sentinels_from_their_urls_the_primary_from_the_settings(
        sentinels: Sentinels, uid: str) -> None:
    key = f"post:{uid}"  # a key the stack's reconciler ACL user may write
    password = security.secret(f"valkey-{security.VALKEY_USER}")
    with SentinelShard("s", sentinels.with_credentials(), sentinels.service,
                       username=security.VALKEY_USER, password=password) as shard:
        assert shard.apply([key], ["v"], [3]) == ["absent"]
        on_primary = {c["user"] for c in sentinels.primary().client_list()}
        on_sentinels = {c["user"] for port in sentinel.SENTINEL_PORTS
                        for c in sentinels.node(port).client_list()}
        assert security.VALKEY_USER in on_primary
        assert sentinel.SENTINEL_USER in on_sentinels
    wrong_sentinel = SentinelShard("s", sentinels.with_credentials(password="wrong"),
                                   sentinels.service, username=security.VALKEY_USER,
                                   password=password)
    with wrong_sentinel, pytest.raises(ValkeyRejected, match=r"refused us \(invalid username"):
        wrong_sentinel.apply([key], ["v"], [4])
    wrong_primary = SentinelShard("s", sentinels.with_credentials(), sentinels.service,
                                  username=security.VALKEY_USER, password="wrong")
    with wrong_primary, pytest.raises(ValkeyRejected, match="failed authentication"):
        wrong_primary.apply([key], ["v"], [4])
    unknown = SentinelShard("s", sentinels.urls, "no-such-service")
    with unknown, pytest.raises(ValkeyRejected, match="does not monitor 'no-such-service'"):
        unknown.apply([key], ["v"], [4])
