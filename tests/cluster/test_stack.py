"""`python -m stack up|down valkey-cluster` keeps its promises, on an instance of its own
(its own folder and ports, so the shared cluster the other tests use is untouched): up
forms a healthy 3+3 cluster, a second up is a no-op, down stops all six nodes, and up
again makes a fresh cluster; the env names the seeds."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stack.process import port_open
from tests.conftest import ROOT

BUS_OFFSET = 100  # stack.valkey_cluster.BUS_OFFSET


def free_base() -> int:
    """A first port below the ephemeral range with the six nodes' and buses' ports free."""
    for _ in range(50):
        base = random.randrange(30000, 32000)
        if not any(port_open(base + i) or port_open(base + BUS_OFFSET + i) for i in range(6)):
            return base
    raise AssertionError("no free block of ports in 30000-32100")


def test_up_down_up() -> None:
    folder = Path(tempfile.mkdtemp(prefix="cr-cluster-test-"))
    base = free_base()
    env = {**os.environ, "CR_STACK_DIR": str(folder), "CR_STACK_VALKEY_CLUSTER_PORT": str(base)}

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stack", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    try:
        up = stack("up", "valkey-cluster")
        assert up.returncode == 0, up.stderr
        pids = sorted((folder / "run").glob("valkey-cluster-*.pid"))
        assert len(pids) == 6
        first = {p.name: p.read_text() for p in pids}
        again = stack("up", "valkey-cluster")
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
        assert {p.name: p.read_text() for p in pids} == first  # nothing restarted
        status = stack("status")
        assert "valkey-cluster       running" in status.stdout, status.stdout
        seeds = ",".join(f"valkey://127.0.0.1:{base + i}" for i in range(6))
        assert f"export CR_VALKEY_CLUSTER_URLS='{seeds}'" in stack("env").stdout
        assert stack("down", "valkey-cluster").returncode == 0
        assert not list((folder / "run").glob("valkey-cluster-*.pid"))
        assert not any(port_open(base + i) for i in range(6))
        up = stack("up", "valkey-cluster")
        assert up.returncode == 0, up.stderr
        assert "already running" not in up.stderr
    finally:
        stack("down", "valkey-cluster")
        shutil.rmtree(folder, ignore_errors=True)
