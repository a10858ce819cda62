"""Latency, loss and a network partition between the worker and Kafka/Valkey.

The worker runs in a network namespace where every connection it makes — to the Kafka
bootstrap address, to the broker address Kafka advertises, to both Valkey shards —
passes through Toxiproxy (`stack.toxiproxy`). The tests add latency with jitter, and
then cut connections in every way Toxiproxy can (resets, black holes, connections
closed after a few bytes, replies sliced into tiny pieces) while changes flow; the
oracle must hold and the worker must never exit.

The partition scenario cuts shard b off — its proxy disabled (connections refused) or
turned into a black hole — for four times ``valkey.retry_budget_seconds`` (3 s) while
changes wait for it, in two ways by turns. Without shard parking
(``valkey.parking.enabled: false``) the worker gives up after the budget and exits 2;
the test restarts it whenever it exits, as an orchestrator would, until the network
heals. With parking (after 2 s) shard b's calls go to its parking topic and the group
must commit past every change while b is still cut off (isolation), then apply what
was parked once b answers. Either way the oracle must then hold: nothing lost.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stack import services
from stack.toxiproxy import FaultNet, Toxiproxy
from tests.conftest import Stack
from tests.e2e.support import start_group_at_end
from tests.faults.conftest import PROXIES, REPEAT
from tests.faults.negative import assert_broken, env, judged
from tests.faults.oracle import TOPICS, Figures, Oracle
from tests.faults.workers import Load, Worker, dead_letter_topic, fault_config
from tests.faults.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
CHAOS_SECONDS = 12.0  # per repetition: how long connections are cut while changes flow
BUDGET = 3.0  # valkey.retry_budget_seconds of the partition scenario
SOCKET_TIMEOUT = 1.0  # valkey.socket_timeout_seconds there: a black-holed call fails soon
CUT_SECONDS = 4 * BUDGET  # how long shard b stays cut off
PARK_AFTER = 2.0  # valkey.parking.after_seconds in the cycles that park the shard
EXIT, PARK = "exit", "park"  # the two ways a worker meets a shard that stays down


def netns_worker(net: FaultNet, config: Path, log: Path,
                 env: dict[str, str] | None = None) -> Worker:
    return Worker(config, log, prefix=net.prefix, metrics_host=net.address, env=env)


def config_in(net: FaultNet, tmp_path: Path, stack: Stack, group: str, *, fence_ttl: float,
              **kwargs: Any) -> Path:
    overrides = {"metrics": {"host": net.address, "port": 0, "lag_refresh_seconds": 0.5},
                 **kwargs.pop("overrides", {})}
    return fault_config(tmp_path, stack, group, fence_ttl=fence_ttl, overrides=overrides,
                        **kwargs)


def test_latency_with_jitter_only_slows_the_worker_down(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        net: FaultNet) -> None:
    group = f"flat-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = config_in(net, tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=20)
    toxics = net.toxics
    assert toxics is not None
    for proxy in PROXIES:
        for stream in ("upstream", "downstream"):
            toxics.add(proxy, "latency", stream=stream, latency=25, jitter=10)
    ping_ms = netns_ping_ms(net, services.VALKEY_PORTS["valkey-a"])
    assert ping_ms >= 30, f"a PING through the toxics took {ping_ms:.0f} ms"
    oracle.figures.extra["valkey_ping_ms_through_toxics"] = round(ping_ms, 1)
    worker = netns_worker(net, config, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        for _cycle in range(REPEAT):
            workload.reinsert(workload.gone()[::2])
            rows = workload.create(posts=40, comments=30)
            workload.update(rows)
            workload.move([r for r in rows if r.table == "comments"][::4])
            workload.churn(rows[3::10])
            workload.delete(rows[::7])
            oracle.figures.faults += 1
        figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config),
                                 timeout=300)
        oracle.counted(worker.processed, since)
    finally:
        assert worker.stop() == 0
    assert_carried(toxics, figures.extra)


def netns_ping_ms(net: FaultNet, port: int) -> float:
    """The median time of a Valkey PING from inside the namespace, in milliseconds."""
    probe = ("import statistics, time, valkey\n"
             f"c = valkey.Valkey(port={port}); c.ping(); t = []\n"
             "for _ in range(7):\n"
             "    s = time.perf_counter(); c.ping(); t.append(time.perf_counter() - s)\n"
             "print(statistics.median(t) * 1000)")
    done = subprocess.run([*net.prefix, sys.executable, "-c", probe], capture_output=True,
                          text=True, check=True, timeout=60)
    return float(done.stdout.strip())


def assert_carried(toxics: Toxiproxy, extra: dict[str, Any]) -> None:
    """The worker's traffic really went through the toxics (Toxiproxy counts a
    connection's bytes when it closes: call this after the worker stopped)."""
    carried = toxics.traffic()
    extra["bytes_through_toxics"] = carried
    assert all(carried.get(proxy, 0) > 1000 for proxy in PROXIES), carried


