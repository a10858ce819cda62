"""cr2_apply against a real server: every row of the SPEC section 2 table for each op,
with the TTL each leaves (the fence lifetime)."""

from __future__ import annotations

import pytest
import valkey

from connectors.errors import ValkeyRejected
from connectors.valkey.commands import APPLY_CHUNK
from connectors.valkey.protocols import MAX_VERSION
from connectors.valkey.shard import Shard
from tests.unit.connectors.valkey.conftest import FENCE_TTL_MS
from tests.unit.connectors.valkey.helpers import entry

MAX = str(MAX_VERSION).encode()


def data(client: valkey.Valkey, key: str, version: int | str, ttl_ms: int = 0) -> None:
    client.hset(key, mapping={"v": str(version), "d": b"payload"})
    if ttl_ms:
        client.pexpire(key, ttl_ms)


def fence(client: valkey.Valkey, key: str, version: int | str,
          ttl_ms: int = FENCE_TTL_MS) -> None:
    client.hset(key, "v", str(version))
    client.pexpire(key, ttl_ms)


def assert_fence(client: valkey.Valkey, key: str, version: int | bytes) -> None:
    expected = version if isinstance(version, bytes) else str(version).encode()
    assert entry(client, key) == ("hash", {b"v": expected})
    assert FENCE_TTL_MS - 5_000 < client.pttl(key) <= FENCE_TTL_MS


# (arrange, op, version) -> (result, expected entry) for v and s
@pytest.mark.parametrize("op", ["v", "s"])
def test_absent(shard: Shard, client: valkey.Valkey, uid: str, op: str) -> None:
    key = f"{uid}:post:1"
    assert shard.apply([key], [op], [7]) == ["absent"]
    if op == "v":
        assert_fence(client, key, 7)
    else:
        assert entry(client, key) == ("none", None)  # a snapshot read never fences


@pytest.mark.parametrize("op", ["v", "s"])
@pytest.mark.parametrize("stored", [7, 8])
@pytest.mark.parametrize(("writer_ttl", "ttl_range"), [
    (300_000, (290_000, 300_000)),  # longer than fence_ttl: untouched
    (1_000, (FENCE_TTL_MS - 5_000, FENCE_TTL_MS)),  # shorter: raised to fence_ttl
    (0, (-1, -1)),  # none: none (data without TTL refuses older writes while it lives)
])
def test_data_at_least_as_new_is_fresh(shard: Shard, client: valkey.Valkey, uid: str,
                                       op: str, stored: int, writer_ttl: int,
                                       ttl_range: tuple[int, int]) -> None:
    key = f"{uid}:post:1"
    data(client, key, stored, ttl_ms=writer_ttl)
    assert shard.apply([key], [op], [7]) == ["fresh"]
    assert entry(client, key) == ("hash", {b"v": str(stored).encode(), b"d": b"payload"})
    low, high = ttl_range
    assert low <= client.pttl(key) <= high


@pytest.mark.parametrize("op", ["v", "s"])
@pytest.mark.parametrize("writer_ttl", [0, 300_000])
def test_older_data_is_replaced_by_a_fence(shard: Shard, client: valkey.Valkey, uid: str,
                                           op: str, writer_ttl: int) -> None:
    key = f"{uid}:post:1"
    data(client, key, 6, ttl_ms=writer_ttl)
    client.hset(key, "extra", "x")
    assert shard.apply([key], [op], [7]) == ["repaired"]
    assert_fence(client, key, 7)  # no d, no extra field, the fence TTL not the writer's


# A fence a change meets lives at least fence_ttl more, and never less than it had.
FENCE_TTLS = pytest.mark.parametrize(("fence_ttl", "ttl_range"), [
    (1_000, (FENCE_TTL_MS - 5_000, FENCE_TTL_MS)),  # aged: back to fence_ttl
    (300_000, (290_000, 300_000)),  # longer: not shortened
    (0, (FENCE_TTL_MS - 5_000, FENCE_TTL_MS)),  # none (written behind our back): fence_ttl
])


@pytest.mark.parametrize("op", ["v", "s"])
@pytest.mark.parametrize("stored", [7, 9])
@FENCE_TTLS
def test_fence_at_least_as_high_is_kept_and_held(shard: Shard, client: valkey.Valkey,
                                                 uid: str, op: str, stored: int,
                                                 fence_ttl: int,
                                                 ttl_range: tuple[int, int]) -> None:
    key = f"{uid}:post:1"
    client.hset(key, "v", str(stored))
    if fence_ttl:
        client.pexpire(key, fence_ttl)
    assert shard.apply([key], [op], [7]) == ["fenced"]
    assert entry(client, key) == ("hash", {b"v": str(stored).encode()})
    low, high = ttl_range
    assert low < client.pttl(key) <= high


