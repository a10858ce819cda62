"""Helpers shared by the security tests: run the worker as a process and read its end."""

from __future__ import annotations

import re
import subprocess
from typing import Any

from tests.conftest import Stack
from tests.e2e.support import WorkerProcess, committed, end_offsets, wait_until

FAIL_FAST_SECONDS = 30.0  # a refused credential must stop the worker well within this


def exit_of(worker: WorkerProcess, timeout: float = FAIL_FAST_SECONDS) -> tuple[int, str]:
    """The worker's exit code and its whole output, once it has exited by itself."""
    try:
        code = worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError(f"the worker was still running after {timeout:.0f}s (a hang, "
                             f"not a clear refusal):\n{output(worker)[-3000:]}") from None
    worker.stop()
    return code, output(worker)


def learn_port(worker: WorkerProcess, timeout: float = 60.0) -> int:
    """The worker's metrics port, from its start-up line in a text or a JSON log."""
    def find() -> int | None:
        text = output(worker)
        found = re.search(r"/freshness on [0-9.]+:([0-9]+)", text)
        assert found or worker.alive(), f"the worker exited:\n{text[-3000:]}"
        return int(found.group(1)) if found else None

    worker.port = wait_until(find, timeout, "the worker's metrics port")
    return worker.port


def output(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def wait_committed(stack: Stack, worker: WorkerProcess, group: str, topics: list[str],
                   timeout: float = 60.0) -> None:
    """Wait until `group` has committed the end of every partition of `topics` and no
    shard is parked: a TRUNCATE in the recording parks its shard behind it, and what it
    parked is applied (between batches) after the group has committed past it."""
    ends = end_offsets(stack, topics)

    def done() -> bool:
        assert worker.alive(), f"the worker exited:\n{output(worker)[-3000:]}"
        if committed(stack, group, topics) != ends:
            return False
        shards = worker.ready().get("shards", {})
        return all(state == "up" for state in shards.values())

    wait_until(done, timeout, f"group {group} to commit {ends}", interval=0.5)


def versions(client: Any, keys: list[str]) -> dict[str, int | None]:
    """The `v` field of each key (None: no entry)."""
    out: dict[str, int | None] = {}
    for key in keys:
        raw = client.hget(key, "v")
        out[key] = None if raw is None else int(raw)
    return out


def sample_sum(metrics: str, name: str) -> float:
    """The sum of every sample of metric `name` in a Prometheus text exposition."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total
