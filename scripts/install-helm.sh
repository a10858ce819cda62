#!/usr/bin/env bash
# Install the Helm CLI used by the chart tests (tests/chart), built from source through
# the Go module proxy. Idempotent: does nothing when the pinned version is already on
# PATH or in Go's bin directory.
#
#   scripts/install-helm.sh      # installs into "$(go env GOBIN)" or "$(go env GOPATH)/bin"
#
# Environment:
#   HELM_VERSION  the version to install (default v3.22.0, the one CI pins)
#   GO            the go binary (default: `go` on PATH, else /usr/local/go/bin/go)
#
# A bare `go install` builds a helm that reports its version as "v3.22" and believes the
# cluster is Kubernetes 1.20 (capabilities for `helm template`, deprecation checks in
# `helm lint`): the release Makefile sets both with -ldflags. This script passes the same
# flags, so the binary behaves like the released one.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
MODULE=helm.sh/helm/v3

if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then
    GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
  else
    echo "install-helm: Go not found (set GO=/path/to/go or put go on PATH)" >&2
    exit 1
  fi
fi

gobin="$("$GO" env GOBIN)"
if [[ -z "$gobin" ]]; then
  gobin="$("$GO" env GOPATH)/bin"
fi

# The version a helm binary reports, or nothing if it does not run.
helm_version_of() {
  "$1" version --template '{{ .Version }}' 2>/dev/null || true
}

for candidate in "$(command -v helm 2>/dev/null || true)" "$gobin/helm"; do
  if [[ -n "$candidate" && -x "$candidate" ]] \
    && [[ "$(helm_version_of "$candidate")" == "$HELM_VERSION" ]]; then
    echo "install-helm: $candidate is already $HELM_VERSION"
    exit 0
  fi
done

start=$SECONDS

# The Kubernetes version helm assumes by default is the client-go minor it is built
# with (client-go v0.N.x -> Kubernetes 1.N), as in helm's Makefile.
gomod="$("$GO" mod download -json "$MODULE@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
k8s_minor="$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -n1)"
if [[ -z "$k8s_minor" ]]; then
  echo "install-helm: could not read the client-go version from $gomod" >&2
  exit 1
fi

ldflags="-w -s"
ldflags+=" -X $MODULE/internal/version.version=$HELM_VERSION"
ldflags+=" -X $MODULE/internal/version.gitTreeState=clean"
for pkg in pkg/chartutil pkg/lint/rules; do
  ldflags+=" -X $MODULE/$pkg.k8sVersionMajor=1 -X $MODULE/$pkg.k8sVersionMinor=$k8s_minor"
done

echo "install-helm: go install $MODULE/cmd/helm@$HELM_VERSION (Kubernetes 1.$k8s_minor; takes a few minutes)"
CGO_ENABLED=0 "$GO" install -trimpath -ldflags "$ldflags" "$MODULE/cmd/helm@$HELM_VERSION"
echo "install-helm: built in $((SECONDS - start))s"

installed="$(helm_version_of "$gobin/helm")"
echo "install-helm: $gobin/helm reports ${installed:-nothing}"
if [[ "$installed" != "$HELM_VERSION" ]]; then
  echo "install-helm: expected $HELM_VERSION" >&2
  exit 1
fi
case ":$PATH:" in
  *":$gobin:"*) ;;
  *) echo "install-helm: note: $gobin is not on PATH (the chart tests look there too)" ;;
esac
