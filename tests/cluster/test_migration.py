"""Live slot migrations while calls run: every action applied exactly once.

Each round, a reader caches every key at version r (single-key set_if_newer through
valkey-py's cluster client, which follows ASK and MOVED itself), then one `apply()` (or
`send()`) changes every key to r+1. Every change must answer `repaired`, as the
in-memory model does: an action run twice would answer `fenced` the second time (and
be counted twice), an action lost would leave the reader's data in place, and the end
states are compared with the model's too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from valkey.cluster import ValkeyCluster

from connectors.valkey.cluster import ClusterShard
from connectors.valkey.testing import FakeShard
from connectors.valkey.topology import slot_of
from connectors.valkey.writer import CacheWriter
from stack import valkey_cluster as vc
from tests.cluster.conftest import FENCE_TTL_MS, entry

TTL_MS = 300_000  # the reader's TTL: nothing expires during a test
PAYLOAD = b"p"  # what the model caches (the writer's encoding is not compared)


class Rounds:
    """The reader and the reconciler taking turns, checked against the model."""

    def __init__(self, shard: ClusterShard, raw: ValkeyCluster, keys: Sequence[str]) -> None:
        self.shard, self.raw, self.keys = shard, raw, list(keys)
        self.writer = CacheWriter(raw)
        self.model = FakeShard(fence_ttl_ms=FENCE_TTL_MS)
        self.version = 1
        self.applied = 0

    def run(self, *, send: bool = False) -> None:
        """A reader's fill, then the reconciler's change."""
        self.read()
        self.change(send=send)

    def read(self) -> None:
        """Every key cached at the current version (over the last change's fence)."""
        for key in self.keys:
            written = self.writer.set_if_newer(key, self.version, {"v": self.version},
                                               TTL_MS / 1000)
            assert written == self.model.set_if_newer(key, self.version, PAYLOAD, TTL_MS)

    def change(self, *, send: bool = False, op: str = "v") -> list[tuple[str, str, str]]:
        """Every key changed to the next version: each answer equal to the model's, but
        for one op per call stopped halfway (`ClusterShard.stats["partial"]`), which may
        answer `absent` for `repaired` (the module docstring of `routing`). Returns those
        (key, got, expected)."""
        self.version += 1
        n = len(self.keys)
        ops, versions = [op] * n, [self.version] * n
        partial = self.shard.stats["partial"]
        got = (self.shard.send(self.keys, ops, versions).result() if send
               else self.shard.apply(self.keys, ops, versions))
        expected = self.model.apply(self.keys, ops, versions)
        drift = [(k, g, e) for k, g, e in zip(self.keys, got, expected, strict=True) if g != e]
        assert len(drift) <= self.shard.stats["partial"] - partial, drift[:5]
        assert all((g, e) == ("absent", "repaired") for _, g, e in drift), drift[:5]
        self.applied += n
        self.version += 1
        return drift

    def check_end_states(self) -> None:
        for key in self.keys:
            kind, value, has_ttl = entry(self.raw, key)
            assert (kind, value) == ("hash", self.model.entry(key)), key
            assert has_ttl, key


def test_a_slot_migrated_step_by_step(shard: ClusterShard, raw: ValkeyCluster) -> None:
    """A slot of 40 cached keys, 15 moved: the call over all 40 meets TRYAGAIN, is sent
    one op a call; the moved keys' calls follow ASK, the others stop halfway on the
    source (non local key) and are finished on the target. Then the slot reassigned:
    MOVED. Among 300 keys of other slots; every answer as the model's."""
    tagged = [f"{{m}}:{i}" for i in range(40)]
    keys = tagged + [f"post:{i}" for i in range(300)]
    slot = slot_of(tagged[0])
    source = vc.slot_owner(slot)
    target = next(port for port in vc.primaries() if port != source)
    rounds = Rounds(shard, raw, keys)
    rounds.run()
    rounds.read()  # cached on the source
    migration = vc.SlotMigration(slot, source, target)
    migration.begin()
    try:
        assert migration.move(15) == 40
        rounds.change()
        assert shard.stats["tryagain"] == 1 and shard.stats["ask"] >= 40, shard.stats
        assert shard.stats["nonlocal"] == 25 and not shard.stats["partial"], shard.stats
        rounds.read()  # the reader meets the migration too (set_if_newer, sent again)
        migration.move(10)
        rounds.change(send=True)
    finally:
        migration.finish()
    assert vc.slot_owner(slot) == target
    before = shard.stats["moved"]
    rounds.run()
    assert shard.stats["moved"] > before  # the stale slot map, corrected
    rounds.run(send=True)
    rounds.check_end_states()


def test_a_call_stopped_halfway_is_finished(shard: ClusterShard, raw: ValkeyCluster) -> None:
    """A call whose keys are all still on the source of a migrating slot runs there and
    stops at its first replaced entry: what ran stays, every op is sent again one a call
    (the snapshot reads as changes) and the end state is the model's — the stopped op's
    key gets its fence; only that op answers `absent` rather than `repaired`. The slot
    is then remembered as migrating: the next call there goes one op a call at once."""
    tagged = [f"{{p}}:{i}" for i in range(10)]
    slot = slot_of(tagged[0])
    source = vc.slot_owner(slot)
    target = next(port for port in vc.primaries() if port != source)
    rounds = Rounds(shard, raw, tagged)
    rounds.run()
    rounds.read()
    migration = vc.SlotMigration(slot, source, target)
    migration.begin()
    try:
        drift = rounds.change(op="s")  # snapshot reads of older data: repaired
        assert drift == [(tagged[0], "absent", "repaired")]
        assert shard.stats["partial"] == 1 and shard.stats["nonlocal"] == 10, shard.stats
        rounds.check_end_states()  # the first key fenced too
        rounds.read()
        assert rounds.change() == []  # one op a call from the start: exact
        assert shard.stats["partial"] == 1
    finally:
        migration.finish()
    rounds.run()
    rounds.check_end_states()


def test_reshard_while_calls_run(shard: ClusterShard, raw: ValkeyCluster) -> None:
    """`valkey-cli --cluster reshard` moves 200 slots holding 400 of the test's keys
    while rounds of calls run against them; then moves them back."""
    source = vc.primaries()[0]
    target = vc.primaries()[1]
    owned = sorted(slot for slot in range(16384) if vc_owner(shard, slot) == source)[:200]
    moving = set(owned)
    keys: list[str] = []
    per_slot: dict[int, int] = {}
    i = 0
    while len(keys) < 400:
        key = f"r:{i}"
        i += 1
        slot = slot_of(key)
        if slot in moving and per_slot.get(slot, 0) < 2:
            per_slot[slot] = per_slot.get(slot, 0) + 1
            keys.append(key)
    keys += [f"post:{i}" for i in range(200)]
    rounds = Rounds(shard, raw, keys)
    rounds.run()
    errors: list[BaseException] = []

    def reshard(src: int, dst: int) -> None:
        try:
            vc.reshard(src, dst, 200)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    for source_port, target_port in ((source, target), (target, source)):

        thread = threading.Thread(target=reshard, args=(source_port, target_port))
        thread.start()
        during = 0
        while thread.is_alive() or during < 3:
            rounds.run(send=during % 2 == 1)
            during += 1
        thread.join()
        assert not errors, errors
        rounds.run()
    assert shard.stats["moved"] + shard.stats["ask"] > 0, shard.stats
    rounds.check_end_states()


def vc_owner(shard: ClusterShard, slot: int) -> int:
    return int(shard.topology.node_of(slot).rsplit(":", 1)[1])
