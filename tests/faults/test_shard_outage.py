"""Shard b down for minutes under load while shard a stays fresh; then everything parked
is applied.

Shard b is a Valkey of the test's own with RDB persistence (`tests.faults.shards`, kind
``persistent``), so it keeps its entries across the outage — the stale ones too, which
only the parked calls can repair. The worker runs with parking as shipped
(``valkey.parking.enabled``, ``after_seconds`` 10: a shard that does not answer for that
long has its calls produced to its parking topic, acknowledged before the batch's
offsets are stored) and ``valkey.socket_timeout_seconds`` 1.

Each cycle is two outages of OUTAGE seconds, each after rows were made, changed,
reconciled and cached on b at their version, whose last changes are made as b goes
down: shard b frozen (SIGSTOP: connections open, nothing answered, as a network
partition looks to the worker), then stopped (SIGTERM, its snapshot saved on the way
down, loaded when it starts again). Meanwhile an application load runs on both shards
in phases of PHASE seconds (the application does not write to b while it is down:
`Workload.down`); after each phase the load pauses and the oracle checks shard a alone
— the group committed to the end of the topics (b's calls parked, not waited for),
a's entries and derived keys, its fences expired, no dead letter — and b's parked
calls are counted (``reconciler_parked_records{shard="b"}`` above 0). Then b comes
back: the worker applies what was parked, in order, and unparks it (the gauge back to
0, ``/readyz`` saying b is up; a stopped b also comes back as a new server, so the
worker replays its last minute too, behind the parked calls); the rows change again,
and at the end the oracle checks both shards.

OUTAGE is 150 s in a full count and 30 s at ``CR_FAULT_REPEAT=1`` (CI, for the suite's
time budget), and a full count runs min(``CR_FAULT_REPEAT``, FULL_CYCLES) cycles: each
is over five minutes long.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.e2e.support import PrivateValkey, wait_until
from tests.faults.conftest import REPEAT
from tests.faults.oracle import Oracle
from tests.faults.shards import Marks, ShardB, sample, settle_after_failover
from tests.faults.test_valkey_ha import changed_again, finish, prepare, reconciled
from tests.faults.workers import Load, Worker, dead_letter_topic
from tests.faults.workload import SHARD_A, SHARD_B, Row, Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
FULL_CYCLES = 2  # cycles of a full count (CR_FAULT_REPEAT > 1): each is minutes long
CYCLES = min(REPEAT, FULL_CYCLES)
OUTAGE = 30.0 if REPEAT == 1 else 150.0  # seconds shard b stays down, per outage
PHASE = 15.0 if REPEAT == 1 else 25.0  # seconds of load between two checks of shard a
PARKED = "reconciler_parked_records"  # b's parked calls not applied yet


def take_down(server: PrivateValkey, frozen: bool) -> None:
    if frozen:
        server.freeze()
    else:
        server.stop()


def bring_up(server: PrivateValkey, frozen: bool) -> None:
    if frozen:
        server.thaw()
    else:
        server.start()  # from the snapshot it saved on the way down


class Outage:
    """The outages of one test, and what was seen during them."""

    def __init__(self, worker: Worker, oracle: Oracle, workload: Workload, group: str,
                 config: Path, server: PrivateValkey) -> None:
        self.worker, self.oracle, self.workload = worker, oracle, workload
        self.group, self.config, self.server = group, config, server
        self.checks_of_a = 0
        self.seconds: list[int] = []
        self.parked_peak = 0.0

    def __call__(self, rows: list[Row], *, frozen: bool) -> None:
        """`rows` (reconciled) cached on b at their version; shard b down for OUTAGE
        seconds, the rows' last changes made at once and a load run, shard a checked
        meanwhile; then b back and everything parked for it applied."""
        readers, worker = self.oracle.readers, self.worker
        assert readers is not None
        on_b = [r for r in rows if SHARD_B in r.home]
        for row in on_b:
            self.workload.cache(row)  # stale once they change: only a parked call repairs
        before = Marks.of(worker)
        with readers.paused():  # no reader write to b in flight as it goes
            self.workload.down.add(SHARD_B)
        take_down(self.server, frozen)
        started = time.monotonic()
        try:
            self.workload.update(on_b, recache=0)
            self.workload.delete(on_b[::6])
            self.workload.move([r for r in on_b if r.table == "comments"][1::5])
            while True:
                with Load(self.workload, pause=0.1):
                    time.sleep(max(0.0, min(PHASE, started + OUTAGE - time.monotonic())))
                # Shard a, meanwhile: every change of the topics reconciled on it.
                self.oracle.account(self.group, dead_letter_topic=dead_letter_topic(
                    self.config), shards=(SHARD_A,))
                self.checks_of_a += 1
                parked = sample(worker, PARKED, shard="b")
                assert parked > 0, "b is down and none of its calls is parked"
                self.parked_peak = max(self.parked_peak, parked)
                if time.monotonic() >= started + OUTAGE:
                    break
        finally:
            self.seconds.append(round(time.monotonic() - started))
            bring_up(self.server, frozen)
            with readers.paused():
                self.workload.down.discard(SHARD_B)
        self.oracle.figures.faults += 1
        assert worker.alive(), worker.log()[-3000:]
        if not frozen:  # a new server: the last minute is processed again as well
            settle_after_failover(worker, self.oracle, self.workload, self.group, before)
        wait_until(lambda: sample(worker, PARKED, shard="b") == 0
                   and worker.ready()["shards"]["b"] == "up", 300,
                   "everything parked for b applied and b unparked", interval=0.5)


@pytest.mark.parametrize("shard_b", ["persistent"], indirect=True)
def test_shard_b_down_for_minutes_under_load_a_stays_fresh_then_parked_calls_apply(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        shard_b: ShardB) -> None:
    assert shard_b.server is not None
    group = f"fout-{uid}"
    config, since, worker = prepare(stack, tmp_path, group, workload, oracle, shard_b,
                                    **{"valkey.socket_timeout_seconds": 1})
    outage = Outage(worker, oracle, workload, group, config, shard_b.server)
    try:
        worker.wait_ready()
        for _cycle in range(CYCLES):
            for frozen in (True, False):
                rows = reconciled(workload, oracle, group, worker)
                outage(rows, frozen=frozen)
                changed_again(workload, rows)
                oracle.wait_committed(group, oracle.published(), alive=worker.alive)
        finish(worker, oracle, group, config, since)
        assert sample(worker, PARKED, shard="b") == 0
        oracle.figures.extra.update(checks_of_a_during_outage=outage.checks_of_a,
                                    outage_seconds=outage.seconds,
                                    parked_peak=outage.parked_peak)
        assert oracle.figures.extra["parked_actions"] > 0
    finally:
        assert worker.stop() == 0
