"""The multi-platform test-image helper against the real registries and the real engine."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid

import pytest

from devenv import images
from devenv.harness import Environment

pytestmark = pytest.mark.e2e


def _repository(name: str) -> str:
    return f"images-{uuid.uuid4().hex[:8]}/{name}"


@pytest.mark.parametrize(
    ("media", "index_type", "child_type"),
    [
        ("oci", images.OCI_INDEX, images.OCI_MANIFEST),
        ("docker", images.DOCKER_LIST, images.DOCKER_MANIFEST),
    ],
)
def test_index_is_stored_byte_for_byte_with_every_child(
    env: Environment, media: images.Media, index_type: str, child_type: str
) -> None:
    repository = _repository(f"multi-{media}")
    index = images.build_index(
        env.public,
        repository,
        "1",
        platforms=(("linux", "amd64"), ("linux", "arm64", "v8"), ("linux", "arm", "v7")),
        media=media,
        shared_layers=2,
        seed=repository,
    )

    served_type, body = images.get_manifest(env.public, repository, "1")
    assert served_type == index_type
    assert index.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert env.public.manifest_digest(repository, "1") == index.digest
    document = json.loads(body)
    assert document["mediaType"] == index_type
    assert {d["mediaType"] for d in document["manifests"]} == {child_type}
    assert images.platforms_served(env.public, repository, "1") == {
        "linux/amd64": index.children["linux/amd64"].digest,
        "linux/arm64/v8": index.children["linux/arm64/v8"].digest,
        "linux/arm/v7": index.children["linux/arm/v7"].digest,
    }
    # Children share the base layers and differ in their own one.
    layer_sets = [child.layers for child in index.children.values()]
    assert len({layers[:2] for layers in layer_sets}) == 1
    assert len({layers[2] for layers in layer_sets}) == 3
    assert len(set(index.configs.values())) == 3
    # A single child read on its own reports its platform from its config.
    amd64 = index.children["linux/amd64"]
    assert images.platforms_served(env.public, repository, amd64.digest) == {
        "linux/amd64": amd64.digest
    }


def test_same_seed_gives_same_digests_and_an_untagged_index(env: Environment) -> None:
    repository = _repository("untagged")
    first = images.build_index(env.public, repository, None, seed="fixed-seed")
    again = images.build_index(env.public, repository, None, seed="fixed-seed")
    other = images.build_index(env.public, repository, None, seed="other-seed")

    assert again.digest == first.digest
    assert other.digest != first.digest
    assert env.public.tags(repository) == []
    assert set(images.platforms_served(env.public, repository, first.digest)) == {
        "linux/amd64",
        "linux/arm64",
    }
    with pytest.raises(LookupError):
        images.get_manifest(env.public, repository, "latest")


def test_helper_pushes_to_the_htpasswd_registry(env: Environment) -> None:
    repository = _repository("authed")
    image = images.build_image(
        env.owned,
        repository,
        "v1",
        platform=("linux", "s390x"),
        media="docker",
        layers=[images.layer("authed-a"), images.layer("authed-b", 10_000)],
    )

    assert env.owned.status(f"/v2/{repository}/manifests/v1") == 401  # anonymous
    assert env.owned.manifest_digest(repository, "v1") == image.digest
    assert images.platforms_served(env.owned, repository, "v1") == {"linux/s390x": image.digest}
    assert env.owned.tags(repository) == ["v1"]


def test_layer_is_a_real_gzipped_tar_and_diff_ids_are_its_uncompressed_sha256() -> None:
    import gzip
    import io
    import tarfile

    data = images.layer("x", 5000)
    assert images.layer("x", 5000) == data
    assert images.layer("y", 5000) != data
    raw = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        assert [m.size for m in members] == [5000]
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        assert len(extracted.read()) == 5000
    assert images.diff_id(data) == "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_engine_pulls_the_amd64_child_and_the_index(env: Environment, media: images.Media) -> None:
    repository = _repository(f"pull-{media}")
    index = images.build_index(
        env.public, repository, "multi", media=media, seed=repository, layer_size=4096
    )
    amd64 = index.children["linux/amd64"]
    name = f"{env.public.host}/{repository}"

    with contextlib.closing(env.docker_client()) as client:
        child = client.images.pull(name, tag=amd64.digest)
        assert child.id == amd64.config_digest
        assert f"{name}@{amd64.digest}" in child.attrs["RepoDigests"]

        data = client.images.get_registry_data(f"{name}:multi")
        assert data.id == index.digest
        assert data.has_platform("linux/arm64")

        client.images.remove(child.id, force=True)
        pulled = client.images.pull(name, tag="multi")
        assert pulled.id == amd64.config_digest
        assert pulled.attrs["Architecture"] == "amd64"
        assert f"{name}@{index.digest}" in pulled.attrs["RepoDigests"]
        rootfs = pulled.attrs["RootFS"]["Layers"]
        assert len(rootfs) == 2
        client.images.remove(pulled.id, force=True)
