"""What the chart renders, and what it must not, for each toggle and values file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    VALUES_FILES,
    Rendered,
    RenderError,
    values_id,
)

pytestmark = pytest.mark.chart

Render = Callable[..., Rendered]
MINIMAL = CHART / "ci" / "minimal-values.yaml"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
EXISTING_SECRETS = CHART / "ci" / "existing-secrets-values.yaml"
REPLAY = CHART / "ci" / "replay-job-values.yaml"
FULLNAME = f"{RELEASE}-cache-reconciler"
WORKER_SELECTOR = {
    "app.kubernetes.io/name": "cache-reconciler",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "worker",
}


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec["containers"]
    assert len(containers) == 1
    return containers[0]


def reconciler_config(rendered: Rendered) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"]
    )
    return config


def checksum(rendered: Rendered) -> str:
    return str(
        rendered.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    )


# ---------------------------------------------------------------- what renders


def test_defaults_render_the_core_and_nothing_optional(render: Render) -> None:
    rendered = render()
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered.docs}
    assert names == {
        ("ServiceAccount", FULLNAME),
        ("ConfigMap", f"{FULLNAME}-config"),
        ("ConfigMap", f"{FULLNAME}-shard-map"),
        ("Service", f"{FULLNAME}-metrics"),
        ("Deployment", FULLNAME),
        ("PodDisruptionBudget", FULLNAME),
        ("NetworkPolicy", f"{FULLNAME}-worker"),
        ("Pod", f"{FULLNAME}-test"),
    }
    assert not rendered.of_kind("Secret"), "the chart never creates Secrets"


TOGGLES: list[tuple[str, str, str]] = [
    # (value that switches it on, kind, name suffix)
    ("metrics.serviceMonitor.enabled", "ServiceMonitor", FULLNAME),
    ("metrics.prometheusRule.enabled", "PrometheusRule", FULLNAME),
    ("metrics.grafanaDashboard.enabled", "ConfigMap", "-dashboards"),
    ("autoscaling.enabled", "HorizontalPodAutoscaler", FULLNAME),
    ("networkPolicy.enabled", "NetworkPolicy", "-worker"),
    ("replay.enabled", "Job", ""),
    ("audit.enabled", "CronJob", "-audit"),
    ("podDisruptionBudget.enabled", "PodDisruptionBudget", FULLNAME),
    ("serviceAccount.create", "ServiceAccount", FULLNAME),
    ("tests.enabled", "Pod", "-test"),
]
NETWORK_TARGETS = [
    "networkPolicy.egress.kafka.cidrs={10.0.0.0/16}",
    "networkPolicy.egress.valkey.cidrs={10.1.0.0/16}",
    "postgres.existingSecret=pg",  # what the audit CronJob needs
]


@pytest.mark.parametrize(("toggle", "kind", "suffix"), TOGGLES, ids=[t[0] for t in TOGGLES])
def test_toggle_on_renders_and_off_does_not(
    render: Render, toggle: str, kind: str, suffix: str
) -> None:
    def matching(rendered: Rendered) -> list[dict[str, Any]]:
        return [d for d in rendered.of_kind(kind) if d["metadata"]["name"].endswith(suffix)]

    on = render(MINIMAL, sets=[f"{toggle}=true", *NETWORK_TARGETS])
    off = render(MINIMAL, sets=[f"{toggle}=false", *NETWORK_TARGETS])
    assert len(matching(on)) == 1, f"{toggle}=true should render one {kind} *{suffix}"
    assert matching(off) == [], f"{toggle}=false should render no {kind} *{suffix}"


def test_all_features_render_everything(rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci["all-features-values.yaml"]
    assert rendered.kinds() == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Job",
        "CronJob",
        "ServiceMonitor",
        "PrometheusRule",
        "Pod",
    }
    assert len(rendered.of_kind("ConfigMap")) == 3  # config, shard map, dashboards


def test_autoscaling_leaves_replicas_to_the_hpa(render: Render) -> None:
    assert render(MINIMAL, sets=["replicaCount=3"]).deployment["spec"]["replicas"] == 3
    scaled = render(MINIMAL, sets=["autoscaling.enabled=true"])
    assert "replicas" not in scaled.deployment["spec"]


def test_service_account_not_created_uses_the_given_name(render: Render) -> None:
    rendered = render(MINIMAL, sets=["serviceAccount.create=false", "serviceAccount.name=shared"])
    assert not rendered.of_kind("ServiceAccount")
    assert rendered.deployment["spec"]["template"]["spec"]["serviceAccountName"] == "shared"


def test_service_account_token_is_not_mounted(rendered_ci: dict[str, Rendered]) -> None:
    for rendered in rendered_ci.values():
        for account in rendered.of_kind("ServiceAccount"):
            assert account["automountServiceAccountToken"] is False
        for spec in rendered.pod_specs():
            assert spec["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- the worker pods


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_restricted_security_context(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    rendered = rendered_ci[values_id(values_file)]
    for spec in rendered.pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0
        assert isinstance(pod["runAsGroup"], int) and pod["runAsGroup"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        ctx = container(spec)["securityContext"]
        assert ctx["runAsNonRoot"] is True
        assert ctx["runAsUser"] == 10001 and ctx["runAsGroup"] == 10001
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["privileged"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_tmp_is_a_writable_empty_dir(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    rendered = rendered_ci[values_id(values_file)]
    for doc in rendered.of_kind("Deployment") + rendered.of_kind("Job"):
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container(spec)["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        assert not mounts["/tmp"].get("readOnly", False)


def test_probes(render: Render) -> None:
    reconciler = container(render(MINIMAL).deployment["spec"]["template"]["spec"])
    assert reconciler["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert reconciler["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert reconciler["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert reconciler["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "enabled" not in reconciler["livenessProbe"]
    off = container(
        render(MINIMAL, sets=["startupProbe.enabled=false"]).deployment["spec"]["template"]["spec"]
    )
    assert "startupProbe" not in off and "livenessProbe" in off


def test_entrypoint_args(render: Render) -> None:
    reconciler = container(
        render(MINIMAL, sets=["extraArgs={--log-level,DEBUG}"]).deployment["spec"]["template"][
            "spec"
        ]
    )
    assert "command" not in reconciler, "the image's ENTRYPOINT (reconciler) is kept"
    assert reconciler["args"] == ["run", "--log-level", "DEBUG"]
    env = {e["name"]: e for e in reconciler["env"]}
    assert env["RECONCILER_CONFIG"]["value"] == "/etc/cache-reconciler/config/reconciler.yaml"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_grace_period_outlasts_the_commit_budget(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    rendered = rendered_ci[values_id(values_file)]
    budget = reconciler_config(rendered)["shutdown_timeout_seconds"]
    for doc in rendered.of_kind("Deployment") + rendered.of_kind("Job"):
        assert doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > budget


def test_update_strategy_never_surges_past_the_partitions(render: Render) -> None:
    strategy = render(MINIMAL).deployment["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_scheduling_pass_through(rendered_ci: dict[str, Rendered]) -> None:
    spec = rendered_ci["all-features-values.yaml"].deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["priorityClassName"] == "streaming-high"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    zone, host = spec["topologySpreadConstraints"]
    # A constraint without a labelSelector gets the worker pods'; a given one is kept.
    assert zone["labelSelector"] == {"matchLabels": WORKER_SELECTOR}
    assert host["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "cache-reconciler"}}


def test_image_reference(render: Render, rendered_ci: dict[str, Rendered]) -> None:
    default = container(render(MINIMAL).deployment["spec"]["template"]["spec"])
    assert default["image"] == "ghcr.io/cache-reconciler/cache-reconciler:0.1.0"  # appVersion
    pinned = container(
        rendered_ci["all-features-values.yaml"].deployment["spec"]["template"]["spec"]
    )
    assert pinned["image"] == (
        "registry.example.com/streaming/cache-reconciler:0.1.0@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )


# ---------------------------------------------------------------- config and checksum


def test_config_file_is_the_reconciler_config(render: Render) -> None:
    config = reconciler_config(render(MINIMAL))
    assert config["kafka"]["bootstrap_servers"] == "my-cluster-kafka-bootstrap.kafka.svc:9092"
    assert config["kafka"]["topics"] == ["nd.public.posts"]
    assert "topic_regex" not in config["kafka"], "an empty topic_regex is not written"
    assert config["shard_map"] == "/etc/cache-reconciler/shard-map/shard_map.yaml"
    assert config["metrics"] == {"host": "0.0.0.0", "port": 9400}
    assert config["tables"]["public.posts"]["keys"][0] == {
        "template": "post:{id}",
        "versioned": True,
    }
    assert config["shutdown_timeout_seconds"] == 30


def test_config_gets_tls_paths_from_the_mounted_secrets(rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci["all-features-values.yaml"]
    config = reconciler_config(rendered)
    assert config["kafka"]["security"] == {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "ssl_endpoint_identification": True,
        "ssl_ca_file": "/etc/cache-reconciler/tls/kafka/ca.crt",
        "ssl_cert_file": "/etc/cache-reconciler/tls/kafka/tls.crt",
        "ssl_key_file": "/etc/cache-reconciler/tls/kafka/tls.key",
    }
    assert config["valkey"] == {
        "socket_timeout_seconds": 3,
        "retry_budget_seconds": 180,
        "truncate_max_keys_per_second": 20000,
        # enabled comes from extraConfig, ca_file from the chart.
        "tls": {"enabled": True, "ca_file": "/etc/cache-reconciler/tls/valkey/ca.crt"},
    }
    assert config["metrics"] == {"lag_refresh_seconds": 10, "host": "0.0.0.0", "port": 9400}
    spec = rendered.deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in container(spec)["volumeMounts"]}
    assert mounts["kafka-tls"] == {
        "name": "kafka-tls",
        "mountPath": "/etc/cache-reconciler/tls/kafka",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    sources = volumes["kafka-tls"]["projected"]["sources"]
    assert [s["secret"]["name"] for s in sources] == ["kafka-cluster-ca-cert", "kafka-client-tls"]
    assert {i["path"] for s in sources for i in s["secret"]["items"]} == {
        "ca.crt",
        "tls.crt",
        "tls.key",
    }


def test_config_file_holds_no_credentials(rendered_ci: dict[str, Rendered]) -> None:
    """Names where a credential is (a `*_file` in the secrets' mount: `sources`' DSNs),
    never what it is."""
    for name, rendered in rendered_ci.items():
        text = rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"].lower()
        text = re.sub(r"[a-z_]+_file: /etc/cache-reconciler/secrets/\S+", "", text)
        for word in ("password", "dsn", "secret", "username"):
            assert word not in text, f"{name}: '{word}' in the config ConfigMap"


def test_checksum_changes_with_the_config(render: Render) -> None:
    base = checksum(render(MINIMAL))
    assert len(base) == 64
    assert checksum(render(MINIMAL, sets=["config.fence_ttl_seconds=90"])) != base
    assert checksum(render(MINIMAL, sets=["config.kafka.group_id=other"])) != base
    assert checksum(render(MINIMAL, sets=["extraConfig.new_setting=1"])) != base
    assert checksum(render(MINIMAL, sets=["metrics.port=9500"])) != base
    assert checksum(render(MINIMAL)) == base, "the checksum is deterministic"


def test_checksum_ignores_the_shard_map(render: Render) -> None:
    base = render(MINIMAL)
    edited = render(MINIMAL, sets=["shardMap.content.version=2", "shardMap.content.default=a"])
    assert checksum(edited) == checksum(base), "a shard-map edit must not roll the pods"
    old = yaml.safe_load(base.one("ConfigMap", "-shard-map")["data"]["shard_map.yaml"])
    new = yaml.safe_load(edited.one("ConfigMap", "-shard-map")["data"]["shard_map.yaml"])
    assert (old["version"], old["default"]) == (1, None)
    assert (new["version"], new["default"]) == (2, "a")
    assert base.deployment["spec"]["template"] == edited.deployment["spec"]["template"]


def test_shard_map_content_is_the_document(render: Render) -> None:
    shard_map = yaml.safe_load(
        render(MINIMAL).one("ConfigMap", "-shard-map")["data"]["shard_map.yaml"]
    )
    assert shard_map["shards"]["a"] == {"url": "valkey://valkey-a.cache.svc:6379/0"}
    assert shard_map["ranges"][1] == {"from": 501, "to": 1000, "shard": "b"}


def test_a_cluster_shard_reaches_the_shard_map(render: Render) -> None:
    seeds = ["valkeys://cache-c-0.cache.svc:6379", "valkeys://cache-c-1.cache.svc:6379"]
    rendered = render(MINIMAL, values={
        "valkey": {"tls": {"ca": {"existingSecret": "valkey-ca"}}},
        "shardMap": {"content": {"shards": {"a": {"url": "valkeys://valkey-a:6380/0"},
                                            "b": {"url": "valkeys://valkey-b:6380/0"},
                                            "c": {"cluster": seeds}}}}})
    shard_map = yaml.safe_load(rendered.one("ConfigMap", "-shard-map")["data"]["shard_map.yaml"])
    assert shard_map["shards"]["c"] == {"cluster": seeds}


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_shard_map_is_a_directory_mount(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    rendered = rendered_ci[values_id(values_file)]
    config = reconciler_config(rendered)
    shard_dir, _, file_name = config["shard_map"].rpartition("/")
    for doc in rendered.of_kind("Deployment") + rendered.of_kind("Job"):
        spec = doc["spec"]["template"]["spec"]
        mounts = container(spec)["volumeMounts"]
        assert all("subPath" not in m and "subPathExpr" not in m for m in mounts), (
            "subPath mounts never update"
        )
        mount = next(m for m in mounts if m["name"] == "shard-map")
        assert mount["mountPath"] == shard_dir
        volume = next(v for v in spec["volumes"] if v["name"] == "shard-map")
        assert volume["configMap"]["items"] == [{"key": file_name, "path": file_name}]


def test_existing_shard_map_config_map(rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci["existing-secrets-values.yaml"]
    assert not [
        c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-shard-map")
    ]
    volume = next(
        v
        for v in rendered.deployment["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "shard-map"
    )
    assert volume["configMap"]["name"] == "cache-shard-map"


# ---------------------------------------------------------------- secrets


SECRET_WORDS = ("PASSWORD", "DSN", "SECRET", "TOKEN", "KEY")


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_no_secret_in_a_literal_value(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    """A secret-looking variable is a `*_FILE` path under the secrets mount, or the
    user's own `extraEnv` from a secretKeyRef (tests/chart/test_least_privilege.py: the
    chart's own credentials are files)."""
    rendered = rendered_ci[values_id(values_file)]
    assert not rendered.of_kind("Secret")
    for spec in rendered.pod_specs():
        for env in container(spec).get("env", []):
            if any(word in env["name"] for word in SECRET_WORDS):
                if env["name"].endswith("_FILE"):
                    assert env["value"].startswith("/etc/cache-reconciler/secrets/"), env
                else:
                    assert "value" not in env, f"{env['name']} has a literal value"
                    assert set(env["valueFrom"]) == {"secretKeyRef"}, env


