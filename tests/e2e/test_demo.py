"""The README's main command runs: the demo workload against the local stack ends with
no stale entry, the slow reader's stale sets all refused, and a clean worker exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_demo_repairs_and_leaves_nothing_stale(stack: Stack) -> None:
    env = {**os.environ, "CR_DEMO_METRICS_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-m", "demo", "--seconds", "8"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "stale entries at the end: 0" in out
    assert ", 0 accepted" in out  # the slow reader never put stale data back
    table = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert table, out
    repaired = int(table[-1][2])
    assert repaired > 0, "the workload must make the reconciler repair stale entries"
