"""WAIT / WAITAOF after a call (shards.<name>.wait): acknowledged only once the replicas
(and AOF) have it; fewer is unavailable (the invalidator retries), and a server without
an append-only file refuses WAITAOF with the fix. valkey-b runs without replicas and
without AOF, so WAIT 0 passes, WAIT 1 times out, WAITAOF is refused."""

from __future__ import annotations

import pytest
import valkey

from connectors.errors import ValkeyRejected, ValkeyUnavailable
from connectors.valkey.commands import WaitFor
from connectors.valkey.shard import Shard
from tests.unit.connectors.valkey.conftest import FENCE_TTL_MS, SHARD


def shard_waiting(url: str, wait: WaitFor) -> Shard:
    return Shard(SHARD, url, fence_ttl_ms=FENCE_TTL_MS, wait=wait)


def test_wait_for_no_replica_acknowledges_and_answers_per_key(
        url: str, client: valkey.Valkey, uid: str) -> None:
    with shard_waiting(url, WaitFor(0, timeout_ms=100)) as shard:
        keys = [f"{uid}:{i}" for i in range(600)]  # two FCALL chunks, then the WAIT
        assert shard.apply(keys, ["v"] * 600, [3] * 600) == ["absent"] * 600
        assert shard.send(keys, ["v"] * 600, [4] * 600).result() == ["fenced"] * 600
    assert client.hget(keys[-1], "v") == b"4"


def test_too_few_replicas_is_unavailable_after_the_writes_were_applied(
        url: str, client: valkey.Valkey, uid: str) -> None:
    key = f"{uid}:post:1"
    with shard_waiting(url, WaitFor(1, timeout_ms=50)) as shard:
        with pytest.raises(ValkeyUnavailable, match=r"WAIT 1 50: .* 0 of 1 replicas acknowledged"):
            shard.apply([key], ["v"], [3])
        with pytest.raises(ValkeyUnavailable, match="0 of 1 replicas"):
            shard.send([key], ["v"], [4]).result()
    # Applied on the primary (a retry is idempotent): only the acknowledgement is missing.
    assert client.hget(key, "v") == b"4"


def test_waitaof_without_appendonly_is_refused_with_the_fix(url: str, uid: str) -> None:
    with shard_waiting(url, WaitFor(0, aof=True, timeout_ms=50)) as shard, \
            pytest.raises(ValkeyRejected, match="turn on `appendonly yes`"):
        shard.apply([f"{uid}:k"], ["v"], [1])


def test_identity_is_the_servers_run_id(url: str, client: valkey.Valkey) -> None:
    with Shard(SHARD, url) as shard:
        assert shard.identity() == client.info("server")["run_id"]
