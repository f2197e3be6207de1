#!/usr/bin/env bash
# Install what `make demo` and `make test` need on a fresh Debian machine:
# the real components the end-to-end environment starts (dockerd, two
# distribution registries, etcd, htpasswd) and the single-node cluster of
# devenv/cluster.py (containerd with its CRI plugin, runc, the loopback CNI
# plugin, debootstrap for the offline base image, skopeo, ip) from Debian
# packages. Idempotent:
# does nothing when everything is already there. kube-apiserver is built from
# Go modules by hack/build-kube.sh; Python packages go into .venv (Makefile).
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v etcd >/dev/null || need+=(etcd-server)
command -v openssl >/dev/null || need+=(openssl)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/loopback ]] || need+=(containernetworking-plugins)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v skopeo >/dev/null || need+=(skopeo)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  echo "install-deps: apt-get install ${need[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