@pytest.mark.parametrize("op", ["v", "s"])
@FENCE_TTLS
def test_lower_fence_is_raised_and_held(shard: Shard, client: valkey.Valkey, uid: str,
                                        op: str, fence_ttl: int,
                                        ttl_range: tuple[int, int]) -> None:
    key = f"{uid}:post:1"
    client.hset(key, "v", "5")
    if fence_ttl:
        client.pexpire(key, fence_ttl)
    assert shard.apply([key], [op], [7]) == ["fenced"]
    assert entry(client, key) == ("hash", {b"v": b"7"})
    low, high = ttl_range
    assert low < client.pttl(key) <= high


@pytest.mark.parametrize(("arrange", "result"), [
    ("none", "absent"), ("data", "repaired"), ("fence", "absent"), ("string", "repaired"),
    ("max-data", "repaired"), ("aged-fence", "absent"), ("aged-delete-fence", "absent"),
])
def test_delete(shard: Shard, client: valkey.Valkey, uid: str, arrange: str,
                result: str) -> None:
    key = f"{uid}:post:1"
    if arrange == "data":
        data(client, key, 6)
    elif arrange == "max-data":
        data(client, key, MAX_VERSION)
    elif arrange == "fence":
        fence(client, key, 3)
    elif arrange == "aged-fence":
        fence(client, key, 3, ttl_ms=1_000)
    elif arrange == "aged-delete-fence":  # the same delete again, most of fence_ttl later
        fence(client, key, MAX_VERSION, ttl_ms=1_000)
    elif arrange == "string":
        client.set(key, "legacy")
    assert shard.apply([key], ["d"], [0]) == [result]
    assert_fence(client, key, MAX)


def test_delete_keeps_a_longer_fence_ttl(shard: Shard, client: valkey.Valkey,
                                         uid: str) -> None:
    key = f"{uid}:post:1"
    fence(client, key, 3, ttl_ms=300_000)
    assert shard.apply([key], ["d"], [0]) == ["absent"]
    assert entry(client, key) == ("hash", {b"v": MAX})
    assert 290_000 < client.pttl(key) <= 300_000


@pytest.mark.parametrize(("arrange", "result"), [
    ("none", "absent"), ("data", "repaired"), ("fence", "repaired"), ("list", "repaired"),
])
def test_unversioned_is_a_plain_delete(shard: Shard, client: valkey.Valkey, uid: str,
                                       arrange: str, result: str) -> None:
    key = f"{uid}:feed:1"
    if arrange == "data":
        data(client, key, 6)
    elif arrange == "fence":
        fence(client, key, 3)
    elif arrange == "list":
        client.rpush(key, "a", "b")
    assert shard.apply([key], ["u"], [0]) == [result]
    assert entry(client, key) == ("none", None)  # and no fence


@pytest.mark.parametrize("op", ["v", "s"])
@pytest.mark.parametrize("arrange", [
    "string", "list", "set", "hash-without-v", "hash-garbage-v", "hash-negative-v",
    "hash-float-v", "hash-too-big-v", "hash-no-fields-we-know",
])
def test_anything_else_is_stale_data(shard: Shard, client: valkey.Valkey, uid: str,
                                     op: str, arrange: str) -> None:
    key = f"{uid}:post:1"
    if arrange == "string":
        client.set(key, "legacy", px=500_000)
    elif arrange == "list":
        client.rpush(key, "a")
    elif arrange == "set":
        client.sadd(key, "a")
    elif arrange == "hash-without-v":
        client.hset(key, "d", "x")
    elif arrange == "hash-garbage-v":
        client.hset(key, mapping={"v": "abc", "d": "x"})
    elif arrange == "hash-negative-v":
        client.hset(key, mapping={"v": "-1", "d": "x"})
    elif arrange == "hash-float-v":
        client.hset(key, mapping={"v": "9.0", "d": "x"})
    elif arrange == "hash-too-big-v":
        client.hset(key, mapping={"v": "9223372036854775808", "d": "x"})
    else:
        client.hset(key, "other", "x")
    assert shard.apply([key], [op], [1]) == ["repaired"]
    assert_fence(client, key, 1)


def test_one_odd_key_does_not_abort_the_rest(shard: Shard, client: valkey.Valkey,
                                             uid: str) -> None:
    keys = [f"{uid}:k{i}" for i in range(4)]
    data(client, keys[0], 1)
    client.set(keys[1], "legacy")
    data(client, keys[2], 9)
    assert shard.apply(keys, ["v", "v", "v", "v"], [5, 5, 5, 5]) == [
        "repaired", "repaired", "fresh", "absent"]


