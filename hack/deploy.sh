#!/usr/bin/env bash
# make deploy / make undeploy: apply or delete a kustomize directory (default
# manifests/) with the controller image set to IMAGE, so that `make image` and
# `make deploy` agree on one name.
#
# Usage: hack/deploy.sh apply|delete DIR IMAGE
#   DIR    a kustomization directory: manifests/, manifests/secret-credentials/
#          or an overlay of your own that includes one of them
#   IMAGE  NAME[:TAG] or NAME@sha256:...; replaces the image named
#          "image-cloner" in DIR (the controller container)
# Env:     KUBECTL   kubectl command (default kubectl)
#
# The generated overlay (one `images:` entry, resources: DIR) lives in a
# temporary directory beside DIR (in its parent) and is removed afterwards.
set -euo pipefail
action=$1 dir=$2 image=$3
kubectl=${KUBECTL:-kubectl}
[[ -f "$dir/kustomization.yaml" ]] || { echo "deploy: no $dir/kustomization.yaml" >&2; exit 2; }
if [[ $action == delete ]]; then
  exec $kubectl delete -k "$dir" --ignore-not-found
fi
[[ $action == apply ]] || { echo "deploy: apply or delete, not $action" >&2; exit 2; }
abs=$(cd "$dir" && pwd)
tmp=$(mktemp -d "$(dirname "$abs")/.deploy.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Split NAME[:TAG] / NAME@DIGEST (a ':' after the last '/' starts the tag).
if [[ $image == *@* ]]; then
  entry="    newName: ${image%@*}"$'\n'"    digest: ${image#*@}"
else
  last=${image##*/}
  if [[ $last == *:* ]]; then
    entry="    newName: ${image%:*}"$'\n'"    newTag: ${image##*:}"
  else
    entry="    newName: $image"$'\n'"    newTag: latest"
  fi
fi
cat >"$tmp/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../$(basename "$abs")
images:
  - name: image-cloner
$entry
YAML
$kubectl apply -k "$tmp"
