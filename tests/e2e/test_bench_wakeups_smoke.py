"""`python -m bench wakeups` at a tiny size: every point measured batches whose
invalidations the stack's Valkeys answered (not a timed test: no figure is judged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.env import LOCAL_CONFIG, Router
from bench.events import Workload
from bench.wakeups import KEYS, run_wakeups
from tests.conftest import Stack
from tests.e2e.test_bench_smoke import expected_actions, smoke_endpoints

pytestmark = pytest.mark.e2e


def test_every_gap_is_measured_on_acknowledged_work(stack: Stack, tmp_path: Path) -> None:
    path = run_wakeups(smoke_endpoints(stack), batch=5, batches=8, rounds=2,
                       gaps_ms=(0.0, 2.0), out_dir=tmp_path)

    data = json.loads(path.read_text())
    assert path.parent == tmp_path and data["kind"] == "wakeups"
    assert data["records"] == 40
    assert [point["gap_ms"] for point in data["points"]] == [0.0, 2.0]
    # Every action the workload's 40 changes call for, answered by a shard, at each gap.
    actions = sum(expected_actions(Workload(records=40, keys=KEYS),
                                   Router.load(LOCAL_CONFIG.parent / "shard_map.yaml")).values())
    for point in data["points"]:
        assert point["cpu_us_per_batch"] > 0
        assert point["acknowledged"] == actions, point
    assert data["points"][0]["ratio"] == 1.0
