"""`testing.FakeShard` and the real functions agree: the same random operation sequences
give the same results and the same end states (entries, and their TTLs within 5 s).

TTLs are set by the steps to values far apart (10 s, 20 s, the fence_ttl of 60 s, 120 s,
500 s, none), so that which one the rules keep shows, and none expires during an
example (a real key expiring a moment before the fake's would be a race)."""

from __future__ import annotations

import itertools
from typing import Any

import hypothesis.strategies as st
import pytest
import valkey
from hypothesis import HealthCheck, given, settings

from connectors.valkey.protocols import MAX_VERSION
from connectors.valkey.shard import Shard
from connectors.valkey.testing import FakeShard, glob_regex
from tests.unit.connectors.valkey.conftest import FENCE_TTL_MS
from tests.unit.connectors.valkey.helpers import entry

NAMES = ["post:1", "post:2", "post:10", "feed:1"]  # a small key space: lots of collisions
VERSIONS = st.one_of(
    st.integers(0, 6),
    st.sampled_from([2**53, 2**53 + 1, MAX_VERSION - 1, MAX_VERSION]))
FOREIGN: list[Any] = [  # what else a key may hold, written behind the protocol's back
    b"legacy string", {b"d": b"x"}, {b"v": b"abc", b"d": b"x"}, {b"v": b"-1"},
    {b"v": b"0007", b"d": b"x"}, {b"v": b"0007"}, {b"other": b"x"},
    {b"v": b"9223372036854775808", b"d": b"x"}, {b"v": b"3", b"d": b"x", b"extra": b"y"},
]

apply_step = st.tuples(st.just("apply"), st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from("vsdu"), VERSIONS), min_size=1,
    max_size=6))
set_step = st.tuples(st.just("set"), st.sampled_from(NAMES), VERSIONS,
                     st.sampled_from([0, 10_000, 500_000]))
put_step = st.tuples(st.just("put"), st.sampled_from(NAMES), st.sampled_from(FOREIGN))
# PEXPIRE or PERSIST (None) behind the protocol's back: an aged fence, a long-lived one,
# data whose TTL a writer chose, a fence without a TTL.
expire_step = st.tuples(st.just("expire"), st.sampled_from(NAMES),
                        st.sampled_from([20_000, 120_000, None]))
truncate_step = st.tuples(st.just("truncate"), st.sampled_from(["post:*", "post:?", "*1",
                                                                "post:[^1]*", "nothing"]))
steps = st.lists(st.one_of(apply_step, set_step, put_step, expire_step, truncate_step),
                 max_size=25)
prefixes = itertools.count()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_fake_matches_the_server(shard: Shard, client: valkey.Valkey, uid: str,
                                 steps: list[Any]) -> None:
    prefix = f"{uid}:{next(prefixes)}:"
    fake = FakeShard(fence_ttl_ms=FENCE_TTL_MS)
    for step in steps:
        if step[0] == "apply":
            keys = [name for name, _, _ in step[1]]
            ops = [op for _, op, _ in step[1]]
            versions = [version for _, _, version in step[1]]
            real = shard.apply([prefix + key for key in keys], ops, versions)
            assert real == fake.apply(keys, ops, versions), step
        elif step[0] == "set":
            _, key, version, ttl_ms = step
            real_set = client.fcall("cr2_set_if_newer", 1, prefix + key, version, b"p", ttl_ms)
            assert bool(real_set) == fake.set_if_newer(key, version, b"p", ttl_ms), step
        elif step[0] == "put":
            _, key, value = step
            client.delete(prefix + key)
            if isinstance(value, dict):
                client.hset(prefix + key, mapping=value)
            else:
                client.set(prefix + key, value)
            fake.put(key, value)
        elif step[0] == "expire":
            _, key, ttl_ms = step
            if ttl_ms is None:
                client.persist(prefix + key)
            else:
                client.pexpire(prefix + key, ttl_ms)
            fake.expire(key, ttl_ms)
        else:
            assert shard.truncate(prefix + step[1]) == fake.truncate(step[1]), step
    for key in NAMES:
        kind, value = entry(client, prefix + key)
        expected = fake.entry(key)
        if expected is None:
            assert kind == "none", key
        elif isinstance(expected, dict):
            assert (kind, value) == ("hash", expected), key
        else:
            assert (kind, value) == ("string", expected), key
        real_ttl, fake_ttl = client.pttl(prefix + key), fake.pttl(key)
        assert (real_ttl > 0) == (fake_ttl > 0) and abs(real_ttl - fake_ttl) < 5_000, (
            key, real_ttl, fake_ttl)


