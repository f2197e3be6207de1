"""The chart's ``proxy`` value: one setting, the same environment in the controller and the sidecar.

``helm template`` renders the chart (tests/unit/render.py); the assertions
read the environment each container starts with. With ``proxy.httpsProxy``
or ``proxy.httpProxy`` set, the controller and the dind sidecar (the Docker
engine reads its own environment) get HTTPS_PROXY, HTTP_PROXY, NO_PROXY and
the lowercase forms; with neither, no container gets any of them and the
render is what it was before the value existed. The component
``manifests/proxy/`` gives the pod the same environment from the same three
values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloner.model.proxy import ProxyConfig
from tests.unit.render import (
    CHART,
    MANIFESTS,
    configmap_patch,
    containers,
    environment,
    helm,
    helm_template,
    kustomize,
    overlay,
)

NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")
ALL_NAMES = {*NAMES, *(name.lower() for name in NAMES)}
PROXY = "http://proxy.example.com:3128"
VALUES = {
    "httpsProxy": PROXY,
    "httpProxy": "http://proxy.example.com:8080",
    "noProxy": ".svc,10.0.0.0/8",
}


def default_no_proxy() -> str:
    """``proxy.noProxy`` of values.yaml."""
    return str(yaml.safe_load((CHART / "values.yaml").read_text())["proxy"]["noProxy"])


def proxy_env(env: dict[str, str]) -> dict[str, str]:
    """The proxy variables of one container's environment, in either case."""
    return {k: v for k, v in env.items() if k.lower() in {"https_proxy", "http_proxy", "no_proxy"}}


def expected(https: str, http: str, no_proxy: str) -> dict[str, str]:
    """The six variables, each name in both cases with the same value."""
    pairs = dict(zip(NAMES, (https, http, no_proxy), strict=True))
    return {**pairs, **{k.lower(): v for k, v in pairs.items()}}


@pytest.mark.parametrize("backend", ["docker", "skopeo"])
@pytest.mark.parametrize(
    "proxy",
    [None, {"httpsProxy": "", "httpProxy": ""}, {"noProxy": ".corp.example.com"}],
    ids=["defaults", "empty-strings", "no-proxy-alone"],
)
def test_without_a_proxy_no_container_gets_a_proxy_variable(
    tmp_path: Path, backend: str, proxy: dict[str, str] | None
) -> None:
    values: dict[str, Any] = {"copyBackend": backend}
    if proxy is not None:
        values["proxy"] = proxy
    objects = helm_template(tmp_path, values)
    for name, env in environment(objects).items():
        assert not proxy_env(env), name
    assert "proxy" not in json.dumps(containers(objects)).lower()


@pytest.mark.parametrize(
    ("proxy", "https", "http"),
    [
        (VALUES, PROXY, "http://proxy.example.com:8080"),
        ({"httpsProxy": PROXY}, PROXY, ""),
        ({"httpProxy": PROXY}, "", PROXY),
    ],
    ids=["all-three", "https-only", "http-only"],
)
def test_a_proxy_reaches_the_controller_and_the_sidecar(
    tmp_path: Path, proxy: dict[str, str], https: str, http: str
) -> None:
    env = environment(helm_template(tmp_path, {"proxy": proxy}))
    assert set(env) == {"controller", "dind"}
    no_proxy = proxy.get("noProxy", default_no_proxy())
    for name in env:
        assert proxy_env(env[name]) == expected(https, http, no_proxy), name
    # The controller's other settings are still there.
    assert env["controller"]["DOCKER_HOST"] == "unix:///var/run/dind/docker.sock"
    assert env["dind"]["DOCKER_TLS_CERTDIR"] == ""


def test_with_skopeo_the_controller_alone_gets_the_proxy(tmp_path: Path) -> None:
    env = environment(helm_template(tmp_path, {"copyBackend": "skopeo", "proxy": VALUES}))
    assert list(env) == ["controller"]
    assert proxy_env(env["controller"]) == expected(PROXY, VALUES["httpProxy"], VALUES["noProxy"])


def test_an_empty_value_renders_the_name_alone(tmp_path: Path) -> None:
    # `value: ""` is dropped by the API server, and `kubectl apply` would then
    # report a change on every run (like DOCKER_TLS_CERTDIR).
    objects = helm_template(tmp_path, {"proxy": {"httpsProxy": PROXY, "noProxy": ""}})
    for container in containers(objects).values():
        entries = {e["name"]: e for e in container["env"] if e["name"].lower() in ALL_NAMES}
        assert entries["HTTP_PROXY"] == {"name": "HTTP_PROXY"}
        assert entries["no_proxy"] == {"name": "no_proxy"}
        assert entries["https_proxy"] == {"name": "https_proxy", "value": PROXY}


