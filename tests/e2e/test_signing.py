"""The signed-image fixtures and their independent checks, against a real distribution registry.

One CNCF distribution 2.8 registry with htpasswd auth (``docker-registry
serve``, the harness's ``Registry``) is started for this module alone: no
etcd, API server or Docker engine. That registry has no referrers API, so
referrers are found through the ``sha256-<hex>`` fallback tag.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devenv import images, signing
from devenv.harness import LOOPBACK, Registry, free_port
from devenv.signing import Signer, VerificationError

pytestmark = pytest.mark.e2e

_NO_BUNDLE = re.escape(f"no {signing.SIGSTORE_BUNDLE_V03} referrer")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A distribution registry with basic auth on a free loopback port, for this module."""
    root = tmp_path_factory.mktemp("signing") / "registry"
    started = Registry(
        "signing", f"{LOOPBACK}:{free_port()}", "signer", secrets.token_urlsafe(12), root=root
    )
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def signed(registry: Registry, signer: Signer) -> tuple[images.Index, signing.SignedCorpus]:
    """One two-platform OCI index, signed with the referrers fallback tag (the default, auto)."""
    repository = f"sign-{uuid.uuid4().hex[:8]}/app"
    index = images.build_index(registry, repository, "1", seed=repository, layer_size=256)
    corpus = signing.sign_image(registry, repository, index.digest, index.manifests, signer)
    return index, corpus


def _fresh_index(registry: Registry, name: str) -> images.Index:
    repository = f"sign-{uuid.uuid4().hex[:8]}/{name}"
    return images.build_index(registry, repository, "1", seed=repository, layer_size=256)


def test_everything_verifies_with_the_right_key(
    registry: Registry, signer: Signer, signed: tuple[images.Index, signing.SignedCorpus]
) -> None:
    index, corpus = signed
    repository, key = corpus.repository, signer.public_pem()
    for digest in (index.digest, *index.manifests.values()):
        assert corpus.signatures[digest] == 2
        assert signing.verify_signatures(registry, repository, digest, key, require_all=True) == 2
    assert signing.verify_attestation(registry, repository, index.digest, key) == 2
    assert (
        signing.verify_attestation(
            registry, repository, index.digest, key, predicate_type=signing.SLSA_PROVENANCE_V02
        )
        == 1
    )
    assert signing.verify_sbom(registry, repository, index.digest, key) == (corpus.sbom_digest, 1)
    assert signing.verify_bundle_referrer(registry, repository, index.digest, key) == 1

    # Every tag the corpus recorded is in the registry, at the recorded digest.
    assert corpus.tags <= set(registry.tags(repository))
    for tag, digest in corpus.tag_digests.items():
        assert registry.manifest_digest(repository, tag) == digest
    assert len(corpus.of_kind("signature")) == 4  # index, 2 platforms, the .sbom
    assert len(corpus.of_kind("referrer")) == 2
    assert len(corpus.of_kind("referrers-index")) == 2  # no API: auto fell back


def test_referrers_fallback_index_follows_the_spec(
    registry: Registry, signed: tuple[images.Index, signing.SignedCorpus]
) -> None:
    index, corpus = signed
    first = next(iter(index.manifests.values()))
    source, listed = signing.list_referrers(registry, corpus.repository, index.digest)
    assert source == "tag"  # distribution 2.8: GET /v2/<name>/referrers/<digest> is 404
    assert [d["digest"] for d in listed] == corpus.referrers[index.digest]
    (bundle,) = listed
    assert bundle["artifactType"] == signing.SIGSTORE_BUNDLE_V03
    assert bundle["mediaType"] == images.OCI_MANIFEST
    assert bundle["annotations"][signing.CREATED_ANNOTATION] == signing.CREATED

    _, on_platform = signing.list_referrers(
        registry, corpus.repository, first, artifact_type=signing.EXAMPLE_SBOM
    )
    assert [d["digest"] for d in on_platform] == corpus.referrers[first]
    manifest = json.loads(
        images.get_manifest(registry, corpus.repository, on_platform[0]["digest"])[1]
    )
    assert manifest["subject"]["digest"] == first
    assert manifest["config"]["mediaType"] == signing.OCI_EMPTY
    assert manifest["artifactType"] == signing.EXAMPLE_SBOM


