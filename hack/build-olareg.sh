#!/usr/bin/env bash
# Build olareg (an OCI registry with the referrers API, github.com/olareg/olareg)
# from the Go module pinned in hack/olareg/go.mod, once per machine, into a
# cache outside the repository, beside the kube binaries of hack/build-kube.sh.
# hack/olareg/tools.go imports the command so that `go mod tidy` keeps every
# module it needs. The signature and referrer tests run it on loopback.
#
# Usage: hack/build-olareg.sh          prints the bin directory on stdout
# Env:   IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/^require github.com\/olareg\/olareg/ {print $3}' "$here/olareg/go.mod")
[[ -n $version ]] || { echo "build-olareg: no olareg version in $here/olareg/go.mod" >&2; exit 1; }
# The cache key includes a hash of the recipe, so a changed recipe rebuilds.
recipe=$(cat "$0" "$here/olareg/go.mod" "$here/olareg/go.sum" "$here/olareg/tools.go" | sha256sum | cut -c1-12)
cache=${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}
bin="$cache/olareg-$version-$recipe/bin"
if [[ -x "$bin/olareg" ]]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || { echo "build-olareg: Go is required to build olareg" >&2; exit 1; }
mkdir -p "$bin"
# One build at a time (parallel test runs, make deps and make test together).
exec 9>"$bin/.lock"
flock 9
if [[ -x "$bin/olareg" ]]; then
  echo "$bin"
  exit 0
fi
tmp="$bin/.partial"
mkdir -p "$tmp"
echo "build-olareg: building olareg $version (first run on this machine only; well under a minute)" >&2
cd "$here/olareg"
# GOTOOLCHAIN=local: use the installed Go, never fetch another toolchain.
GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
  -ldflags "-s -w" -o "$tmp/olareg" github.com/olareg/olareg/cmd/olareg >&2
mv "$tmp/olareg" "$bin/olareg"
rmdir "$tmp"
echo "$bin"
