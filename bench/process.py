"""Starting `bench.runner` processes, alone or as a group, and collecting their results;
a peer's spec (kind `camel`) is run by its own module (`bench.peers`), a JVM."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.env import ROOT, delete_parking_topics
from bench.group import Gate, Progress, combine
from bench.peers import camel
from bench.runner import Spec, write_spec

PY_SPY = Path(sys.executable).parent / "py-spy"  # `pip install py-spy` into the venv
PY_SPY_RATE = 250  # samples per second
GROUP_POLL = 0.05  # seconds between looks at a group's files


class Runner:
    """One `python -m bench.runner` child, importing the worker code in `code` (its
    working directory); its output goes to `<workdir>/<name>.log`."""

    def __init__(self, spec: Spec, workdir: Path, name: str, *, code: Path = ROOT,
                 py_spy: Path | None = None) -> None:
        self.spec = spec
        self.log_path = workdir / f"{name}.log"
        argv = [sys.executable, "-m", "bench.runner",
                str(write_spec(spec, workdir / f"{name}.spec.json"))]
        if py_spy is not None:
            if not PY_SPY.exists():
                raise SystemExit(f"{PY_SPY} is missing: `{sys.executable} -m pip install "
                                 "py-spy` (a benchmark tool, not a project dependency)")
            argv = [str(PY_SPY), "record", "--format", "raw", "--nolineno", "--gil",
                    "--rate", str(PY_SPY_RATE), "--output", str(py_spy), "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=code, stdout=log, stderr=subprocess.STDOUT,
                                         env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def kill(self) -> None:
        """Kill the child if it is still running (after a failure elsewhere)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
            self._tidy()

    def _tidy(self) -> None:
        """A worker alone in its group, ended: its parking topics go (`bench.env`); a
        group's go once every member has ended (`run_group`)."""
        if self.spec.kind == "worker" and self.spec.group is None:
            delete_parking_topics(self.spec.config)

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the child and return its JSON result (fails with its log's tail)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.spec.kind} runner still running after {timeout:.0f}s; "
                               f"log: {self.log_path}\n{self.tail()}") from None
        self._tidy()
        out = Path(self.spec.out)
        if code != 0 or not out.exists():
            raise RuntimeError(f"{self.spec.kind} runner exited with {code}; log: "
                               f"{self.log_path}\n{self.tail()}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def run(spec: Spec, workdir: Path, name: str, *, timeout: float, code: Path = ROOT,
        py_spy: Path | None = None) -> dict[str, Any]:
    if spec.kind == "camel":
        return camel.run(spec, workdir, name, timeout=timeout)
    with Runner(spec, workdir, name, code=code, py_spy=py_spy) as runner:
        return runner.result(timeout)


def run_group(members: Mapping[str, Spec], workdir: Path, *, timeout: float,
              code: Path = ROOT) -> dict[str, Any]:
    """Several runners in one consumer group (`bench.group`), started together; their
    results combined. Every spec names the same `group` folder and its own `progress`."""
    specs = list(members.values())
    gate = Gate(specs[0].group or "")
    total, partitions = specs[0].records, len(specs[0].ends)
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(Runner(spec, workdir, name, code=code))
                   for name, spec in members.items()]

        def wait(until: Callable[[], bool], what: str) -> None:
            while not until():
                for runner in runners:
                    if runner.proc.poll() is not None:  # ended before the group did
                        runner.result(0)
                        raise RuntimeError(f"{runner.log_path}: ended while {what}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"group of {len(runners)} still {what} after "
                                       f"{timeout:.0f}s; logs: {workdir}")
                time.sleep(GROUP_POLL)

        def stable() -> bool:  # every member holds partitions, and they hold them all
            held = [Gate.held(spec.out) for spec in specs]
            return all(held) and sum(held) == partitions

        wait(stable, "joining the group")
        gate.open()
        wait(lambda: sum(Progress.read(spec.progress or "") for spec in specs) >= total,
             "reading the topic")
        gate.close()
        try:
            return combine([runner.result(max(1.0, deadline - time.monotonic()))
                            for runner in runners])
        finally:
            delete_parking_topics(specs[0].config)
