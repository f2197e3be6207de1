"""cosign itself signs the source and verifies the owned copy (docs/signatures.md, "cosign").

The other signature tests sign with the fixtures of ``signing.py`` and check
with ``cryptography``. Here the real tool, cosign v3.1.3 built by
``hack/build-cosign.sh``, does both ends: ``cosign sign --recursive`` and
``cosign attest`` on a two-platform index in the public registry (CNCF
distribution 2.8, no referrers API), the controller copies it with the skopeo
backend into the owned registry (distribution 2.8, basic auth), and ``cosign
verify`` / ``cosign verify-attestation`` check the owned reference by digest,
with the right key and not with another one, and not before the controller
copied the signatures.

Both of cosign v3's formats: the ``sha256-<hex>.sig`` / ``.att`` tags
(``--new-bundle-format=false``) and its default Sigstore bundle format (OCI
referrers; against distribution 2.8 cosign writes the ``sha256-<hex>``
referrers fallback index).

Offline: keys made by ``cosign generate-key-pair`` (no Fulcio), nothing
uploaded to Rekor (``--tlog-upload=false``, ``--use-signing-config=false``),
verification with ``--key`` and ``--insecure-ignore-tlog=true`` (cosign then
loads no TUF trusted root: ``verify/common.go`` ``SetTrustedMaterial``).
Each command runs with an environment of its own (``HOME`` and TUF cache in a
temporary directory, registry credentials in a temporary ``DOCKER_CONFIG``)
and with HTTP(S) proxies pointing at a closed loopback port, so a request to
anything but a loopback registry (Go never proxies loopback) fails instead of
leaving the machine.

Marker ``cosign``: not in ``make test`` (the first cosign build takes about
8 minutes); ``make test-cosign`` builds cosign and runs this module.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devenv import images, signing
from devenv.harness import Environment
from devenv.support import REPO, Scope, create, read
from devenv.support import images as workload_images

pytestmark = [pytest.mark.e2e, pytest.mark.cosign]

PLATFORMS = (("linux", "amd64"), ("linux", "arm64", "v8"))
#: Where HTTP(S)_PROXY points: a closed loopback port. Go's
#: ``http.ProxyFromEnvironment`` never proxies loopback hosts, so the
#: registries are reached directly and any other host fails here.
NOWHERE = "http://127.0.0.1:9"
#: The payload ``type`` of a legacy ``.sig`` signature (simple signing).
SIMPLE_SIGNING_TYPE = signing.COSIGN_SIGNATURE_TYPE
#: The predicate of the DSSE statement cosign v3 signs an image with in the bundle format.
BUNDLE_SIGN_TYPE = signing.COSIGN_SIGN_PREDICATE
SLSA_V02 = signing.SLSA_PROVENANCE_V02
#: How ``cosign verify-attestation`` says it found no attestation at all (no reason
#: after the colon; a wrong key or a bad signature gives one).
NONE_FOUND = "Error: no matching attestations: \n"
PREDICATE = {
    "builder": {"id": "https://example.com/image-cloner/e2e/cosign-builder"},
    "buildType": "https://example.com/image-cloner/e2e/cosign-build/v1",
}


@dataclass
class Cosign:
    """The cosign binary with an isolated, offline environment; times every command.

    Attributes:
        binary: the ``cosign`` executable.
        home: ``HOME`` of every command and the working directory (key files).
        docker_config: directory of the ``config.json`` with registry credentials.
        registries: ``host:port`` -> a name for the timing lines (``public``, ``owned``).
        timings: ``(command, seconds)`` of every command run, in order.
    """

    binary: Path
    home: Path
    docker_config: Path
    registries: dict[str, str] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The whole environment of a cosign process (nothing inherited)."""
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "DOCKER_CONFIG": str(self.docker_config),
            "COSIGN_PASSWORD": "",
            "TUF_ROOT": str(self.home / "tuf"),
            "HTTPS_PROXY": NOWHERE,
            "HTTP_PROXY": NOWHERE,
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``cosign ARGS`` in ``home``; print and record how long it took (and any error)."""
        started = time.monotonic()
        result = subprocess.run(
            [str(self.binary), *args],
            env=self.env(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        elapsed = time.monotonic() - started
        label = self.label(args)
        self.timings.append((label, elapsed))
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        print(f"{elapsed:6.2f}s rc={result.returncode} {label}", *errors[:1], sep="  ")
        return result

    def label(self, args: Sequence[str]) -> str:
        """A short name of a command: subcommand, key, type, format and reference."""
        words = [args[0]]
        for flag in ("--key", "--type", "--output-key-prefix"):
            if flag in args[:-1]:
                value = args[args.index(flag) + 1]
                words.append(f"{flag}={value if flag == '--type' else Path(value).name}")
        words += [a for a in args if a.startswith("--new-bundle-format")]
        reference = args[-1]
        if "@sha256:" in reference:
            name, digest = reference.split("@", 1)
            host = name.split("/", 1)[0]
            where = self.registries.get(host, host)
            words.append(f"{where}:{name.rsplit('/', 1)[-1]}@{digest[:15]}")
        return "cosign " + " ".join(words)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``cosign ARGS`` and assert it exited 0."""
        result = self.run(*args)
        assert result.returncode == 0, f"cosign {' '.join(args)}\n{result.stderr}"
        return result

    def fails(self, expected: str, *args: str) -> str:
        """Run ``cosign ARGS``, assert it failed with ``expected`` in stderr; return stderr."""
        result = self.run(*args)
        assert result.returncode != 0, f"cosign {' '.join(args)} passed:\n{result.stdout}"
        assert expected in result.stderr, result.stderr
        return result.stderr

    def generate_key_pair(self, prefix: str) -> Path:
        """``cosign generate-key-pair`` (empty password); returns ``<prefix>.pub``."""
        self.ok("generate-key-pair", "--output-key-prefix", prefix)
        return self.home / f"{prefix}.pub"

    def sign(self, key: str, reference: str, *, bundle: bool) -> None:
        """``cosign sign --recursive`` of ``reference`` with ``key``, offline, in a format."""
        self.ok(
            "sign",
            "--key",
            key,
            "--tlog-upload=false",
            "--use-signing-config=false",
            f"--new-bundle-format={str(bundle).lower()}",
            "--recursive",
            "--allow-http-registry",
            "--yes",
            reference,
        )

    def attest(self, key: str, reference: str, predicate: Path, *, bundle: bool) -> None:
        """``cosign attest --type slsaprovenance`` of ``reference`` with ``predicate``, offline."""
        self.ok(
            "attest",
            "--key",
            key,
            "--tlog-upload=false",
            "--use-signing-config=false",
            f"--new-bundle-format={str(bundle).lower()}",
            "--type",
            "slsaprovenance",
            "--predicate",
            str(predicate),
            "--allow-http-registry",
            "--yes",
            reference,
        )

    @staticmethod
    def verify_args(key: Path, reference: str, *extra: str) -> list[str]:
        """Arguments of ``cosign verify`` with ``key`` only (no tlog, no TUF)."""
        return [
            "verify",
            "--key",
            str(key),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            *extra,
            reference,
        ]

    @staticmethod
    def verify_attestation_args(
        key: Path, reference: str, predicate_type: str, *extra: str
    ) -> list[str]:
        """Arguments of ``cosign verify-attestation --type predicate_type`` with ``key`` only."""
        return [
            "verify-attestation",
            "--key",
            str(key),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--type",
            predicate_type,
            *extra,
            reference,
        ]

    def verify(self, key: Path, reference: str, *extra: str) -> list[dict[str, Any]]:
        """``cosign verify``; asserts it passed; returns the verified claims (its JSON output)."""
        claims = json.loads(self.ok(*self.verify_args(key, reference, *extra)).stdout)
        assert isinstance(claims, list) and claims, claims
        return claims

    def verify_attestation(
        self, key: Path, reference: str, predicate_type: str, *extra: str
    ) -> list[dict[str, Any]]:
        """``cosign verify-attestation``; asserts it passed; returns the in-toto statements."""
        result = self.ok(*self.verify_attestation_args(key, reference, predicate_type, *extra))
        envelopes = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert envelopes, result.stderr
        return [json.loads(base64.b64decode(e["payload"])) for e in envelopes]

    def summary(self) -> str:
        """The total time of the commands run."""
        total = sum(seconds for _, seconds in self.timings)
        return f"{total:6.2f}s in {len(self.timings)} cosign commands"


