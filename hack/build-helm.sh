#!/usr/bin/env bash
# Build the helm v3 CLI from its Go module (helm.sh/helm/v3, through the Go
# module proxy), once per machine and version, into a cache outside the
# repository, beside the kube binaries of hack/build-kube.sh. The chart tests
# (tests/unit/test_chart.py, tests/e2e/test_chart.py) call it, so a fresh
# machine needs only Go.
#
# Usage: hack/build-helm.sh            prints the path of the helm binary on stdout
# Env:   HELM_VERSION                  module version (default below)
#        IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
version=${HELM_VERSION:-v3.22.0}
cache=${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}
# The cache key includes a hash of this recipe, so a changed recipe rebuilds.
recipe=$(sha256sum "$0" | cut -c1-12)
bin="$cache/helm-$version-$recipe/bin"
if [[ -x "$bin/helm" ]]; then
  echo "$bin/helm"
  exit 0
fi
command -v go >/dev/null || { echo "build-helm: Go is required to build helm" >&2; exit 1; }
mkdir -p "$bin"
# One build at a time (parallel test runs).
exec 9>"$bin/.lock"
flock 9
if [[ -x "$bin/helm" ]]; then
  echo "$bin/helm"
  exit 0
fi
echo "build-helm: building helm $version (first run on this machine only; a few minutes on 2 cores)" >&2
tmp="$bin/.partial"
mkdir -p "$tmp"
# The ldflags of helm's own Makefile: `helm version` reports the version, and
# `helm template`/`helm lint` assume the Kubernetes version of the client-go
# helm is built with (unstamped they assume v1.20, which charts with a
# kubeVersion constraint refuse). client-go v0.X.Y is Kubernetes 1.X.
gomod=$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
minor=$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]}' "$gomod")
[[ -n $minor ]] || { echo "build-helm: no k8s.io/client-go in $gomod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done
GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "$ldflags" \
  "helm.sh/helm/v3/cmd/helm@$version" >&2
mv "$tmp/helm" "$bin/helm"
rmdir "$tmp"
echo "$bin/helm"
