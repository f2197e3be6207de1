"""The skopeo backend against the real registries: every platform, same digests, real failures."""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import time
import uuid
from pathlib import Path

import pytest

from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.skopeo import SkopeoBackend
from cloner.errors import RegistryError
from cloner.model.reference import digest_tag, parse_reference
from devenv import images, support
from devenv.harness import Environment

pytestmark = pytest.mark.e2e

PLATFORMS = (("linux", "amd64"), ("linux", "arm64", "v8"), ("linux", "ppc64le"))


def _name(prefix: str) -> str:
    return f"sk-{uuid.uuid4().hex[:8]}/{prefix}"


def _store(path: Path) -> CredentialStore:
    store = CredentialStore(path)
    store.reload()
    return store


@pytest.fixture
def backend(env: Environment) -> SkopeoBackend:
    """The backend with the harness's docker config; both loopback registries listed insecure."""
    return SkopeoBackend(
        _store(env.docker_config),
        insecure_registries=[env.public.host, env.owned.host],
        command_timeout=60,
    )


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_index_is_copied_with_its_digest_and_every_platform(
    env: Environment, backend: SkopeoBackend, media: images.Media
) -> None:
    repository = _name(f"index-{media}")
    index = images.build_index(
        env.public, repository, "1.0", platforms=PLATFORMS, media=media, seed=repository
    )
    owned_repository = f"mirror/{repository}"
    source = parse_reference(f"{env.public.host}/{repository}:1.0")
    owned = parse_reference(f"{env.owned.host}/{owned_repository}:1.0")

    started = time.monotonic()
    digest = backend.clone(source, owned).digest
    first = time.monotonic() - started
    started = time.monotonic()
    again = backend.clone(source, owned).digest
    second = time.monotonic() - started
    print(
        f"\nskopeo copy of a {len(PLATFORMS)}-platform {media} index: {first:.2f}s, "
        f"again (blobs present): {second:.2f}s"
    )

    assert digest == again == index.digest
    assert env.owned.manifest_digest(owned_repository, "1.0") == index.digest
    served_type, body = images.get_manifest(env.owned, owned_repository, "1.0")
    assert served_type == index.media_type
    assert body == images.get_manifest(env.public, repository, "1.0")[1]
    assert images.platforms_served(env.owned, owned_repository, "1.0") == index.manifests
    assert len(index.manifests) == 3
    assert backend.requests == {("copy", "success"): 2}


def test_digest_only_source_goes_to_a_digest_tag_and_the_engine_pulls_the_copy(
    env: Environment, backend: SkopeoBackend
) -> None:
    repository = _name("by-digest")
    index = images.build_index(env.public, repository, None, media="docker", seed=repository)
    owned_repository = f"mirror/{repository}"
    tag = digest_tag(index.digest)
    source = parse_reference(f"{env.public.host}/{repository}@{index.digest}")
    owned = parse_reference(f"{env.owned.host}/{owned_repository}:{tag}")

    assert backend.clone(source, owned).digest == index.digest

    assert env.owned.tags(owned_repository) == [tag]
    assert images.platforms_served(env.owned, owned_repository, tag) == index.manifests
    assert images.platforms_served(env.owned, owned_repository, index.digest) == index.manifests
    assert env.owned.username is not None and env.owned.password is not None
    with contextlib.closing(env.docker_client()) as client:
        pulled = client.images.pull(
            f"{env.owned.host}/{owned_repository}",
            tag=tag,
            auth_config={"username": env.owned.username, "password": env.owned.password},
        )
        try:
            assert pulled.id == index.configs["linux/amd64"]
        finally:
            client.images.remove(pulled.id, force=True)


def test_single_platform_source_keeps_its_digest(env: Environment, backend: SkopeoBackend) -> None:
    repository = _name("single")
    image = images.build_image(
        env.public,
        repository,
        "v1",
        platform=("linux", "arm", "v7"),
        media="docker",
        layers=[images.layer(repository + "/a"), images.layer(repository + "/b", 50_000)],
    )
    owned = parse_reference(f"{env.owned.host}/mirror/{repository}:v1")

    digest = backend.clone(parse_reference(f"{env.public.host}/{repository}:v1"), owned).digest

    assert digest == image.digest
    assert images.platforms_served(env.owned, f"mirror/{repository}", "v1") == {
        "linux/arm/v7": image.digest
    }


def _failed_copy(env: Environment, config: Path, repository: str) -> RegistryError:
    backend = SkopeoBackend(
        _store(config), insecure_registries=[env.public.host, env.owned.host], command_timeout=60
    )
    with pytest.raises(RegistryError) as caught:
        backend.clone(
            parse_reference(f"{env.public.host}/{repository}:1"),
            parse_reference(f"{env.owned.host}/mirror/{repository}:1"),
        )
    assert backend.requests == {("copy", caught.value.reason): 1}
    return caught.value


def test_wrong_owned_credentials_fail_as_auth(env: Environment, tmp_path: Path) -> None:
    repository = _name("auth")
    images.build_index(env.public, repository, "1", seed=repository)
    wrong = tmp_path / "config.json"
    token = base64.b64encode(f"{env.owned.username}:not-the-password".encode()).decode()
    wrong.write_text(json.dumps({"auths": {env.owned.host: {"auth": token}}}))

    error = _failed_copy(env, wrong, repository)

    assert error.reason == "auth"
    assert not error.temporary
    assert error.registry == env.owned.host
    assert "not-the-password" not in str(error) and token not in str(error)
    assert env.owned.tags(f"mirror/{repository}") == []


