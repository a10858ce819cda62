"""Valkey as production runs it, failing under the worker: shard b is a Valkey Cluster
or a Sentinel-managed primary (`tests.faults.shards`), shard a the standalone valkey-a.

- A cluster primary SIGKILLed under load: its replica is promoted after
  cluster-node-timeout (the whole cluster answers CLUSTERDOWN meanwhile); the killed
  node comes back as a replica of it.
- Slots resharded mid-stream: the slots holding the workload's keys on shard b migrate,
  key by key, to another primary while those very rows change (every other cycle:
  ``valkey-cli --cluster reshard`` of 1,000 slots of the primary serving the most).
- A Sentinel failover under load: ``SENTINEL FAILOVER`` (the old primary takes writes
  until the Sentinels convert it), and every other cycle the primary SIGKILLed (the
  replica promoted after ``down-after-milliseconds``) and started again as a replica.

The worker runs with the defaults (parking on after 10 s, `failover_replay_seconds` 60):
a new primary is a server change, so it processes the recent changes again; the oracle
looks only once that replay is over (`shards.settle_after_failover`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connectors.valkey.topology import slot_of
from stack import sentinel
from stack import valkey_cluster as vc
from tests.conftest import Stack
from tests.e2e.support import start_group_at_end
from tests.faults.conftest import REPEAT
from tests.faults.oracle import TOPICS, Oracle
from tests.faults.shards import REPLAYED, Marks, ShardB, sample, settle_after_failover
from tests.faults.workers import Load, Worker, dead_letter_topic, fault_config
from tests.faults.workload import SHARD_B, Row, Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
BATCH = 20  # kafka.batch_size
SLOTS_PER_CYCLE = 12  # slots migrated key by key per targeted cycle
RESHARD_SLOTS = 1000  # slots `valkey-cli --cluster reshard` moves in the other cycles
SLOT_PAUSE = 0.5  # seconds a migrating slot stays with all its keys on one side
KEY_PAUSE = 0.2  # seconds between two keys of a migrating slot (changes land meanwhile)


def ha_config(tmp_path: Path, stack: Stack, group: str, workload: Workload, shard_b: ShardB,
              **overrides: Any) -> Path:
    """The fault config with shard b on `shard_b`, batches of BATCH."""
    return fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl,
                        batch_size=BATCH, shard_map=shard_b.shard_map(stack),
                        overrides=overrides)


def prepare(stack: Stack, tmp_path: Path, group: str, workload: Workload, oracle: Oracle,
            shard_b: ShardB, **overrides: Any) -> tuple[Path, dict[tuple[str, int], int],
                                                       Worker]:
    """The test's group started at the topics' end; its config (`ha_config`), the
    offsets the group starts from, and its worker (started: wait for it to be ready)."""
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = ha_config(tmp_path, stack, group, workload, shard_b, **overrides)
    return config, since, Worker(config, tmp_path / "worker.log")


def reconciled(workload: Workload, oracle: Oracle, group: str, worker: Worker) -> list[Row]:
    """A cycle's rows, made, cached, changed and reconciled."""
    rows = workload.create(posts=30, comments=20)
    workload.update(rows)
    oracle.wait_committed(group, oracle.published(), alive=worker.alive)
    return rows


def changed_again(workload: Workload, rows: list[Row]) -> None:
    """The cycle's rows changed after the fault: moves, deletes and re-inserts."""
    workload.move([r for r in rows if r.table == "comments"][::4])
    workload.churn(rows[2::11])
    workload.delete(rows[1::9])
    workload.reinsert(workload.gone()[::3])


def finish(worker: Worker, oracle: Oracle, group: str, config: Path,
           since: dict[tuple[str, int], int], *, before: float = 0) -> None:
    """The whole oracle, the counting (`before`: what the group's workers stopped
    earlier counted, from their tally), the last worker's failover figures."""
    figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config))
    oracle.counted(lambda: before + worker.processed(), since)
    figures.extra["failover_replayed"] = sample(worker, REPLAYED)
    figures.extra["parked_actions"] = sample(worker, "reconciler_parked_actions_total")
    figures.extra["retries"] = sample(worker, "reconciler_retries_total")


