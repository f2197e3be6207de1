#!/usr/bin/env bash
# Build kube-apiserver and kubectl from the Kubernetes Go modules pinned in
# hack/kube/go.mod, once per machine, into a cache outside the repository.
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
cache=${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}
bin="$cache/kubernetes-$version/bin"
if [[ -x "$bin/kube-apiserver" && -x "$bin/kubectl" ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "build-kube: Go is required to build kube-apiserver" >&2; exit 1; }
mkdir -p "$bin"
tmp="$bin/.partial"
mkdir -p "$tmp"
echo "build-kube: building kube-apiserver and kubectl $version (first run on this machine only; several minutes)" >&2
cd "$here/kube"
for cmd in kube-apiserver kubectl; do
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" \
    -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
done
mv "$tmp"/kube-apiserver "$tmp"/kubectl "$bin/"
rmdir "$tmp"
echo "$bin"