def chaos(toxics: Toxiproxy, rng: random.Random, seconds: float) -> list[str]:
    """Cut connections in turn, each fault for a moment; returns what was done."""
    done = []
    deadline = time.monotonic() + seconds
    faults = [
        ("reset_peer", {"timeout": 0}),  # RST on the next data
        ("reset_peer", {"timeout": 300}),  # RST after 300 ms
        ("timeout", {"timeout": 1500}),  # a black hole, then closed
        ("limit_data", {"bytes": 700}),  # closed after a few hundred bytes
        ("slicer", {"average_size": 3, "size_variation": 2, "delay": 200}),  # tiny pieces
        ("latency", {"latency": 400, "jitter": 300}),  # a slow spell
    ]
    while time.monotonic() < deadline:
        proxy = rng.choice(list(PROXIES))
        kind, attributes = rng.choice(faults)
        stream = rng.choice(["upstream", "downstream"])
        name = toxics.add(proxy, kind, name=f"chaos_{kind}", stream=stream, **attributes)
        done.append(f"{proxy}:{kind}:{stream}")
        time.sleep(rng.uniform(0.3, 1.2))
        toxics.remove(proxy, name)
        time.sleep(rng.uniform(0.1, 0.5))
    return done


def test_connection_resets_and_cuts_never_lose_a_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        net: FaultNet) -> None:
    group = f"fcut-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = config_in(net, tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=20)
    toxics = net.toxics
    assert toxics is not None
    rng = random.Random(uid)
    done: list[str] = []
    worker = netns_worker(net, config, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        for _cycle in range(REPEAT):
            with Load(workload, pause=0.05):
                done += chaos(toxics, rng, CHAOS_SECONDS)
            toxics.clear()
            assert worker.alive(), worker.log()[-3000:]
        workload.delete(workload.live()[::11])
        figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config),
                                 timeout=300)
        oracle.counted(worker.processed, since)
        samples = worker.metrics()
        figures.extra["valkey_retries"] = worker.total("reconciler_retries_total", samples)
    finally:
        toxics.clear()
        code = worker.stop()
    oracle.figures.faults = len(done)
    oracle.figures.extra["faults_by_kind"] = {kind: sum(1 for d in done if d.split(":")[1] == kind)
                                              for kind in {d.split(":")[1] for d in done}}
    assert code == 0, worker.log()[-3000:]
    assert_carried(toxics, oracle.figures.extra)


# --------------------------------------------------------------------------- partition


def cut(toxics: Toxiproxy, proxy: str, black_hole: bool) -> str:
    """Cut `proxy` off: disabled (connections refused and closed) or a black hole."""
    if black_hole:
        toxics.add(proxy, "timeout", name="partition_up", stream="upstream", timeout=0)
        toxics.add(proxy, "timeout", name="partition_down", stream="downstream", timeout=0)
        return "black hole"
    toxics.call("POST", f"/proxies/{proxy}", {"enabled": False})
    return "refused"


