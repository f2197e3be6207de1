"""Signatures, attestations, SBOMs and OCI referrers travel with the copy (docs/signatures.md).

Real components: the harness's distribution 2.8 registries (no referrers API:
the fallback tag schema), olareg (the referrers API, on and off), the
controller as a process with the skopeo backend. The source is signed in
cosign's formats with a key made here (``signing``), and the owned copy is
verified independently of the product: each signature checked with
``cryptography`` over its exact payload, found the way cosign finds it (the
``.sig`` tag of each manifest's digest), with the right key and not with
another.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from devenv import images, signing
from devenv.harness import Environment
from devenv.olareg import Olareg
from devenv.support import (
    Fault,
    RegistryProxy,
    Scope,
    controller_loop,
    create,
    log_size,
    read,
    request_lines,
    run_controller,
    serving,
)
from devenv.support import images as workload_images
from devenv.waiting import seconds_until, wait_for

pytestmark = pytest.mark.e2e

PLATFORMS = (("linux", "amd64"), ("linux", "arm64", "v8"))
#: A cosign tag or a referrers fallback tag (``sha256-<hex>[.sig|.att|.sbom]``).
ARTIFACT_TAG = re.compile(r"/manifests/sha256-[0-9a-f]{64}(\.sig|\.att|\.sbom)?\b")


def config(scope: Scope, name: str, **extra: Any) -> Path:
    """The test's controller config with the skopeo backend (and ``extra`` keys)."""
    return scope.write_config(f"{name}.yaml", copyBackend="skopeo", **extra)


def events(env: Environment, namespace: str, reason: str) -> list[str]:
    """Messages of the Events with ``reason`` in ``namespace``."""
    with closing(env.api_client()) as api:
        response = kubernetes.client.CoreV1Api(api).list_namespaced_event(
            namespace, _preload_content=False
        )
    return [e["message"] for e in json.loads(response.data)["items"] if e["reason"] == reason]


def signed_index(
    registry: Any, repository: str, signer: signing.Signer, referrers: signing.ReferrersMode
) -> tuple[images.Index, signing.SignedCorpus]:
    """A two-platform OCI index in ``repository`` (tag 1.0), signed as ``cosign sign --recursive``.

    Returns the index and the corpus of artifacts pushed beside it.
    """
    index = images.build_index(
        registry, repository, "1.0", platforms=PLATFORMS, media="oci", seed=repository
    )
    corpus = signing.sign_image(
        registry, repository, index.digest, index.manifests, signer, referrers=referrers
    )
    return index, corpus


def served(registry: Any, repository: str, reference: str) -> str | None:
    """The digest of the manifest ``registry`` serves for ``reference``; None when it has none."""
    try:
        _, body = images.get_manifest(signing.endpoint(registry), repository, reference)
    except LookupError:
        return None
    return images.sha256_digest(body)


def assert_owned_copy_is_signed(
    owned: Any,
    repository: str,
    corpus: signing.SignedCorpus,
    signer: signing.Signer,
    referrers: str = "auto",
) -> None:
    """Every artifact of ``corpus`` verifies in the owned ``repository``, with ``signer`` only."""
    key = signer.public_pem()
    for digest, count in corpus.signatures.items():
        verified = signing.verify_signatures(
            owned, repository, digest, key, docker_reference=corpus.docker_reference
        )
        assert verified == count, digest
    assert signing.verify_attestation(owned, repository, corpus.index_digest, key) == 2
    assert signing.verify_sbom(owned, repository, corpus.index_digest, key)[1] == 1
    assert (
        signing.verify_bundle_referrer(
            owned, repository, corpus.index_digest, key, source=referrers
        )
        == 1
    )
    # Every cosign tag names the source's manifest; every referrer is listed.
    for artifact in corpus.artifacts:
        if artifact.kind == "referrers-index":
            continue  # the owned fallback index is the owned registry's own (merged)
        assert served(owned, repository, artifact.digest) == artifact.digest, artifact
        if artifact.tag is not None:
            assert served(owned, repository, artifact.tag) == artifact.digest, artifact
    for subject, referrer_digests in corpus.referrers.items():
        _, listed = signing.list_referrers(owned, repository, subject, source=referrers)
        assert set(referrer_digests) <= {d["digest"] for d in listed}, subject
    # Independent: another key verifies nothing.
    other = signing.Signer().public_pem()
    with pytest.raises(AssertionError):
        signing.verify_signatures(owned, repository, corpus.index_digest, other)
    with pytest.raises(AssertionError):
        signing.verify_attestation(owned, repository, corpus.index_digest, other)
    with pytest.raises(AssertionError):
        signing.verify_bundle_referrer(owned, repository, corpus.index_digest, other)


