"""Static checks that CI runs with the tests: types, lint, and the dependency direction
(connectors and shard_map never import reconciler or each other)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.parametrize("command", [
    pytest.param([str(BIN / "lint-imports")], id="import-linter"),
    pytest.param([str(BIN / "mypy")], id="mypy-strict"),
    pytest.param([str(BIN / "ruff"), "check", "reconciler", "connectors", "shard_map",
                  "stack", "demo", "bench", "tests", "deploy"], id="ruff"),
])
def test_static_check_passes(command: list[str]) -> None:
    proc = run(*command)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