# --------------------------------------------------------------------------- cluster


@pytest.mark.parametrize("shard_b", ["cluster"], indirect=True)
def test_cluster_primary_killed_under_load_its_replica_promoted(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    group = f"fclk-{uid}"
    config, since, worker = prepare(stack, tmp_path, group, workload, oracle, shard_b)
    rng = random.Random(uid)
    outages: list[float] = []
    try:
        worker.wait_ready()
        for _cycle in range(REPEAT):
            rows = reconciled(workload, oracle, group, worker)
            before = Marks.of(worker)
            primary = rng.choice(vc.primaries())
            replica = vc.replicas_of(primary)[0]
            with Load(workload, pause=0.1):
                time.sleep(1)
                killed = time.monotonic()
                vc.kill_node(primary)
                try:
                    vc.wait_primary(replica)  # cluster-node-timeout, then the election
                    outages.append(round(time.monotonic() - killed, 1))
                finally:
                    vc.start_node(primary)  # back as a replica of the promoted one
                vc.healthy()
                time.sleep(1)
            assert worker.alive(), worker.log()[-3000:]
            oracle.figures.faults += 1
            changed_again(workload, rows)
            settle_after_failover(worker, oracle, workload, group, before)
        finish(worker, oracle, group, config, since)
        oracle.figures.extra["promoted_after_seconds"] = outages
    finally:
        assert worker.stop() == 0


class Resharding(threading.Thread):
    """Moves slots of shard b's keys to other primaries, live, while the test changes
    those rows: each slot (`vc.SlotMigration`) set IMPORTING/MIGRATING, left so for
    SLOT_PAUSE (every key on the source: new keys ASK the target), its keys MIGRATEd one
    at a time KEY_PAUSE apart (split between the two), left SLOT_PAUSE more (every key
    on the target: ASK), then assigned to its target (MOVED); or (`whole`)
    RESHARD_SLOTS slots of the primary serving the most, chosen by ``valkey-cli
    --cluster reshard`` (which of the keys go with them is its choice). `migrating`
    names the keys of the slot under way; counts the slots and the keys that moved."""

    def __init__(self, keys: list[str], rng: random.Random, *, whole: bool) -> None:
        super().__init__(name="resharding", daemon=True)
        self.keys, self.rng, self.whole = keys, rng, whole
        self.slots = 0
        self.migrating: frozenset[str] = frozenset()
        self.moved: list[str] = []  # the keys whose slot changed owner
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            before = {key: vc.slot_owner(slot_of(key)) for key in self.keys}
            if self.whole:
                served = {n["port"]: sum(slot_count(r) for r in n["slots"])
                          for n in vc.nodes() if n["role"] == "master" and n["slots"]}
                source = max(served, key=served.__getitem__)  # never left without slots
                target = self.rng.choice([p for p in served if p != source])
                vc.reshard(source, target, RESHARD_SLOTS)
                self.slots = RESHARD_SLOTS
            else:
                by_slot: dict[int, set[str]] = {}
                for key in self.keys:
                    by_slot.setdefault(slot_of(key), set()).add(key)
                for slot in self.rng.sample(sorted(by_slot), min(SLOTS_PER_CYCLE,
                                                                 len(by_slot))):
                    self.migrating = frozenset(by_slot[slot])
                    self._migrate(slot)
                self.migrating = frozenset()
            self.moved = [key for key, port in before.items()
                          if vc.slot_owner(slot_of(key)) != port]
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def _migrate(self, slot: int) -> None:
        source = vc.slot_owner(slot)
        target = self.rng.choice([port for port in vc.primaries() if port != source])
        migration = vc.SlotMigration(slot, source, target)
        migration.begin()
        try:
            time.sleep(SLOT_PAUSE)
            while migration.move(1) > 0:
                time.sleep(KEY_PAUSE)  # keys split between source and target meanwhile
            time.sleep(SLOT_PAUSE)
        finally:
            migration.finish()
        self.slots += 1

    def finish(self) -> None:
        self.join(300)
        assert not self.is_alive(), "the resharding did not end within 300 s"
        if self.error is not None:
            raise AssertionError(f"the resharding failed: {self.error!r}") from self.error


def slot_count(field: str) -> int:
    """Slots in one slot field of CLUSTER NODES ("0-5460", "5461"; "[…]" migrating: 0)."""
    if field.startswith("["):
        return 0
    first, _, last = field.partition("-")
    return int(last or first) - int(first) + 1


def b_keys(workload: Workload) -> list[str]:
    """Every key of the workload's live rows on shard b, and their derived keys."""
    rows = [r for r in workload.live() if SHARD_B in r.home]
    return sorted({r.key for r in rows} | {r.derived_key for r in rows})


@pytest.mark.parametrize("shard_b", ["cluster"], indirect=True)
def test_slots_resharded_mid_stream_lose_no_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    group = f"fcrs-{uid}"
    config, since, worker = prepare(stack, tmp_path, group, workload, oracle, shard_b)
    rng = random.Random(uid)
    moved_keys = changes_during = changes_in_migrating_slots = 0
    try:
        worker.wait_ready()
        for cycle in range(REPEAT):
            rows = reconciled(workload, oracle, group, worker)
            resharding = Resharding(b_keys(workload), rng, whole=cycle % 2 == 1)
            resharding.start()
            on_b = [r for r in workload.live() if SHARD_B in r.home]
            try:
                while resharding.is_alive():  # those very rows change meanwhile
                    migrating = resharding.migrating
                    hot = [r for r in on_b if r.key in migrating
                           or r.derived_key in migrating]
                    changes_in_migrating_slots += workload.update(
                        rng.sample(hot, min(8, len(hot))), recache=0.5)
                    changes_during += workload.update(rng.sample(on_b, min(3, len(on_b))))
                    time.sleep(0.1)
            finally:
                resharding.finish()
            assert resharding.moved or resharding.whole, "no key moved with the slots"
            moved_keys += len(resharding.moved)
            oracle.figures.faults += resharding.slots
            changed_again(workload, rows)
            oracle.wait_committed(group, oracle.published(), alive=worker.alive)
        finish(worker, oracle, group, config, since)
        oracle.figures.extra.update(moved_keys=moved_keys, changes_during=changes_during,
                                    changes_in_migrating_slots=changes_in_migrating_slots)
        assert changes_in_migrating_slots > 0
    finally:
        assert worker.stop() == 0


# --------------------------------------------------------------------------- Sentinel


@pytest.mark.parametrize("shard_b", ["sentinel"], indirect=True)
def test_sentinel_failover_under_load_loses_no_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    group = f"fsnt-{uid}"
    config, since, worker = prepare(stack, tmp_path, group, workload, oracle, shard_b)
    kinds: Counter[str] = Counter()
    took: list[float] = []
    try:
        worker.wait_ready()
        for cycle in range(REPEAT):
            rows = reconciled(workload, oracle, group, worker)
            before = Marks.of(worker)
            with Load(workload, pause=0.1):
                time.sleep(1)
                if cycle % 2 == 0:
                    done = sentinel.failover()  # the old primary answers until converted
                    kinds["SENTINEL FAILOVER"] += 1
                else:
                    done = sentinel.kill_primary()
                    sentinel.restart_node(done.old)  # a replica of the promoted one
                    kinds["primary SIGKILLed"] += 1
                took.append(round(done.seconds, 1))
                time.sleep(1)
            assert worker.alive(), worker.log()[-3000:]
            oracle.figures.faults += 1
            changed_again(workload, rows)
            settle_after_failover(worker, oracle, workload, group, before)
            sentinel.settle()  # a demoted primary converted, as the Sentinels do
        finish(worker, oracle, group, config, since)
        oracle.figures.extra.update(failovers=dict(kinds), promoted_after_seconds=took)
    finally:
        assert worker.stop() == 0
