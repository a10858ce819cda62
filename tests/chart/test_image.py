"""The image's install and run steps, exercised without a Docker engine.

scripts/check-image.sh runs the Dockerfile's pip commands in fresh virtualenvs (wheels
from the pinned constraints, offline install with --no-deps, pip check) and then the
image's entrypoint: a wrong package name, a missing pin or a broken entry point fails."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.chart


def test_the_dockerfile_install_and_entrypoint_steps_work_in_a_fresh_virtualenv() -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check-image.sh")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
