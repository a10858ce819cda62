#!/usr/bin/env bash
# Exercise the Dockerfile's install and run steps without a Docker engine.
#
# Runs the same pip commands as the Dockerfile's builder and runtime stages, in fresh
# virtualenvs under a temporary directory: build the dependency wheels from
# requirements/constraints.txt (binary only, each checked against the lock's sha256) and
# the project's wheel with the pinned backend from requirements/build.txt (hash-checked
# too); install them offline with --no-deps into a clean "runtime" virtualenv, the
# locked set by hash; pip check; remove the installers as the image does; then run the
# image's entrypoint (`reconciler --help`, `reconciler run --help`) and
# `python -m reconciler --help` from outside the source tree. A wrong package name, a
# missing pin or a broken entry point fails here as it would fail the image.
#
#   scripts/check-image.sh            # PYTHON=python3.11 to choose the interpreter
#   KEEP=1 scripts/check-image.sh     # keep the work directory for inspection
#
# What it cannot check: the base image itself (its digest, Debian packages, the image's
# Python patch release), the USER/ENTRYPOINT/EXPOSE metadata and the layer cache; those
# need `docker build` (see the Dockerfile's header).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
work="$(mktemp -d "${TMPDIR:-/tmp}/cr-check-image.XXXXXX")"
if [[ -z "${KEEP:-}" ]]; then
  trap 'rm -rf "$work"' EXIT
else
  echo "check-image: keeping $work"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1

step() { printf '\ncheck-image: %s\n' "$*"; }

# The build context the Dockerfile sees: only what it COPYs (.dockerignore is an
# allow-list), so a file the wheel needs but the Dockerfile forgets fails here too.
step "build context"
mkdir -p "$work/src"
for path in requirements pyproject.toml README.md reconciler connectors shard_map; do
  if [[ ! -e "$root/$path" ]]; then
    echo "check-image: $path is missing, the Dockerfile COPYs it" >&2
    exit 1
  fi
  cp -R "$root/$path" "$work/src/$path"
done
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

# ---- builder stage (Dockerfile: FROM ... AS builder)
step "builder: $("$python" --version)"
"$python" -m venv "$work/builder"
builder_pip="$work/builder/bin/pip"
(
  cd "$work/src"
  "$builder_pip" install --no-cache-dir --require-hashes --requirement requirements/build.txt
  "$builder_pip" wheel --no-cache-dir --no-deps --only-binary=:all: --require-hashes \
    --wheel-dir "$work/wheels" --requirement requirements/constraints.txt
  "$builder_pip" wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir "$work/wheels" .
)
ls "$work/wheels"

# ---- runtime stage (Dockerfile: FROM ... AS runtime)
step "runtime: offline install of exactly the built wheels, the locked ones by hash"
"$python" -m venv "$work/runtime"
runtime="$work/runtime/bin"
"$runtime/pip" install --no-cache-dir --no-index --no-deps --require-hashes \
  --find-links "$work/wheels" --requirement "$work/src/requirements/constraints.txt"
"$runtime/pip" install --no-cache-dir --no-index --no-deps "$work/wheels"/cache_reconciler-*.whl
"$runtime/pip" check
"$runtime/pip" uninstall --yes pip setuptools wheel

# The installed set must be the lock plus the project, nothing more or less.
step "installed set == requirements/constraints.txt + cache-reconciler"
"$runtime/python" - "$work/src/requirements/constraints.txt" <<'PY'
import re
import sys
from importlib import metadata

def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

wanted = {}
for line in re.sub(r"\\\n", " ", open(sys.argv[1]).read()).splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.split()[0].partition("==")
        wanted[canon(name)] = version
installed = {canon(d.metadata["Name"]): d.version for d in metadata.distributions()}
installed.pop("cache-reconciler", None) or sys.exit("check-image: cache-reconciler not installed")
if installed != wanted:
    extra = sorted(set(installed.items()) - set(wanted.items()))
    lacking = sorted(set(wanted.items()) - set(installed.items()))
    sys.exit(f"check-image: installed set differs from the lock: extra {extra}, missing {lacking}")
print(f"check-image: {len(installed)} pinned dependencies + cache-reconciler")
PY

# ---- run steps (Dockerfile: ENTRYPOINT ["reconciler"] CMD ["run"], from /)
step "run: reconciler --help, reconciler run --help, python -m reconciler --help"
cd /
export RECONCILER_CONFIG=/etc/cache-reconciler/config/reconciler.yaml
"$runtime/reconciler" --help
"$runtime/reconciler" run --help
"$runtime/python" -m reconciler --help

# The CLI imports its commands lazily: import every module of the three packages, so
# that a runtime dependency missing from the lock fails here, not in a pod.
step "run: every module of reconciler, connectors and shard_map imports"
"$runtime/python" - <<'PY'
import importlib
import pkgutil

count = 0
for package in ("reconciler", "connectors", "shard_map"):
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if module.name.endswith(".__main__"):  # runs the CLI; imported by `-m` above
            continue
        importlib.import_module(module.name)
        count += 1
print(f"check-image: {count} modules imported")
PY

# Commands that need no service: the shard map check and `plan` over recorded events.
step "run: reconciler shard-map check, reconciler plan over recorded events"
"$runtime/reconciler" shard-map check "$root/config/local/shard_map.yaml"
planned=$("$runtime/reconciler" plan -c "$root/config/local/reconciler.yaml" \
  --input "$root/tests/fixtures/debezium/schemas_true.jsonl" | wc -l)
records=$(grep -c . "$root/tests/fixtures/debezium/schemas_true.jsonl")
if [[ "$planned" -ne "$records" ]]; then
  echo "check-image: plan printed $planned lines for $records records" >&2
  exit 1
fi
echo "check-image: plan printed one line per record ($records)"
step "ok"
