#!/usr/bin/env bash
# Build a Debian bookworm root filesystem with python3 (3.11), python3-venv and
# python-is-python3 by debootstrap, once per machine, as a tarball in the cache.
# `docker import` of it is the BASE_IMAGE the cluster tests build the
# controller image from, so no image comes from Docker Hub.
#
# The mirror is the one this machine's apt uses; the machine's CA bundle is
# copied in (pip inside the image build trusts what the host trusts).
#
# Usage: hack/base-image.sh     prints the tarball path on stdout
# Env:   IMAGE_CLONER_CACHE     cache root (default ~/.cache/image-cloner)
#        DEBIAN_MIRROR          override the mirror
set -euo pipefail
suite=bookworm
packages=python3,python3-venv,python-is-python3,ca-certificates
mirror=${DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^deb / && $3 ~ /^bookworm$/ {print $2; exit} /^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
ca=/etc/ssl/certs/ca-certificates.crt
# Key: this script, the mirror and the CA bundle (a changed recipe rebuilds).
recipe=$( { cat "$0"; echo "$mirror"; cat "$ca" 2>/dev/null || true; } | sha256sum | cut -c1-12)
cache=${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}
out="$cache/base-$suite-python3-$recipe.tar"
if [[ -s $out ]]; then echo "$out"; exit 0; fi
command -v debootstrap >/dev/null || { echo "base-image: debootstrap is required (hack/install-deps.sh)" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$out.lock"
flock 9
if [[ -s $out ]]; then echo "$out"; exit 0; fi
root=$(mktemp -d "$cache/.rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "base-image: debootstrap $suite from $mirror (first run on this machine only; about 3 minutes)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -30 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# The host's extra CAs too, so a later update-ca-certificates in an image
# build (an apt install that triggers it) keeps them.
if [[ -f $ca ]]; then cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"; fi
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner -C "$root" -cf "$out.partial" .
mv "$out.partial" "$out"
echo "$out"