@pytest.mark.parametrize(("pattern", "matches", "misses"), [
    ("post:*", ["post:", "post:1", "post:1:x"], ["pos", "xpost:1"]),
    ("post:?", ["post:1"], ["post:", "post:12"]),
    ("p[a-c]t", ["pat", "pbt"], ["pdt"]),
    ("p[^a]t", ["pbt"], ["pat"]),
    ("a\\*b", ["a*b"], ["axb"]),
])
def test_glob(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = glob_regex(pattern)
    assert all(regex.fullmatch(m) for m in matches)
    assert not any(regex.fullmatch(m) for m in misses)


def test_fake_records_and_fails_on_demand() -> None:
    from connectors.errors import ValkeyUnavailable

    fake = FakeShard("a")
    fake.fail_next.append(ValkeyUnavailable("down", shard="a", command="FCALL"))
    with pytest.raises(ValkeyUnavailable):
        fake.apply(["k"], ["v"], [1])
    assert fake.apply(["k"], ["v"], [1]) == ["absent"]
    assert fake.applied == [("k", "v", 1, "absent")]
    assert fake.truncate("k*") == 1 and fake.truncated == ["k*"]


def test_fake_ttls_follow_the_fence_lifetime() -> None:
    """On the fake's own clock: what the real functions do to TTLs (test_apply and
    test_fence_lifetime), seen through time passing rather than PTTL alone."""
    now = [100.0]
    fake = FakeShard("a", fence_ttl_ms=1_000, clock=lambda: now[0])
    assert fake.apply(["k"], ["d"], [0]) == ["absent"]
    now[0] += 0.9
    assert fake.apply(["k"], ["v"], [2]) == ["fenced"]  # the delete fence, held
    assert fake.pttl("k") == 1_000
    now[0] += 0.5
    assert not fake.set_if_newer("k", 1, b"p", 300_000)
    now[0] += 0.5
    assert fake.entry("k") is None  # fence_ttl after the last change, no more
    assert fake.set_if_newer("k", 2, b"p", 100)
    assert fake.apply(["k"], ["v"], [2]) == ["fresh"]
    assert fake.pttl("k") == 1_000  # a short TTL raised to fence_ttl
    assert fake.apply(["f"], ["v"], [5]) == ["absent"]
    assert fake.set_if_newer("f", 5, b"p", 100)
    assert fake.pttl("f") == 1_000  # the fence's TTL carried over
    assert fake.set_if_newer("g", 1, b"p", 0) and fake.apply(["g"], ["v"], [1]) == ["fresh"]
    assert fake.pttl("g") == -1  # data without a TTL keeps none
    fake.put("h", {b"v": b"3"})  # a fence without a TTL
    assert fake.apply(["h"], ["v"], [3]) == ["fenced"] and fake.pttl("h") == 1_000


def test_fake_fences_expire() -> None:
    now = [100.0]
    fake = FakeShard("a", fence_ttl_ms=1_000, clock=lambda: now[0])
    assert fake.apply(["k"], ["d"], [0]) == ["absent"]
    assert fake.pttl("k") == 1_000
    now[0] += 1.0
    assert fake.entry("k") is None
    assert fake.set_if_newer("k", 1, b"p")
