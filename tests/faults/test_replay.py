"""`reconciler replay` beside the live worker.

The live worker reconciles the Debezium topics while the workload and the readers go
on; in every cycle a replay (`reconciler replay --from <the test's start offsets> --to
now`, its own consumer group) re-processes everything since the test began — older
changes of rows that have changed since — while live changes keep coming. Every
operation is idempotent and versioned, so a replayed change meets a newer entry and
does nothing, or, where the live fence has expired, fences the key at its older
version (a miss that blocks nothing newer: the oracle allows those fences). At the
end no entry may be stale, and the live group's committed offsets, sampled every
200 ms for the whole test, never went back: the replay never touched them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.ops.replay import format_offsets
from tests.conftest import ROOT, Stack
from tests.e2e.support import start_group_at_end
from tests.faults.conftest import REPEAT
from tests.faults.oracle import TOPICS, Oracle
from tests.faults.workers import CommitMonitor, Load, Worker, dead_letter_topic, fault_config
from tests.faults.workload import Workload

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


def replay(config: Path, start: dict[tuple[str, int], int]) -> dict[str, object]:
    """`reconciler replay --from <start> --to now --json`; its report."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "replay", "-c", str(config), "--from",
         format_offsets(start), "--to", "now", "--json", "--progress-interval", "5"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, f"replay exited {done.returncode}:\n{done.stderr[-3000:]}"
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_replay_beside_the_live_worker_leaves_nothing_stale_and_the_group_alone(
        stack: Stack, tmp_path: Path, uid: str, workload: Workload, oracle: Oracle) -> None:
    group = f"frep-{uid}"
    start_group_at_end(stack, group, TOPICS)
    since = oracle.committed(group)
    config = fault_config(tmp_path, stack, group, fence_ttl=workload.fence_ttl, batch_size=50)
    worker = Worker(config, tmp_path / "worker.log")
    reports = []
    with CommitMonitor(stack, group, TOPICS) as monitor:
        try:
            worker.wait_ready()
            for _cycle in range(REPEAT):
                rows = workload.create(posts=30, comments=20)
                workload.mixed(2)
                workload.churn(rows[::5])
                oracle.wait_committed(group, oracle.published(), alive=worker.alive)
                with Load(workload, pause=0.05):
                    time.sleep(0.5)
                    report = replay(config, since)
                    time.sleep(0.5)
                oracle.figures.faults += 1
                assert report["group"] != group, report["group"]
                assert report["records"], report
                reports.append({"group": report["group"], "records": report["records"]})
            workload.delete(workload.live()[::7])
            figures = oracle.account(group, dead_letter_topic=dead_letter_topic(config),
                                     older_fences=True)
            oracle.counted(worker.processed, since)
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]
        rewinds = monitor.finish()
    figures.extra.update(replays=reports, commit_samples=monitor.samples,
                         rewinds=len(rewinds))
    assert monitor.samples > 20
    assert rewinds == [], "\n".join(rewinds)
