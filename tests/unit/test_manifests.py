"""The shipped manifests carry settings and credentials the controller accepts.

The component manifests/proxy/ is rendered with ``kubectl kustomize`` in an
overlay as a user writes it (tests/unit/render.py), and the environment each
container starts with is read as the kubelet builds it.
"""

from pathlib import Path

import pytest
import yaml

from cloner.config import load_settings
from cloner.model.credentials import DockerConfig
from tests.unit.render import configmap_patch, containers, environment, kustomize, overlay

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "base"


def configmap(name: str, directory: Path = MANIFESTS) -> dict[str, str]:
    for path in directory.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == name:
                return doc["data"]
    raise AssertionError(f"no ConfigMap {name} in manifests/")


def test_config_configmap_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(configmap("image-cloner-config")["config.yaml"])
    settings = load_settings(path, environ={"POD_NAMESPACE": "image-cloner"})
    assert settings.owned.registry == "registry.example.com"
    assert "image-cloner" in settings.excluded_namespaces


def test_docker_configuration_configmap_parses_with_an_owned_entry() -> None:
    config = DockerConfig.parse(configmap("docker-configuration")["config.json"])
    assert config.for_registry("registry.example.com") is not None


def test_deployment_points_the_controller_at_the_mounted_files() -> None:
    deployment = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    controller = containers["controller"]
    env = {e["name"]: e.get("value") for e in controller["env"]}
    assert env["IMAGE_CLONER_DOCKER_CONFIG"] == "/etc/image-cloner/docker/config.json"
    assert env["DOCKER_HOST"] == "unix:///var/run/dind/docker.sock"
    assert "/etc/image-cloner/config/config.yaml" in controller["args"]
    assert controller["securityContext"]["runAsNonRoot"] is True
    assert containers["dind"]["securityContext"]["privileged"] is True


def test_read_only_pull_configmap_holds_another_account_for_the_owned_registry() -> None:
    read_only = MANIFESTS.parent / "read-only-pull"
    pull = DockerConfig.parse(configmap("docker-pull-configuration", read_only)["config.json"])
    push = DockerConfig.parse(configmap("docker-configuration")["config.json"])
    reader = pull.for_registry("registry.example.com")
    pusher = push.for_registry("registry.example.com")
    assert reader is not None and pusher is not None
    assert reader.username != pusher.username
    assert list(pull.credentials) == ["registry.example.com"]  # the owned entry alone


# --- manifests/proxy/: one ConfigMap, every container ------------------------------

PROXY_NAMES = {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"}


def proxy_settings(**data: str) -> dict[str, str]:
    """The overlay patch that sets the ConfigMap image-cloner-proxy, as docs/deploy.md shows it."""
    return configmap_patch("image-cloner-proxy", data)


def proxy_component_default(key: str) -> str:
    """A literal of the component's configMapGenerator."""
    kustomization = yaml.safe_load((MANIFESTS.parent / "proxy" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    return str(dict(lit.split("=", 1) for lit in generator["literals"])[key])


@pytest.mark.parametrize("resource", ["", "skopeo", "secret-credentials"])
def test_without_the_proxy_component_no_container_gets_a_proxy_variable(resource: str) -> None:
    objects = kustomize(MANIFESTS.parent / resource)
    for name, env in environment(objects).items():
        assert not set(env) & PROXY_NAMES, name
        assert "envFrom" not in containers(objects)[name]
    assert not [o for o in objects if "proxy" in o["metadata"]["name"]]


@pytest.mark.parametrize(
    ("resource", "components", "names"),
    [
        ("", ["proxy"], ["controller", "dind"]),
        ("skopeo", ["proxy"], ["controller"]),
        ("secret-credentials", ["proxy"], ["controller", "dind"]),
        # The other components' env index tests still hold, in either order.
        ("", ["proxy", "read-only-pull"], ["controller", "dind"]),
        ("skopeo", ["read-only-pull-secret", "proxy"], ["controller"]),
    ],
)
def test_the_proxy_component_sets_three_values_once_for_every_container(
    tmp_path: Path, resource: str, components: list[str], names: list[str]
) -> None:
    settings = proxy_settings(
        HTTPS_PROXY="http://proxy.example.com:3128",
        HTTP_PROXY="http://proxy.example.com:8080",
        NO_PROXY=".svc,10.0.0.0/8,registry.internal:5000",
    )
    objects = kustomize(overlay(tmp_path / "overlay", resource, *components, patches=[settings]))
    env = environment(objects)
    assert list(env) == names
    for name in names:
        assert {k: v for k, v in env[name].items() if k in PROXY_NAMES} == {
            "HTTPS_PROXY": "http://proxy.example.com:3128",
            "https_proxy": "http://proxy.example.com:3128",
            "HTTP_PROXY": "http://proxy.example.com:8080",
            "http_proxy": "http://proxy.example.com:8080",
            "NO_PROXY": ".svc,10.0.0.0/8,registry.internal:5000",
            "no_proxy": ".svc,10.0.0.0/8,registry.internal:5000",
        }, name
    # The rest of the controller's environment is untouched.
    assert env["controller"]["IMAGE_CLONER_DOCKER_CONFIG"] == "/etc/image-cloner/docker/config.json"
    if "read-only-pull" in components:
        assert "IMAGE_CLONER_PULL_DOCKER_CONFIG" in env["controller"]


def test_the_proxy_component_alone_sets_no_proxy_and_keeps_the_default_no_proxy(
    tmp_path: Path,
) -> None:
    env = environment(kustomize(overlay(tmp_path / "overlay", "", "proxy")))
    for name in ("controller", "dind"):
        assert env[name]["HTTPS_PROXY"] == env[name]["https_proxy"] == ""
        assert env[name]["HTTP_PROXY"] == env[name]["http_proxy"] == ""
        assert env[name]["no_proxy"] == proxy_component_default("NO_PROXY")


def test_changed_proxy_values_roll_the_pod_through_a_new_configmap_name(tmp_path: Path) -> None:
    def configmap_name(**data: str) -> str:
        directory = tmp_path / str(len(data))
        objects = kustomize(overlay(directory, "", "proxy", patches=[proxy_settings(**data)]))
        (configmap,) = [
            o for o in objects if o["metadata"]["name"].startswith("image-cloner-proxy")
        ]
        references = {c["envFrom"][0]["configMapRef"]["name"] for c in containers(objects).values()}
        assert references == {configmap["metadata"]["name"]}
        return str(configmap["metadata"]["name"])

    one = configmap_name(HTTPS_PROXY="http://a.example.com:3128")
    two = configmap_name(HTTPS_PROXY="http://b.example.com:3128", HTTP_PROXY="http://b:1")
    assert one != two


def test_the_environment_is_read_as_the_kubelet_expands_it() -> None:
    objects = [
        {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"A": "x", "B": ""}},
        {
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "one",
                                "envFrom": [{"configMapRef": {"name": "c"}}],
                                "env": [
                                    {"name": "a", "value": "$(A)"},
                                    {"name": "b", "value": "$(B)"},
                                    {"name": "C", "value": "$(a)-$(MISSING)-$$(A)"},
                                    {"name": "E"},
                                    {"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                                ],
                            }
                        ]
                    }
                }
            },
        },
    ]
    assert environment(objects) == {
        "one": {"A": "x", "B": "", "a": "x", "b": "", "C": "x-$(MISSING)-$(A)", "E": ""}
    }
