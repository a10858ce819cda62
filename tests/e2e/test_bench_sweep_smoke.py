"""The sweep at a tiny size: the JSON and the PNG of real measurements.

Not a timed test: two points of two dimensions — shards (2 and 4, on Valkey servers of
the sweep's own) and workers in one group (1 and 2) — at a few thousand records, and
every point must have measured real work: the ceiling and the worker read the whole
topic, and the worker's invalidation counts are exactly what the workload's changes
call for on that point's shard map, as in test_bench_smoke.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.dimensions import BASE
from bench.env import SMOKE_DB, Endpoints, Router
from bench.events import Workload
from bench.sweep import FIGURES, SKEWED, SweepOptions, run_sweep
from tests.conftest import Stack
from tests.e2e.test_bench_smoke import expected_actions

pytestmark = pytest.mark.e2e

EVENTS, KEYS = 3000, 500
DIMENSIONS = {"shards": (2, 4), "workers": (1, 2)}
PNG = b"\x89PNG\r\n\x1a\n"


def test_sweep_measures_every_point_and_plots_them(stack: Stack, tmp_path: Path) -> None:
    endpoints = Endpoints(stack.kafka_bootstrap, {"a": stack.valkey["valkey-a"],
                                                  "b": stack.valkey["valkey-b"]},
                          stack.postgres_dsn, db=SMOKE_DB)
    path = run_sweep(endpoints, SweepOptions(dimensions=DIMENSIONS, events=EVENTS, keys=KEYS),
                     tmp_path)

    data = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name.startswith("sweep-")
    figure = path.with_suffix(".png")
    assert figure.read_bytes().startswith(PNG) and figure.stat().st_size > 20_000
    assert data["kind"] == "sweep" and {"nproc", "librdkafka"} <= data["machine"].keys()
    assert {"commit", "dirty", "digest"} <= data["code"].keys()
    assert list(data["dimensions"]) == list(DIMENSIONS)
    workload = Workload(records=EVENTS, keys=KEYS)
    for name, values in DIMENSIONS.items():
        result = data["dimensions"][name]
        assert [point["point"][name] for point in result["points"]] == list(values)
        assert {"work_growth", "cpu_growth", "super_linear"} <= result["growth"].keys()
        for point in result["points"]:
            layout = BASE.at(name, point["point"][name])
            assert point["records"] == point["produced"]["records"] == EVENTS
            (run,) = point["runs"]
            # A group may start a member ~1 s late (bench.group.wake): marked, not failed.
            assert [r for r in run["disturbed"] if not r.startswith(SKEWED)] == [], run
            assert all(run[figure] > 0 for figure in FIGURES), run
            assert run["ceiling"]["records"] == EVENTS
            worker = run["worker"]
            assert worker["exit_code"] == 0 and worker["records"] == EVENTS
            assert worker["dead_letters"] == 0
            members = worker.get("members", [worker])
            assert len(members) == layout.workers
            assert all(member["records"] > 0 for member in members)  # each read a share
            coalesced = worker["coalesced"]
            counted = {shard: sum(results.values()) + coalesced.get(shard, 0)
                       for shard, results in worker["invalidations"].items()}
            router = Router.of(layout.shard_map())
            assert counted == dict(expected_actions(workload, router)), layout
            assert len(counted) == layout.shards
            assert run["invalidations_match_expected"]