def test_another_key_fails(
    registry: Registry, signed: tuple[images.Index, signing.SignedCorpus]
) -> None:
    index, corpus = signed
    other = Signer().public_pem()
    with pytest.raises(AssertionError, match="does not verify"):
        signing.verify_signatures(registry, corpus.repository, index.digest, other)
    with pytest.raises(AssertionError, match="DSSE"):
        signing.verify_attestation(registry, corpus.repository, index.digest, other)
    with pytest.raises(AssertionError):
        signing.verify_sbom(registry, corpus.repository, index.digest, other)
    with pytest.raises(AssertionError, match="messageSignature does not verify"):
        signing.verify_bundle_referrer(registry, corpus.repository, index.digest, other)


def test_a_different_digest_fails(
    registry: Registry, signer: Signer, signed: tuple[images.Index, signing.SignedCorpus]
) -> None:
    index, corpus = signed
    key = signer.public_pem()
    unsigned = images.build_index(
        registry, corpus.repository, "unsigned", seed=corpus.repository + "/2", layer_size=256
    )
    with pytest.raises(VerificationError, match="manifest unknown"):
        signing.verify_signatures(registry, corpus.repository, unsigned.digest, key)
    with pytest.raises(AssertionError):
        signing.verify_attestation(registry, corpus.repository, unsigned.digest, key)
    with pytest.raises(AssertionError, match=_NO_BUNDLE):
        signing.verify_bundle_referrer(registry, corpus.repository, unsigned.digest, key)

    # The index's valid .sig put under the other digest's tag: the signatures
    # still verify, but the payload names the index, not this digest.
    _, body = images.get_manifest(registry, corpus.repository, signing.cosign_tag(index.digest))
    images.push_manifest(
        registry,
        corpus.repository,
        signing.cosign_tag(unsigned.digest),
        body,
        images.OCI_MANIFEST,
    )
    with pytest.raises(AssertionError, match=f"docker-manifest-digest {index.digest}"):
        signing.verify_signatures(registry, corpus.repository, unsigned.digest, key)


def test_add_signature_moves_the_tag_and_adds_one(registry: Registry, signer: Signer) -> None:
    index = _fresh_index(registry, "resign")
    repository = index.repository
    signing.push_signatures(
        registry, repository, index.digest, [(signer, None), (signer, {"n": "2"})]
    )
    tag = signing.cosign_tag(index.digest)
    before = registry.manifest_digest(repository, tag)
    key = signer.public_pem()
    assert signing.verify_signatures(registry, repository, index.digest, key) == 2

    added = signing.add_signature(registry, repository, index.digest, signer)

    assert added.layers == 3
    assert registry.manifest_digest(repository, tag) == added.digest != before
    assert signing.verify_signatures(registry, repository, index.digest, key, require_all=True) == 3
    old_layers = json.loads(images.get_manifest(registry, repository, before or "")[1])["layers"]
    new_layers = json.loads(images.get_manifest(registry, repository, tag)[1])["layers"]
    assert new_layers[:2] == old_layers  # earlier signatures kept byte for byte

    # A signature by another key is counted only with that key.
    stranger = Signer()
    signing.add_signature(registry, repository, index.digest, stranger)
    assert signing.verify_signatures(registry, repository, index.digest, key) == 3
    assert signing.verify_signatures(registry, repository, index.digest, stranger.public_pem()) == 1
    with pytest.raises(AssertionError, match="layer 3"):
        signing.verify_signatures(registry, repository, index.digest, key, require_all=True)


def _bundle_layer(signer: Signer, digest: str) -> signing.Layer:
    return signing.Layer(signing.sigstore_bundle(signer, digest), signing.SIGSTORE_BUNDLE_V03)


def test_api_mode_pushes_no_fallback_tag(registry: Registry, signer: Signer) -> None:
    index = _fresh_index(registry, "api")
    pushed = signing.push_referrer(
        registry,
        index.repository,
        index.digest,
        signing.SIGSTORE_BUNDLE_V03,
        [_bundle_layer(signer, index.digest)],
        referrers="api",
    )
    assert [a.kind for a in pushed] == ["referrer"]
    assert signing.referrers_tag(index.digest) not in registry.tags(index.repository)
    # The referrer is stored (by digest), but a registry without the API cannot list it.
    assert registry.manifest_digest(index.repository, pushed[0].digest) == pushed[0].digest
    with pytest.raises(AssertionError, match=_NO_BUNDLE):
        signing.verify_bundle_referrer(
            registry, index.repository, index.digest, signer.public_pem()
        )
    with pytest.raises(AssertionError, match="no referrers API"):
        signing.list_referrers(registry, index.repository, index.digest, source="api")


