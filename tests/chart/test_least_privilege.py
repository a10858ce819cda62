"""The chart gives away nothing: credentials reach each pod as read-only files, only
those its component uses, and each component's NetworkPolicy (on by default) lets it
reach only what it talks to.

| component | Kafka | Valkey | PostgreSQL | Pushgateway |
|---|---|---|---|---|
| worker (`reconciler run`) | yes | yes | no | no |
| replay (`reconciler replay`) | yes | yes | no | no |
| audit (`reconciler audit`) | no | yes | yes | when `audit.pushgateway` |
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.settings import load_settings
from tests.chart.conftest import CHART, RELEASE, VALUES_FILES, Rendered, values_id

pytestmark = pytest.mark.chart

Render = Callable[..., Rendered]
MINIMAL = CHART / "ci" / "minimal-values.yaml"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
FULLNAME = f"{RELEASE}-cache-reconciler"
SECRETS_DIR = "/etc/cache-reconciler/secrets"
COMPONENTS = ("worker", "replay", "audit")


def pods(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The pod template of each component present: {component: {"metadata", "spec"}}."""
    found: dict[str, dict[str, Any]] = {}
    for doc in rendered.docs:
        if doc["kind"] in ("Deployment", "Job"):
            template = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        assert component not in found, f"two pod templates for {component}"
        found[component] = template
    return found


def container(template: dict[str, Any]) -> dict[str, Any]:
    (only,) = template["spec"]["containers"]
    return dict(only)


def user_env(values_file: Path | None) -> set[str]:
    """Names of the `extraEnv` entries: the user's own, passed through as given."""
    if values_file is None:
        return set()
    return {e["name"] for e in yaml.safe_load(values_file.read_text()).get("extraEnv") or []}


