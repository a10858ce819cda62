"""`sources` in the chart: each source database's DSN is a file from its own Secret,
mounted into the audit pods only and named by the rendered config's
`sources[].postgres.dsn_file`; the reconciler reads it there."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.settings import load_settings
from tests.chart.conftest import CHART, Rendered
from tests.chart.test_least_privilege import container, file_env, pods, secret_files

pytestmark = pytest.mark.chart

SOURCES = CHART / "ci" / "sources-values.yaml"
MINIMAL = CHART / "ci" / "minimal-values.yaml"
SECRETS_DIR = "/etc/cache-reconciler/secrets"


def config_of(rendered: Rendered) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"])
    return data


def test_each_sources_dsn_reaches_the_audit_pods_only_as_a_file_the_config_names(
        rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci[SOURCES.name]
    sources = config_of(rendered)["sources"]
    assert [(s["name"], s["topic_prefix"], s.get("connector")) for s in sources] == [
        ("shard1", "shard1", "shard1-postgres"), ("shard2", "shard2", None)]
    components = pods(rendered)
    assert set(components) == {"worker", "audit"}
    audit = secret_files(components["audit"])
    assert {s["postgres"]["dsn_file"]: audit.get(s["postgres"]["dsn_file"])
            for s in sources} == {
        f"{SECRETS_DIR}/sources/shard1/dsn": ("shard1-postgres", "dsn"),
        f"{SECRETS_DIR}/sources/shard2/dsn": ("shard2-postgres", "dsn")}
    worker = components["worker"]
    assert not secret_files(worker) and not file_env(worker), "no DSN in the worker"
    assert "RECONCILER_POSTGRES__DSN_FILE" not in file_env(components["audit"])
    assert config_of(rendered)["tables"]["public.events"]["partitions"] == [
        r"events_\d{4}_\d{2}", "events_default"]


def test_the_reconciler_reads_each_sources_dsn_where_the_chart_mounts_it(
        rendered_ci: dict[str, Rendered], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = rendered_ci[SOURCES.name]
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        monkeypatch.delenv(name)
    audit = pods(rendered)["audit"]
    mounts = {m["mountPath"] for m in container(audit)["volumeMounts"]}
    assert SECRETS_DIR in mounts
    root = tmp_path / "pod"
    text = rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"]
    for path, (secret, key) in secret_files(audit).items():
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(f"postgresql://{secret}/{key}\n")
    config = tmp_path / "reconciler.yaml"
    config.write_text(text.replace(SECRETS_DIR, str(root) + SECRETS_DIR))
    settings = load_settings(config)
    assert {s.name: s.postgres.dsn_value() for s in settings.source_list()} == {
        "shard1": "postgresql://shard1-postgres/dsn",
        "shard2": "postgresql://shard2-postgres/dsn"}


@pytest.mark.parametrize(("values", "message"), [
    ({"sources": [{"name": "a", "topicPrefix": "a", "existingSecret": "s"}],
      "postgres": {"existingSecret": "pg", "dsnKey": "dsn"}},
     "sources and postgres.existingSecret are both set"),
    ({"sources": [{"name": "a", "topicPrefix": "a", "existingSecret": "s"},
                  {"name": "a", "topicPrefix": "b", "existingSecret": "t"}]},
     "sources: the name a is given more than once"),
    ({"sources": [{"name": "a", "topicPrefix": "a"}]}, "existingSecret"),
    ({"sources": [{"name": "a", "topicPrefix": "a", "existingSecret": "s", "dsn": "x"}]},
     "additional properties 'dsn' not allowed"),
    ({"sources": [{"name": "A_b", "topicPrefix": "a", "existingSecret": "s"}]}, "/sources/0/name"),
])
def test_bad_sources_are_refused(render_error: Callable[..., str], values: dict[str, Any],
                                 message: str) -> None:
    error = render_error(MINIMAL, values=values)
    assert message in error, error


def test_the_audit_runs_with_sources_alone(render: Callable[..., Rendered]) -> None:
    rendered = render(MINIMAL, values={
        "audit": {"enabled": True},
        "sources": [{"name": "a", "topicPrefix": "a", "existingSecret": "pg-a"}]})
    assert "CronJob" in rendered.kinds()
