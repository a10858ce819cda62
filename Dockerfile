# syntax=docker/dockerfile:1
#
# cache-reconciler: the production image.
#
#   docker build -t cache-reconciler:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm -v "$PWD/reconciler.yaml:/etc/cache-reconciler/config/reconciler.yaml:ro" \
#     -p 9400:9400 cache-reconciler:0.1.0
#
# Two stages: the builder makes wheels (the project's own, and the pinned dependencies
# from requirements/constraints.txt, written by scripts/lock.sh); the runtime installs
# exactly those wheels, offline, with no resolver. scripts/check-image.sh runs the same
# install and run steps without Docker, in CI.
#
# Supply chain: both stages start from the same base image pinned by digest (a tag is
# rebuilt and moves; a digest does not), and every pip install of a requirements file
# runs with --require-hashes, so only files whose sha256 the lock names are installed:
# the build backend (requirements/build.txt), the dependencies downloaded by the builder,
# and the same wheels again in the runtime. scripts/test scans the lock for known
# vulnerabilities (scripts/audit-deps).
#
# The digest is that of the multi-arch image index of python:3.11.16-slim-bookworm built
# on 2026-09-01. To move to a newer base, take the index digest from the registry
# (`docker buildx imagetools inspect python:<version>-slim-bookworm`) and set both ARGs.
#
# The image has no HEALTHCHECK: Kubernetes probes /healthz and /readyz on the metrics
# port (see the Helm chart in helm/cache-reconciler).

ARG PYTHON_VERSION=3.11.16
ARG PYTHON_DIGEST=sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f

# ---------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim-bookworm@${PYTHON_DIGEST} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first: this layer is reused until the lock changes. Binary wheels only,
# so the builder needs no compiler and the runtime gets the wheels that were tested;
# each checked against the lock's sha256 before it is kept.
COPY requirements/ requirements/
RUN pip install --no-cache-dir --require-hashes --requirement requirements/build.txt \
 && pip wheel --no-cache-dir --no-deps --only-binary=:all: --require-hashes \
        --wheel-dir /wheels --requirement requirements/constraints.txt

# Then the project's own wheel, built with the pinned backend above.
COPY pyproject.toml README.md ./
COPY reconciler/ reconciler/
COPY connectors/ connectors/
COPY shard_map/ shard_map/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm@${PYTHON_DIGEST} AS runtime

ARG PYTHON_VERSION
ARG PYTHON_DIGEST
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="cache-reconciler" \
      org.opencontainers.image.description="CDC cache reconciler: keeps a Valkey look-aside cache honest from Debezium change events" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/cache-reconciler/cache-reconciler" \
      org.opencontainers.image.documentation="https://github.com/cache-reconciler/cache-reconciler#readme" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm" \
      org.opencontainers.image.base.digest="${PYTHON_DIGEST}"

# A fixed numeric user, so that Kubernetes can verify runAsNonRoot; it owns nothing in
# the image (the root filesystem is meant to be mounted read-only).
RUN groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin reconciler

# Install the builder's wheels without an index and without resolving: the locked set
# by hash (the same sha256 the builder checked), then the project's own wheel, built
# above from this source; the set is complete by construction (pip check proves it).
# Then drop the installers, which the worker never needs at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/src/requirements,target=/requirements \
    pip install --no-cache-dir --no-index --no-deps --require-hashes \
        --find-links /wheels --requirement /requirements/constraints.txt \
 && pip install --no-cache-dir --no-index --no-deps /wheels/cache_reconciler-*.whl \
 && pip check \
 && pip uninstall --yes pip setuptools wheel

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECONCILER_CONFIG=/etc/cache-reconciler/config/reconciler.yaml

USER 10001:10001

# Prometheus metrics, /healthz, /readyz and /freshness.
EXPOSE 9400

ENTRYPOINT ["reconciler"]
CMD ["run"]
