"""The fence lifetime (SPEC section 2): once a change at version V has been applied, a
write below V is refused for at least fence_ttl from that moment — also when the change
met a fence (a duplicate, a delete fence), and when a writer replaced the fence with
data of a short TTL; and once fence_ttl has passed since the last change, the current
version is cacheable again. Time is simulated with `helpers.age` (TTLs lowered at once)
or waited for until a key is gone, never slept against an expiry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import valkey

from connectors.valkey import functions
from connectors.valkey.protocols import MAX_VERSION
from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter
from tests.unit.connectors.valkey.conftest import FENCE_TTL_MS
from tests.unit.connectors.valkey.helpers import age, entry, wait_until

FULL = (FENCE_TTL_MS - 5_000, FENCE_TTL_MS)  # a TTL just (re)set to fence_ttl
MAX = str(MAX_VERSION).encode()


def assert_ttl(client: valkey.Valkey, key: str, low: int, high: int) -> None:
    ttl = client.pttl(key)
    assert low < ttl <= high, f"{key}: PTTL {ttl}, expected in ({low}, {high}]"


def test_a_change_meeting_a_delete_fence_holds_it_for_fence_ttl(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    """Issue 12's reproduction: the row deleted, re-inserted at v1, updated to v2 late
    in the delete fence's life; a reader that loaded v1 writes it after the delete
    fence would have expired: refused, for fence_ttl after v2's change."""
    key = f"{uid}:post:7"
    assert writer.set_if_newer(key, 5, {"title": "v5"}, 300)
    assert shard.apply([key], ["d"], [0]) == ["repaired"]
    assert shard.apply([key], ["v"], [1]) == ["fenced"]  # re-inserted
    age(client, key, FENCE_TTL_MS - 1_000)  # v2's change comes 1 s before the end
    assert shard.apply([key], ["v"], [2]) == ["fenced"]
    assert entry(client, key) == ("hash", {b"v": MAX})
    assert_ttl(client, key, *FULL)
    age(client, key, 2_000)  # past the delete fence's own lifetime
    assert writer.set_if_newer(key, 1, {"title": "v1"}, 300) is False
    assert writer.get(key) is None
    assert writer.set_if_newer(key, 2, {"title": "v2"}, 300) is False  # MAX: still a miss


@pytest.mark.parametrize("op", ["v", "s"])
@pytest.mark.parametrize("version", [5, 3])  # the duplicate, or an older replay
def test_a_change_meeting_an_aged_fence_gets_it_back_to_fence_ttl(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str, op: str,
        version: int) -> None:
    key = f"{uid}:post:1"
    assert shard.apply([key], ["v"], [5]) == ["absent"]
    age(client, key, FENCE_TTL_MS - 500)
    assert shard.apply([key], [op], [version]) == ["fenced"]
    assert entry(client, key) == ("hash", {b"v": b"5"})
    assert_ttl(client, key, *FULL)
    age(client, key, 1_000)
    assert writer.set_if_newer(key, 4, {"title": "v4"}, 300) is False


