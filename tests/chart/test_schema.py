"""Values the chart refuses: by values.schema.json, or by the template's own checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.chart.conftest import CHART

pytestmark = pytest.mark.chart

MINIMAL = CHART / "ci" / "minimal-values.yaml"
RenderError = Callable[..., str]

# (id, --set values, --set-string values, a values document, what the error must say)
REJECTED: list[tuple[str, list[str], list[str], dict[str, Any] | None, str]] = [
    (
        "unknown top-level key",
        ["replicas=2"],
        [],
        None,
        "additional properties 'replicas' not allowed",
    ),
    ("unknown nested key", ["image.name=x"], [], None, "additional properties 'name' not allowed"),
    (
        "unknown config key",
        ["config.kafka.bootstrap=x"],
        [],
        None,
        "additional properties 'bootstrap' not allowed",
    ),
    ("replicas as a string", [], ["replicaCount=2"], None, "/replicaCount"),
    ("negative replicas", ["replicaCount=-1"], [], None, "/replicaCount"),
    ("port as a string", [], ["metrics.port=9400"], None, "/metrics/port"),
    ("port out of range", ["metrics.port=70000"], [], None, "/metrics/port"),
    ("toggle as a string", [], ["autoscaling.enabled=yes"], None, "/autoscaling/enabled"),
    ("image repository missing", ["image.repository=null"], [], None, "repository"),
    ("empty image repository", [], ["image.repository="], None, "/image/repository"),
    ("bad pull policy", ["image.pullPolicy=Sometimes"], [], None, "/image/pullPolicy"),
    ("bad digest", ["image.digest=latest"], [], None, "/image/digest"),
    (
        "bad security protocol",
        ["config.kafka.security.protocol=TLS"],
        [],
        None,
        "/config/kafka/security/protocol",
    ),
    ("bad unknown_tables", ["config.unknown_tables=ignore"], [], None, "/config/unknown_tables"),
    ("bad log format", ["config.logging.format=xml"], [], None, "/config/logging/format"),
    ("lower-case log level", ["config.logging.level=debug"], [], None, "/config/logging/level"),
    (
        "table without shard key",
        [],
        [],
        {
            "config": {
                "tables": {
                    "public.users": {"primary_key": ["id"], "keys": [{"template": "u:{id}"}]}
                }
            }
        },
        "shard_key",
    ),
    (
        "bad column type",
        [],
        [],
        {"config": {"tables": {"public.posts": {"column_types": {"id": "bigint"}}}}},
        "column_types",
    ),
    (
        "property the reconciler sets itself",
        [],
        [],
        {"config": {"kafka": {"client": {"partition.assignment.strategy": "range"}}}},
        "partition.assignment.strategy",
    ),
    (
        "dead-letter topic consumed",
        ["config.kafka.dead_letter_topic=nd.public.posts"],
        [],
        None,
        "must not be one of config.kafka.topics",
    ),
    (
        "Valkey TLS with plain shard URLs",
        ["valkey.tls.ca.existingSecret=valkey-ca"],
        [],
        None,
        "valkey.tls is set but shard a is valkey://valkey-a.cache.svc:6379/0",
    ),
    (
        "Valkey TLS with plain Sentinel URLs",
        ["valkey.tls.ca.existingSecret=valkey-ca"],
        [],
        {"shardMap": {"content": {"shards": {
            "a": {"url": "valkeys://valkey-a:6380/0"}, "b": {"url": "valkeys://valkey-b:6380/0"},
            "c": {"sentinel": ["valkey://sentinel-0:26379"], "service": "cache-c"}}}}},
        "valkey.tls is set but shard c is valkey://sentinel-0:26379",
    ),
    (
        "bad replica identity",
        [],
        [],
        {"config": {"tables": {"public.posts": {"replica_identity": "nothing"}}}},
        "replica_identity",
    ),
    (
        "table without keys",
        [],
        [],
        {"config": {"tables": {"public.users": {"primary_key": ["id"]}}}},
        "keys",
    ),
    (
        "table name without schema",
        [],
        [],
        {
            "config": {
                "tables": {"users": {"primary_key": ["id"], "keys": [{"template": "user:{id}"}]}}
            }
        },
        "users",
    ),
    (
        "shard_map owned by the chart",
        ["config.shard_map=x.yaml"],
        [],
        None,
        "'shard_map' not allowed",
    ),
    ("metrics port owned by the chart", ["config.metrics.port=1"], [], None, "'port' not allowed"),
    (
        "postgres dsn in config",
        [],
        ["config.postgres.dsn=postgresql://u:p@h/db"],
        None,
        "'postgres' not allowed",
    ),
    (
        "SASL password in config",
        [],
        ["config.kafka.security.sasl_password=x"],
        None,
        "'sasl_password' not allowed",
    ),
    (
        "password in librdkafka passthrough",
        [],
        [],
        {"config": {"kafka": {"client": {"sasl.password": "x"}}}},
        "sasl.password",
    ),
    (
        "private key in librdkafka passthrough",
        [],
        [],
        {"config": {"kafka": {"client": {"ssl.key.pem": "x"}}}},
        "ssl.key.pem",
    ),
    (
        "credentials in a shard URL",
        [],
        [],
        {"shardMap": {"content": {"shards": {"a": {"url": "valkey://:hunter2@valkey-a:6379/0"}}}}},
        "/shardMap/content/shards/a/url",
    ),
    (
        "credentials in a Sentinel URL",
        [],
        [],
        {"shardMap": {"content": {"shards": {"c": {
            "sentinel": ["valkey://:hunter2@sentinel-0:26379"], "service": "cache-c"}}}}},
        "/shardMap/content/shards/c/sentinel/0",
    ),
    (
        "credentials in a cluster seed URL",
        [],
        [],
        {"shardMap": {"content": {"shards": {"b": {
            "cluster": ["valkey://cache-b-0:6379", "valkey://:hunter2@cache-b-1:6379"]}}}}},
        "/shardMap/content/shards/b/cluster/1",
    ),
    (
        "a cluster seed naming a database",
        [],
        [],
        {"shardMap": {"content": {"shards": {"b": {"cluster": ["valkey://cache-b-0:6379/3"]}}}}},
        "/shardMap/content/shards/b/cluster/0",
    ),
    (
        "a shard both standalone and a cluster",
        [],
        [],
        {"shardMap": {"content": {"shards": {"b": {
            "url": "valkey://cache-b-0:6379/0", "cluster": ["valkey://cache-b-0:6379"]}}}}},
        "/shardMap/content/shards/b",
    ),
    (
        "Valkey TLS with plain cluster seeds",
        ["valkey.tls.ca.existingSecret=valkey-ca"],
        [],
        {"shardMap": {"content": {"shards": {
            "a": {"url": "valkeys://valkey-a:6380/0"}, "b": {"url": "valkeys://valkey-b:6380/0"},
            "c": {"cluster": ["valkey://cache-c-0:6379"]}}}}},
        "valkey.tls is set but shard c is valkey://cache-c-0:6379",
    ),
    (
        "a Sentinel shard without its service",
        [],
        [],
        {"shardMap": {"content": {"shards": {"c": {"sentinel": ["valkey://sentinel-0:26379"]}}}}},
        "/shardMap/content/shards/c",
    ),
    (
        "bad shard URL scheme",
        [],
        [],
        {"shardMap": {"content": {"shards": {"a": {"url": "http://valkey-a"}}}}},
        "/shardMap/content/shards/a/url",
    ),
    (
        "PDB as a word",
        [],
        ["podDisruptionBudget.maxUnavailable=one"],
        None,
        "/podDisruptionBudget/maxUnavailable",
    ),
    ("bad scrape interval", ["metrics.serviceMonitor.interval=often"], [], None, "interval"),
    (
        "bad CIDR",
        [],
        [],
        {"networkPolicy": {"egress": {"kafka": {"cidrs": ["kafka.svc"]}}}},
        "cidrs",
    ),
    ("negative replay rate", ["replay.rate=-5"], [], None, "/replay/rate"),
    ("empty replay start", [], ["replay.from="], None, "/replay/from"),
    # The template's own checks: relations between values.
    (
        "HPA max above partitions",
        ["autoscaling.enabled=true", "autoscaling.maxReplicas=7"],
        [],
        None,
        "autoscaling.maxReplicas (7) exceeds kafka.partitionCount (6)",
    ),
    (
        "HPA min above max",
        ["autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=4"],
        [],
        None,
        "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (4)",
    ),
    (
        "replicas above partitions",
        ["replicaCount=8"],
        [],
        None,
        "replicaCount (8) exceeds kafka.partitionCount (6)",
    ),
    (
        "grace period equal to the budget",
        ["terminationGracePeriodSeconds=30"],
        [],
        None,
        "terminationGracePeriodSeconds (30) must be greater than "
        "config.shutdown_timeout_seconds (30)",
    ),
    (
        "budget above the grace period",
        ["config.shutdown_timeout_seconds=60"],
        [],
        None,
        "must be greater than config.shutdown_timeout_seconds (60)",
    ),
    ("topics and topic_regex", ["config.kafka.topic_regex=^nd\\..*"], [], None, "exclusive"),
    (
        "SASL without a secret",
        ["config.kafka.security.protocol=SASL_SSL", "config.kafka.security.sasl_mechanism=PLAIN"],
        [],
        None,
        "kafka.sasl.existingSecret",
    ),
    (
        "SASL without a mechanism",
        [
            "config.kafka.security.protocol=SASL_SSL",
            "kafka.sasl.existingSecret=s",
            "kafka.sasl.username=u",
        ],
        [],
        None,
        "sasl_mechanism",
    ),
    (
        "SASL secret with PLAINTEXT",
        ["kafka.sasl.existingSecret=s"],
        [],
        None,
        "protocol is PLAINTEXT",
    ),
    (
        "TLS secret with PLAINTEXT",
        ["kafka.tls.ca.existingSecret=ca"],
        [],
        None,
        "protocol is PLAINTEXT",
    ),
]


@pytest.mark.parametrize(
    ("sets", "set_strings", "values", "message"),
    [r[1:] for r in REJECTED],
    ids=[r[0] for r in REJECTED],
)
def test_rejected(
    render_error: RenderError,
    sets: list[str],
    set_strings: list[str],
    values: dict[str, Any] | None,
    message: str,
) -> None:
    error = render_error(MINIMAL, values=values, sets=sets, set_strings=set_strings)
    assert message in error, error


def test_schema_is_strict_and_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert {"repository", "pullPolicy"} <= set(schema["properties"]["image"]["required"])
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in node.get("properties", {}).items():
            if "description" not in child and "$ref" not in child:
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")

    walk(schema, "")
    for name, definition in schema["definitions"].items():
        walk(definition, f"#{name}")
    assert not missing, f"properties without a description: {missing}"


def test_every_default_value_is_in_the_schema() -> None:
    """values.yaml and the schema describe the same tree (no undocumented key)."""
    import yaml

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return resolve(schema["definitions"][node["$ref"].rsplit("/", 1)[1]])
        if "allOf" in node and len(node["allOf"]) == 1:
            return resolve(node["allOf"][0])
        return node

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, child in value.items():
            assert key in node["properties"] or node.get("additionalProperties") is not False, (
                f"{path}.{key}"
            )
            if key in node["properties"]:
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")