@pytest.fixture(scope="session")
def cosign_binary() -> Path:
    """The cosign built and cached by ``hack/build-cosign.sh`` (a cold build takes minutes)."""
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "hack" / "build-cosign.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    binary = Path(result.stdout.strip().splitlines()[-1]) / "cosign"
    assert binary.is_file(), binary
    print(f"\ncosign {binary} ready in {time.monotonic() - started:.1f}s")
    return binary


@pytest.fixture
def cosign(cosign_binary: Path, env: Environment, tmp_path: Path) -> Iterator[Cosign]:
    """A :class:`Cosign` whose ``DOCKER_CONFIG`` holds the owned registry's credentials."""
    assert env.owned.username is not None and env.owned.password is not None
    home = tmp_path / "cosign-home"
    docker_config = tmp_path / "cosign-docker"
    home.mkdir()
    docker_config.mkdir()
    auth = base64.b64encode(f"{env.owned.username}:{env.owned.password}".encode()).decode()
    config = docker_config / "config.json"
    config.write_text(json.dumps({"auths": {env.owned.host: {"auth": auth}}}))
    config.chmod(0o600)
    names = {env.public.host: "public", env.owned.host: "owned"}
    tool = Cosign(cosign_binary, home, docker_config, names)
    yield tool
    print(tool.summary())


