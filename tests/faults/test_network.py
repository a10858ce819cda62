"""Latency and loss between the worker and Kafka/Valkey: they may only slow it down.

The worker runs in a network namespace where every connection it makes — to the Kafka
bootstrap address, to the broker address Kafka advertises, to both Valkey shards —
passes through Toxiproxy (`stack.toxiproxy`). The tests add latency with jitter, and
then cut connections in every way Toxiproxy can (resets, black holes, connections
closed after a few bytes, replies sliced into tiny pieces) while changes flow; the
oracle must hold and the worker must never exit.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import services
from stack.toxiproxy import FaultNet, Toxiproxy
from tests.conftest import Stack
from tests.e2e.support import start_group_at_end
from tests.faults.conftest import REPEAT
from tests.faults.oracle import TOPICS, Oracle, Workload
from tests.faults.workers import Load, Worker, dead_letter_topic, fault_config

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
PROXIES = {"kafka": services.KAFKA_PORT, "valkey-a": services.VALKEY_PORTS["valkey-a"],
           "valkey-b": services.VALKEY_PORTS["valkey-b"]}
CHAOS_SECONDS = 12.0  # per repetition: how long connections are cut while changes flow


@pytest.fixture
def net() -> Iterator[FaultNet]:
    if os.geteuid() != 0:
        pytest.fail("the network fault tests need root (network namespaces)", pytrace=False)
    faults = FaultNet(PROXIES)
    try:
        yield faults.start()
    finally:
        faults.remove()


def netns_worker(net: FaultNet, config: Path, log: Path) -> Worker:
    return Worker(config, log, prefix=net.prefix, metrics_host=net.address)


def config_in(net: FaultNet, tmp_path: Path, stack: Stack, group: str, **kwargs: Any) -> Path:
    overrides = {"metrics": {"host": net.address, "port": 0, "lag_refresh_seconds": 0.5},
                 **kwargs.pop("overrides", {})}
    return fault_config(tmp_path, stack, group, overrides=overrides, **kwargs)


def test_latency_with_jitter_only_slows_the_worker_down(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle,
        net: FaultNet) -> None:
    group = f"flat-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = config_in(net, tmp_path, stack, group, batch_size=20)
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
            rows = workload.create(posts=40, comments=30)
            workload.update(rows)
            workload.move([r for r in rows if r.table == "comments"][::4])
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
    config = config_in(net, tmp_path, stack, group, batch_size=20)
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
