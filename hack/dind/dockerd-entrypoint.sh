#!/bin/sh
# Like the official docker:dind entrypoint: no arguments, or a first argument
# that starts with "-", means dockerd with those flags (the official image then
# also adds a TCP --host); a first argument "dockerd" runs exactly what is
# given; anything else is run as a command.
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- dockerd "$@"
fi
if [ "$1" = dockerd ]; then
  # The official image's `dind` wrapper: make / shared so the engine's mounts
  # propagate, and give it the cgroup hierarchy it expects.
  mount --make-rshared / 2>/dev/null || true
fi
exec "$@"
