#!/usr/bin/env bash
# Build cosign (sigstore signing, github.com/sigstore/cosign/v3)
# from the Go module pinned in hack/cosign/go.mod, once per machine, into a
# cache outside the repository, beside the kube binaries of hack/build-kube.sh.
# hack/cosign/tools.go imports the command so that `go mod tidy` keeps every
# module it needs. The signature tests sign and verify with it offline.
#
# Usage: hack/build-cosign.sh          prints the bin directory on stdout
# Env:   IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/^require github.com\/sigstore\/cosign\/v3/ {print $3}' "$here/cosign/go.mod")
[[ -n $version ]] || { echo "build-cosign: no cosign version in $here/cosign/go.mod" >&2; exit 1; }
# The cache key includes a hash of the recipe, so a changed recipe rebuilds.
recipe=$(cat "$0" "$here/cosign/go.mod" "$here/cosign/go.sum" "$here/cosign/tools.go" | sha256sum | cut -c1-12)
cache=${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}
bin="$cache/cosign-$version-$recipe/bin"
if [[ -x "$bin/cosign" ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "build-cosign: Go is required to build cosign" >&2; exit 1; }
mkdir -p "$bin"
# One build at a time (parallel test runs, make deps and make test together).
exec 9>"$bin/.lock"
flock 9
if [[ -x "$bin/cosign" ]]; then
  echo "$bin"
  exit 0
fi
tmp="$bin/.partial"
mkdir -p "$tmp"
echo "build-cosign: building cosign $version (first run on this machine only; a heavy build: about 8 minutes and 1.5 GB on 2 cores)" >&2
cd "$here/cosign"
# cosign's own Makefile stamps the version this way (`cosign version`).
# GOTOOLCHAIN=local: use the installed Go, never fetch another toolchain.
GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$version" \
  -o "$tmp/cosign" github.com/sigstore/cosign/v3/cmd/cosign >&2
mv "$tmp/cosign" "$bin/cosign"
rmdir "$tmp"
echo "$bin"