def test_fresh_data_with_a_short_ttl_holds_for_fence_ttl(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    """The data at V is what refuses older writes once the change is applied: expiring
    1 s later, it would let a slow reader of V-1 in."""
    key = f"{uid}:post:1"
    assert writer.set_if_newer(key, 5, {"title": "v5"}, 1)
    assert shard.apply([key], ["v"], [5]) == ["fresh"]
    assert_ttl(client, key, *FULL)
    age(client, key, 2_000)
    assert writer.set_if_newer(key, 4, {"title": "v4"}, 300) is False
    assert writer.get_with_version(key) == (5, {"title": "v5"})


@pytest.mark.parametrize(("asked", "expected"), [
    (1, FULL),  # shorter than the fence's: the fence's
    (300, (290_000, 300_000)),  # longer: the writer's
])
def test_data_written_over_a_fence_keeps_at_least_its_ttl(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str, asked: int,
        expected: tuple[int, int]) -> None:
    """Fence at V (fence_ttl), a reader writes data V with a 1 s TTL: it must not end
    the fence's protection against a slower reader of V-1 after 1 s."""
    key = f"{uid}:post:1"
    assert shard.apply([key], ["v"], [5]) == ["absent"]
    assert writer.set_if_newer(key, 5, {"title": "v5"}, asked)
    assert_ttl(client, key, *expected)
    age(client, key, 2_000)
    assert writer.set_if_newer(key, 4, {"title": "v4"}, 300) is False
    assert writer.get_with_version(key) == (5, {"title": "v5"})


def test_set_if_newer_carries_a_ttl_over_only_when_asked_for_one(
        writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    older = f"{uid}:post:1"  # older data with a long TTL, replaced asking for a short one
    client.hset(older, mapping={"v": "3", "d": b"\x01\xa1x"})
    client.pexpire(older, 300_000)
    assert writer.set_if_newer(older, 4, "v4", 10)
    assert_ttl(client, older, 290_000, 300_000)
    forever = f"{uid}:post:2"  # no TTL asked: none, whatever the replaced entry had
    client.hset(forever, "v", "3")
    client.pexpire(forever, 300_000)
    assert writer.set_if_newer(forever, 4, "v4", None)
    assert client.pttl(forever) == -1
    bare = f"{uid}:post:3"  # the replaced entry never expires: neither does the new one
    client.hset(bare, "v", "3")
    assert writer.set_if_newer(bare, 4, "v4", 10)
    assert client.pttl(bare) == -1


def test_data_written_over_data_without_a_ttl_keeps_refusing_for_fence_ttl(
        shard: Shard, writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    """Found by the property test: data cached without a TTL met by a change (fresh:
    it refuses older writes for as long as it lives), then replaced by a newer
    reader's data with a short TTL. Had that TTL applied, the entry would expire 20 s
    after the change and a reader of a version below the change write it back 30 s
    after it, well inside fence_ttl."""
    key = f"{uid}:post:1"
    assert shard.apply([key], ["v"], [2]) == ["absent"]
    assert writer.set_if_newer(key, 6, {"title": "v6"}, None)  # cached for good
    assert shard.apply([key], ["v"], [3]) == ["fresh"]  # the change at v3 meets it
    assert writer.set_if_newer(key, 8, {"title": "v8"}, 20)
    age(client, key, 30_000)
    assert shard.apply([key], ["v"], [1]) == ["fresh"]  # an older event replayed
    assert writer.set_if_newer(key, 2, {"title": "v2"}, 20) is False
    assert writer.get_with_version(key) == (8, {"title": "v8"})


def test_once_fence_ttl_has_passed_the_current_version_is_cacheable(
        url: str, writer: CacheWriter, client: valkey.Valkey, uid: str) -> None:
    """No over-blocking: changes hold a fence for fence_ttl after the last of them, never
    longer, so it does expire (waited for until the key is gone, with a short
    fence_ttl), and the row's current version can then be cached."""
    key = f"{uid}:post:1"
    with Shard("short", url, fence_ttl_ms=300) as short:
        assert short.apply([key], ["d"], [0]) == ["absent"]
        assert short.apply([key], ["v"], [1]) == ["fenced"]  # re-inserted
        assert short.apply([key], ["v"], [2]) == ["fenced"]
        assert short.apply([key], ["v"], [2]) == ["fenced"]  # a duplicate
        ttl = client.pttl(key)
        assert ttl == -2 or 0 < ttl <= 300, ttl  # -2: expired already
        wait_until(lambda: client.exists(key) == 0, "the fence expired")
    assert writer.set_if_newer(key, 2, {"title": "v2"}, 300)
    assert writer.get_with_version(key) == (2, {"title": "v2"})


def test_the_lua_library_names_are_the_python_constants() -> None:
    source = Path(functions.__file__).with_name("functions.lua").read_text()
    assert source == functions.LUA_SOURCE
    header = re.match(r"#!lua name=(\S+)\n", source)
    assert header is not None and header[1] == functions.LIBRARY_NAME
    registered = re.findall(r"register_function\{?\(?\s*(?:function_name = )?'([^']+)'",
                            source)
    assert sorted(registered) == sorted([functions.APPLY_FUNCTION,
                                         functions.SET_IF_NEWER_FUNCTION])
    assert f"protocol, version {functions.PROTOCOL_VERSION} " in source
    assert not re.search(rf"\bcr(?!{functions.PROTOCOL_VERSION}_)\d+_", source), \
        "a function name of another protocol version"
