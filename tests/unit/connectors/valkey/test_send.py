"""`Shard.send()`: `apply()` split into sending and reading the answers, on the real
server — the same results, and every failure between the halves ends as `apply()`
would end it (the whole call sent again, or its error)."""

from __future__ import annotations

import socket

import pytest
import valkey

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.commands import APPLY_CHUNK
from connectors.valkey.shard import Shard
from tests.unit.connectors.valkey.conftest import FENCE_TTL_MS
from tests.unit.connectors.valkey.helpers import wait_until
from tests.unit.connectors.valkey.test_apply import data
from tests.unit.connectors.valkey.test_reload_and_errors import library_loaded


def _lose_answers_of(pending: object, answers: bytes) -> None:
    """Take a pending call's `answers` off its connection, then end the connection
    before the client reads them: what the client then reads is the end of the stream.

    Waiting for the answers first makes sure the server has run the call: shutting the
    reading side alone raced it (answers already arrived were still read, and a call
    cut before the server read it was never run)."""
    sock: socket.socket = pending._connection._sock  # type: ignore[attr-defined]
    sock.settimeout(10)
    taken = b""
    while len(taken) < len(answers):
        chunk = sock.recv(len(answers) - len(taken))
        assert chunk, f"the connection ended after {taken!r}, before the answers"
        taken += chunk
    assert taken == answers
    sock.shutdown(socket.SHUT_RD)


def test_answers_are_read_later_and_equal_apply(shard: Shard, client: valkey.Valkey,
                                                 uid: str) -> None:
    n = APPLY_CHUNK * 2 + 5  # several FCALLs in one send
    keys = [f"{uid}:post:{i}" for i in range(n)]
    for i in range(0, n, 4):
        data(client, keys[i], 10)
    versions = [5 if i % 2 else 20 for i in range(n)]
    pending = shard.send(keys, ["v"] * n, versions)
    data(client, f"{uid}:other", 1)  # the shard serves others meanwhile
    assert pending.result() == [
        ("fresh" if versions[i] <= 10 else "repaired") if i % 4 == 0 else "absent"
        for i in range(n)]
    assert client.hgetall(keys[1]) == {b"v": b"5"}
    assert 0 < client.pttl(keys[1]) <= FENCE_TTL_MS


def test_two_shards_in_flight_at_once(shard: Shard, client: valkey.Valkey, url: str,
                                     uid: str) -> None:
    with Shard("second", url, fence_ttl_ms=FENCE_TTL_MS) as second:
        first_pending = shard.send([f"{uid}:a"], ["v"], [3])
        # Two connections: which call the server runs first is its choice, so the
        # second is sent once the first has run (still unread: both in flight).
        wait_until(lambda: client.hgetall(f"{uid}:a") == {b"v": b"3"}, "the first call run")
        second_pending = second.send([f"{uid}:b", f"{uid}:a"], ["v", "v"], [1, 2])
        assert first_pending.result() == ["absent"]
        assert second_pending.result() == ["absent", "fenced"]


def test_bad_arguments_are_refused_at_send(shard: Shard, uid: str) -> None:
    with pytest.raises(ValueError, match="op #0"):
        shard.send([f"{uid}:a"], ["x"], [1])
    with pytest.raises(ValueError, match="version #0"):
        shard.send([f"{uid}:a"], ["v"], [-1])
    assert shard.send([], [], []).result() == []


def test_a_library_flushed_before_the_answers_is_reloaded_and_the_call_resent(
        shard: Shard, client: valkey.Valkey, uid: str) -> None:
    client.function_flush("SYNC")
    pending = shard.send([f"{uid}:a"], ["v"], [1])  # answered "Function not found"
    assert pending.result() == ["absent"]
    assert library_loaded(client)
    assert client.hgetall(f"{uid}:a") == {b"v": b"1"}


def test_a_connection_killed_before_the_answers_are_read_sends_the_call_again(
        shard: Shard, client: valkey.Valkey, uid: str) -> None:
    data(client, f"{uid}:a", 1)
    pending = shard.send([f"{uid}:a"], ["v"], [2])  # repairs it, answer unread
    _lose_answers_of(pending, b"*1\r\n$8\r\nrepaired\r\n")
    # The answer was lost with the connection: the call is sent again, and answers
    # what it finds then (its own fence, at the same version).
    assert pending.result() == ["fenced"]
    assert client.hgetall(f"{uid}:a") == {b"v": b"2"}
    assert shard.apply([f"{uid}:a"], ["v"], [3]) == ["fenced"], "the pool still works"


def test_a_down_shard_fails_at_result_as_apply_does(unused_port: int) -> None:
    with Shard("down", f"valkey://127.0.0.1:{unused_port}/0", socket_timeout=1) as down:
        pending = down.send(["k"], ["v"], [1])  # nothing raised while sending
        with pytest.raises(ValkeyUnavailable, match="valkey shard 'down': FCALL cr2_apply"):
            pending.result()


def test_a_refusal_comes_out_of_result(shard: Shard, url: str, client: valkey.Valkey,
                                      uid: str) -> None:
    user = f"nofcall-{uid}".replace(":", "-")
    client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@all", "-fcall"])
    try:
        with Shard("limited", url, username=user, password="pw") as limited:
            pending = limited.send([f"{uid}:a"], ["v"], [1])
            with pytest.raises(ValkeyRejected, match="fcall"):
                pending.result()
    finally:
        client.acl_deluser(user)


def test_discard_drops_the_answers_and_the_pool_stays_usable(
        shard: Shard, client: valkey.Valkey, uid: str) -> None:
    pending = shard.send([f"{uid}:a", f"{uid}:b"], ["v", "v"], [1, 1])
    pending.discard()
    # A connection with unread answers must never serve another call.
    assert shard.apply([f"{uid}:c"], ["v"], [1]) == ["absent"]
    # The discarded call still runs (sent before its connection closed), but on a
    # connection of its own: when, relative to this one's calls, is the server's choice.
    wait_until(lambda: client.hgetall(f"{uid}:b") == {b"v": b"1"}, "the discarded call run")
    assert shard.apply([f"{uid}:a"], ["v"], [1]) == ["fenced"]