def controller_config(scope: Scope, name: str, **extra: Any) -> Path:
    """The test's controller config with the skopeo backend (and ``extra`` keys)."""
    return scope.write_config(f"{name}.yaml", copyBackend="skopeo", **extra)


def run_controller(scope: Scope, path: Path) -> None:
    """``controller.py --once`` with ``path``; asserts it exited 0; prints how long it took."""
    started = time.monotonic()
    result = scope.run(path)
    print(f"{time.monotonic() - started:6.2f}s controller --once ({path.name})")
    assert result.returncode == 0, result.stderr


def deploy(scope: Scope, name: str) -> None:
    """A Deployment in the test's namespace running ``<public>/<ns>/<name>:1.0``."""
    with closing(scope.env.api_client()) as api:
        create(api, "Deployment", scope.namespace, name, {"app": scope.source(f"{name}:1.0")})


def deployed_image(scope: Scope, name: str) -> str:
    """The image the Deployment ``name`` runs now."""
    with closing(scope.env.api_client()) as api:
        return workload_images(read(api, "Deployment", scope.namespace, name))["app"]


def signed_claims(claims: Sequence[dict[str, Any]], digest: str, kind: str) -> list[Any]:
    """The claims of ``cosign verify`` output of type ``kind`` that name ``digest``."""
    return [
        c
        for c in claims
        if c["critical"]["type"] == kind
        and c["critical"]["image"]["docker-manifest-digest"] == digest
    ]


def assert_statements(statements: Sequence[dict[str, Any]], digest: str) -> None:
    """One verified statement is our SLSA provenance about ``digest``."""
    ours = [
        s
        for s in statements
        if s["predicateType"] == SLSA_V02
        and {"sha256": digest.split(":", 1)[1]} in [d["digest"] for d in s["subject"]]
    ]
    assert len(ours) == 1, statements
    predicate = ours[0]["predicate"]
    assert predicate["builder"] == PREDICATE["builder"], predicate
    assert predicate["buildType"] == PREDICATE["buildType"], predicate


