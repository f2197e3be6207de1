#!/usr/bin/env bash
# Build cosign (sigstore signing, github.com/sigstore/cosign/v3)
# from the Go module pinned in hack/cosign/go.mod, once per machine, into a
# cache outside the repository, beside the kube binaries of hack/build-kube.sh
# (hack/lib/cached-build.sh). The signature tests sign and verify with it
# offline.
#
# Usage: hack/build-cosign.sh          prints the bin directory on stdout
# Env:   IMAGE_CLONER_CACHE            cache root (default ~/.cache/image-cloner)
set -euo pipefail
source "$(dirname "$0")/lib/cached-build.sh"
# The version is stamped as cosign's own Makefile does it (`cosign version`).
pinned_build cosign github.com/sigstore/cosign/v3 github.com/sigstore/cosign/v3/cmd/cosign \
  "a heavy build: about 8 minutes and 1.5 GB on 2 cores" \
  "-X sigs.k8s.io/release-utils/version.gitVersion={version}"