def test_fallback_tag_merges_without_duplicates(registry: Registry, signer: Signer) -> None:
    index = _fresh_index(registry, "merge")
    bundle = signing.push_referrer(
        registry,
        index.repository,
        index.digest,
        signing.SIGSTORE_BUNDLE_V03,
        [_bundle_layer(signer, index.digest)],
        annotations={signing.CREATED_ANNOTATION: signing.CREATED},
        referrers="fallback",
    )
    assert [a.kind for a in bundle] == ["referrer", "referrers-index"]
    note = signing.Layer(b'{"n":1}', "application/vnd.example.note+json")
    pushed = signing.push_referrer(
        registry, index.repository, index.digest, "application/vnd.example.note+json", [note]
    )
    again = signing.push_referrer(
        registry, index.repository, index.digest, "application/vnd.example.note+json", [note]
    )
    assert again[0].digest == pushed[0].digest
    assert again[1].layers == pushed[1].layers == 2  # merged once, not twice
    _, listed = signing.list_referrers(registry, index.repository, index.digest)
    assert [d["digest"] for d in listed] == [bundle[0].digest, pushed[0].digest]
    assert listed[0]["annotations"] == {signing.CREATED_ANNOTATION: signing.CREATED}
    assert listed[1]["artifactType"] == "application/vnd.example.note+json"
    assert "annotations" not in listed[1]
    key = signer.public_pem()
    assert signing.verify_bundle_referrer(registry, index.repository, index.digest, key) == 1


def test_two_keys_and_explicit_credentials(registry: Registry) -> None:
    first, second = Signer(), Signer()
    index = _fresh_index(registry, "two-keys")
    signing.push_signatures(
        registry, index.repository, index.digest, [(first, None), (second, None)]
    )
    credentials = (registry.username or "", registry.password or "")
    for key in (first.public_pem(), second.public_pem()):
        verified = signing.verify_signatures(
            registry.url, index.repository, index.digest, key, auth=credentials
        )
        assert verified == 1
    with pytest.raises(AssertionError, match="401"):
        signing.verify_signatures(
            registry.host,
            index.repository,
            index.digest,
            first.public_pem(),
            auth=("signer", "wrong"),
        )


def test_signer_key_files(tmp_path: Path, signer: Signer) -> None:
    (tmp_path / "cosign.key").write_bytes(signer.private_pem())
    loaded = serialization.load_pem_private_key((tmp_path / "cosign.key").read_bytes(), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    again = Signer(loaded)
    assert again.public_pem() == signer.public_pem()
    assert signer.public_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert signer.private_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    payload = signing.simple_signing_payload("127.0.0.1:5000/a/b", "sha256:" + "a" * 64)
    assert payload == (
        b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/a/b"},'
        b'"image":{"docker-manifest-digest":"sha256:' + b"a" * 64 + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    assert signing.dsse_pae("t", b"ab") == b"DSSEv1 1 t 2 ab"


def test_on_a_registry_with_the_referrers_api(tmp_path: Path, signer: Signer) -> None:
    """olareg (devenv/olareg.py) answers OCI-Subject: auto pushes no fallback tag."""
    from devenv.olareg import Olareg

    with Olareg(tmp_path, log_requests=False) as olareg:
        target = signing.endpoint(olareg)
        index = images.build_index(target, "sign/app", "1", seed="olareg", layer_size=256)
        corpus = signing.sign_image(olareg, "sign/app", index.digest, index.manifests, signer)
        key = signer.public_pem()

        assert corpus.of_kind("referrers-index") == []
        assert signing.referrers_tag(index.digest) not in signing.list_tags(olareg, "sign/app")
        source, listed = signing.list_referrers(olareg, "sign/app", index.digest)
        assert source == "api"
        assert [d["digest"] for d in listed] == corpus.referrers[index.digest]
        assert listed[0]["artifactType"] == signing.SIGSTORE_BUNDLE_V03
        assert signing.verify_bundle_referrer(olareg, "sign/app", index.digest, key) == 1
        first = next(iter(index.manifests.values()))
        _, on_platform = signing.list_referrers(
            olareg, "sign/app", first, artifact_type=signing.EXAMPLE_SBOM
        )
        assert [d["digest"] for d in on_platform] == corpus.referrers[first]
        assert signing.verify_signatures(olareg.url, "sign/app", index.digest, key) == 2
        assert signing.verify_attestation(olareg, "sign/app", index.digest, key) == 2
        with pytest.raises(AssertionError, match="messageSignature does not verify"):
            signing.verify_bundle_referrer(olareg, "sign/app", index.digest, Signer().public_pem())