def secret_files(template: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{path in the container: (Secret, key)} for every Secret item the pod mounts."""
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    files: dict[str, tuple[str, str]] = {}
    for mount in container(template).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])
                   if "secret" in s]
        if "secret" in volume:
            sources.append(volume["secret"])
        for source in sources:
            for item in source.get("items", []):
                files[f"{mount['mountPath']}/{item['path']}"] = (source["name"], item["key"])
    return files


def file_env(template: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(template).get("env", [])
            if e["name"].endswith("_FILE")}


# ---------------------------------------------------------------- credentials as files


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_no_credential_is_an_environment_variable(
        rendered_ci: dict[str, Rendered], values_file: Path | None) -> None:
    """Environment variables leak (child processes, /proc/<pid>/environ, crash dumps,
    `kubectl describe` of a copied pod): the chart sets none from a Secret; each
    credential is a file in a read-only Secret volume, named by a `*_FILE` setting."""
    for component, template in pods(rendered_ci[values_id(values_file)]).items():
        env = container(template).get("env", [])
        from_secrets = [e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
        assert set(from_secrets) <= user_env(values_file), (
            f"{component}: credentials in the environment: {from_secrets}")
        assert not container(template).get("envFrom") or values_file is not None
        files = secret_files(template)
        for name, path in file_env(template).items():
            if path.startswith(SECRETS_DIR):
                assert path in files, f"{component}: {name}={path} is not a mounted Secret item"
        for mount in container(template).get("volumeMounts", []):
            if mount["mountPath"].startswith(SECRETS_DIR):
                assert mount.get("readOnly") is True, mount


def test_each_component_gets_only_the_credentials_it_uses(
        rendered_ci: dict[str, Rendered]) -> None:
    rendered = pods(rendered_ci["all-features-values.yaml"])
    assert set(rendered) == set(COMPONENTS)
    kafka = {"RECONCILER_KAFKA__SECURITY__SASL_USERNAME_FILE",
             "RECONCILER_KAFKA__SECURITY__SASL_PASSWORD_FILE"}
    valkey = {"RECONCILER_VALKEY__USERNAME_FILE", "RECONCILER_VALKEY__PASSWORD_FILE"}
    postgres = {"RECONCILER_POSTGRES__DSN_FILE"}
    wanted = {"worker": kafka | valkey, "replay": kafka | valkey, "audit": valkey | postgres}
    for component, template in rendered.items():
        env = file_env(template)
        assert set(env) == wanted[component], component
        secrets = {secret for secret, _key in secret_files(template).values()}
        assert ("postgres-reconciler" in secrets) == (component == "audit"), (
            f"{component}: the Postgres DSN goes to the audit pods only")
        assert ("kafka-user" in secrets) == (component != "audit"), (
            f"{component}: Kafka credentials go to the pods that consume")
        mounts = {m["mountPath"] for m in container(template)["volumeMounts"]}
        assert ("/etc/cache-reconciler/tls/kafka" in mounts) == (component != "audit")
        assert "/etc/cache-reconciler/tls/valkey" in mounts
    # The worker's files, item by item: the Secret and key each comes from.
    worker = rendered["worker"]
    files = secret_files(worker)
    env = file_env(worker)
    assert files[env["RECONCILER_KAFKA__SECURITY__SASL_PASSWORD_FILE"]] == ("kafka-user",
                                                                           "password")
    assert files[env["RECONCILER_KAFKA__SECURITY__SASL_USERNAME_FILE"]] == ("kafka-user",
                                                                           "username")
    assert files[env["RECONCILER_VALKEY__PASSWORD_FILE"]] == ("valkey-auth", "password")
    audit = rendered["audit"]
    assert secret_files(audit)[file_env(audit)["RECONCILER_POSTGRES__DSN_FILE"]] == (
        "postgres-reconciler", "dsn")


def test_sentinel_credentials_are_files_too(rendered_ci: dict[str, Rendered]) -> None:
    for component, template in pods(rendered_ci["existing-secrets-values.yaml"]).items():
        env = file_env(template)
        path = env["RECONCILER_VALKEY__SENTINEL__PASSWORD_FILE"]
        assert secret_files(template)[path] == ("valkey-sentinel", "sentinel-password"), (
            component)
        assert "RECONCILER_VALKEY__SENTINEL__USERNAME_FILE" not in env  # no usernameKey


def test_the_reconciler_reads_the_files_the_chart_mounts(
        rendered_ci: dict[str, Rendered], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract between the chart and the settings: each `*_FILE` variable the chart
    sets is a setting, and the credential is the file's content."""
    rendered = rendered_ci["all-features-values.yaml"]
    config = tmp_path / "reconciler.yaml"
    config.write_text(rendered.one("ConfigMap", "-config")["data"]["reconciler.yaml"])
    for component, template in pods(rendered).items():
        for name in [n for n in os.environ if n.startswith("RECONCILER_")]:
            monkeypatch.delenv(name)
        contents = {}
        for name, path in file_env(template).items():
            local = tmp_path / component / path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            contents[name] = f"{component}-{name.lower()}-value"
            local.write_text(contents[name] + "\n")
            monkeypatch.setenv(name, str(local))
        settings = load_settings(config)
        if component == "audit":
            assert settings.postgres.dsn_value() == contents["RECONCILER_POSTGRES__DSN_FILE"]
            assert settings.kafka.security.sasl_password_file is None
        else:
            assert settings.postgres.dsn_value() is None
            assert settings.kafka.security.sasl_username == contents[
                "RECONCILER_KAFKA__SECURITY__SASL_USERNAME_FILE"]
        assert settings.valkey.password_value() == contents["RECONCILER_VALKEY__PASSWORD_FILE"]
        assert settings.valkey.username == contents["RECONCILER_VALKEY__USERNAME_FILE"]


# ---------------------------------------------------------------- NetworkPolicy


def policies(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """{component: NetworkPolicy spec}."""
    found = {}
    for doc in rendered.of_kind("NetworkPolicy"):
        labels = doc["spec"]["podSelector"]["matchLabels"]
        found[labels["app.kubernetes.io/component"]] = doc["spec"]
        assert doc["metadata"]["name"] == f"{FULLNAME}-{labels['app.kubernetes.io/component']}"
    return found


def egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["egress"] for p in rule["ports"]}


def selects(policy: dict[str, Any], template: dict[str, Any]) -> bool:
    labels = template["metadata"]["labels"]
    selector = policy["podSelector"]
    assert not selector.get("matchExpressions")
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_network_policy_is_on_by_default_for_the_worker(render: Render) -> None:
    for rendered in (render(), render(MINIMAL)):
        found = policies(rendered)
        assert set(found) == {"worker"}, "one policy per component that is deployed"
        worker = found["worker"]
        assert worker["policyTypes"] == ["Ingress", "Egress"]
        assert selects(worker, pods(rendered)["worker"])
        # Without destinations (no CIDRs, no peers), the ports still bound it: DNS,
        # Kafka and Valkey, nothing else (no PostgreSQL, no Pushgateway, no HTTPS).
        assert egress_ports(worker) == {53, 9092, 6379}
        (ingress,) = worker["ingress"]
        assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_one_network_policy_per_component_with_only_its_own_egress(
        rendered_ci: dict[str, Rendered]) -> None:
    rendered = rendered_ci["all-features-values.yaml"]
    found = policies(rendered)
    templates = pods(rendered)
    assert set(found) == set(COMPONENTS)
    for component, policy in found.items():
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        for other, template in templates.items():
            assert selects(policy, template) == (other == component), (component, other)
        for rule in policy["egress"]:
            assert rule["ports"], f"{component}: an egress rule without ports"
    # all-features: Kafka 9093, Valkey 6380 and its Sentinels 26380, Postgres 5432,
    # the Pushgateway 9091.
    assert egress_ports(found["worker"]) == {53, 9093, 6380, 26380}
    assert egress_ports(found["replay"]) == {53, 9093, 6380, 26380}
    assert egress_ports(found["audit"]) == {53, 6380, 26380, 5432, 9091}
    # Only the worker serves metrics; nothing may connect to replay or audit pods.
    assert found["worker"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert found["replay"]["ingress"] == [] and found["audit"]["ingress"] == []


def test_network_policy_destinations_narrow_each_rule(render: Render) -> None:
    rendered = render(MINIMAL, sets=[
        "networkPolicy.egress.kafka.cidrs={10.0.0.0/16}",
        "networkPolicy.egress.valkey.cidrs={10.1.0.0/16}",
        "networkPolicy.egress.postgres.cidrs={10.2.0.0/24}",
        "postgres.existingSecret=pg", "audit.enabled=true"])
    found = policies(rendered)
    by_port = {rule["ports"][0]["port"]: rule.get("to") for rule in found["audit"]["egress"]}
    assert by_port[5432] == [{"ipBlock": {"cidr": "10.2.0.0/24"}}]
    assert by_port[6379] == [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    assert 9092 not in by_port and 9091 not in by_port  # no Kafka, no Pushgateway given
    worker = {rule["ports"][0]["port"]: rule.get("to") for rule in found["worker"]["egress"]}
    assert worker[9092] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}] and 5432 not in worker


def test_network_policy_can_be_turned_off(render: Render) -> None:
    assert not render(MINIMAL, sets=["networkPolicy.enabled=false"]).of_kind("NetworkPolicy")
