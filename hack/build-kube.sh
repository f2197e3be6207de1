#!/usr/bin/env bash
# Build kube-apiserver, kubectl and the node and control-plane components the
# cluster harness runs (kubelet, kube-controller-manager, kube-scheduler) from
# the Kubernetes Go modules pinned in hack/kube/go.mod, once per machine, into a
# cache outside the repository. hack/kube/tools.go imports the five commands so
# that `go mod tidy` keeps every module they need.
#
# k8s.io/kubernetes cannot be `go install`ed directly (its go.mod replaces the
# k8s.io/* staging modules with local paths), so hack/kube/go.mod requires it
# and pins every staging module with a replace line at the matching v0.x tag.
#
# Usage: hack/build-kube.sh            prints the bin directory on stdout
# Env:   IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/kube/go.mod")
# The cache key includes a hash of the recipe, so a changed recipe rebuilds.
recipe=$(cat "$0" "$here/kube/go.mod" "$here/kube/go.sum" "$here/kube/tools.go" | sha256sum | cut -c1-12)
cache=${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}
bin="$cache/kubernetes-$version-$recipe/bin"
cmds=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler)
built() {
  local cmd
  for cmd in "${cmds[@]}"; do [[ -x "$bin/$cmd" ]] || return 1; done
}
if built; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "build-kube: Go is required to build kube-apiserver" >&2; exit 1; }
mkdir -p "$bin"
# One build at a time (parallel test runs, make demo and make test together).
exec 9>"$bin/.lock"
flock 9
if built; then
  echo "$bin"
  exit 0
fi
tmp="$bin/.partial"
mkdir -p "$tmp"
echo "build-kube: building ${cmds[*]} $version (first run on this machine only; about 10 minutes on 2 cores)" >&2
minor=${version#v*.}; minor=${minor%%.*}
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean"
done
cd "$here/kube"
pkgs=()
for cmd in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
# One go build for all five: shared packages compile once, links run in parallel.
CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w$stamp" \
  -o "$tmp/" "${pkgs[@]}" >&2
for cmd in "${cmds[@]}"; do mv "$tmp/$cmd" "$bin/"; done
rmdir "$tmp"
echo "$bin"
