"""Shard.truncate: SCAN MATCH + UNLINK by pattern, rate-limited (Debezium truncate)."""

from __future__ import annotations

import time

import pytest
import valkey

from connectors.valkey.shard import Shard


def fill(client: valkey.Valkey, keys: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hset(key, mapping={"v": "1", "d": "x"})
    pipe.execute()


def test_removes_only_matching_keys(shard: Shard, client: valkey.Valkey, uid: str) -> None:
    posts = [f"{uid}:post:{i}" for i in range(2500)]
    others = [f"{uid}:comment:{i}" for i in range(50)] + [f"{uid}:postx", f"{uid}:post"]
    fill(client, posts + others)
    client.set(f"{uid}:post:legacy", "string value")  # any type goes
    assert shard.truncate(f"{uid}:post:*", count=300) == 2501
    assert client.keys(f"{uid}:post:*") == []
    assert sorted(k.decode() for k in client.keys(f"{uid}:*")) == sorted(others)
    assert shard.truncate(f"{uid}:post:*") == 0  # idempotent


def test_rate_limit(shard: Shard, client: valkey.Valkey, uid: str) -> None:
    fill(client, [f"{uid}:post:{i}" for i in range(400)])
    started = time.monotonic()
    assert shard.truncate(f"{uid}:post:*", count=100, max_keys_per_second=1000) == 400
    assert time.monotonic() - started >= 0.35  # 400 keys at 1000/s: at least ~0.4 s


@pytest.mark.parametrize(("count", "rate"), [(0, None), (10, 0.0), (10, -1.0)])
def test_bad_arguments(shard: Shard, count: int, rate: float | None) -> None:
    with pytest.raises(ValueError):
        shard.truncate("x:*", count=count, max_keys_per_second=rate)