# --- cosign signs, the controller copies, cosign verifies the owned copy ------------------


@pytest.mark.parametrize("bundle", [False, True], ids=["sig-tag", "bundle"])
def test_cosign_verifies_the_owned_copy_of_an_image_cosign_signed(
    scope: Scope, env: Environment, cosign: Cosign, bundle: bool
) -> None:
    """cosign's signatures and attestation verify on the owned copy only once copied."""
    ns = scope.namespace
    repository = f"{ns}/signed"
    index = images.build_index(
        env.public, repository, "1.0", platforms=PLATFORMS, media="oci", seed=repository
    )
    digests = [index.digest, *index.manifests.values()]
    right = cosign.generate_key_pair("right")
    other = cosign.generate_key_pair("other")
    predicate = cosign.home / "provenance.json"
    predicate.write_text(json.dumps(PREDICATE))
    source = f"{env.public.host}/{repository}@{index.digest}"
    cosign.sign("right.key", source, bundle=bundle)
    cosign.attest("right.key", source, predicate, bundle=bundle)
    kind = BUNDLE_SIGN_TYPE if bundle else SIMPLE_SIGNING_TYPE
    # Where cosign put them in the source registry (no referrers API).
    public_tags = set(env.public.tags(repository))
    if bundle:
        assert {signing.referrers_tag(d) for d in digests} <= public_tags, public_tags
        assert not [t for t in public_tags if t.endswith((".sig", ".att"))], public_tags
    else:
        assert {signing.cosign_tag(d) for d in digests} <= public_tags, public_tags
        assert signing.cosign_tag(index.digest, "att") in public_tags, public_tags
    assert signed_claims(cosign.verify(right, source), index.digest, kind)

    owned = f"{scope.owned('signed')}@{index.digest}"
    owned_repository = scope.owned_repository("signed")
    # Before the controller ran: no owned copy, nothing verifies.
    assert env.owned.manifest_digest(owned_repository, index.digest) is None
    cosign.fails("no signatures found", *cosign.verify_args(right, owned))

    # The image alone (signatures: off): the copy exists, its signatures do not.
    deploy(scope, "signed")
    run_controller(scope, controller_config(scope, "off", signatures="off"))
    assert deployed_image(scope, "signed") == f"{scope.owned('signed')}:1.0"
    assert env.owned.manifest_digest(owned_repository, index.digest) == index.digest
    cosign.fails("no signatures found", *cosign.verify_args(right, owned))
    cosign.fails(NONE_FOUND, *cosign.verify_attestation_args(right, owned, "slsaprovenance"))

    # signatures: copy brings them beside the copy, byte for byte.
    run_controller(scope, controller_config(scope, "copy", signatures="copy"))
    assert deployed_image(scope, "signed") == f"{scope.owned('signed')}:1.0"
    for digest in digests:  # cosign sign --recursive signed the index and each platform
        reference = f"{scope.owned('signed')}@{digest}"
        claims = cosign.verify(right, reference)
        assert len(signed_claims(claims, digest, kind)) == 1, claims
    assert_statements(cosign.verify_attestation(right, owned, "slsaprovenance"), index.digest)

    # With another key nothing verifies; another predicate type is not there.
    cosign.fails("no matching", *cosign.verify_args(other, owned))
    cosign.fails("no matching", *cosign.verify_attestation_args(other, owned, "slsaprovenance"))
    cosign.fails(
        "none of the attestations matched the predicate type",
        *cosign.verify_attestation_args(right, owned, "custom"),
    )


# --- the fixtures of signing.py are cosign's formats ---------------------------------------


