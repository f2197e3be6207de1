"""Settings: YAML plus environment, validated, errors naming the field."""

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloner import config
from cloner.config import (
    KEYS,
    KEYS_BY_YAML,
    BackoffSettings,
    CopySettings,
    GitopsMode,
    Key,
    LeaderElectionSettings,
    PullSecretSettings,
    Settings,
    load_settings,
)
from cloner.errors import ConfigError
from cloner.model.artifacts import SignatureMode
from cloner.model.identity import BackendName
from cloner.model.pullsecrets import AttachMode
from cloner.model.reference import NamingStrategy, Target

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_documented_defaults() -> None:
    settings = load_settings(REPO / "config" / "config.yaml", environ={})
    assert settings.owned == Target("registry.example.com", "mirror")
    assert settings.poll_interval == 60.0
    assert settings.metrics.port == 9090
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
    assert settings.copy.docker_host == "unix:///tmp/d.sock"
    assert settings.docker_config == Path("/x/config.json")
    assert settings.metrics.port == 0
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
    assert settings.copy.backend is BackendName.SKOPEO
    assert settings.refresh.interval == 0.0  # never
    assert settings.copy.registry_timeout == 5.0
    assert (settings.state.config_map, settings.state.ttl) == ("cloner-state", 60.0)
    shipped = load_settings(REPO / "config" / "config.yaml", environ={})
    assert (shipped.copy.backend, shipped.refresh.interval) == ("docker", 21600.0)
    override = load_settings(path, environ={"IMAGE_CLONER_COPY_BACKEND": "docker"})
    assert override.copy.backend is BackendName.DOCKER


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


# --- the key table ---------------------------------------------------------

#: A valid value other than the default for every YAML key, and what it loads as.
SAMPLES: dict[str, tuple[Any, Any]] = {
    "target": ("other.example.com/x", "other.example.com/x"),
    "pollInterval": (5, 5.0),
    "dockerConfig": ("/x/config.json", Path("/x/config.json")),
    "namespaces.include": (["team-*"], ("team-*",)),
    "namespaces.exclude": (["kube-system", "ops"], ("kube-system", "ops")),
    "controllerNamespace": ("ops", "ops"),
    "listPageSize": (50, 50),
    "naming": ("flat", NamingStrategy.FLAT),
    "flatSeparator": ("__", "__"),
    "pinDigest": (True, True),
    "ownedRegistries": (["harbor.internal/team"], ("harbor.internal/team",)),
    "images.include": (["docker.io/**"], ("docker.io/**",)),
    "images.exclude": (["*/library/busybox"], ("*/library/busybox",)),
    "gitops": ("skip", GitopsMode.SKIP),
    "fightLimit": (7, 7),
    "patchConcurrency": (2, 2),
    "shutdownTimeout": (12.5, 12.5),
    "copyBackend": ("skopeo", BackendName.SKOPEO),
    "cloneConcurrency": (8, 8),
    "registryConcurrency": (2, 2),
    "engineCacheBytes": (0, 0),
    "dockerHost": ("tcp://127.0.0.1:2375", "tcp://127.0.0.1:2375"),
    "dockerTimeout": (60, 60.0),
    "registryTimeout": (5, 5.0),
    "insecureRegistries": (["127.0.0.1:*"], ("127.0.0.1:*",)),
    "backoff.initial": (10, 10.0),
    "backoff.max": (100, 100.0),
    "backoff.jitter": (0, 0.0),
    "rateLimitPause": (60, 60.0),
    "pullSecret.provision": (False, False),
    "pullSecret.name": ("pull.secret", "pull.secret"),
    "pullSecret.attach": ("workload", AttachMode.WORKLOAD),
    "leaderElection.enabled": (False, False),
    "leaderElection.leaseName": ("other-lease", "other-lease"),
    "leaderElection.leaseDuration": (20, 20.0),
    "leaderElection.renewDeadline": (5, 5.0),
    "leaderElection.retryPeriod": (1, 1.0),
    "metricsPort": (9400, 9400),
    "metricsAddress": ("127.0.0.1", "127.0.0.1"),
    "refreshInterval": (0, 0.0),
    "verifyInterval": (60, 60.0),
    "state.configMap": ("cloner-state", "cloner-state"),
    "state.ttl": (60, 60.0),
    "rollout.enabled": (False, False),
    "rollout.canary": (False, False),
    "rollout.timeout": (120, 120.0),
    "rollout.pullFailureGrace": (0, 0.0),
    "signatures": ("require", SignatureMode.REQUIRE),
    "pullSecret.dockerConfig": ("/etc/pull/config.json", Path("/etc/pull/config.json")),
}


def read(settings: Settings, key: Key) -> Any:
    """The value of ``key`` in ``settings``, e.g. ``settings.backoff.initial``."""
    return functools.reduce(getattr, key.attribute.split("."), settings)


def nested(key: str, value: Any) -> dict[str, Any]:
    """``backoff.initial: 10`` as YAML has it: ``{"backoff": {"initial": 10}}``."""
    section, _, sub = key.rpartition(".")
    return {section: {sub: value}} if section else {key: value}


def test_every_key_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(KEYS_BY_YAML)


@pytest.mark.parametrize("key", KEYS, ids=lambda k: k.yaml)
def test_every_key_loads_from_yaml_into_its_group(tmp_path: Path, key: Key) -> None:
    given, expected = SAMPLES[key.yaml]
    assert expected != key.default, "the sample must differ from the default"
    data = {"target": "a.example.com", **nested(key.yaml, given)}
    settings = load_settings(write(tmp_path, yaml.safe_dump(data)), environ={})
    loaded = read(settings, key)
    assert loaded == expected
    assert type(loaded) is type(expected)
    # Every other key keeps its default.
    for other in KEYS:
        if other is not key and other.yaml != "target":
            assert read(settings, other) == other.default, other.yaml


