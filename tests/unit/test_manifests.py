"""The shipped manifests carry settings and credentials the controller accepts."""

from pathlib import Path

import yaml

from cloner.config import load_settings
from cloner.model.credentials import DockerConfig

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