def test_existing_secrets_env(rendered_ci: dict[str, Rendered]) -> None:
    spec = rendered_ci["existing-secrets-values.yaml"].deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(spec)["env"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    items = {f"/etc/cache-reconciler/secrets/{i['path']}": (s["secret"]["name"], i["key"])
             for s in volumes["secrets"]["projected"]["sources"] for i in s["secret"]["items"]}

    def ref(name: str) -> tuple[str, str]:
        return items[str(env[name])]

    assert ref("RECONCILER_KAFKA__SECURITY__SASL_PASSWORD_FILE") == ("cache-reconciler",
                                                                    "password")
    # Strimzi: the user name is the KafkaUser's name, not in the Secret; it is not secret.
    assert env["RECONCILER_KAFKA__SECURITY__SASL_USERNAME"] == "cache-reconciler"
    assert ref("RECONCILER_VALKEY__USERNAME_FILE") == ("valkey-acl", "reconciler-user")
    assert ref("RECONCILER_VALKEY__PASSWORD_FILE") == ("valkey-acl", "reconciler-password")
    assert ref("RECONCILER_VALKEY__SENTINEL__PASSWORD_FILE") == ("valkey-sentinel",
                                                                "sentinel-password")
    assert "RECONCILER_VALKEY__SENTINEL__USERNAME_FILE" not in env  # the Sentinels' default
    assert not [n for n in env if n.startswith("RECONCILER_POSTGRES")], "the worker: no DSN"
    assert volumes["secrets"]["projected"]["defaultMode"] == 0o440
    valkey_sources = volumes["valkey-tls"]["projected"]["sources"]
    assert [s["secret"]["name"] for s in valkey_sources] == ["valkey-tls", "valkey-tls"]
    assert volumes["kafka-tls"]["projected"]["defaultMode"] == 0o440


def test_no_credentials_env_without_secrets(render: Render) -> None:
    env = container(render(MINIMAL).deployment["spec"]["template"]["spec"])["env"]
    assert [e["name"] for e in env] == ["RECONCILER_CONFIG"]


# ---------------------------------------------------------------- monitoring


def test_service_and_service_monitor_agree(rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci["all-features-values.yaml"]
    service = rendered.one("Service")
    assert service["spec"]["selector"] == WORKER_SELECTOR
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9400, "targetPort": "metrics", "protocol": "TCP"}
    ]
    monitor = rendered.one("ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "metrics",
        "/metrics",
        "15s",
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The Deployment's pods are the Service's endpoints; replay and test pods are not.
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert WORKER_SELECTOR.items() <= pod_labels.items()
    for other in rendered.of_kind("Job") + rendered.of_kind("Pod"):
        labels = (
            other["spec"]["template"]["metadata"]["labels"]
            if other["kind"] == "Job"
            else other["metadata"]["labels"]
        )
        assert not WORKER_SELECTOR.items() <= labels.items()


def test_prometheus_rules_come_from_the_rules_folder_through_tpl(
    rendered_ci: dict[str, Rendered],
) -> None:
    groups = rendered_ci["all-features-values.yaml"].one("PrometheusRule")["spec"]["groups"]
    from_files: list[dict[str, Any]] = []
    for path in sorted((CHART / "rules").glob("*.yaml")):
        from_files += yaml.safe_load(path.read_text().replace("{{", "#").replace("}}", "#")).get(
            "groups", []
        )
    assert [g["name"] for g in groups] == [g["name"] for g in from_files] + [
        "cache-reconciler-extra"
    ]
    exprs = [r["expr"] for g in groups for r in g["rules"]]
    assert all("{{" not in e for e in exprs), "rules are rendered through tpl"
    assert any(
        f'namespace="{NAMESPACE}"' in e and f'service="{FULLNAME}-metrics"' in e for e in exprs
    )
    assert any("reconciler_consumer_lag_messages" in e for e in exprs)
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert alerts and all(r["labels"]["team"] == "platform" for r in alerts)  # additionalRuleLabels
    assert all(r["labels"]["severity"] for r in alerts), "a rule's own labels win"


def test_rules_folder_is_globbed(render: Render, chart_copy: Path) -> None:
    (chart_copy / "rules" / "zz-extra.yaml").write_text(
        "groups:\n  - name: from-another-file\n    rules:\n"
        "      - record: x:reconciler_events:rate5m\n"
        "        expr: sum(rate(reconciler_events_total{ "
        '{{ include "cache-reconciler.metricsSelector" . }} }[5m]))\n'
    )
    rendered = render(MINIMAL, sets=["metrics.prometheusRule.enabled=true"], chart=chart_copy)
    groups = rendered.one("PrometheusRule")["spec"]["groups"]
    assert groups[-1]["name"] == "from-another-file"
    assert f'namespace="{NAMESPACE}"' in groups[-1]["rules"][0]["expr"]


def test_grafana_dashboards_config_map(rendered_ci: dict[str, Rendered]) -> None:
    dashboards = rendered_ci["all-features-values.yaml"].one("ConfigMap", "-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["metadata"]["namespace"] == "monitoring"
    assert dashboards["metadata"]["annotations"] == {"grafana_folder": "Streaming"}
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert files and sorted(dashboards["data"]) == files
    for name, text in dashboards["data"].items():
        dashboard = json.loads(text)
        assert dashboard == json.loads((CHART / "dashboards" / name).read_text()), (
            "loaded as is, not through tpl"
        )
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert any("reconciler_" in e for e in exprs)


def test_grafana_label_is_configurable(render: Render) -> None:
    rendered = render(
        MINIMAL,
        values={
            "metrics": {
                "grafanaDashboard": {
                    "enabled": True,
                    "labels": {"grafana_dashboard": None, "dashboards": "platform"},
                }
            }
        },
    )
    labels = rendered.one("ConfigMap", "-dashboards")["metadata"]["labels"]
    assert labels["dashboards"] == "platform" and "grafana_dashboard" not in labels


# ---------------------------------------------------------------- PDB, HPA, NetworkPolicy


def test_pdb(render: Render, rendered_ci: dict[str, Rendered]) -> None:
    default = render(MINIMAL).one("PodDisruptionBudget")["spec"]
    assert default == {"maxUnavailable": 1, "selector": {"matchLabels": WORKER_SELECTOR}}
    custom = rendered_ci["all-features-values.yaml"].one("PodDisruptionBudget")["spec"]
    assert custom["minAvailable"] == 2 and "maxUnavailable" not in custom
    assert custom["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    percent = render(MINIMAL, sets=["podDisruptionBudget.maxUnavailable=50%"]).one(
        "PodDisruptionBudget"
    )["spec"]
    assert percent["maxUnavailable"] == "50%"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_replicas_capped_by_partitions(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    rendered = rendered_ci[values_id(values_file)]
    partitions = yaml.safe_load((CHART / "values.yaml").read_text())["kafka"]["partitionCount"]
    if values_file is not None:
        partitions = (yaml.safe_load(values_file.read_text()).get("kafka") or {}).get(
            "partitionCount", partitions
        )
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["maxReplicas"] <= partitions
    replicas = rendered.deployment["spec"].get("replicas")
    assert replicas is None or replicas <= partitions


def test_hpa_scales_on_consumer_lag(rendered_ci: dict[str, Rendered], render: Render) -> None:
    hpa = rendered_ci["all-features-values.yaml"].one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 12)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "reconciler_consumer_lag_messages",
        "selector": {"matchLabels": {"service": f"{FULLNAME}-metrics"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "5000"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    custom = render(
        MINIMAL,
        sets=["autoscaling.enabled=true", "autoscaling.lag.selector.group=cache-reconciler"],
    )
    selector = custom.one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"][
        "selector"
    ]
    assert selector == {"matchLabels": {"group": "cache-reconciler"}}


def test_network_policy(rendered_ci: dict[str, Rendered]) -> None:
    """The worker's policy in detail (one per component: test_least_privilege.py)."""
    policy = rendered_ci["all-features-values.yaml"].one("NetworkPolicy", "-worker")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"] == {"matchLabels": WORKER_SELECTOR}
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "prometheus"}
    }
    assert (
        ingress["from"][-1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test"
    )
    dns, kafka, valkey = policy["egress"]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert kafka["to"][0]["podSelector"] == {"matchLabels": {"strimzi.io/cluster": "my-cluster"}}
    assert kafka["ports"] == [{"port": 9093, "protocol": "TCP"}]
    assert valkey == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"port": 6380, "protocol": "TCP"}, {"port": 26380, "protocol": "TCP"}],
    }
    audit = rendered_ci["all-features-values.yaml"].one("NetworkPolicy", "-audit")["spec"]
    postgres, pushgateway = audit["egress"][2:]
    assert postgres == {
        "to": [{"ipBlock": {"cidr": "10.30.1.0/24"}}],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }
    assert pushgateway["to"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "prometheus-pushgateway"}}
    assert pushgateway["ports"] == [{"port": 9091, "protocol": "TCP"}]


