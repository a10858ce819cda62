"""The fault suite's seams: the StopAt hooks and the deliberately broken library.

The no_ttl_refresh library must be exactly the protocol minus the fence lifetime (so
that the negative control it drives tests that rule and nothing else), loaded under
names of its own beside the real library, on a real Valkey."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import valkey

from connectors.valkey.functions import PROTOCOL
from connectors.valkey.shard import Shard
from connectors.valkey.writer import CacheWriter
from reconciler.pipeline import faults
from tests.conftest import Stack

FENCE_TTL_MS = 60_000


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch, stack: Stack) -> Iterator[Shard]:
    monkeypatch.setattr(faults, "BROKEN", "no_ttl_refresh")
    with Shard("valkey-b", stack.valkey["valkey-b"], fence_ttl_ms=FENCE_TTL_MS,
               library=faults.library()) as shard:
        shard.ensure_functions()
        yield shard


def test_the_real_library_unless_broken() -> None:
    assert faults.library() is PROTOCOL


def test_the_broken_library_never_extends_a_fence_and_loads_beside_the_real_one(
        broken: Shard, stack: Stack, uid: str) -> None:
    client = valkey.Valkey.from_url(stack.valkey["valkey-b"])
    real = Shard("valkey-b", stack.valkey["valkey-b"], fence_ttl_ms=FENCE_TTL_MS)
    try:
        names = {entry[b"library_name"] if isinstance(entry, dict) else
                 dict(zip(entry[::2], entry[1::2], strict=True))[b"library_name"]
                 for entry in client.function_list()}
        assert {b"cache_reconciler_2", b"cache_reconciler_2_broken"} <= names
        for shard, held in ((broken, False), (real, True)):
            key = f"{uid}:{held}:post:7"
            assert shard.apply([key], ["d"], [0]) == ["absent"]
            client.pexpire(key, 1_000)  # an aged delete fence
            assert shard.apply([key], ["v"], [2]) == ["fenced"]  # the row's next change
            assert (client.pttl(key) > 50_000) is held, (shard.library.name, client.pttl(key))
        writer = CacheWriter(client)  # the applications' writer: the real library
        assert writer.set_if_newer(f"{uid}:data", 1, {"v": 1}, 60)
    finally:
        real.close()
        for key in client.scan_iter(f"{uid}:*"):
            client.delete(key)
        client.close()


def test_a_library_source_the_broken_variant_no_longer_matches_stops_the_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults, "BROKEN", "no_ttl_refresh")
    monkeypatch.setattr(faults, "PROTOCOL", PROTOCOL.__class__(
        PROTOCOL.name, PROTOCOL.source.replace("hold_fence", "keep_fence"), PROTOCOL.apply,
        PROTOCOL.set_if_newer))
    with pytest.raises(SystemExit, match="no longer contains 'local function hold_fence"):
        faults.library()


def test_stop_at_counts_arrivals_at_its_point_only() -> None:
    stop = faults.StopAt("acknowledged", on=10**9)  # counted, never reached: no SIGSTOP
    stop.decoded()
    stop.between_shards()
    stop.acknowledged()
    stop.stored()
    stop.acknowledged()
    assert stop.arrivals == 2