def test_defaults_are_the_loaders_and_pass_their_own_checks() -> None:
    loaded = load_settings(None, environ={"IMAGE_CLONER_TARGET": "a.example.com"})
    assert loaded == Settings(target="a.example.com")
    for key in KEYS:
        if key.yaml != "target":
            assert key.parse(key.default) == key.default, key.yaml


@pytest.mark.parametrize("key", [k for k in KEYS if k.env], ids=lambda k: k.env)
def test_environment_override_of_every_key_that_has_one(tmp_path: Path, key: Key) -> None:
    given, expected = SAMPLES[key.yaml]
    path = write(tmp_path, "target: a.example.com\n")
    settings = load_settings(path, environ={key.env: str(given)})
    assert read(settings, key) == expected
    # An empty variable is no override: the file's value or the default stays.
    kept = read(load_settings(path, environ={key.env: ""}), key)
    assert kept == ("a.example.com" if key.yaml == "target" else key.default)


def _out_of_range(key: Key) -> list[Any]:
    values: list[Any] = []
    if key.low is not None:
        values.append(key.low if key.above else key.low - 1)
    if key.high is not None:
        values.append(key.high + 1)
    return values


@pytest.mark.parametrize(
    ("key", "value"),
    [(k, v) for k in KEYS for v in _out_of_range(k)],
    ids=lambda x: x.yaml if isinstance(x, Key) else repr(x),
)
def test_out_of_range_values_name_the_key(tmp_path: Path, key: Key, value: Any) -> None:
    data = {"target": "a.example.com", **nested(key.yaml, value)}
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, yaml.safe_dump(data)), environ={})
    assert caught.value.field == key.yaml
    assert str(caught.value).startswith(f"config: {key.yaml}: must be ")


def test_range_messages_say_the_range() -> None:
    with pytest.raises(ConfigError) as caught:
        BackoffSettings(jitter=2)
    assert str(caught.value) == "config: backoff.jitter: must be between 0 and 1, got 2"
    with pytest.raises(ConfigError) as caught:
        CopySettings(concurrency=33)
    assert str(caught.value) == "config: cloneConcurrency: must be between 1 and 32, got 33"
    with pytest.raises(ConfigError) as caught:
        Settings(target="a.example.com", poll_interval=0)
    assert str(caught.value) == "config: pollInterval: must be greater than 0, got 0"


@pytest.mark.parametrize("key", [k for k in KEYS if k.choices], ids=lambda k: k.yaml)
def test_a_value_outside_the_choices_names_the_key_and_the_choices(
    tmp_path: Path, key: Key
) -> None:
    data = {"target": "a.example.com", **nested(key.yaml, "bogus")}
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, yaml.safe_dump(data)), environ={})
    assert caught.value.field == key.yaml
    assert key.choices is not None
    assert caught.value.problem == f"must be one of {', '.join(key.choices)}"


def test_direct_construction_converts_choices_and_checks_groups() -> None:
    settings = Settings(
        target="a.example.com",
        naming="flat",
        gitops="patch",
        copy=CopySettings(backend="skopeo"),
        pull_secrets=PullSecretSettings(attach="workload"),
    )
    assert settings.naming is NamingStrategy.FLAT
    assert settings.gitops is GitopsMode.PATCH
    assert settings.copy.backend is BackendName.SKOPEO
    assert settings.pull_secrets.attach is AttachMode.WORKLOAD
    assert settings.owned == Target("a.example.com", "", "flat")
    with pytest.raises(ConfigError) as caught:
        PullSecretSettings(name="Not_A_Name")
    assert caught.value.field == "pullSecret.name"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("backoff: {initial: 100, max: 50}", "backoff.max"),
        ("leaderElection: {leaseDuration: 5, renewDeadline: 5}", "leaderElection"),
        ("leaderElection: {renewDeadline: 2, retryPeriod: 2}", "leaderElection"),
        ("pullSecret: {attach: both}", "pullSecret.attach"),
        ("gitops: ignore", "gitops"),
        ("backoff: {jitter: 1.5}", "backoff.jitter"),
        ("verifyInterval: -1", "verifyInterval"),
        ("engineCacheBytes: -1", "engineCacheBytes"),
        ("pullSecret: {name: ''}", "pullSecret.name"),
        ("metricsAddress: ''", "metricsAddress"),
        ("leaderElection: {enabled: yes please}", "leaderElection.enabled"),
        ("backoff: 3", "backoff"),
    ],
)
def test_rules_between_keys_and_group_values_name_the_key(
    tmp_path: Path, text: str, field: str
) -> None:
    path = write(tmp_path, f"target: a.example.com\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.field == field


def test_groups_reach_their_collaborators_shape() -> None:
    settings = load_settings(REPO / "config" / "config.yaml", environ={})
    assert settings.backoff.policy.initial == 30.0
    assert settings.backoff.policy.maximum == 3600.0
    assert settings.leader_election == LeaderElectionSettings()
    assert (settings.metrics.port, settings.metrics.address) == (9090, "0.0.0.0")


def test_markdown_command_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert config.main(["--markdown"]) == 0
    out = capsys.readouterr().out
    assert out == config.reference_table()
    assert out.splitlines()[0].startswith("| key |")
    assert len(out.splitlines()) == 2 + len(KEYS)
    assert "| `backoff.jitter` | number, fraction | `0.2` | 0..1 |" in out
    assert config.main([]) == 2
