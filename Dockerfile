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
# The image has no HEALTHCHECK: Kubernetes probes /healthz and /readyz on the metrics
# port (see the Helm chart in helm/cache-reconciler).

ARG PYTHON_VERSION=3.11.14

# ---------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first: this layer is reused until the lock changes. Binary wheels only,
# so the builder needs no compiler and the runtime gets the wheels that were tested.
COPY requirements/ requirements/
RUN pip install --no-cache-dir --requirement requirements/build.txt \
 && pip wheel --no-cache-dir --no-deps --only-binary=:all: \
        --wheel-dir /wheels --requirement requirements/constraints.txt

# Then the project's own wheel, built with the pinned backend above.
COPY pyproject.toml README.md ./
COPY reconciler/ reconciler/
COPY connectors/ connectors/
COPY shard_map/ shard_map/
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---------------------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

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
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm"

# A fixed numeric user, so that Kubernetes can verify runAsNonRoot; it owns nothing in
# the image (the root filesystem is meant to be mounted read-only).
RUN groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin reconciler

# Install the builder's wheels without an index and without resolving: the set is
# complete by construction (pip check proves it), then drop the installers, which the
# worker never needs at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
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
