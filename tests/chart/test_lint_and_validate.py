"""helm lint and helm template for every values file; every manifest schema-validated."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.chart.conftest import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    VALIDATE_VERSIONS,
    VALUES_FILES,
    Rendered,
    run_helm,
    values_id,
)
from tests.chart.crd_schemas import CRD_SCHEMAS

pytestmark = pytest.mark.chart


def test_ci_values_files_are_all_there() -> None:
    names = {p.name for p in VALUES_FILES if p is not None}
    assert names >= {
        "minimal-values.yaml",
        "all-features-values.yaml",
        "existing-secrets-values.yaml",
        "replay-job-values.yaml",
    }


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_helm_lint_strict(helm: str, values_file: Path | None) -> None:
    args = [
        "lint",
        str(CHART),
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        "--namespace",
        NAMESPACE,
    ]
    if values_file is not None:
        args += ["--values", str(values_file)]
    out = run_helm(helm, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_every_manifest_is_valid(
    rendered_ci: dict[str, Rendered], values_file: Path | None
) -> None:
    rendered = rendered_ci[values_id(values_file)]
    assert rendered.docs, "nothing rendered"
    problems: list[str] = []
    for doc in rendered.docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd_schema = CRD_SCHEMAS.get((doc.get("apiVersion", ""), doc.get("kind", "")))
        if crd_schema is not None:
            for error in jsonschema.Draft7Validator(crd_schema).iter_errors(doc):
                problems.append(
                    f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
                )
            continue
        for version in VALIDATE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(map(str, error.absolute_path))
                problems.append(f"{where} (Kubernetes {version}): {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(f"{where} (Kubernetes {version}): no schema: {error}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=values_id)
def test_names_and_namespaces(rendered_ci: dict[str, Rendered], values_file: Path | None) -> None:
    for doc in rendered_ci[values_id(values_file)].docs:
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert meta.get("namespace"), f"{doc['kind']}/{meta['name']} has no namespace"
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "cache-reconciler"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "cache-reconciler-0.1.0"


def test_crd_schemas_catch_mistakes(rendered_ci: dict[str, Rendered]) -> None:
    """The structural checks are not vacuous: a misspelt field or a bad rule fails them."""
    rendered = rendered_ci["all-features-values.yaml"]
    monitor = json.loads(json.dumps(rendered.one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert list(
        jsonschema.Draft7Validator(
            CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")]
        ).iter_errors(monitor)
    )
    rule = json.loads(json.dumps(rendered.one("PrometheusRule")))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert list(
        jsonschema.Draft7Validator(
            CRD_SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")]
        ).iter_errors(rule)
    )