def test_only_the_configured_credentials_are_used(
    env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # skopeo 1.9 looks in $DOCKER_CONFIG, $HOME/.docker and $XDG_CONFIG_HOME for a
    # registry its --authfile has no entry for; the good credentials are put there.
    repository = _name("isolated")
    images.build_index(env.public, repository, "1", seed=repository)
    empty = tmp_path / "config.json"
    empty.write_text(json.dumps({"auths": {}}))
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(env.docker_config.read_text())
    (home / "containers").mkdir()
    (home / "containers" / "auth.json").write_text(env.docker_config.read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(env.docker_config.parent))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))

    error = _failed_copy(env, empty, repository)

    assert error.reason == "auth"
    assert error.registry == env.owned.host
    assert env.owned.tags(f"mirror/{repository}") == []


def test_stopped_source_fails_as_network_about_the_source(
    env: Environment, backend: SkopeoBackend
) -> None:
    repository = _name("stopped")
    images.build_index(env.public, repository, "1", seed=repository)
    with env.stopped("public"), pytest.raises(RegistryError) as caught:
        backend.clone(
            parse_reference(f"{env.public.host}/{repository}:1"),
            parse_reference(f"{env.owned.host}/mirror/{repository}:1"),
        )
    assert caught.value.reason == "network"
    assert caught.value.temporary
    assert caught.value.registry == env.public.host
    assert "connection refused" in str(caught.value)
    assert env.owned.tags(f"mirror/{repository}") == []


def test_source_not_listed_insecure_is_refused_and_listed_it_copies(
    env: Environment,
) -> None:
    repository = _name("tls")
    index = images.build_index(env.public, repository, "1", seed=repository)
    source = parse_reference(f"{env.public.host}/{repository}:1")
    owned = parse_reference(f"{env.owned.host}/mirror/{repository}:1")
    store = _store(env.docker_config)

    only_owned = SkopeoBackend(store, insecure_registries=[env.owned.host], command_timeout=60)
    with pytest.raises(RegistryError) as caught:
        only_owned.clone(source, owned)
    assert caught.value.reason == "insecure_registry"
    assert not caught.value.temporary
    assert caught.value.registry == env.public.host

    only_public = SkopeoBackend(store, insecure_registries=[env.public.host], command_timeout=60)
    with pytest.raises(RegistryError) as caught:
        only_public.clone(source, owned)
    assert caught.value.reason == "insecure_registry"
    assert caught.value.registry == env.owned.host
    assert env.owned.tags(f"mirror/{repository}") == []

    both = SkopeoBackend(store, insecure_registries=["127.0.0.1:*"], command_timeout=60)
    assert both.clone(source, owned).digest == index.digest


def test_absent_source_tag_is_not_found(env: Environment, backend: SkopeoBackend) -> None:
    repository = _name("absent")
    images.build_index(env.public, repository, "1", seed=repository)
    with pytest.raises(RegistryError) as caught:
        backend.clone(
            parse_reference(f"{env.public.host}/{repository}:2"),
            parse_reference(f"{env.owned.host}/mirror/{repository}:2"),
        )
    assert caught.value.reason == "not_found"
    assert caught.value.registry == env.public.host


def _as_shipped_user(tmp_path: Path) -> Path:
    """A skopeo executable that runs as the shipped image's user (``support.SHIPPED_USER``)."""
    wrapper = tmp_path / "skopeo-as-user"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(support.SHIPPED_USER)} skopeo "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_a_non_root_backend_mounts_shared_layers_instead_of_uploading_them_again(
    env: Environment, tmp_path: Path
) -> None:
    prefix = _name("shared")
    base = [images.layer(prefix + "/base-1", 40_000), images.layer(prefix + "/base-2", 30_000)]
    built = [
        images.build_image(
            env.public,
            f"{prefix}-{n}",
            "v1",
            layers=[*base, images.layer(f"{prefix}/own-{n}", 20_000)],
            label=str(n),
        )
        for n in range(3)
    ]
    backend = SkopeoBackend(
        _store(env.docker_config),
        insecure_registries=[env.public.host, env.owned.host],
        command_timeout=60,
        skopeo=str(_as_shipped_user(tmp_path)),
    )
    start = support.log_size(env.owned)
    try:
        for n, image in enumerate(built):
            source = parse_reference(f"{env.public.host}/{prefix}-{n}:v1")
            owned = parse_reference(f"{env.owned.host}/mirror/{prefix}-{n}:v1")
            assert backend.clone(source, owned).digest == image.digest
        cache = backend.blob_info_cache()
        written = (cache / "containers" / "cache" / "blob-info-cache-v1.boltdb").is_file()
    finally:
        backend.close()

    lines = support.request_lines(env.owned, start)
    uploaded = support.blob_uploads(env.owned, start)
    mounted = [line for line in lines if "mount=sha256" in line and '" 201 ' in line]
    # Each image: 2 shared base layers, its own layer and its config. Unique:
    # 2 + 3 * 2 = 8 blobs; the two later images mount the base layers.
    assert len(uploaded) == 8, "\n".join(uploaded)
    assert len(mounted) == 4, "\n".join(mounted)
    assert written  # skopeo kept its cache in the backend's directory
    assert not cache.exists()  # and close() removed it