def test_extra_env_comes_after_the_proxy_and_can_override_it(tmp_path: Path) -> None:
    extra = [{"name": "NO_PROXY", "value": "*"}]
    objects = helm_template(tmp_path, {"proxy": VALUES, "extraEnv": extra})
    names = [e["name"] for e in containers(objects)["controller"]["env"]]
    assert names.index("no_proxy") < len(names) - 1
    assert environment(objects)["controller"]["NO_PROXY"] == "*"


def test_a_value_with_yaml_and_url_characters_arrives_unchanged(tmp_path: Path) -> None:
    proxy = 'http://us%40er:p#ss: "w"@proxy.example.com:3128'
    env = environment(helm_template(tmp_path, {"proxy": {"httpsProxy": proxy}}))
    assert env["controller"]["HTTPS_PROXY"] == env["dind"]["https_proxy"] == proxy


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"httpsproxy": PROXY}, "additional properties 'httpsproxy' not allowed"),
        ({"noProxy": [".svc"]}, "noProxy"),
        ({"httpProxy": 3128}, "httpProxy"),
    ],
)
def test_the_schema_refuses_a_misspelt_key_or_a_value_that_is_no_string(
    tmp_path: Path, proxy: dict[str, Any], message: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"proxy": proxy}))
    result = helm(tmp_path, "template", "image-cloner", str(CHART), "-f", str(path))
    assert result.returncode != 0
    assert message in result.stderr


def test_the_schema_knows_the_three_keys_and_values_yaml_holds_them() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["proxy"]
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())["proxy"]
    assert set(schema["properties"]) == set(values) == {"httpsProxy", "httpProxy", "noProxy"}
    assert values["httpsProxy"] == values["httpProxy"] == ""


# --- the default NO_PROXY ---------------------------------------------------------


def bypassed(no_proxy: str, host: str) -> bool:
    """Whether ``host`` is reached directly under ``no_proxy``: the controller's own rule
    (``model.proxy``, Go's, which skopeo and dockerd apply too)."""
    config = ProxyConfig.from_environ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy})
    literal = f"[{host}]" if ":" in host else host
    return config.proxy_for(f"https://{literal}/") is None


@pytest.mark.parametrize(
    "host",
    [
        # The API server's Service IP (KUBERNETES_SERVICE_HOST), what in-cluster
        # clients dial: kubeadm, k3s, EKS (two ranges), AKS, an IPv6 cluster.
        "10.96.0.1",
        "10.43.0.1",
        "10.100.0.1",
        "172.20.0.1",
        "10.0.0.1",
        "fd00:10:96::1",
        # ... and by name.
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        # In-cluster registries and services, loopback, cloud metadata.
        "registry.registry.svc",
        "registry.registry.svc.cluster.local",
        "192.168.1.20",
        "127.0.0.1",
        "::1",
        "localhost",
        "169.254.169.254",
    ],
)
def test_the_default_no_proxy_covers_the_api_server_and_the_cluster(host: str) -> None:
    assert bypassed(default_no_proxy(), host)


@pytest.mark.parametrize(
    "host",
    ["registry-1.docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "public.ecr.aws", "8.8.8.8"],
)
def test_the_default_no_proxy_sends_public_registries_through_the_proxy(host: str) -> None:
    assert not bypassed(default_no_proxy(), host)


# --- the kustomize component gives the pod the same environment --------------------


@pytest.mark.parametrize(
    ("backend", "resource"), [("docker", ""), ("skopeo", "skopeo")], ids=["docker", "skopeo"]
)
@pytest.mark.parametrize("proxy", [VALUES, {"httpsProxy": PROXY}], ids=["all-three", "https-only"])
def test_the_chart_and_the_kustomize_component_give_each_container_the_same_proxy(
    tmp_path: Path, backend: str, resource: str, proxy: dict[str, str]
) -> None:
    chart = environment(helm_template(tmp_path, {"copyBackend": backend, "proxy": proxy}))
    keys = dict(zip(("httpsProxy", "httpProxy", "noProxy"), NAMES, strict=True))
    patch = configmap_patch("image-cloner-proxy", {keys[k]: v for k, v in proxy.items()})
    rendered = kustomize(overlay(tmp_path / "overlay", resource, "proxy", patches=[patch]))
    manifests = environment(rendered)
    assert list(manifests) == list(chart)
    for name in chart:
        assert proxy_env(manifests[name]) == proxy_env(chart[name]), name


def test_the_component_ships_the_charts_default_no_proxy() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "proxy" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    literals = dict(literal.split("=", 1) for literal in generator["literals"])
    assert literals == {"HTTPS_PROXY": "", "HTTP_PROXY": "", "NO_PROXY": default_no_proxy()}