def test_ops_on_one_key_apply_in_order(shard: Shard, client: valkey.Valkey, uid: str) -> None:
    key = f"{uid}:post:1"
    data(client, key, 1)
    result = shard.apply([key] * 5, ["s", "v", "v", "d", "v"], [1, 3, 2, 0, 9])
    assert result == ["fresh", "repaired", "fenced", "absent", "fenced"]
    assert_fence(client, key, MAX)


def test_huge_versions_compare_exactly(shard: Shard, client: valkey.Valkey, uid: str) -> None:
    # 2^53 + 1 is not a double: compared as numbers it would equal 2^53.
    key = f"{uid}:post:1"
    data(client, key, 2**53)
    assert shard.apply([key], ["v"], [2**53 + 1]) == ["repaired"]
    assert_fence(client, key, 2**53 + 1)
    assert shard.apply([key], ["v"], [2**53]) == ["fenced"]
    assert_fence(client, key, 2**53 + 1)
    data_key = f"{uid}:post:2"
    data(client, data_key, 2**53 + 1)
    assert shard.apply([data_key], ["v"], [2**53]) == ["fresh"]
    assert shard.apply([data_key], ["v"], [MAX_VERSION]) == ["repaired"]
    assert_fence(client, data_key, MAX)
    assert shard.apply([data_key], ["v"], [MAX_VERSION - 1]) == ["fenced"]
    # same length, differing only in the last digit; then leading zeros
    same = f"{uid}:post:3"
    data(client, same, 9223372036854775806)
    assert shard.apply([same], ["v"], [9223372036854775807]) == ["repaired"]
    padded = f"{uid}:post:4"
    data(client, padded, "0000000000000000000000042")
    assert shard.apply([padded], ["v"], [42]) == ["fresh"]
    assert shard.apply([padded], ["v"], [43]) == ["repaired"]
    assert_fence(client, padded, 43)


def test_many_keys_one_call_in_input_order(shard: Shard, client: valkey.Valkey,
                                           uid: str) -> None:
    n = APPLY_CHUNK * 2 + 37
    keys = [f"{uid}:post:{i}" for i in range(n)]
    for i in range(0, n, 3):
        data(client, keys[i], 10)
    versions = [5 if i % 2 else 20 for i in range(n)]
    results = shard.apply(keys, ["v"] * n, versions)
    expected = [("fresh" if versions[i] <= 10 else "repaired") if i % 3 == 0 else "absent"
                for i in range(n)]
    assert results == expected


def test_empty_batch(shard: Shard) -> None:
    assert shard.apply([], [], []) == []


@pytest.mark.parametrize(("ops", "versions", "message"), [
    (["v", "x"], [1, 1], "op #1"),
    (["v", "v"], [1, -1], "version #1"),
    (["v", "v"], [1, 2**63], "version #1"),
    (["v"], [1, 2], "as many ops and versions"),
])
def test_bad_arguments_are_refused_before_sending(shard: Shard, uid: str, ops: list[str],
                                                  versions: list[int], message: str) -> None:
    keys = [f"{uid}:a", f"{uid}:b"]
    with pytest.raises(ValueError, match=message):
        shard.apply(keys, ops, versions)


@pytest.mark.parametrize(("args", "message"), [
    (["60000", "x", "1"], 'op for key #1 .* must be one of v, s, d, u, got "x"'),
    (["60000", "v", "1.5"], 'version for key #1 .* got "1.5"'),
    (["60000", "v", "9223372036854775808"], "version for key #1"),
    (["60000", "v"], "expected 3 arguments"),
    (["0", "v", "1"], 'fence_ttl_ms must be a positive integer, got "0"'),
    (["-5", "v", "1"], "fence_ttl_ms"),
])
def test_the_function_validates_its_arguments(shard: Shard, client: valkey.Valkey, uid: str,
                                              args: list[str], message: str) -> None:
    key = f"{uid}:a"
    with pytest.raises(valkey.ResponseError, match=message):
        client.fcall("cr2_apply", 1, key, *args)
    assert entry(client, key) == ("none", None)  # nothing applied


def test_script_errors_surface_as_rejected(shard: Shard, client: valkey.Valkey,
                                          uid: str) -> None:
    # A library of the same name whose apply always fails stands in for a version skew.
    client.function_load("#!lua name=cache_reconciler_2\n"
                         "redis.register_function('cr2_apply', function() "
                         "return redis.error_reply('ERR boom') end)\n"
                         "redis.register_function('cr2_set_if_newer', function() "
                         "return 0 end)\n", replace=True)
    try:
        with pytest.raises(ValkeyRejected, match="valkey shard 'valkey-b': FCALL cr2_apply "
                                                 "rejected: boom"):
            shard.apply([f"{uid}:a"], ["v"], [1])
    finally:
        shard.ensure_functions()