def run_partition(stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
                  net: FaultNet, *, cycles: int, broken: str | None = None) -> Figures | None:
    """Even cycles without shard parking (the worker exits after the retry budget and
    is restarted), odd ones with it (shard b parked after PARK_AFTER seconds while the
    rest goes on); the cut is refused connections or a black hole, two cycles each."""
    group = f"fpart-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    settings = {"valkey.retry_budget_seconds": BUDGET,
                "valkey.socket_timeout_seconds": SOCKET_TIMEOUT}
    configs = {
        EXIT: config_in(net, tmp_path / EXIT, stack, group, fence_ttl=workload.fence_ttl,
                        batch_size=20, overrides={**settings,
                                                  "valkey.parking": {"enabled": False}}),
        PARK: config_in(net, tmp_path / PARK, stack, group, fence_ttl=workload.fence_ttl,
                        batch_size=20, overrides={**settings, "valkey.parking": {
                            "enabled": True, "after_seconds": PARK_AFTER}}),
    }
    toxics = net.toxics
    assert toxics is not None
    workers: list[Worker] = []
    exits: list[int] = []
    gave_up: list[int] = []  # exits per cut
    kinds: list[str] = []
    mode = EXIT

    def start() -> Worker:
        started = netns_worker(net, configs[mode], tmp_path / f"w{len(workers)}.log",
                               env(broken))
        workers.append(started)
        return started

    def restarted(current: Worker) -> Worker:
        """The orchestrator: a worker that exited is replaced."""
        if current.alive():
            return current
        code = current.proc.wait()
        exits.append(code)
        assert mode == EXIT, f"a worker that parks shards exited {code}:\n{current.log()[-3000:]}"
        assert code == 2, f"the worker exited {code}:\n{current.log()[-3000:]}"
        assert "still unavailable" in current.log(), current.log()[-3000:]
        return start()

    def supervised(current: Worker, seconds: float) -> Worker:
        """The orchestrator for `seconds`: every worker that exits is replaced."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            current = restarted(current)
            time.sleep(0.2)
        return restarted(current)

    worker = start()
    try:
        worker.wait_ready(120)
        assert_broken(worker.log(), broken)
        for cycle in range(cycles):
            if (EXIT, PARK)[cycle % 2] != mode:  # the other mode: a worker configured so
                assert worker.stop() == 0, worker.log()[-3000:]
                mode = (EXIT, PARK)[cycle % 2]
                worker = start()
                worker.wait_ready(120)
            rows = workload.create(posts=20, comments=20)
            oracle.wait_committed(group, oracle.published(), alive=worker.alive)
            before = len(exits)
            cut_at = time.monotonic()
            kinds.append(f"{mode}, " + cut(toxics, "valkey-b", black_hole=cycle // 2 % 2 == 1))
            try:
                # Changes while b is cut off, each its row's last (cached at its version
                # first): on a, on b, on both, moves between them, deletes.
                workload.update(rows, recache=1.0)
                workload.move([r for r in rows if r.table == "comments"][::4])
                workload.delete(rows[::6])
                workload.reinsert(workload.gone()[::3])
                ends = oracle.published()
                if mode == PARK:
                    # Isolation: b's calls parked, the group commits past every change
                    # while b is still cut off.
                    oracle.wait_committed(group, ends, timeout=CUT_SECONDS - 2,
                                          alive=worker.alive)
                    assert "parked" in worker.log(), worker.log()[-3000:]
                worker = supervised(worker, cut_at + CUT_SECONDS - time.monotonic())
            finally:
                toxics.clear()  # healed: enabled again, toxics gone
            # A call in flight when the network healed can still use up the budget: the
            # orchestrator keeps watching until the worker's last retry is over.
            worker = supervised(worker, BUDGET + SOCKET_TIMEOUT + 1)
            oracle.figures.faults += 1
            gave_up.append(len(exits) - before)
            if mode == EXIT:
                assert gave_up[-1] > 0, "the worker never gave up on the cut-off shard"
        figures = judged(oracle, broken, lambda: oracle.account(
            group, dead_letter_topic=dead_letter_topic(configs[mode]), timeout=180))
        if broken is None:
            worker.wait_ready(60)
            gone = sum(w.processed_at_exit() for w in workers if w is not worker)
            oracle.counted(lambda: gone + worker.processed(), since)
    finally:
        toxics.clear()
        for each in workers:
            if each.alive():
                each.stop()
    oracle.figures.extra.update(exits=len(exits), exits_per_cut=gave_up, cuts=kinds)
    return figures


def test_network_partition_past_the_retry_budget_then_healed_loses_no_change(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        net: FaultNet) -> None:
    run_partition(stack, tmp_path, uid, workload, oracle, net, cycles=max(2, REPEAT))
