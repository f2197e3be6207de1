#!/usr/bin/env bash
# Build olareg (an OCI registry with the referrers API, github.com/olareg/olareg)
# from the Go module pinned in hack/olareg/go.mod, once per machine, into a
# cache outside the repository, beside the kube binaries of hack/build-kube.sh
# (hack/lib/cached-build.sh). The signature and referrer tests run it on
# loopback.
#
# Usage: hack/build-olareg.sh          prints the bin directory on stdout
# Env:   IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
source "$(dirname "$0")/lib/cached-build.sh"
pinned_build olareg github.com/olareg/olareg github.com/olareg/olareg/cmd/olareg \
  "well under a minute"
