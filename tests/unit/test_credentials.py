"""docker config.json parsing: registries normalized, errors clear, secrets hidden."""

import base64
import json

import pytest

from cloner.credentials import DockerConfig, normalize_registry_key
from cloner.errors import ConfigError


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("Registry.Example.com", "registry.example.com"),
        ("quay.io", "quay.io"),
    ],
)
def test_registry_keys_are_normalized(key: str, host: str) -> None:
    assert normalize_registry_key(key) == host


def test_auth_and_username_password_entries() -> None:
    config = DockerConfig.parse(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5000": {"auth": auth("cloner", "s3cr:et")},
                    "https://index.docker.io/v1/": {"username": "u", "password": "p"},
                    "empty.example.com": {},
                }
            }
        )
    )
    owned = config.for_registry("127.0.0.1:5000")
    assert owned is not None
    assert (owned.username, owned.password) == ("cloner", "s3cr:et")
    assert owned.docker_auth_config() == {"username": "cloner", "password": "s3cr:et"}
    hub = config.for_registry("docker.io")
    assert hub is not None and hub.username == "u"
    assert config.for_registry("empty.example.com") is None
    assert config.for_registry("other.example.com") is None


def test_password_never_in_repr() -> None:
    config = DockerConfig.parse(
        json.dumps({"auths": {"r.example.com": {"auth": auth("u", "hunter2")}}})
    )
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(config.for_registry("r.example.com"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"auths": []}', "must be an object"),
        ('{"auths": {"r.example.com": "x"}}', "must be an object"),
        ('{"auths": {"r.example.com": {"auth": "!!!"}}}', "not base64"),
        (
            '{"auths": {"r.example.com": {"auth": "'
            + base64.b64encode(b"nocolon").decode()
            + '"}}}',
            "not base64",
        ),
        ('{"credsStore": "desktop"}', "credential helpers"),
    ],
)
def test_malformed_config_is_refused_with_a_clear_message(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        DockerConfig.parse(text, "/etc/docker/config.json")
    assert "/etc/docker/config.json" in str(caught.value)
