"""Settings: YAML plus environment, validated, errors naming the field."""

from pathlib import Path

import pytest

from cloner.config import Settings, load_settings
from cloner.errors import ConfigError
from cloner.model.reference import Target

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_documented_defaults() -> None:
    settings = load_settings(REPO / "config" / "config.yaml", environ={})
    assert settings.owned == Target("registry.example.com", "mirror")
    assert settings.poll_interval == 60.0
    assert settings.metrics_port == 9090
    assert settings.excluded_namespaces == ("kube-system", "kube-public", "kube-node-lease")
    assert settings.include_namespaces == ()


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "target: a.example.com\npollInterval: 5\n")
    settings = load_settings(
        path,
        environ={
            "IMAGE_CLONER_TARGET": "127.0.0.1:5000/owned",
            "IMAGE_CLONER_POLL_INTERVAL": "2.5",
            "DOCKER_HOST": "unix:///tmp/d.sock",
            "IMAGE_CLONER_DOCKER_CONFIG": "/x/config.json",
            "IMAGE_CLONER_METRICS_PORT": "0",
            "POD_NAMESPACE": "image-cloner",
        },
    )
    assert settings.owned == Target("127.0.0.1:5000", "owned")
    assert settings.poll_interval == 2.5
    assert settings.docker_host == "unix:///tmp/d.sock"
    assert settings.docker_config == Path("/x/config.json")
    assert settings.metrics_port == 0
    assert "image-cloner" in settings.excluded_namespaces


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("pollInterval: 5\n", "target"),
        ("target: nohost\n", "target"),
        ("target: a.example.com/UPPER\n", "target"),
        ("target: a.example.com\npollInterval: 0\n", "pollInterval"),
        ("target: a.example.com\npollInterval: -3\n", "pollInterval"),
        ("target: a.example.com\npollInterval: soon\n", "pollInterval"),
        ("target: a.example.com\npollInterval: true\n", "pollInterval"),
        ("target: a.example.com\nmetricsPort: 70000\n", "metricsPort"),
        ("target: a.example.com\nmetricsPort: 80.5\n", "metricsPort"),
        ("target: a.example.com\nlistPageSize: 0\n", "listPageSize"),
        ("target: a.example.com\nnamespaces:\n  exclude: 3\n", "namespaces.exclude"),
        ("target: a.example.com\nnamespaces:\n  include: ['']\n", "namespaces.include[0]"),
        ("target: a.example.com\nnamespaces:\n  excluded: [a]\n", "namespaces.excluded"),
        ("target: a.example.com\nnamespaces: [a]\n", "namespaces"),
        ("target: a.example.com\ndockerHost: /var/run/docker.sock\n", "dockerHost"),
        ("target: a.example.com\npolInterval: 5\n", "polInterval"),
    ],
)
def test_bad_value_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ={})
    assert caught.value.field == field
    assert field in str(caught.value)


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "target: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_settings(path, environ={})
    assert caught.value.field == str(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_settings_direct_construction_validates_target() -> None:
    with pytest.raises(ConfigError):
        Settings(target="not a registry")


def test_namespace_section_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path, "target: a.example.com\nnamespaces:\n  include: [team-*]\n  exclude: [team-x]\n"
    )
    settings = load_settings(path, environ={"POD_NAMESPACE": "ops"})
    assert settings.include_namespaces == ("team-*",)
    assert settings.excluded_namespaces == ("team-x", "ops")


def test_naming_and_selection_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "target: docker.io/myorg\n"
        "naming: flat\n"
        "flatSeparator: __\n"
        "pinDigest: true\n"
        "ownedRegistries: [harbor.internal/team, 'ecr.example.com']\n"
        "images:\n  include: ['docker.io/**']\n  exclude: ['*/library/busybox']\n",
    )
    settings = load_settings(path, environ={})
    assert settings.owned == Target("docker.io", "myorg", "flat", "__")
    assert settings.pin_digest is True
    assert settings.policy.owned_registries == (
        Target("harbor.internal", "team"),
        Target("ecr.example.com"),
    )
    assert settings.policy.include_images == ("docker.io/**",)
    assert settings.policy.exclude_images == ("*/library/busybox",)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("naming: deep\n", "naming"),
        ("naming: flat\nflatSeparator: '/'\n", "flatSeparator"),
        ("pinDigest: maybe\n", "pinDigest"),
        ("ownedRegistries: [nohost]\n", "ownedRegistries[0]"),
        ("images:\n  include: [1]\n", "images.include[0]"),
        ("images:\n  exclude: {a: 1}\n", "images.exclude"),
    ],
)
def test_bad_naming_and_selection_values_name_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "target: a.example.com\n" + text), environ={})
    assert caught.value.field == field


def test_copy_refresh_and_state_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "target: a.example.com\ncopyBackend: skopeo\nrefreshInterval: 0\n"
        "registryTimeout: 5\nstate: {configMap: cloner-state, ttl: 60}\n",
    )
    settings = load_settings(path, environ={})
    assert settings.copy_backend == "skopeo"
    assert settings.refresh_interval == 0.0  # never
    assert settings.registry_timeout == 5.0
    assert (settings.state_config_map, settings.state_ttl) == ("cloner-state", 60.0)
    shipped = load_settings(REPO / "config" / "config.yaml", environ={})
    assert (shipped.copy_backend, shipped.refresh_interval) == ("docker", 21600.0)
    override = load_settings(path, environ={"IMAGE_CLONER_COPY_BACKEND": "docker"})
    assert override.copy_backend == "docker"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("copyBackend: crane", "copyBackend"),
        ("refreshInterval: -1", "refreshInterval"),
        ("registryTimeout: 0", "registryTimeout"),
        ("state: {configMap: Not_A_Name}", "state.configMap"),
        ("state: {ttl: soon}", "state.ttl"),
        ("state: {shards: 4}", "state.shards"),
    ],
)
def test_bad_copy_and_state_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, f"target: a.example.com\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.field == field