def test_cosign_verifies_the_fixture_signatures_in_the_owned_copy(
    scope: Scope, env: Environment, cosign: Cosign
) -> None:
    """``signing.sign_image``'s ``.sig``, ``.att`` and SBOM ``.sig`` verify with cosign.

    The fixture's Sigstore bundle referrer is left out (``--new-bundle-format=false``
    where the index has it): see the next test.
    """
    ns = scope.namespace
    signer = signing.Signer()
    index = images.build_index(
        env.public, f"{ns}/fixture", "1.0", platforms=PLATFORMS, media="oci", seed=f"{ns}/fx"
    )
    corpus = signing.sign_image(
        env.public, f"{ns}/fixture", index.digest, index.manifests, signer, referrers="fallback"
    )
    (cosign.home / "fixture.pem").write_bytes(signer.private_pem())
    cosign.ok("import-key-pair", "--key", "fixture.pem", "--yes")
    key = cosign.home / "import-cosign.pub"
    assert key.read_bytes() == signer.public_pem()
    other = cosign.generate_key_pair("other")
    deploy(scope, "fixture")
    run_controller(scope, controller_config(scope, "fixture"))
    assert deployed_image(scope, "fixture") == f"{scope.owned('fixture')}:1.0"

    owned = f"{scope.owned('fixture')}@{index.digest}"
    legacy = "--new-bundle-format=false"
    claims = cosign.verify(key, owned, legacy)
    assert len(signed_claims(claims, index.digest, SIMPLE_SIGNING_TYPE)) == 2, claims
    for digest in index.manifests.values():  # no bundle referrer: cosign's default finds .sig
        claims = cosign.verify(key, f"{scope.owned('fixture')}@{digest}")
        assert len(signed_claims(claims, digest, SIMPLE_SIGNING_TYPE)) == 2, claims
    sbom = corpus.sbom_digest
    claims = cosign.verify(key, f"{scope.owned('fixture')}@{sbom}")
    assert len(signed_claims(claims, sbom, SIMPLE_SIGNING_TYPE)) == 1, claims
    for predicate_type in (SLSA_V02, signing.CUSTOM_PREDICATE):
        statements = cosign.verify_attestation(key, owned, predicate_type, legacy)
        assert [s["predicateType"] for s in statements] == [predicate_type], statements
    cosign.fails("no matching", *cosign.verify_args(other, owned, legacy))
    cosign.fails("no matching", *cosign.verify_attestation_args(other, owned, SLSA_V02, legacy))


def test_cosign_rejects_the_fixture_bundle_referrer_for_images(
    scope: Scope, env: Environment, cosign: Cosign
) -> None:
    """A known difference, pinned: the fixture's bundle holds a ``messageSignature``.

    ``signing.sigstore_bundle`` signs the image digest directly (a
    ``messageSignature``). cosign v3.1.3 signs an image in the bundle format
    with a DSSE in-toto statement (predicate ``https://sigstore.dev/cosign/sign/v1``),
    and its image verification (``pkg/cosign/verify.go``,
    ``VerifyImageAttestations``) finds the bundle through the referrers
    fallback tag, verifies it, then requires a DSSE envelope. So the default
    ``cosign verify`` of the fixture's index fails, while the same index's
    ``.sig`` signatures verify with ``--new-bundle-format=false``. When the
    fixture writes DSSE bundles, this test fails: then verify them here.
    """
    ns = scope.namespace
    signer = signing.Signer()
    index = images.build_index(
        env.public, f"{ns}/bundle", "1.0", platforms=PLATFORMS, media="oci", seed=f"{ns}/bd"
    )
    signing.sign_image(
        env.public, f"{ns}/bundle", index.digest, index.manifests, signer, referrers="fallback"
    )
    key = cosign.home / "fixture.pub"
    key.write_bytes(signer.public_pem())
    source = f"{env.public.host}/{ns}/bundle@{index.digest}"
    cosign.fails("bundle does not contain a DSSE envelope", *cosign.verify_args(key, source))
    claims = cosign.verify(key, source, "--new-bundle-format=false")
    assert len(signed_claims(claims, index.digest, SIMPLE_SIGNING_TYPE)) == 2, claims
