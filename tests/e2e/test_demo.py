"""The README's main command runs: the demo workload against the local stack ends with
no stale entry, the slow reader's stale sets — each tried once the reconciler's
freshness watermark said its change was reconciled — all refused, and a clean exit."""

from __future__ import annotations

import os
import re
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
    slow = re.search(r"stale sets: (\d+) refused, (\d+) accepted(.*)$", out, re.MULTILINE)
    assert slow, out
    refused, accepted, untried = int(slow[1]), int(slow[2]), slow[3]
    assert refused > 0, "the slow reader must have tried its stale sets: " + out
    assert accepted == 0, "a stale set got in after its change was reconciled: " + out
    assert not untried, "the watermark never passed a change within its wait: " + out
    table = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert table, out
    repaired = int(table[-1][2])
    assert repaired > 0, "the workload must make the reconciler repair stale entries"
