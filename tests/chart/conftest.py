"""Fixtures for the chart and image tests: the helm binary and rendering helpers.

helm is looked up on PATH, then in Go's bin directory (`scripts/install-helm.sh`
installs it there); HELM=/path/to/helm overrides both. A missing helm fails the tests,
naming the script: nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cache-reconciler"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# Every values file the chart is checked with: the defaults (None) and ci/*-values.yaml.
VALUES_FILES: list[Path | None] = [None, *CI_VALUES]
RELEASE = "rel"
NAMESPACE = "cache"
# The Kubernetes version the chart is rendered for (a current one), and every version the
# rendered manifests are validated against: the chart's floor (kubeVersion) and current.
KUBE_VERSION = "1.37.0"  # the newest schemas the pinned kubernetes-validate ships
VALIDATE_VERSIONS = ("1.27.0", "1.33.0", "1.37.0")
PINNED_HELM = "v3.22.0"


def values_id(path: Path | None) -> str:
    return "defaults" if path is None else path.name


def _go_bin_dirs() -> list[Path]:
    dirs: list[Path] = []
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go:
        for var in ("GOBIN", "GOPATH"):
            out = subprocess.run([go, "env", var], capture_output=True, text=True, check=False)
            value = out.stdout.strip()
            if value:
                dirs.append(Path(value) if var == "GOBIN" else Path(value) / "bin")
    dirs.append(Path.home() / "go" / "bin")
    return dirs


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a working helm v3 binary, or a failure that says how to install it."""
    candidates = [os.environ.get("HELM"), shutil.which("helm")]
    candidates += [str(d / "helm") for d in _go_bin_dirs()]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            out = subprocess.run(
                [candidate, "version", "--template", "{{ .Version }}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode == 0 and out.stdout.startswith("v3."):
                return candidate
    pytest.fail(
        f"helm {PINNED_HELM} not found on PATH nor in Go's bin directory: run "
        "scripts/install-helm.sh (it builds helm with `go install`, a few minutes), "
        "or set HELM=/path/to/helm.",
        pytrace=False,
    )


@dataclass(frozen=True)
class Rendered:
    """The manifests `helm template` printed, parsed."""

    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        names = [d["metadata"]["name"] for d in found]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {names}"
        return found[0]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    def pod_specs(self) -> list[dict[str, Any]]:
        """Pod specs of the Deployment, the Job and the test Pod."""
        specs = [
            d["spec"]["template"]["spec"] for d in self.docs if d["kind"] in ("Deployment", "Job")
        ]
        specs += [d["spec"] for d in self.of_kind("Pod")]
        return specs


class RenderError(Exception):
    pass


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False, cwd=ROOT)


def template_args(
    values_file: Path | None = None,
    values: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    tmp_dir: Path | None = None,
    release: str = RELEASE,
    chart: Path = CHART,
) -> list[str]:
    args = [
        "template",
        release,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ]
    if values_file is not None:
        args += ["--values", str(values_file)]
    if values is not None:
        assert tmp_dir is not None
        extra = tmp_dir / f"values-{len(list(tmp_dir.glob('values-*.yaml')))}.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["--values", str(extra)]
    for item in sets or []:
        args += ["--set", item]
    return args


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Callable[..., Rendered]:
    """render(values_file=None, values=None, sets=None, release=RELEASE) -> Rendered."""

    def _render(
        values_file: Path | None = None,
        values: dict[str, Any] | None = None,
        sets: list[str] | None = None,
        release: str = RELEASE,
        chart: Path = CHART,
    ) -> Rendered:
        out = run_helm(helm, *template_args(values_file, values, sets, tmp_path, release, chart))
        if out.returncode != 0:
            raise RenderError(out.stderr)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        return Rendered(docs)

    return _render


@pytest.fixture
def render_error(helm: str, tmp_path: Path) -> Callable[..., str]:
    """render_error(...) -> helm's error output; fails the test if rendering succeeds."""

    def _render_error(
        values_file: Path | None = None,
        values: dict[str, Any] | None = None,
        sets: list[str] | None = None,
        set_strings: list[str] | None = None,
    ) -> str:
        args = template_args(values_file, values, sets, tmp_path)
        for item in set_strings or []:
            args += ["--set-string", item]
        out = run_helm(helm, *args)
        assert out.returncode != 0, f"helm template accepted bad values: {args}"
        return out.stderr

    return _render_error


@pytest.fixture(scope="session")
def rendered_ci(helm: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every values file (defaults and ci/*), rendered once per session."""
    result: dict[str, Rendered] = {}
    for path in VALUES_FILES:
        out = run_helm(helm, *template_args(path))
        if out.returncode != 0:
            pytest.fail(
                f"helm template with {values_id(path)} failed:\n{out.stderr}", pytrace=False
            )
        result[values_id(path)] = Rendered([d for d in yaml.safe_load_all(out.stdout) if d])
    return result


@pytest.fixture
def chart_copy(tmp_path: Path) -> Iterator[Path]:
    """A scratch copy of the chart, for tests that add files to it."""
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    yield copy
