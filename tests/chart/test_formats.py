"""The topics' formats in the chart: `config.kafka.format`/`formats`/`schema_registry`
reach the rendered config, and the registry's credentials are files from a Secret,
mounted into the pods that decode (worker, replay), never the audit's, and named to the
reconciler by `*_FILE` variables it reads."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.debezium.flattened import FlattenedDecoder
from reconciler.pipeline.decoders import build_decoder
from reconciler.settings import load_settings
from tests.chart.conftest import CHART, Rendered
from tests.chart.test_least_privilege import file_env, pods, secret_files

pytestmark = pytest.mark.chart

FORMATS = CHART / "ci" / "formats-values.yaml"
MINIMAL = CHART / "ci" / "minimal-values.yaml"
SECRETS_DIR = "/etc/cache-reconciler/secrets"
PASSWORD = f"{SECRETS_DIR}/kafka/schema-registry-password"
USERNAME = f"{SECRETS_DIR}/kafka/schema-registry-username"


def config_text(rendered: Rendered) -> str:
    text: str = rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"]
    return text


def test_the_formats_reach_the_config_as_given(rendered_ci: dict[str, Rendered]) -> None:
    kafka = yaml.safe_load(config_text(rendered_ci[FORMATS.name]))["kafka"]
    assert kafka["format"] == "avro"
    assert kafka["formats"] == {"ndflat.public.profiles": "flattened"}
    assert kafka["schema_registry"] == {
        "url": "http://apicurio.kafka.svc:8080/apis/ccompat/v7", "timeout_seconds": 5}
    defaults = yaml.safe_load(config_text(rendered_ci["defaults"]))["kafka"]
    assert not {"format", "formats", "schema_registry"} & set(defaults)  # JSON: as before


def test_the_registry_credentials_reach_the_decoding_pods_only_as_files(
        rendered_ci: dict[str, Rendered]) -> None:
    components = pods(rendered_ci[FORMATS.name])
    assert set(components) == {"worker", "replay", "audit"}
    for component in ("worker", "replay"):
        files = secret_files(components[component])
        assert files[PASSWORD] == ("schema-registry-reader", "password")
        assert files[USERNAME] == ("schema-registry-reader", "username")
        env = file_env(components[component])
        assert env["RECONCILER_KAFKA__SCHEMA_REGISTRY__PASSWORD_FILE"] == PASSWORD
        assert env["RECONCILER_KAFKA__SCHEMA_REGISTRY__USERNAME_FILE"] == USERNAME
    audit = components["audit"]
    assert PASSWORD not in secret_files(audit)
    assert not [name for name in file_env(audit) if "SCHEMA_REGISTRY" in name]


def test_the_reconciler_reads_the_registry_credentials_where_the_chart_mounts_them(
        rendered_ci: dict[str, Rendered], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = rendered_ci[FORMATS.name]
    for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
        monkeypatch.delenv(name)
    worker = pods(rendered)["worker"]
    root = tmp_path / "pod"
    for path, (_, key) in secret_files(worker).items():
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(f"the-{key}\n")
    for name, value in file_env(worker).items():
        monkeypatch.setenv(name, str(root) + value)
    (tmp_path / "shard_map.yaml").write_text(yaml.safe_dump(
        {"version": 1, "shards": {"a": {"url": "valkey://a:6379/0"}}, "default": "a"}))
    config = yaml.safe_load(config_text(rendered))
    config["shard_map"] = "shard_map.yaml"
    (tmp_path / "reconciler.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(tmp_path / "reconciler.yaml")
    registry = settings.kafka.schema_registry
    assert registry is not None
    assert registry.client_config()["basic.auth.user.info"] == "the-username:the-password"
    assert isinstance(build_decoder(settings, None), FlattenedDecoder)  # avro and flattened


@pytest.mark.parametrize(("values", "message"), [
    ({"config": {"kafka": {"format": "xml"}}}, "/config/kafka/format"),
    ({"config": {"kafka": {"formats": {"nd.public.posts": "unwrapped"}}}},
     "/config/kafka/formats/nd.public.posts"),
    ({"config": {"kafka": {"format": "avro"}}}, "set config.kafka.schema_registry.url"),
    ({"config": {"kafka": {"formats": {"nd.public.posts": "avro"}}}},
     "set config.kafka.schema_registry.url"),
    ({"config": {"kafka": {"schema_registry": {"url": "http://r", "password": "x"}}}},
     "additional properties 'password' not allowed"),
    ({"config": {"kafka": {"schema_registry": {"url": "registry:8081"}}}},
     "/config/kafka/schema_registry/url"),
    ({"kafka": {"schemaRegistry": {"existingSecret": "reg"}}},
     "config.kafka.schema_registry.url is not"),
    ({"kafka": {"schemaRegistry": {"existingSecret": "reg", "usernameKey": "user"}},
      "config": {"kafka": {"schema_registry": {"url": "http://r", "username": "u"}}}},
     "both set"),
])
def test_bad_formats_are_refused(render_error: Callable[..., str], values: dict[str, Any],
                                 message: str) -> None:
    error = render_error(MINIMAL, values=values)
    assert message in error, error


def test_flattened_topics_need_no_registry(render: Callable[..., Rendered]) -> None:
    rendered = render(MINIMAL, values={"config": {"kafka": {"format": "flattened"}}})
    assert yaml.safe_load(config_text(rendered))["kafka"]["format"] == "flattened"
    assert not secret_files(pods(rendered)["worker"])