# --- fallback path: distribution 2.8 as source and as owned ------------------------------


def test_signatures_attestations_sboms_and_referrers_travel_with_the_copy(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    signer = signing.Signer()
    index, corpus = signed_index(env.public, f"{ns}/signed", signer, "fallback")
    owned_repository = scope.owned_repository("signed")
    # Before the copy the owned registry has nothing to verify.
    with pytest.raises(AssertionError):
        signing.verify_signatures(env.owned, owned_repository, index.digest, signer.public_pem())
    with closing(env.api_client()) as api:
        create(api, "Deployment", ns, "web", {"app": scope.source("signed:1.0")})

    result = scope.run(config(scope, "copy"))
    assert result.returncode == 0, result.stderr

    with closing(env.api_client()) as api:
        patched = workload_images(read(api, "Deployment", ns, "web"))["app"]
    assert patched == f"{scope.owned('signed')}:1.0"
    assert_owned_copy_is_signed(env.owned, owned_repository, corpus, signer, referrers="tag")
    # The owned registry has no referrers API, so each subject's fallback
    # index lists its referrers (merged by the controller, not copied).
    for subject in corpus.referrers:
        tag = signing.referrers_tag(subject)
        assert served(env.owned, owned_repository, tag) is not None
    assert events(env, ns, "SignaturesNotCopied") == []


def test_a_source_without_artifacts_costs_at_most_four_requests_per_manifest(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    index = images.build_index(
        env.public, f"{ns}/plain", "1.0", platforms=PLATFORMS, media="oci", seed=f"{ns}/plain"
    )
    with closing(env.api_client()) as api:
        create(api, "Deployment", ns, "web", {"app": scope.source("plain:1.0")})
    start = log_size(env.public)

    result = scope.run(config(scope, "plain"))
    assert result.returncode == 0, result.stderr

    lines = [line for line in request_lines(env.public, start) if f"/v2/{ns}/plain/" in line]
    artifact_requests = [
        line for line in lines if "/referrers/" in line or ARTIFACT_TAG.search(line)
    ]
    manifests = 1 + len(index.manifests)
    print(
        f"\nartifact requests for an unsigned {manifests}-manifest source: {len(artifact_requests)}"
    )
    # 3 cosign HEADs + 1 referrers GET or fallback HEAD per manifest, plus
    # one probe of the referrers API per registry.
    assert len(artifact_requests) <= 4 * manifests + 1
    assert all('"HEAD ' in line or '"GET ' in line for line in artifact_requests)
    assert not any("/tags/list" in line for line in lines)  # tags are never listed


def test_a_signature_added_upstream_reaches_the_owned_copy_after_refresh_interval(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    signer = signing.Signer()
    index, _ = signed_index(env.public, f"{ns}/later", signer, "fallback")
    owned_repository = scope.owned_repository("later")
    with closing(env.api_client()) as api:
        create(api, "Deployment", ns, "web", {"app": scope.source("later:1.0")})
    path = config(scope, "refresh", pollInterval=1, refreshInterval=8)
    key = signer.public_pem()
    with controller_loop(scope.kubeconfig, path) as output:
        wait_for(
            lambda: _verifies(env.owned, owned_repository, index.digest, key) == 2,
            60,
            "the first copy's signatures",
        )
        # Warm cycles between refreshes ask nothing about artifacts (the
        # next refresh is due 6.4 to 8 s after the first sync).
        quiet = log_size(env.public)
        time.sleep(1.5)
        assert not [
            line
            for line in request_lines(env.public, quiet)
            if "/referrers/" in line or ARTIFACT_TAG.search(line)
        ]
        second = signing.Signer()
        signing.add_signature(env.public, f"{ns}/later", index.digest, second)
        waited = seconds_until(
            lambda: _verifies(env.owned, owned_repository, index.digest, second.public_pem()) == 1,
            60,
            "the new signature in the owned registry",
        )
    print(f"\nsignature added upstream reached the owned copy after {waited:.1f}s")
    assert _verifies(env.owned, owned_repository, index.digest, key) == 2
    assert "Traceback" not in "".join(output)


def _verifies(registry: Any, repository: str, digest: str, key: bytes) -> int:
    try:
        return signing.verify_signatures(registry, repository, digest, key)
    except AssertionError:
        return 0


# --- the referrers API path: olareg ------------------------------------------------------


@pytest.fixture
def olaregs(tmp_path: Path) -> Iterator[dict[str, Olareg]]:
    """Three olareg registries: a source with the API, owned with it, owned without it."""
    started = {
        "source": Olareg(tmp_path, "olareg-source"),
        "owned-api": Olareg(tmp_path, "olareg-owned"),
        "owned-no-api": Olareg(tmp_path, "olareg-owned-noapi", referrers_api=False),
    }
    try:
        for registry in started.values():
            registry.start()
        yield started
    finally:
        for registry in started.values():
            registry.stop()


@pytest.mark.parametrize(
    ("source", "owned"),
    [("source", "owned-api"), ("source", "owned-no-api"), ("public", "owned-api")],
)
def test_referrers_api_on_either_side(
    scope: Scope,
    env: Environment,
    olaregs: dict[str, Olareg],
    source: str,
    owned: str,
) -> None:
    ns = scope.namespace
    signer = signing.Signer()
    if source == "public":
        source_registry: Any = env.public
        source_host = env.public.host
        _, corpus = signed_index(env.public, f"{ns}/app", signer, "fallback")
    else:
        source_registry = signing.endpoint(olaregs[source].url)
        source_host = olaregs[source].host
        _, corpus = signed_index(source_registry, f"{ns}/app", signer, "api")
    owned_registry = olaregs[owned]
    target = f"{owned_registry.host}/t-{ns}"
    owned_repository = f"t-{ns}/{source_host.replace(':', '-')}/{ns}/app"
    with closing(env.api_client()) as api:
        create(api, "Deployment", ns, "web", {"app": f"{source_host}/{ns}/app:1.0"})

    result = scope.run(config(scope, "olareg", target=target))
    assert result.returncode == 0, result.stderr

    with closing(env.api_client()) as api:
        patched = workload_images(read(api, "Deployment", ns, "web"))["app"]
    assert patched == f"{owned_registry.host}/{owned_repository}:1.0"
    endpoint = signing.endpoint(owned_registry.url)
    mode = "api" if owned == "owned-api" else "tag"
    assert_owned_copy_is_signed(endpoint, owned_repository, corpus, signer, referrers=mode)
    fallback = {
        served(endpoint, owned_repository, signing.referrers_tag(s)) for s in corpus.referrers
    }
    if owned == "owned-api":
        assert fallback == {None}  # the API lists them: no fallback tag is written
    else:
        assert None not in fallback


# --- signatures: require and copy, with an owned registry that refuses artifacts ---------


def refuse_artifacts(corpus: signing.SignedCorpus) -> Any:
    """A fault decision: 403 DENIED for every PUT of an artifact manifest or its tags."""
    digests = corpus.digests

    def decide(method: str, path: str) -> Fault | None:
        if method != "PUT" or "/manifests/" not in path:
            return None
        reference = path.rsplit("/manifests/", 1)[1].split("?", maxsplit=1)[0]
        if reference in digests or reference.startswith("sha256-"):
            return Fault(403, "DENIED", "injected: artifact manifests are not allowed here")
        return None

    return decide


@pytest.mark.parametrize("mode", ["require", "copy"])
def test_signatures_that_cannot_be_copied_hold_the_switch_only_under_require(
    scope: Scope, env: Environment, tmp_path: Path, mode: str
) -> None:
    ns = scope.namespace
    signer = signing.Signer()
    _, corpus = signed_index(env.public, f"{ns}/held", signer, "fallback")
    assert env.owned.username is not None and env.owned.password is not None
    with serving(RegistryProxy(env.owned.host, fault=refuse_artifacts(corpus))) as proxy:
        docker_config = tmp_path / "proxy-config.json"
        auth = base64.b64encode(f"{env.owned.username}:{env.owned.password}".encode()).decode()
        docker_config.write_text(json.dumps({"auths": {proxy.host: {"auth": auth}}}))
        with closing(env.api_client()) as api:
            create(api, "Deployment", ns, "web", {"app": scope.source("held:1.0")})
        path = config(
            scope,
            mode,
            target=f"{proxy.host}/t-{ns}",
            signatures=mode,
            dockerConfig=str(docker_config),
        )
        result = scope.run(path)
        refused = [r for r in proxy.requests if r.status == 403]
    assert refused, "the proxy refused no artifact write"
    with closing(env.api_client()) as api:
        patched = workload_images(read(api, "Deployment", ns, "web"))["app"]
    owned_image = f"{proxy.host}/t-{ns}/{env.public.host.replace(':', '-')}/{ns}/held:1.0"
    if mode == "require":
        assert result.returncode == 1
        assert patched == scope.source("held:1.0")
        assert "signatures_not_copied" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert patched == owned_image
        messages = events(env, ns, "SignaturesNotCopied")
        assert messages and "auth" in messages[0], messages


# --- the Docker backend cannot carry them ----------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "require"])
def test_the_docker_backend_reports_signatures_lost(
    scope: Scope, env: Environment, mode: str
) -> None:
    ns = scope.namespace
    _, corpus = signed_index(env.public, f"{ns}/lost", signing.Signer(), "fallback")
    with closing(env.api_client()) as api:
        create(api, "Deployment", ns, "web", {"app": scope.source("lost:1.0")})
    path = scope.write_config(f"docker-{mode}.yaml", signatures=mode)
    plan = run_controller(
        env, path, "plan", "--output", "json", kubeconfig=scope.kubeconfig, once=False
    )
    assert plan.returncode == 0, plan.stderr
    (row,) = json.loads(plan.stdout)
    # The index's .sig, .att, .sbom, the .sbom's .sig and the bundle referrer.
    assert row["artifacts"] == 5
    assert "5 signatures or referrers lost" in row["decision"]

    result = scope.run(path)

    with closing(env.api_client()) as api:
        patched = workload_images(read(api, "Deployment", ns, "web"))["app"]
    if mode == "copy":
        assert result.returncode == 0, result.stderr
        assert patched.startswith(scope.owned("lost") + ":1.0@sha256:") or patched == (
            f"{scope.owned('lost')}:1.0"
        )
        messages = events(env, ns, "SignaturesLost")
        assert messages and "new digests" in messages[0], messages
        # Nothing was written beside the Docker engine's copy.
        assert not [t for t in env.owned.tags(scope.owned_repository("lost")) if t != "1.0"]
    else:
        assert result.returncode == 1
        assert patched == scope.source("lost:1.0")
        assert "signatures_lost" in result.stderr
    assert len(corpus.signatures) == 1 + len(PLATFORMS) + 1
