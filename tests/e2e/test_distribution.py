"""The distribution client against the real registries: anonymous ``public``, htpasswd ``owned``.

Both listen on 127.0.0.1 over plain HTTP, so a client that lists
``127.0.0.1:*`` in ``insecureRegistries`` reaches them (https fails, plain
http answers); one that does not list them gets a TLS error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

import pytest

from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.distribution import MANIFEST_MEDIA_TYPES, DistributionClient
from cloner.errors import RegistryError
from cloner.model.reference import parse_reference
from devenv.harness import Environment
from devenv.support import log_size, push_to_owned, request_lines

INSECURE = ("127.0.0.1:*",)


@pytest.fixture
def repo() -> str:
    """A repository path unique to the test, so tests do not see each other's images."""
    return f"dist-{uuid.uuid4().hex[:10]}/app"


@pytest.fixture
def client(env: Environment) -> DistributionClient:
    """A client with the harness's docker config (credentials for the owned registry)."""
    store = CredentialStore(env.docker_config)
    store.reload()
    return DistributionClient(store, insecure_registries=INSECURE)


def client_with(tmp_path: Path, auths: dict[str, str]) -> DistributionClient:
    """A client whose docker config holds ``auths`` (host -> ``user:password``)."""
    path = tmp_path / "config.json"
    entries = {
        host: {"auth": base64.b64encode(pair.encode()).decode()} for host, pair in auths.items()
    }
    path.write_text(json.dumps({"auths": entries}))
    store = CredentialStore(path)
    store.reload()
    return DistributionClient(store, insecure_registries=INSECURE)


def test_head_of_a_pushed_tag_is_the_digest_the_registry_reports(
    env: Environment, client: DistributionClient, repo: str
) -> None:
    pushed = env.build_image(f"{env.public.host}/{repo}:1", layers=2, seed=repo)

    descriptor = client.head(parse_reference(f"{env.public.host}/{repo}:1"))

    assert descriptor is not None
    assert descriptor.digest == pushed == env.public.manifest_digest(repo, "1")
    assert descriptor.media_type in MANIFEST_MEDIA_TYPES
    assert descriptor.size > 0
    assert client.requests == {(env.public.host, "HEAD", "success"): 1}


def test_missing_tag_and_missing_repository_are_none(
    env: Environment, client: DistributionClient, repo: str
) -> None:
    env.build_image(f"{env.public.host}/{repo}:1", layers=1, seed=repo)

    assert client.head(parse_reference(f"{env.public.host}/{repo}:absent")) is None
    assert client.head(parse_reference(f"{env.public.host}/{repo}-absent:1")) is None
    assert client.requests == {(env.public.host, "HEAD", "not_found"): 2}
    with pytest.raises(RegistryError) as caught:
        client.get(parse_reference(f"{env.public.host}/{repo}:absent"))
    assert caught.value.reason == "not_found"
    assert "MANIFEST_UNKNOWN" in str(caught.value)


def test_get_by_digest_returns_the_verified_bytes(
    env: Environment, client: DistributionClient, repo: str
) -> None:
    pushed = env.build_image(f"{env.public.host}/{repo}:1", layers=2, seed=repo)
    ref = parse_reference(f"{env.public.host}/{repo}@{pushed}")

    descriptor, body = client.get(ref)

    assert descriptor.digest == pushed
    assert "sha256:" + hashlib.sha256(body).hexdigest() == pushed
    assert descriptor.size == len(body)
    assert descriptor.media_type == json.loads(body)["mediaType"]
    assert client.head(ref) == descriptor
    by_tag, body_by_tag = client.get(parse_reference(f"{env.public.host}/{repo}:1"))
    assert (by_tag, body_by_tag) == (descriptor, body)


def test_owned_registry_with_the_right_credentials(
    env: Environment, client: DistributionClient, repo: str
) -> None:
    source = f"{env.public.host}/{repo}:1"
    env.build_image(source, layers=1, seed=repo)
    owned = f"{env.owned.host}/{repo}:1"
    pushed = push_to_owned(env, source, owned)
    start = log_size(env.owned)

    descriptor = client.head(parse_reference(owned))
    fetched, _ = client.get(parse_reference(owned))

    assert descriptor is not None
    assert descriptor.digest == fetched.digest == pushed
    # anonymous HEAD (401 Basic), HEAD with the credential, then the GET sends it at once
    assert [line.split('"')[1].split()[0] for line in request_lines(env.owned, start)] == [
        "HEAD",
        "HEAD",
        "GET",
    ]
    assert client.head(parse_reference(f"{env.owned.host}/{repo}:absent")) is None
    assert client.requests == {
        (env.owned.host, "HEAD", "success"): 1,
        (env.owned.host, "GET", "success"): 1,
        (env.owned.host, "HEAD", "not_found"): 1,
    }


def test_owned_registry_with_wrong_or_no_credentials_is_auth(
    env: Environment, tmp_path: Path, repo: str
) -> None:
    ref = parse_reference(f"{env.owned.host}/{repo}:1")
    wrong = client_with(tmp_path, {env.owned.host: f"{env.owned.username}:not-the-password"})

    with pytest.raises(RegistryError) as caught:
        wrong.head(ref)

    assert caught.value.reason == "auth"
    assert not caught.value.temporary
    assert caught.value.registry == env.owned.host
    assert f"the credentials for {env.owned.host} were refused" in str(caught.value)
    assert "not-the-password" not in str(caught.value)

    anonymous = client_with(tmp_path, {})
    with pytest.raises(RegistryError) as caught:
        anonymous.get(ref)
    assert caught.value.reason == "auth"
    assert f"the docker config has none for {env.owned.host}" in str(caught.value)


def test_stopped_registry_is_network(
    env: Environment, client: DistributionClient, repo: str
) -> None:
    env.build_image(f"{env.public.host}/{repo}:1", layers=1, seed=repo)
    ref = parse_reference(f"{env.public.host}/{repo}:1")
    assert client.head(ref) is not None

    with env.stopped("public"), pytest.raises(RegistryError) as caught:
        client.head(ref)

    assert caught.value.reason == "network"
    assert caught.value.temporary
    assert caught.value.registry == env.public.host
    assert "Connection refused" in str(caught.value)
    assert client.head(ref) is not None  # back after the restart


def test_registry_not_listed_as_insecure_fails_tls_with_a_hint(env: Environment, repo: str) -> None:
    env.build_image(f"{env.public.host}/{repo}:1", layers=1, seed=repo)
    store = CredentialStore(env.docker_config)
    store.reload()
    strict = DistributionClient(store)  # insecureRegistries empty
    start = log_size(env.public)

    with pytest.raises(RegistryError) as caught:
        strict.head(parse_reference(f"{env.public.host}/{repo}:1"))

    assert caught.value.reason == "insecure_registry"
    assert caught.value.registry == env.public.host
    message = str(caught.value)
    assert f"TLS verification of {env.public.host} failed" in message
    assert "list it in insecureRegistries" in message
    assert request_lines(env.public, start) == []  # no plain-http request was made
