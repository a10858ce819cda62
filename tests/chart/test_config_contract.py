"""The config files the chart renders are accepted by the reconciler itself.

Each ci/*-values.yaml renders a reconciler.yaml and a shard map; the reconciler's own
CLI loads them: `reconciler plan` (which validates the whole config and loads the shard
map, then plans an empty input, touching nothing) and `reconciler shard-map check`. The
only change is the shard-map path, which points into the pod's mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CI_VALUES, Rendered

pytestmark = pytest.mark.chart

# A stand-in for a shard map kept in an existing ConfigMap outside the chart.
EXTERNAL_SHARD_MAP = {
    "version": 1,
    "shards": {"a": {"url": "valkeys://valkey-a:6380/0"}},
    "default": "a",
}


def reconciler(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        # RECONCILER_* variables would override the file under test.
        env={k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")},
        timeout=60,
    )


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_reconciler_accepts_the_rendered_config(
    rendered_ci: dict[str, Rendered], values_file: Path, tmp_path: Path
) -> None:
    rendered = rendered_ci[values_file.name]
    config = yaml.safe_load(rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"])
    file_name = Path(config["shard_map"]).name
    shard_maps = [
        c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-shard-map")
    ]
    if shard_maps:
        (tmp_path / file_name).write_text(shard_maps[0]["data"][file_name])
        checked = reconciler("shard-map", "check", file_name, cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    else:
        (tmp_path / file_name).write_text(yaml.safe_dump(EXTERNAL_SHARD_MAP))
    config["shard_map"] = file_name  # relative to the config file, as in the pod's mount
    (tmp_path / "reconciler.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "empty.jsonl").write_text("")
    planned = reconciler("plan", "-c", "reconciler.yaml", "--input", "empty.jsonl", cwd=tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert planned.stdout == ""
