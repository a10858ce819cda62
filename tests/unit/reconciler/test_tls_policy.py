"""valkey.tls.enabled means it: a shard map with a plaintext shard URL is refused at
start-up (and a reload carrying one is rejected), never silently used in clear."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.errors import ConfigError
from reconciler.pipeline.worker import Worker
from reconciler.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]


def config(tmp_path: Path, url: str) -> Path:
    settings = yaml.safe_load((ROOT / "config/local/reconciler.yaml").read_text())
    settings["valkey"] = {"tls": {"enabled": True}}
    settings["metrics"] = {"host": "127.0.0.1", "port": 0}
    (tmp_path / "reconciler.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "shard_map.yaml").write_text(yaml.safe_dump({
        "version": 1, "shards": {"a": {"url": url}}, "default": "a"}))
    return tmp_path / "reconciler.yaml"


def test_a_plaintext_shard_is_refused_when_tls_is_required(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, "valkey://127.0.0.1:6379/0"))
    with pytest.raises(ConfigError, match=r"shard a: valkey.tls.enabled is true .* not TLS"):
        Worker(settings, serve_metrics=False)


def test_a_tls_shard_is_accepted_when_tls_is_required(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, "valkeys://127.0.0.1:6379/0"))
    worker = Worker(settings, serve_metrics=False)
    worker.close(commit=False)
