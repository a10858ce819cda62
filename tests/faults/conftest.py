"""Fixtures of the fault-injection suite (`pytest -m faults`, `scripts/faults`).

- ``CR_FAULT_REPEAT`` (default 1) repeats every scenario's fault cycle inside each test:
  CI runs the default, `scripts/faults` the full count.
- Every test runs application readers beside its workers (`tests.faults.readers`), from
  the start of the test to its end; the oracle pauses them while it checks.
- Every test leaves the stack healthy: whatever a scenario stopped is started again and
  the Debezium connector is RUNNING before the next test (``healthy_stack``).
- Shard b is the stack's valkey-b unless a test asks for another kind (``shard_b``,
  `tests.faults.shards`): the stack's Valkey Cluster or Sentinel service (both started
  by `scripts/faults`), or a persistent Valkey of the test's own.
- Each scenario's figures (changes, records, stale entries, dead letters expected and
  found, records the surviving workers counted and had to count, faults injected) are
  printed at the end of the run and, with ``CR_FAULT_FIGURES=FILE``, appended to FILE
  as JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import services
from stack.toxiproxy import FaultNet
from tests.conftest import Stack
from tests.e2e.support import admin, create_topic
from tests.faults.oracle import TOPICS, Figures, Oracle
from tests.faults.readers import Readers
from tests.faults.shards import ShardB, open_shard_b, workload_shards
from tests.faults.workload import Workload

# What the network tests' Toxiproxy sits in front of (the worker's every connection).
PROXIES = {"kafka": services.KAFKA_PORT, "valkey-a": services.VALKEY_PORTS["valkey-a"],
           "valkey-b": services.VALKEY_PORTS["valkey-b"]}
REPEAT = max(1, int(os.environ.get("CR_FAULT_REPEAT", "1")))  # fault cycles per scenario
FIGURES_FILE = os.environ.get("CR_FAULT_FIGURES")  # JSON lines of every scenario's figures
_collected: list[dict[str, Any]] = []


def ensure_stack_healthy(timeout: float = 240.0) -> list[str]:
    """Start every stopped service of the default stack (`python -m stack up`; the
    on-demand Valkey Cluster and Sentinel service, which only the Valkey HA scenarios
    use, are restored by their ``shard_b`` fixture) and wait for the connector; returns
    what it started."""
    started = []
    for name in services.DEFAULT:
        if not services.SERVICES[name].running():
            services.SERVICES[name].start()
            started.append(name)
    wait_connector_running(timeout)
    return started


def wait_connector_running(timeout: float = 240.0) -> int:
    """Wait for the Debezium connector and its task to be RUNNING; a task that FAILED
    (e.g. its producer gave up while Kafka was down) is restarted, as an operator would.
    Returns how many task restarts were needed."""
    restarts = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if services.connector_running():
                return restarts
            status = services.connector_status()
            for task in status.get("tasks") or []:  # type: ignore[union-attr]
                if task.get("state") == "FAILED":
                    services.http_json("POST", services.connect_url(
                        f"/connectors/{services.CONNECTOR_NAME}/tasks/{task['id']}/restart"))
                    restarts += 1
            if (status.get("connector") or {}).get("state") == "FAILED":  # type: ignore[union-attr]
                services.http_json("POST", services.connect_url(
                    f"/connectors/{services.CONNECTOR_NAME}/restart"))
                restarts += 1
        except (urllib.error.URLError, OSError, ValueError):
            pass  # Connect still starting
        time.sleep(0.5)
    raise AssertionError(f"the Debezium connector is not RUNNING after {timeout:.0f}s; see "
                         f"{services.LOG_DIR / 'connect.log'}")


@pytest.fixture(scope="session")
def change_topics(stack: Stack) -> None:
    """The Debezium topics exist (on a fresh stack, before the first change, they don't)."""
    existing = admin(stack).list_topics(timeout=10).topics
    for topic in TOPICS:
        if topic not in existing:
            create_topic(stack, topic, partitions=3)


@pytest.fixture(autouse=True)
def healthy_stack(stack: Stack, change_topics: None) -> Iterator[None]:
    ensure_stack_healthy()
    try:
        yield
    finally:
        started = ensure_stack_healthy()
        if started:
            services.log(f"fault test left {', '.join(started)} stopped: started again")


@pytest.fixture
def net() -> Iterator[FaultNet]:
    """The worker's network namespace behind Toxiproxy (needs root)."""
    if os.geteuid() != 0:
        pytest.fail("the network fault tests need root (network namespaces)", pytrace=False)
    faults = FaultNet(PROXIES)
    try:
        yield faults.start()
    finally:
        faults.remove()


@pytest.fixture
def shard_b(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShardB | None]:
    """Where shard b lives: None, the stack's valkey-b; or the kind a test asks for with
    ``@pytest.mark.parametrize("shard_b", [KIND], indirect=True)`` (`tests.faults.shards`)."""
    kind = getattr(request, "param", None)
    if kind is None:
        yield None
        return
    with open_shard_b(kind, tmp_path) as found:
        yield found


@pytest.fixture
def workload(stack: Stack, valkey_clients: dict[str, Any], uid: str,
             shard_b: ShardB | None) -> Iterator[Workload]:
    """The test's rows; its fence_ttl_seconds (2-5 s) is chosen from the test's uid."""
    load = Workload(stack, seed=uid, **workload_shards(valkey_clients, shard_b))
    yield load
    load.close()


@pytest.fixture
def readers(stack: Stack, workload: Workload, uid: str) -> Iterator[Readers]:
    """Application readers racing the worker for the whole test."""
    found = Readers(stack, workload, seed=uid).start()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def oracle(request: pytest.FixtureRequest, stack: Stack, workload: Workload,
           readers: Readers) -> Iterator[Oracle]:
    """The oracle for this test; its figures are collected whatever the outcome."""
    found = Oracle(stack, workload, scenario=request.node.name, readers=readers)
    try:
        yield found
    finally:
        found.close()
        record(found.figures, request)


def record(figures: Figures, request: pytest.FixtureRequest | None = None) -> None:
    data = dataclasses.asdict(figures)
    data["repeat"] = REPEAT
    if request is not None:
        report = getattr(request.node, "rep_call", None)
        data["outcome"] = report.outcome if report is not None else "error"
    _collected.append(data)
    if FIGURES_FILE:
        with open(FIGURES_FILE, "a") as handle:
            handle.write(json.dumps(data) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _collected:
        return
    write: Callable[[str], None] = terminalreporter.write_line
    terminalreporter.section(f"fault scenarios (CR_FAULT_REPEAT={REPEAT})")
    write(f"{'scenario':58} {'out':6} {'faults':>6} {'changes':>7} {'records':>7} "
          f"{'checked':>7} {'stale':>5} {'dlq exp/found':>13} {'counted/of':>17} {'s':>6}")
    for data in _collected:
        write(f"{data['scenario'][:58]:58} {data.get('outcome', '?')[:6]:6} "
              f"{data['faults']:>6} {data['changes']:>7} {data['records']:>7} "
              f"{data['entries_checked']:>7} {data['stale']:>5} "
              f"{data['dead_letters_expected']:>6}/{data['dead_letters_found']:<6} "
              f"{data['counted']:>8}/{data['to_count']:<8} {data['seconds']:>6}")
