"""A cluster shard's settings, without a server: every node it discovers is reached
with the seeds' credentials and TLS files; seeds that cannot make one cluster are
refused at once; one call's FCALLs group keys by slot and keep a key's ops together."""

from __future__ import annotations

import pytest
import valkey

from connectors.valkey.cluster import ClusterShard
from connectors.valkey.commands import APPLY_CHUNK
from connectors.valkey.topology import slot_of


def test_discovered_nodes_get_the_seeds_tls_and_credentials() -> None:
    shard = ClusterShard("c", ["valkeys://u:p@10.0.0.1:7000", "valkeys://10.0.0.2:7000"],
                         username="reconciler", password="secret",
                         tls_ca_file="/etc/ca.pem", socket_timeout=2.5)
    pool = shard.topology.pool("10.0.9.9:7005")  # a node only the slot map names
    assert pool.connection_class is valkey.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"]) == ("10.0.9.9", 7005)
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["ssl_check_hostname"] is True
    assert (kwargs["username"], kwargs["password"]) == ("reconciler", "secret")
    assert kwargs["socket_timeout"] == 2.5
    assert "secret" not in repr(shard) and "u:p" not in shard.url
    assert shard.url == "cluster valkeys://10.0.0.1:7000, valkeys://10.0.0.2:7000"


@pytest.mark.parametrize(("urls", "message"), [
    ([], "no seed URL"),
    (["valkey://h:1", "valkeys://h:2"], "mix TLS and plain"),
    (["valkey://h:1/2"], "only database 0"),
    (["http://h:1"], "scheme must be one of"),
])
def test_seeds_that_cannot_make_one_cluster(urls: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterShard("c", urls)


def test_calls_group_by_slot_and_keep_a_keys_ops_together() -> None:
    shard = ClusterShard("c", ["valkey://127.0.0.1:1"])
    keys = ["{a}:1", "{b}:1", "{a}:2", "{a}:1", "{b}:1"]
    calls = shard.calls(keys, ["v", "d", "s", "u", "v"], [1, 0, 3, 0, 5])
    assert [(call.slot, call.tag) for call in calls] == [
        (slot_of("{a}"), [0, 3, 2]), (slot_of("{b}"), [1, 4])]
    assert calls[0].args[2:] == (3, "{a}:1", "{a}:1", "{a}:2", 60_000, "v", 1, "u", 0, "s", 3)
    hot = ["{h}:hot"] * (APPLY_CHUNK + 1) + ["{h}:1", "{h}:2"]
    sizes = [len(call.tag) for call in shard.calls(hot, ["v"] * len(hot), [1] * len(hot))]
    assert sizes == [APPLY_CHUNK + 1, 2]  # the hot key alone, past the chunk size
    with pytest.raises(ValueError, match="op #0"):
        shard.send(["k"], ["x"], [1])
