#!/usr/bin/env bash
# Build the helm v3 CLI from its Go module (helm.sh/helm/v3, through the Go
# module proxy), once per machine and version, into a cache outside the
# repository, beside the kube binaries of hack/build-kube.sh
# (hack/lib/cached-build.sh). The chart tests
# (tests/unit/test_chart.py, tests/e2e/test_chart.py) call it, so a fresh
# machine needs only Go.
#
# Usage: hack/build-helm.sh            prints the path of the helm binary on stdout
# Env:   HELM_VERSION                  module version (default below)
#        IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
source "$(dirname "$0")/lib/cached-build.sh"
version=${HELM_VERSION:-v3.22.0}
cache_dir helm "$version"
start_build helm "$bin/helm"
echo "build-helm: building helm $version (first run on this machine only; a few minutes on 2 cores)" >&2
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
finish_build helm "$bin/helm"