def test_network_policy_without_destinations_is_bounded_by_ports(render: Render) -> None:
    policy = render(MINIMAL).one("NetworkPolicy", "-worker")["spec"]
    assert [r["ports"][0]["port"] for r in policy["egress"]] == [53, 9092, 6379]
    dns, kafka, valkey = policy["egress"]
    assert dns["to"], "DNS only to the cluster DNS"
    assert "to" not in kafka and "to" not in valkey, "no destination given: any, on the port"


def test_network_policy_open_metrics_ingress(render: Render) -> None:
    policy = render(
        MINIMAL,
        values={"networkPolicy": {"metricsIngress": {"from": []}}},
        sets=[*NETWORK_TARGETS],
    ).one("NetworkPolicy", "-worker")["spec"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]


# ---------------------------------------------------------------- replay Job


def test_replay_job(rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci["replay-job-values.yaml"]
    job = rendered.one("Job")
    assert job["metadata"]["name"].startswith(f"{FULLNAME}-replay-")
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "replay"
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert job["spec"]["activeDeadlineSeconds"] == 21600
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    replay = container(spec)
    assert replay["args"] == [
        "replay",
        "--config",
        "/etc/cache-reconciler/config/reconciler.yaml",
        "--from",
        "2025-06-01T00:00:00Z",
        "--to",
        "2025-06-02T00:00:00Z",
        "--rate",
        "500",
        "--dry-run",
    ]
    assert replay["resources"]["requests"] == {"cpu": "200m", "memory": "256Mi"}
    assert job["spec"]["template"]["metadata"]["labels"]["purpose"] == "backfill"
    # The same config, shard map and secrets as the worker.
    worker = rendered.deployment["spec"]["template"]
    assert replay["env"] == container(worker["spec"])["env"]
    assert spec["volumes"] == worker["spec"]["volumes"]
    assert replay["volumeMounts"] == container(worker["spec"])["volumeMounts"]
    assert job["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum(
        rendered
    )


def test_audit_cronjob(rendered_ci: dict[str, Rendered]) -> None:
    """The scheduled audit: the source of the ReconcilerAuditFoundStale alert."""
    rendered = rendered_ci["all-features-values.yaml"]
    cron = rendered.one("CronJob", "-audit")
    assert cron["metadata"]["labels"]["app.kubernetes.io/component"] == "audit"
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert cron["spec"]["timeZone"] == "Europe/London"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "finding stale entries fails the Job: never retried"
    assert job["activeDeadlineSeconds"] == 3600
    pod = job["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "audit"
    assert pod["metadata"]["labels"]["purpose"] == "audit"
    audit = container(pod["spec"])
    assert audit["args"] == [
        "audit", "--config", "/etc/cache-reconciler/config/reconciler.yaml",
        "--table", "public.posts", "--table", "public.comments",
        "--sample", "5000", "--rows-per-second", "500", "--repair",
        "--pushgateway", "http://prometheus-pushgateway.monitoring:9091",
    ]
    assert audit["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    # The worker's config and restricted security context; its own credentials, the DSN
    # as a file (which secrets each pod gets: test_least_privilege.py).
    worker = rendered.deployment["spec"]["template"]
    assert {"name": "RECONCILER_POSTGRES__DSN_FILE",
            "value": "/etc/cache-reconciler/secrets/postgres/dsn"} in audit["env"]
    assert audit["securityContext"] == container(worker["spec"])["securityContext"]
    assert audit["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"] == {v["name"]: v for v in worker["spec"]["volumes"]}["config"]
    assert pod["metadata"]["annotations"]["checksum/config"] == checksum(rendered)


def test_audit_defaults_scan_a_sample_of_every_table_and_push_nowhere(render: Render) -> None:
    cron = render(MINIMAL, sets=["audit.enabled=true", "postgres.existingSecret=pg"]).one(
        "CronJob")
    args = container(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])["args"]
    assert args[3:] == ["--sample", "10000", "--rows-per-second", "1000"]


def test_audit_without_postgres_is_refused_naming_the_value(render: Render) -> None:
    with pytest.raises(RenderError, match=r"postgres\.existingSecret"):
        render(MINIMAL, sets=["audit.enabled=true"])


def test_replay_defaults(render: Render) -> None:
    job = render(MINIMAL, sets=["replay.enabled=true"]).one("Job")
    args = container(job["spec"]["template"]["spec"])["args"]
    assert args[3:] == ["--from", "earliest", "--to", "now"], "no --rate for 0, no --dry-run"
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert "activeDeadlineSeconds" not in job["spec"]
    assert container(job["spec"]["template"]["spec"])["resources"]["limits"] == {"memory": "512Mi"}


def test_replay_job_name_follows_its_parameters(render: Render) -> None:
    def name(*sets: str) -> str:
        return str(
            render(MINIMAL, sets=["replay.enabled=true", *sets]).one("Job")["metadata"]["name"]
        )

    base = name()
    assert name() == base
    assert name("replay.from=2025-01-01T00:00:00Z") != base
    assert name("replay.runId=again") != base
    assert name("replay.dryRun=true") != base
    assert name("replay.backoffLimit=5") == base, "only the run's parameters name it"


# ---------------------------------------------------------------- names and NOTES


def test_long_release_names_are_cut_to_63(render: Render) -> None:
    release = "a-long-release-name-that-goes-on-to-the-53-char-limit"
    assert len(release) == 53
    rendered = render(MINIMAL, release=release, sets=["replay.enabled=true"])
    names = [d["metadata"]["name"] for d in rendered.docs]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    assert len({(d["kind"], d["metadata"]["name"]) for d in rendered.docs}) == len(rendered.docs)
    for suffix in ("-config", "-shard-map", "-metrics", "-test"):
        assert any(n.endswith(suffix) for n in names), suffix


def test_notes_explain_how_to_see_the_metrics(render: Render, chart_copy: Path) -> None:
    # helm template does not render NOTES.txt, and helm install --dry-run needs a cluster:
    # render it through a scratch template in a copy of the chart.
    notes = (chart_copy / "templates" / "NOTES.txt").read_text()
    (chart_copy / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + notes + "\n{{- end }}\n"
    )
    (chart_copy / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n  namespace: x\n"
        'data:\n  notes: {{ include "notes-under-test" . | quote }}\n'
    )

    def rendered_notes(values_file: Path | None, *sets: str) -> str:
        rendered = render(values_file, sets=list(sets), chart=chart_copy)
        (notes_map,) = [
            d for d in rendered.of_kind("ConfigMap") if d["metadata"]["name"] == "notes"
        ]
        return str(notes_map["data"]["notes"])

    text = rendered_notes(MINIMAL)
    assert f"port-forward service/{FULLNAME}-metrics 9400:9400" in text
    for path in ("/metrics", "/readyz", "/freshness"):
        assert f"curl -s http://127.0.0.1:9400{path}" in text
    assert "WARNING" not in text
    assert "WARNING: the configuration is incomplete" in rendered_notes(None)
    assert "component=replay" in rendered_notes(REPLAY)


def test_every_ci_file_is_exercised() -> None:
    assert {ALL_FEATURES, EXISTING_SECRETS, MINIMAL, REPLAY} <= set(CI_VALUES)
