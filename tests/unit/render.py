"""Render the chart and the kustomize manifests as a user would, and read what a pod gets.

Used by the unit tests of the deployment artefacts (test_chart_proxy.py,
test_manifests.py). ``helm`` and ``kubectl`` are the cached builds of
``hack/build-helm.sh`` and ``hack/build-kube.sh``: each script prints the
binary's path at once when it is built (``make deps`` builds kubectl, the
chart tests helm); on a fresh machine the first call builds it, which needs
Go. Nothing here talks to a cluster: ``helm template`` and ``kubectl
kustomize`` only render.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "image-cloner"
MANIFESTS = ROOT / "manifests"

Object = dict[str, Any]


@functools.cache
def built(script: str) -> Path:
    """The path ``hack/<script>`` prints last (a binary or a bin directory)."""
    result = subprocess.run(
        [str(ROOT / "hack" / script)], capture_output=True, text=True, check=False, timeout=3600
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def documents(stream: str) -> list[Object]:
    """The objects of a YAML stream, empty documents left out (libyaml's parser: 4x faster)."""
    return [doc for doc in yaml.load_all(stream, Loader=yaml.CSafeLoader) if doc]


def helm_template(tmp: Path, values: dict[str, Any] | None = None) -> list[Object]:
    """``helm template image-cloner charts/image-cloner -f VALUES`` (helm's homes under ``tmp``).

    A render depends on the values alone, so each is made once per test run
    and handed out as a copy.
    """
    key = json.dumps(values or {}, sort_keys=True)
    if key not in _RENDERS:
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values or {}))
        result = helm(tmp, "template", "image-cloner", str(CHART), "-f", str(path))
        assert result.returncode == 0, result.stderr
        _RENDERS[key] = result.stdout
    return documents(_RENDERS[key])


_RENDERS: dict[str, str] = {}


def helm(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``helm ARGS`` with its cache, config and data homes under ``tmp``; not checked."""
    home = tmp / "helm-home"
    environ = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return subprocess.run(
        [str(built("build-helm.sh")), *args],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
        timeout=120,
    )


def kustomize(directory: Path) -> list[Object]:
    """``kubectl kustomize DIRECTORY`` (kustomize built into kubectl)."""
    result = subprocess.run(
        [str(built("build-kube.sh") / "kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def overlay(directory: Path, resource: str, *components: str, **fields: Any) -> Path:
    """A user's overlay of ``manifests/<resource>`` with ``manifests/<component>``s.

    kustomize takes only relative paths to other kustomizations, so they are
    written relative to ``directory``. ``fields`` are further kustomization
    fields (``patches=[...]``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS / resource, directory)],
        "components": [os.path.relpath(MANIFESTS / c, directory) for c in components],
        **fields,
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


def configmap_patch(name: str, data: dict[str, str]) -> dict[str, str]:
    """An overlay's ``patches`` entry that sets keys of the ConfigMap ``name`` in image-cloner."""
    patch = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "image-cloner"},
        "data": data,
    }
    return {"patch": yaml.safe_dump(patch)}


def deployment(objects: list[Object]) -> Object:
    """The one Deployment of a render."""
    (found,) = [o for o in objects if o["kind"] == "Deployment"]
    return found


def containers(objects: list[Object]) -> dict[str, Object]:
    """The Deployment's containers by name."""
    return {c["name"]: c for c in deployment(objects)["spec"]["template"]["spec"]["containers"]}


#: ``$(NAME)`` references of an env value, and ``$$`` (a literal ``$``).
_REFERENCE = re.compile(r"\$(\$|\(([A-Za-z_][A-Za-z0-9_]*)\))")


def environment(objects: list[Object]) -> dict[str, dict[str, str]]:
    """The environment the kubelet starts each container with: container name -> variables.

    As the kubelet builds it (``makeEnvironmentVariables``): the keys of the
    ``envFrom`` ConfigMaps of the render first, then ``env`` in order, each
    ``value`` with its ``$(NAME)`` references to variables defined before it
    expanded (an unknown one stays as written; ``$$`` is ``$``). An entry with
    neither ``value`` nor ``valueFrom`` is the empty string; ``valueFrom``
    entries are left out (they name the pod, not a setting).
    """
    configmaps = {
        o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
    }
    result: dict[str, dict[str, str]] = {}
    for name, container in containers(objects).items():
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        for entry in container.get("env", []):
            if "valueFrom" in entry:
                continue
            env[entry["name"]] = _REFERENCE.sub(
                lambda m, env=env: "$" if m.group(1) == "$" else env.get(m.group(2), m.group(0)),
                entry.get("value", ""),
            )
        result[name] = env
    return result
