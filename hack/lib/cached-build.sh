# Sourced by hack/build-{olareg,cosign,helm}.sh: a Go binary built once per
# machine into a cache outside the repository, keyed by its version and a hash
# of its recipe, one build at a time.
#
#   cache_dir NAME VERSION FILE...  sets $bin: CACHE/NAME-VERSION-HASH/bin, where
#                                   HASH covers the calling script, this library
#                                   and FILE... (the rest of the recipe)
#   start_build NAME OUT            prints OUT and exits when $bin/NAME is built;
#                                   else needs Go, takes the lock (and prints OUT
#                                   and exits if another run built it meanwhile),
#                                   and sets $tmp, where the build goes
#   finish_build NAME OUT           moves $tmp/NAME into $bin, prints OUT
#   pinned_build NAME MODULE PACKAGE TOOK [LDFLAGS]
#                                   all of it for the command PACKAGE of MODULE at
#                                   the version hack/NAME/go.mod requires
#                                   (hack/NAME/tools.go imports it, so that `go mod
#                                   tidy` keeps every module it needs), with the
#                                   installed Go; TOOK says how long a first build
#                                   takes; {version} in LDFLAGS is the version.
#                                   Prints $bin.
#
# Env: IMAGE_CLONER_CACHE  cache root (default ~/.cache/image-cloner)

cache_dir() {
  local name=$1 version=$2 recipe
  shift 2
  # The cache key includes a hash of the recipe, so a changed recipe rebuilds.
  recipe=$(cat "$0" "${BASH_SOURCE[0]}" "$@" | sha256sum | cut -c1-12)
  bin="${IMAGE_CLONER_CACHE:-$HOME/.cache/image-cloner}/$name-$version-$recipe/bin"
}

start_build() {
  local name=$1 out=$2
  if [[ -x "$bin/$name" ]]; then
    echo "$out"
    exit 0
  fi
  command -v go >/dev/null || { echo "build-$name: Go is required to build $name" >&2; exit 1; }
  mkdir -p "$bin"
  # One build at a time (parallel test runs, make deps and make test together).
  exec 9>"$bin/.lock"
  flock 9
  if [[ -x "$bin/$name" ]]; then
    echo "$out"
    exit 0
  fi
  tmp="$bin/.partial"
  mkdir -p "$tmp"
}

finish_build() {
  mv "$tmp/$1" "$bin/$1"
  rmdir "$tmp"
  echo "$2"
}

pinned_build() {
  local name=$1 module=$2 package=$3 took=$4 ldflags=${5:-} dir version flags
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../$name" && pwd)
  version=$(awk -v m="$module" '$1 == "require" && $2 == m {print $3}' "$dir/go.mod")
  [[ -n $version ]] || { echo "build-$name: no $name version in $dir/go.mod" >&2; exit 1; }
  cache_dir "$name" "$version" "$dir/go.mod" "$dir/go.sum" "$dir/tools.go"
  start_build "$name" "$bin"
  echo "build-$name: building $name $version (first run on this machine only; $took)" >&2
  flags="-s -w"
  [[ -z $ldflags ]] || flags+=" ${ldflags//\{version\}/$version}"
  cd "$dir"
  # GOTOOLCHAIN=local: use the installed Go, never fetch another toolchain.
  GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "$flags" -o "$tmp/$name" "$package" >&2
  finish_build "$name" "$bin"
}
