"""Signed test images: cosign signatures, attestations, SBOMs and OCI referrers, and their checks.

Test-only code: it makes a signed *source* image for the end-to-end tests
and verifies a copy independently of the controller (nothing here imports
``cloner``, and nothing in ``cloner`` may import this). Everything goes
through the registry HTTP API v2, with the helpers of ``devenv/images.py``
for blobs and manifests, so it runs against the harness's CNCF distribution
2.8 registry (no referrers API) and against any registry with the OCI 1.1
referrers API alike.

Formats, and where they come from (cosign v3 sources, ``sigstore/cosign``):

- ``cosign sign``, tag ``sha256-<hex>.sig`` (``pkg/oci/remote`` tag
  helpers): an OCI image manifest whose config is a go-containerregistry
  ``empty.Image`` config (``pkg/oci/empty/empty.go``: mediaType
  ``application/vnd.oci.image.config.v1+json``, ``rootfs.diff_ids`` and one
  ``history`` entry per layer, ``mutate.Append``) and whose every layer is one
  signature (``pkg/oci/static/signature.go``, ``pkg/oci/static/options.go``):
  the blob is the simple-signing payload, mediaType
  ``application/vnd.dev.cosign.simplesigning.v1+json``
  (``pkg/types/media.go``), annotation ``dev.cosignproject.cosign/signature``
  = base64 of the DER ECDSA-P256-SHA256 signature over the exact blob bytes.
  Signing again appends a layer and moves the tag
  (``pkg/oci/mutate/signatures.go``: ``AppendSignatures``).
- simple-signing payload (``sigstore/sigstore``
  ``pkg/signature/payload/payload.go``, after containers/image
  ``containers-signature.5.md``): ``{"critical":{"identity":{"docker-reference":
  REPO},"image":{"docker-manifest-digest":DIGEST},"type":"cosign container image
  signature"},"optional":null}``, Go ``encoding/json`` field order, compact.
- ``cosign attest``, tag ``sha256-<hex>.att`` (``cmd/cosign/cli/attest/attest.go``):
  the same manifest shape, layer mediaType ``application/vnd.dsse.envelope.v1+json``
  (``pkg/types/payload.go``) with annotations ``predicateType`` and an empty
  ``dev.cosignproject.cosign/signature`` (``static.NewAttestation``); the blob is a
  DSSE envelope (``secure-systems-lab/dsse`` ``envelope.md``) whose payload is an
  in-toto Statement v0.1 (``in-toto/attestation``) of type
  ``application/vnd.in-toto+json`` and whose signature is over the DSSE PAE
  ``DSSEv1 <len> <type> <len> <payload>`` (``dsse`` ``protocol.md``).
- ``cosign attach sbom``, tag ``sha256-<hex>.sbom`` (``cmd/cosign/cli/attach/sbom.go``,
  ``pkg/oci/static/file.go``): one layer, the SPDX JSON document, mediaType
  ``text/spdx+json`` (``pkg/types/media.go``), no annotation. ``cosign sign`` of
  that manifest's digest gives it its own ``.sig``.
- cosign v3 referrers (``pkg/oci/remote/write.go``: ``WriteReferrer``,
  ``WriteAttestationNewBundleFormat``): an OCI image manifest with
  ``artifactType`` ``application/vnd.dev.sigstore.bundle.v0.3+json``
  (``pkg/cosign/bundle/constants.go``), config the empty descriptor
  ``application/vnd.oci.empty.v1+json`` with blob ``{}``, one layer holding a
  Sigstore bundle (``sigstore/protobuf-specs`` ``protos/sigstore_bundle.proto``,
  JSON field names) and ``subject`` = descriptor of the signed manifest.
- referrers discovery (OCI distribution-spec v1.1 ``spec.md``, "Listing
  Referrers", "Pushing Manifests with Subject", "Referrers Tag Schema"):
  ``GET /v2/<name>/referrers/<digest>``, or when that answers 404, the image
  index tagged ``sha256-<hex>`` listing each referrer's descriptor with its
  ``artifactType`` (or config mediaType) and its manifest annotations.

Typical use::

    index = images.build_index(registry, "e2e/app", "1", seed="s")
    signer = Signer()
    corpus = sign_image(registry, "e2e/app", index.digest, index.manifests, signer)
    # ... copy ...
    assert verify_signatures(owned, "copy/app", index.digest, signer.public_pem()) == 2

Against a registry that is not a harness ``Registry`` (``Olareg``, which has
the referrers API), pass it as it is to the functions here, and as
``endpoint(olareg)`` to the helpers of ``images.py``.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from devenv import images
from devenv.harness import Registry

# --- media types and names (sources in the module docstring) -------------------------

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SPDX_JSON = "text/spdx+json"
SIGSTORE_BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_BLOB = b"{}"
EXAMPLE_SBOM = "application/vnd.example.sbom+json"

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
BUNDLE_PREDICATE_TYPE_ANNOTATION = "dev.sigstore.bundle.predicateType"
CREATED_ANNOTATION = "org.opencontainers.image.created"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
IN_TOTO_STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"
SLSA_PROVENANCE_V02 = "https://slsa.dev/provenance/v0.2"
CUSTOM_PREDICATE = "https://example.com/image-cloner/e2e/custom/v1"

CREATED = "2025-01-01T00:00:00Z"
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_TIMEOUT = 30.0
_INDEX_ACCEPT = ", ".join([images.OCI_INDEX, images.DOCKER_LIST])

Kind = Literal["signature", "attestation", "sbom", "referrer", "referrers-index"]
ReferrersMode = Literal["api", "fallback", "auto"]
Auth = tuple[str, str]


class VerificationError(AssertionError):
    """A signature, attestation, SBOM or referrer did not verify; the message says which and why."""


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


RegistryRef = Registry | _HasUrl | str


# --- keys -----------------------------------------------------------------------------


class Signer:
    """An ECDSA P-256 key pair, the key type ``cosign generate-key-pair`` makes.

    Args:
        key: an existing private key; None makes a new one with
            ``ec.generate_private_key(ec.SECP256R1())``.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        """Keep ``key`` or generate a fresh P-256 key."""
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        if not isinstance(self.key.curve, ec.SECP256R1):
            raise ValueError(f"a cosign key is P-256, not {self.key.curve.name}")

    def public_pem(self) -> bytes:
        """The public key, PEM ``SubjectPublicKeyInfo`` (``-----BEGIN PUBLIC KEY-----``).

        The form of ``cosign.pub`` and of ``cosign verify --key FILE``.
        """
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        """The private key, PEM PKCS#8 unencrypted (``-----BEGIN PRIVATE KEY-----``), for files.

        cosign's own ``cosign.key`` is encrypted; ``cosign import-key-pair``
        turns this form into that one.
        """
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, payload: bytes) -> bytes:
        """ECDSA with SHA-256 over ``payload``; the DER signature (what cosign base64-encodes)."""
        return self.key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def sign_digest(self, sha256: bytes) -> bytes:
        """ECDSA over an already computed SHA-256 (32 bytes); DER.

        Verifies like :meth:`sign` over the bytes whose hash ``sha256`` is:
        a Sigstore bundle's ``messageSignature`` over an image manifest.
        """
        if len(sha256) != 32:
            raise ValueError(f"a SHA-256 is 32 bytes, not {len(sha256)}")
        return self.key.sign(sha256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def key_hint(self) -> str:
        """``sha256:<hex>`` of the DER public key, an unauthenticated hint for bundles."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return images.sha256_digest(der)


# --- names ----------------------------------------------------------------------------


def _split_digest(digest: str) -> tuple[str, str]:
    algorithm, _, encoded = digest.partition(":")
    if algorithm != "sha256" or len(encoded) != 64:
        raise ValueError(f"expected sha256:<64 hex>, got {digest!r}")
    return algorithm, encoded


def cosign_tag(digest: str, suffix: Literal["sig", "att", "sbom"] = "sig") -> str:
    """The tag cosign attaches to ``digest``: ``sha256-<hex>.sig`` / ``.att`` / ``.sbom``.

    Source: cosign ``pkg/oci/remote/remote.go`` (``SignatureTag``,
    ``AttestationTag``, ``SBOMTag``: digest with ``:`` -> ``-``, then ``.suffix``).

    Raises:
        ValueError: ``digest`` is not ``sha256:<64 hex>``.
    """
    algorithm, encoded = _split_digest(digest)
    return f"{algorithm}-{encoded}.{suffix}"


def referrers_tag(digest: str) -> str:
    """The referrers fallback tag of ``digest``: ``sha256-<hex>``.

    Source: OCI distribution-spec v1.1 ``spec.md``, "Referrers Tag Schema".

    Raises:
        ValueError: ``digest`` is not ``sha256:<64 hex>``.
    """
    algorithm, encoded = _split_digest(digest)
    return f"{algorithm}-{encoded}"


# --- formats --------------------------------------------------------------------------


def _json(document: Any) -> bytes:
    """Compact JSON in the given key order (Go ``encoding/json`` of a struct)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def simple_signing_payload(
    docker_reference: str, digest: str, optional: Mapping[str, str] | None = None
) -> bytes:
    """The simple-signing payload cosign signs for ``digest``.

    Source: ``sigstore/sigstore`` ``pkg/signature/payload/payload.go``
    (``Cosign.MarshalJSON``); ``optional`` is ``cosign sign -a k=v`` (a Go map:
    keys sorted), ``null`` when absent.

    Args:
        docker_reference: ``host:port/repository``, the claimed identity.
        digest: ``sha256:<hex>`` of the signed manifest.
        optional: annotations, or None for ``null``.

    Returns:
        The payload bytes, exactly as they are stored and signed.
    """
    document = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_SIGNATURE_TYPE,
        },
        "optional": dict(sorted(optional.items())) if optional else None,
    }
    return _json(document)


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding, the bytes a DSSE signature is over.

    Source: ``secure-systems-lab/dsse`` ``protocol.md``:
    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, lengths in ASCII
    decimal bytes.
    """
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def in_toto_statement(
    name: str, digest: str, predicate_type: str, predicate: Mapping[str, Any]
) -> bytes:
    """An in-toto Statement v0.1 about one subject, as ``cosign attest`` writes it.

    Source: ``in-toto/attestation`` spec v0.1 (``_type``, ``predicateType``,
    ``subject[].name/digest``, ``predicate``); field order of in-toto-golang's
    ``StatementHeader``.
    """
    _, encoded = _split_digest(digest)
    document = {
        "_type": IN_TOTO_STATEMENT_V01,
        "predicateType": predicate_type,
        "subject": [{"name": name, "digest": {"sha256": encoded}}],
        "predicate": dict(predicate),
    }
    return _json(document)


def dsse_envelope(payload: bytes, signers: Sequence[Signer]) -> bytes:
    """A DSSE JSON envelope of an in-toto statement, signed over the PAE by each signer.

    Source: ``secure-systems-lab/dsse`` ``envelope.md``; field names as
    ``sigstore/sigstore`` ``pkg/signature/dsse`` writes them (``keyid`` empty).
    """
    pae = dsse_pae(IN_TOTO, payload)
    document = {
        "payloadType": IN_TOTO,
        "payload": _b64(payload),
        "signatures": [{"keyid": "", "sig": _b64(signer.sign(pae))} for signer in signers],
    }
    return _json(document)


def _predicate(predicate_type: str, name: str) -> dict[str, Any]:
    if predicate_type == SLSA_PROVENANCE_V02:
        return {
            "builder": {"id": "https://example.com/image-cloner/e2e-builder"},
            "buildType": "https://example.com/image-cloner/e2e-build/v1",
            "invocation": {"configSource": {"uri": f"oci://{name}"}},
            "metadata": {"buildStartedOn": CREATED, "reproducible": True},
            "materials": [],
        }
    return {"test": "devenv/signing.py", "name": name}


def spdx_document(name: str, digest: str) -> bytes:
    """A small SPDX 2.3 JSON document describing the image (``spdx.github.io`` spec 2.3)."""
    _, encoded = _split_digest(digest)
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://example.com/image-cloner/spdx/{encoded}",
        "creationInfo": {"created": CREATED, "creators": ["Tool: devenv/signing.py"]},
        "packages": [
            {
                "name": name.rsplit("/", 1)[-1],
                "SPDXID": "SPDXRef-Package-image",
                "versionInfo": "1.0.0",
                "downloadLocation": "NOASSERTION",
                "checksums": [{"algorithm": "SHA256", "checksumValue": encoded}],
            }
        ],
    }
    return _json(document)


def sigstore_bundle(signer: Signer, digest: str) -> bytes:
    """A Sigstore bundle v0.3 whose ``messageSignature`` signs the manifest ``digest``.

    Source: ``sigstore/protobuf-specs`` ``protos/sigstore_bundle.proto`` and
    ``sigstore_common.proto`` (proto3 JSON names): ``mediaType``,
    ``verificationMaterial.publicKey.hint`` (key by hint, no certificate, no
    transparency log entry: offline, like ``--tlog-upload=false``),
    ``messageSignature.messageDigest`` (``SHA2_256``, base64 of the raw
    digest) and ``messageSignature.signature`` (base64 DER ECDSA), which
    verifies over the manifest bytes (the hash of which is ``digest``).
    """
    _, encoded = _split_digest(digest)
    raw = bytes.fromhex(encoded)
    document = {
        "mediaType": SIGSTORE_BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": signer.key_hint()}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(raw)},
            "signature": _b64(signer.sign_digest(raw)),
        },
    }
    return _json(document)


def _cosign_config(layer_digests: Sequence[str]) -> bytes:
    """go-containerregistry's config of ``empty.Image`` after ``mutate.Append`` of the layers."""
    document = {
        "architecture": "",
        "created": _GO_ZERO_TIME,
        "history": [{"created": _GO_ZERO_TIME} for _ in layer_digests],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": list(layer_digests)},
        "config": {},
    }
    return _json(document)


def _descriptor(
    media_type: str,
    data: bytes,
    annotations: Mapping[str, str] | None = None,
    artifact_type: str | None = None,
) -> dict[str, Any]:
    """An OCI descriptor in go-containerregistry's field order (mediaType, size, digest, ...)."""
    descriptor: dict[str, Any] = {
        "mediaType": media_type,
        "size": len(data),
        "digest": images.sha256_digest(data),
    }
    if annotations:
        descriptor["annotations"] = dict(annotations)
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    return descriptor


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer of a cosign attachment: blob bytes, mediaType, descriptor annotations."""

    data: bytes
    media_type: str
    annotations: Mapping[str, str] = field(default_factory=dict)


def cosign_manifest(layers: Sequence[Layer]) -> tuple[bytes, bytes]:
    """The ``.sig`` / ``.att`` / ``.sbom`` manifest over ``layers`` and its config.

    Source: cosign ``pkg/oci/empty/empty.go`` + ``pkg/oci/mutate/signatures.go``
    (OCI manifest, OCI config of go-containerregistry's ``empty.Image``, one
    layer per attachment with its annotations).

    Returns:
        ``(manifest bytes, config bytes)``.
    """
    config = _cosign_config([images.sha256_digest(layer.data) for layer in layers])
    manifest = {
        "schemaVersion": 2,
        "mediaType": images.OCI_MANIFEST,
        "config": _descriptor(images.OCI_CONFIG, config),
        "layers": [
            _descriptor(layer.media_type, layer.data, layer.annotations) for layer in layers
        ],
    }
    return _json(manifest), config


# --- what was pushed --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    """One manifest pushed next to the signed image.

    Attributes:
        kind: ``signature`` (a ``.sig``), ``attestation`` (``.att``), ``sbom``
            (``.sbom``), ``referrer`` (a manifest with ``subject``, pushed by
            digest) or ``referrers-index`` (the fallback tag index).
        digest: the artifact manifest's digest.
        subject: the digest it is attached to.
        tag: the tag it was pushed under; None for a referrer (by digest only).
        media_type: the manifest's media type.
        artifact_type: the referrer's ``artifactType``; None for cosign tags.
        layers: blobs it lists besides its config (signatures in a ``.sig``).
        size: bytes of the manifest.
    """

    kind: Kind
    digest: str
    subject: str
    tag: str | None
    media_type: str
    artifact_type: str | None
    layers: int
    size: int


@dataclass(slots=True)
class SignedCorpus:
    """Everything :func:`sign_image` pushed, and the counts a faithful copy must show.

    Attributes:
        registry_host: ``host:port`` of the registry signed in.
        repository: the repository holding the image and its artifacts.
        docker_reference: the identity written in the signatures.
        index_digest: the signed index.
        platform_digests: the signed platform manifests, in the given order.
        public_key_pem: the key that verifies every signature.
        referrers_mode: how referrers were published (``api``/``fallback``/``auto``).
        artifacts: every manifest pushed, in push order.
        signatures: digest -> how many signatures its ``.sig`` holds (index,
            each platform, and the SBOM manifest).
        attestations: digest -> how many attestations its ``.att`` holds.
        referrers: subject digest -> referrer manifest digests.
    """

    registry_host: str
    repository: str
    docker_reference: str
    index_digest: str
    platform_digests: tuple[str, ...]
    public_key_pem: bytes
    referrers_mode: ReferrersMode
    artifacts: list[Artifact] = field(default_factory=list)
    signatures: dict[str, int] = field(default_factory=dict)
    attestations: dict[str, int] = field(default_factory=dict)
    referrers: dict[str, list[str]] = field(default_factory=dict)

    def of_kind(self, kind: Kind) -> list[Artifact]:
        """The artifacts of one kind, in push order."""
        return [artifact for artifact in self.artifacts if artifact.kind == kind]

    @property
    def tags(self) -> set[str]:
        """Every tag pushed: cosign tags and referrers fallback tags."""
        return {artifact.tag for artifact in self.artifacts if artifact.tag}

    @property
    def tag_digests(self) -> dict[str, str]:
        """tag -> the digest last pushed under it."""
        return {artifact.tag: artifact.digest for artifact in self.artifacts if artifact.tag}

    @property
    def sbom_digest(self) -> str:
        """The digest of the ``.sbom`` manifest of the index."""
        return self.of_kind("sbom")[0].digest

    @property
    def digests(self) -> set[str]:
        """Every artifact manifest digest (what a copy must hold besides the image)."""
        return {artifact.digest for artifact in self.artifacts}


# --- HTTP ------------------------------------------------------------------------------


def _base_url(registry: RegistryRef) -> str:
    if isinstance(registry, str):
        return registry.rstrip("/") if "://" in registry else f"http://{registry.rstrip('/')}"
    return registry.url


def _credentials(registry: RegistryRef, auth: Auth | None) -> Auth | None:
    if auth is not None:
        return auth
    username = getattr(registry, "username", None)
    password = getattr(registry, "password", None)
    if username is not None and password is not None:
        return (username, password)
    return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Any registry by base URL, usable wherever ``devenv/images.py`` wants a ``Registry``.

    ``images.push_blob`` / ``push_manifest`` / ``build_index`` only use
    ``url``, ``host`` and ``_request``; this gives them to a registry that is
    not a harness ``Registry`` (for example ``devenv/olareg.py``'s
    ``Olareg``, which has only ``url``), with optional basic-auth credentials.

    Attributes:
        url: ``http://host:port``.
        username: basic-auth user, or None (anonymous).
        password: basic-auth password, or None.
    """

    url: str
    username: str | None = None
    password: str | None = None

    @property
    def host(self) -> str:
        """``host:port``."""
        return self.url.split("://", 1)[-1].rstrip("/")

    def _request(
        self,
        path: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> urllib.request.Request:
        """A request to ``path`` (or a full URL) with basic auth when there are credentials."""
        request = urllib.request.Request(
            path if path.startswith("http") else self.url + path, method=method
        )
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if auth and self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request


def endpoint(registry: RegistryRef, auth: Auth | None = None) -> Registry:
    """``registry`` as something ``devenv/images.py`` can push to and read from.

    Args:
        registry: a harness ``Registry`` (returned as it is when ``auth`` is
            None), any object with ``.url`` (``Olareg``), or a base URL /
            ``host:port`` string.
        auth: ``(username, password)``; None keeps the registry's own, if any.

    Returns:
        The registry, or an :class:`Endpoint` standing in for one (typed as
        ``Registry`` for the helpers of ``images.py``).
    """
    if auth is None and isinstance(registry, Registry):
        return registry
    credentials = _credentials(registry, auth)
    username, password = credentials if credentials is not None else (None, None)
    return cast(Registry, Endpoint(_base_url(registry), username, password))


def _http(
    registry: RegistryRef,
    path: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: Auth | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """One request (basic auth when there are credentials); (status, headers, body), no raise."""
    url = path if path.startswith("http") else _base_url(registry) + path
    request = urllib.request.Request(url, method=method, data=data)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    credentials = _credentials(registry, auth)
    if credentials is not None:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            return int(response.status), response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers, exc.read()


def _fetch_manifest(
    registry: RegistryRef, repository: str, reference: str, auth: Auth | None
) -> tuple[str, bytes] | None:
    """``GET`` a manifest (all four types); (media type, bytes) or None on 404.

    Raises:
        VerificationError: another status than 200 or 404; bytes that do not
            hash to ``reference`` when it is a digest.
    """
    status, headers, body = _http(
        registry,
        f"/v2/{repository}/manifests/{reference}",
        headers={"Accept": f"{images.OCI_MANIFEST}, {images.DOCKER_MANIFEST}, {_INDEX_ACCEPT}"},
        auth=auth,
    )
    if status == 404:
        return None
    if status != 200:
        raise VerificationError(
            f"GET manifest {repository}:{reference} answered {status}: {body[:300]!r}"
        )
    if reference.startswith("sha256:") and images.sha256_digest(body) != reference:
        raise VerificationError(f"manifest {repository}@{reference} served other bytes")
    return headers.get("Content-Type", "").split(";")[0].strip(), body


def _fetch_blob(registry: RegistryRef, repository: str, digest: str, auth: Auth | None) -> bytes:
    """``GET`` a blob and check it hashes to ``digest``.

    Raises:
        VerificationError: not 200, or other bytes.
    """
    status, _, body = _http(registry, f"/v2/{repository}/blobs/{digest}", auth=auth)
    if status != 200:
        raise VerificationError(f"GET blob {repository}@{digest} answered {status}")
    if images.sha256_digest(body) != digest:
        raise VerificationError(f"blob {repository}@{digest} served other bytes")
    return body


# --- pushing ---------------------------------------------------------------------------


def _push_cosign(
    registry: Registry,
    repository: str,
    kind: Kind,
    subject: str,
    tag: str,
    layers: Sequence[Layer],
) -> Artifact:
    manifest, config = cosign_manifest(layers)
    images.push_blob(registry, repository, config)
    for layer in layers:
        images.push_blob(registry, repository, layer.data)
    digest = images.push_manifest(registry, repository, tag, manifest, images.OCI_MANIFEST)
    return Artifact(
        kind, digest, subject, tag, images.OCI_MANIFEST, None, len(layers), len(manifest)
    )


def _signature_layer(
    signer: Signer, docker_reference: str, digest: str, optional: Mapping[str, str] | None
) -> Layer:
    payload = simple_signing_payload(docker_reference, digest, optional)
    return Layer(payload, SIMPLE_SIGNING, {SIGNATURE_ANNOTATION: _b64(signer.sign(payload))})


def push_signatures(
    registry: RegistryRef,
    repository: str,
    digest: str,
    signers: Sequence[tuple[Signer, Mapping[str, str] | None]],
    *,
    docker_reference: str | None = None,
) -> Artifact:
    """Push (replace) the ``.sig`` of ``digest`` with one signature per ``(signer, optional)``.

    Format: cosign ``pkg/oci/static/signature.go`` (see the module docstring).

    Args:
        registry: a harness ``Registry`` (its credentials are used), any object
            with ``.url`` such as ``Olareg``, or a base URL (see :func:`endpoint`).
        repository: where the image is; the ``.sig`` tag goes next to it.
        digest: ``sha256:<hex>`` of the signed manifest.
        signers: ``(signer, optional annotations or None)`` per signature,
            one layer each, in order.
        docker_reference: the claimed identity; default ``host/repository``.

    Returns:
        The ``.sig`` :class:`Artifact`.

    Raises:
        ValueError: no signer, or a malformed digest.
        images.ImageBuildError: the registry refused a blob or the manifest.
    """
    registry = endpoint(registry)
    if not signers:
        raise ValueError("a .sig needs at least one signature")
    reference = docker_reference or f"{registry.host}/{repository}"
    layers = [_signature_layer(s, reference, digest, optional) for s, optional in signers]
    return _push_cosign(registry, repository, "signature", digest, cosign_tag(digest), layers)


def add_signature(
    registry: RegistryRef,
    repository: str,
    digest: str,
    signer: Signer,
    *,
    optional: Mapping[str, str] | None = None,
    docker_reference: str | None = None,
) -> Artifact:
    """Sign ``digest`` once more: the existing ``.sig`` plus one layer, re-pushed under its tag.

    What cosign does on a second ``cosign sign`` (``pkg/oci/mutate/signatures.go``
    ``AppendSignatures``): earlier layers and their annotations are kept byte
    for byte, the config gets one more ``diff_id``, and the tag moves to the new
    manifest. Without an existing ``.sig`` it makes one with this signature.

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base URL.
        repository: where the image and its ``.sig`` are.
        digest: ``sha256:<hex>`` of the signed manifest.
        signer: the key of the new signature.
        optional: the new payload's ``optional`` annotations (None: ``null``).
            The default adds ``{"signature": "<n>"}`` so that a second signature
            by the same key has a payload of its own, as ``cosign sign -a`` would.
        docker_reference: the claimed identity; default ``host/repository``.

    Returns:
        The new ``.sig`` :class:`Artifact` (``layers`` = the new count).

    Raises:
        images.ImageBuildError: the registry refused a blob or the manifest,
            or the existing ``.sig`` is not an OCI manifest.
    """
    registry = endpoint(registry)
    tag = cosign_tag(digest)
    found = _fetch_manifest(registry, repository, tag, None)
    layers: list[Layer] = []
    if found is not None:
        media_type, body = found
        if media_type != images.OCI_MANIFEST:
            raise images.ImageBuildError(f"{repository}:{tag} is {media_type}, not an OCI manifest")
        for descriptor in json.loads(body).get("layers") or []:
            data = _fetch_blob(registry, repository, descriptor["digest"], None)
            layers.append(Layer(data, descriptor["mediaType"], descriptor.get("annotations") or {}))
    reference = docker_reference or f"{registry.host}/{repository}"
    extra = {"signature": str(len(layers) + 1)} if optional is None else optional
    layers.append(_signature_layer(signer, reference, digest, extra))
    return _push_cosign(registry, repository, "signature", digest, tag, layers)


def _subject_descriptor(registry: Registry, repository: str, digest: str) -> dict[str, Any]:
    media_type, body = images.get_manifest(registry, repository, digest)
    return {"mediaType": media_type, "digest": digest, "size": len(body)}


def _referrer_entry(manifest: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """The descriptor a referrers list holds for a referrer manifest (distribution-spec v1.1)."""
    entry: dict[str, Any] = {
        "mediaType": manifest["mediaType"],
        "digest": images.sha256_digest(body),
        "size": len(body),
        "artifactType": manifest.get("artifactType") or manifest["config"]["mediaType"],
    }
    if manifest.get("annotations"):
        entry["annotations"] = dict(manifest["annotations"])
    return entry


def update_referrers_tag(
    registry: RegistryRef,
    repository: str,
    subject: str,
    entries: Iterable[Mapping[str, Any]],
) -> Artifact:
    """Merge referrer descriptors into the fallback tag index ``sha256-<hex>`` of ``subject``.

    Source: OCI distribution-spec v1.1 ``spec.md``, "Pushing Manifests with
    Subject" and "Referrers Tag Schema": pull the tag (404: start from an
    empty OCI image index), append each descriptor not already listed (by
    digest), push the index back under the same tag.

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base URL.
        repository: where the subject and its referrers are.
        subject: ``sha256:<hex>`` the referrers point at.
        entries: descriptors with ``mediaType``, ``digest``, ``size``,
            ``artifactType`` and (optional) ``annotations``.

    Returns:
        The ``referrers-index`` :class:`Artifact` (``layers`` = entries listed).

    Raises:
        images.ImageBuildError: the tag holds something other than an OCI
            image index, or the registry refused the push.
    """
    registry = endpoint(registry)
    tag = referrers_tag(subject)
    found = _fetch_manifest(registry, repository, tag, None)
    if found is None:
        document: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": images.OCI_INDEX,
            "manifests": [],
        }
    else:
        media_type, body = found
        document = json.loads(body)
        if media_type != images.OCI_INDEX or document.get("mediaType") != images.OCI_INDEX:
            raise images.ImageBuildError(f"{repository}:{tag} is {media_type}, not an OCI index")
        document.setdefault("manifests", [])
    listed = {descriptor["digest"] for descriptor in document["manifests"]}
    for entry in entries:
        if entry["digest"] not in listed:
            document["manifests"].append(dict(entry))
            listed.add(entry["digest"])
    body = _json(document)
    digest = images.push_manifest(registry, repository, tag, body, images.OCI_INDEX)
    return Artifact(
        "referrers-index",
        digest,
        subject,
        tag,
        images.OCI_INDEX,
        None,
        len(document["manifests"]),
        len(body),
    )


def push_referrer(
    registry: RegistryRef,
    repository: str,
    subject: str,
    artifact_type: str,
    layers: Sequence[Layer],
    *,
    annotations: Mapping[str, str] | None = None,
    referrers: ReferrersMode = "auto",
) -> list[Artifact]:
    """Push an OCI 1.1 artifact manifest whose ``subject`` is ``subject``, by its digest.

    The manifest follows cosign's ``WriteReferrer`` (``pkg/oci/remote/write.go``):
    ``artifactType``, config = the empty descriptor (``application/vnd.oci.empty.v1+json``,
    blob ``{}``, with ``artifactType`` as cosign writes it), the layers,
    ``subject`` = (mediaType, digest, size) of the subject, manifest
    ``annotations``.

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base URL.
        repository: where the subject is.
        subject: ``sha256:<hex>`` of a manifest in ``repository``.
        artifact_type: the manifest's ``artifactType``.
        layers: the artifact's blobs.
        annotations: manifest annotations (copied into referrers lists).
        referrers: ``api`` pushes the manifest only (a registry with the
            referrers API indexes it); ``fallback`` also merges it into the
            ``sha256-<hex>`` tag index; ``auto`` does the fallback only when
            the registry did not answer ``OCI-Subject`` (distribution-spec
            v1.1, "Pushing Manifests with Subject").

    Returns:
        ``[referrer]`` or ``[referrer, referrers-index]``.

    Raises:
        LookupError: ``subject`` is not in ``repository``.
        images.ImageBuildError: the registry refused a blob or a manifest.
        ValueError: an unknown ``referrers`` mode.
    """
    registry = endpoint(registry)
    if referrers not in ("api", "fallback", "auto"):
        raise ValueError(f"referrers must be api, fallback or auto, not {referrers!r}")
    images.push_blob(registry, repository, OCI_EMPTY_BLOB)
    for layer in layers:
        images.push_blob(registry, repository, layer.data)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": images.OCI_MANIFEST,
        "config": _descriptor(OCI_EMPTY, OCI_EMPTY_BLOB, artifact_type=artifact_type),
        "layers": [
            _descriptor(layer.media_type, layer.data, layer.annotations) for layer in layers
        ],
        "subject": _subject_descriptor(registry, repository, subject),
        "artifactType": artifact_type,
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = _json(manifest)
    digest = images.sha256_digest(body)
    status, headers, answer = _http(
        registry,
        f"/v2/{repository}/manifests/{digest}",
        method="PUT",
        data=body,
        headers={"Content-Type": images.OCI_MANIFEST},
    )
    if status != 201 or headers.get("Docker-Content-Digest", digest) != digest:
        raise images.ImageBuildError(
            f"PUT referrer {repository}@{digest}: {status} {answer[:500]!r}"
        )
    pushed = [
        Artifact(
            "referrer",
            digest,
            subject,
            None,
            images.OCI_MANIFEST,
            artifact_type,
            len(layers),
            len(body),
        )
    ]
    indexed = headers.get("OCI-Subject") == subject
    if referrers == "fallback" or (referrers == "auto" and not indexed):
        entry = _referrer_entry(manifest, body)
        pushed.append(update_referrers_tag(registry, repository, subject, [entry]))
    return pushed


def sign_image(
    registry: RegistryRef,
    repository: str,
    index_digest: str,
    platform_digests: Sequence[str] | Mapping[str, str],
    signer: Signer,
    *,
    second_signer: Signer | None = None,
    referrers: ReferrersMode = "auto",
    docker_reference: str | None = None,
    predicate_types: Sequence[str] = (SLSA_PROVENANCE_V02, CUSTOM_PREDICATE),
    created: str = CREATED,
) -> SignedCorpus:
    """Sign a multi-platform image already in ``repository`` the ways cosign does, and more.

    Pushes, through the registry HTTP API:

    - ``.sig`` (``sha256-<hex>.sig``) of the index and of every platform
      manifest (``cosign sign --recursive``), each with TWO signatures: by
      ``signer`` with ``optional: null``, then by ``second_signer`` (default:
      ``signer`` again) with ``optional: {"signature": "2"}``;
    - ``.att`` of the index: one DSSE in-toto attestation per predicate type;
    - ``.sbom`` of the index (SPDX JSON, ``text/spdx+json``), and a ``.sig``
      with one signature by ``signer`` on that ``.sbom`` manifest;
    - referrers: a Sigstore bundle v0.3 artifact (``messageSignature`` over the
      index digest by ``signer``) whose subject is the index, and an
      ``application/vnd.example.sbom+json`` artifact whose subject is the
      first platform manifest; published as ``referrers`` says
      (:func:`push_referrer`).

    Args:
        registry: a harness ``Registry`` (its credentials are used), any object
            with ``.url`` such as ``Olareg``, or a base URL (see :func:`endpoint`).
        repository: where the index and its children are.
        index_digest: ``sha256:<hex>`` of the index.
        platform_digests: the children's digests, or ``Index.manifests``
            (``os/arch`` -> digest); at least one.
        signer: the main key (verifies every signature with
            ``signer.public_pem()``).
        second_signer: key of the second signature of each ``.sig``; None
            uses ``signer`` (then both verify with the same key).
        referrers: ``api``, ``fallback`` or ``auto`` (see :func:`push_referrer`).
        docker_reference: the identity in the signatures; default
            ``host/repository``.
        predicate_types: one attestation per entry; SLSA provenance v0.2 gets
            a small provenance predicate, others a small custom one.
        created: the ``org.opencontainers.image.created`` annotation of the
            referrers (fixed, so manifests differ only by signatures).

    Returns:
        The :class:`SignedCorpus` (every artifact and the expected counts).

    Raises:
        ValueError: no platform digest, or a malformed digest.
        LookupError: the index or a child is not in ``repository``.
        images.ImageBuildError: the registry refused a blob or a manifest.
    """
    registry = endpoint(registry)
    children = tuple(
        platform_digests.values() if isinstance(platform_digests, Mapping) else platform_digests
    )
    if not children:
        raise ValueError("sign_image needs the platform manifest digests")
    reference = docker_reference or f"{registry.host}/{repository}"
    corpus = SignedCorpus(
        registry.host,
        repository,
        reference,
        index_digest,
        children,
        signer.public_pem(),
        referrers,
    )
    second = second_signer or signer
    pair: list[tuple[Signer, Mapping[str, str] | None]] = [
        (signer, None),
        (second, {"signature": "2"}),
    ]
    for digest in (index_digest, *children):
        artifact = push_signatures(registry, repository, digest, pair, docker_reference=reference)
        corpus.artifacts.append(artifact)
        corpus.signatures[digest] = artifact.layers

    attestations = []
    for predicate_type in predicate_types:
        statement = in_toto_statement(
            reference, index_digest, predicate_type, _predicate(predicate_type, reference)
        )
        attestations.append(
            Layer(
                dsse_envelope(statement, [signer]),
                DSSE_ENVELOPE,
                {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: predicate_type},
            )
        )
    if attestations:
        tag = cosign_tag(index_digest, "att")
        artifact = _push_cosign(
            registry, repository, "attestation", index_digest, tag, attestations
        )
        corpus.artifacts.append(artifact)
        corpus.attestations[index_digest] = artifact.layers

    sbom = Layer(spdx_document(reference, index_digest), SPDX_JSON)
    tag = cosign_tag(index_digest, "sbom")
    sbom_artifact = _push_cosign(registry, repository, "sbom", index_digest, tag, [sbom])
    corpus.artifacts.append(sbom_artifact)
    artifact = push_signatures(
        registry, repository, sbom_artifact.digest, [(signer, None)], docker_reference=reference
    )
    corpus.artifacts.append(artifact)
    corpus.signatures[sbom_artifact.digest] = artifact.layers

    bundle = Layer(sigstore_bundle(signer, index_digest), SIGSTORE_BUNDLE_V03)
    bundle_annotations = {
        CREATED_ANNOTATION: created,
        BUNDLE_PREDICATE_TYPE_ANNOTATION: COSIGN_SIGN_PREDICATE,
    }
    example = Layer(spdx_document(reference, children[0]), EXAMPLE_SBOM)
    example_annotations = {CREATED_ANNOTATION: created, "org.example.sbom.format": "spdx-json"}
    for subject, artifact_type, layer, manifest_annotations in (
        (index_digest, SIGSTORE_BUNDLE_V03, bundle, bundle_annotations),
        (children[0], EXAMPLE_SBOM, example, example_annotations),
    ):
        pushed = push_referrer(
            registry,
            repository,
            subject,
            artifact_type,
            [layer],
            annotations=manifest_annotations,
            referrers=referrers,
        )
        corpus.artifacts.extend(pushed)
        corpus.referrers.setdefault(subject, []).append(pushed[0].digest)
    return corpus


# --- verification ------------------------------------------------------------------------


def _public_key(public_key_pem: bytes | str) -> ec.EllipticCurvePublicKey:
    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError(f"not an EC public key: {type(key).__name__}")
    return key


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _cosign_layers(
    registry: RegistryRef,
    repository: str,
    digest: str,
    suffix: Literal["sig", "att", "sbom"],
    auth: Auth | None,
) -> list[dict[str, Any]]:
    """The layer descriptors of the ``.suffix`` manifest of ``digest``.

    Raises:
        VerificationError: no such tag, or not an OCI manifest.
    """
    tag = cosign_tag(digest, suffix)
    found = _fetch_manifest(registry, repository, tag, auth)
    if found is None:
        raise VerificationError(
            f"no {tag} in {_base_url(registry)}/{repository} (manifest unknown)"
        )
    media_type, body = found
    document = json.loads(body)
    if media_type != images.OCI_MANIFEST or document.get("mediaType") != images.OCI_MANIFEST:
        raise VerificationError(f"{repository}:{tag} is {media_type}, not an OCI image manifest")
    return list(document.get("layers") or [])


def _check_signature_layer(
    registry: RegistryRef,
    repository: str,
    digest: str,
    descriptor: Mapping[str, Any],
    key: ec.EllipticCurvePublicKey,
    docker_reference: str | None,
    auth: Auth | None,
) -> str | None:
    """None when the layer verifies, else why not."""
    if descriptor.get("mediaType") != SIMPLE_SIGNING:
        return f"mediaType {descriptor.get('mediaType')!r} is not {SIMPLE_SIGNING}"
    encoded = (descriptor.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
    if not encoded:
        return f"no {SIGNATURE_ANNOTATION} annotation"
    payload = _fetch_blob(registry, repository, descriptor["digest"], auth)
    if not _ecdsa_ok(key, base64.b64decode(encoded), payload):
        return "ECDSA signature does not verify over the payload with this key"
    critical = json.loads(payload).get("critical") or {}
    if critical.get("type") != COSIGN_SIGNATURE_TYPE:
        return f"payload type {critical.get('type')!r}"
    named = (critical.get("image") or {}).get("docker-manifest-digest")
    if named != digest:
        return f"payload signs docker-manifest-digest {named}, not {digest}"
    claimed = (critical.get("identity") or {}).get("docker-reference")
    if docker_reference is not None and claimed != docker_reference:
        return f"payload docker-reference {claimed!r}, expected {docker_reference!r}"
    return None


def _count_or_raise(what: str, verified: int, failures: Sequence[str]) -> int:
    if verified == 0:
        reasons = "\n  ".join(failures) or "no layer"
        raise VerificationError(f"no valid {what}:\n  {reasons}")
    return verified


def verify_signatures(
    registry: RegistryRef,
    repository: str,
    digest: str,
    public_key_pem: bytes | str,
    *,
    auth: Auth | None = None,
    docker_reference: str | None = None,
    require_all: bool = False,
) -> int:
    """Verify cosign signatures of ``digest`` the way ``cosign verify --key`` finds and checks them.

    ``GET`` the tag ``sha256-<hex>.sig`` in ``repository``; for each layer
    (``application/vnd.dev.cosign.simplesigning.v1+json``), fetch the payload
    blob (its bytes must hash to the layer digest), check the ECDSA-SHA256
    signature from the ``dev.cosignproject.cosign/signature`` annotation over
    the EXACT payload bytes with the key, and check that the payload's
    ``critical.image.docker-manifest-digest`` is ``digest`` (formats: cosign
    ``pkg/oci/static/signature.go``, sigstore ``pkg/signature/payload``).

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base
            URL / ``host:port`` string.
        repository: where the image and its ``.sig`` are.
        digest: ``sha256:<hex>`` of the signed manifest.
        public_key_pem: PEM ``SubjectPublicKeyInfo`` (``Signer.public_pem()``).
        auth: ``(username, password)`` for basic auth; None uses the
            registry's own credentials when it has any.
        docker_reference: also require this claimed identity (cosign checks
            it only with ``--check-claims`` policies; off by default).
        require_all: fail when any layer does not verify, not only when none
            does (cosign passes when one does).

    Returns:
        How many signatures verified (>= 1).

    Raises:
        VerificationError (an ``AssertionError``): no ``.sig`` tag, no
            signature verifying (each layer's reason in the message), a layer
            failing with ``require_all``, a blob missing or altered, an
            unexpected HTTP status.
    """
    key = _public_key(public_key_pem)
    failures: list[str] = []
    verified = 0
    for number, descriptor in enumerate(_cosign_layers(registry, repository, digest, "sig", auth)):
        reason = _check_signature_layer(
            registry, repository, digest, descriptor, key, docker_reference, auth
        )
        if reason is None:
            verified += 1
        else:
            failures.append(
                f"{cosign_tag(digest)} layer {number} ({descriptor.get('digest')}): {reason}"
            )
    if require_all and failures:
        raise VerificationError("signature layers not verifying:\n  " + "\n  ".join(failures))
    return _count_or_raise(f"signature for {repository}@{digest}", verified, failures)


def _check_attestation_layer(
    registry: RegistryRef,
    repository: str,
    digest: str,
    descriptor: Mapping[str, Any],
    key: ec.EllipticCurvePublicKey,
    predicate_type: str | None,
    auth: Auth | None,
) -> str | None:
    if descriptor.get("mediaType") != DSSE_ENVELOPE:
        return f"mediaType {descriptor.get('mediaType')!r} is not {DSSE_ENVELOPE}"
    envelope = json.loads(_fetch_blob(registry, repository, descriptor["digest"], auth))
    if envelope.get("payloadType") != IN_TOTO:
        return f"payloadType {envelope.get('payloadType')!r}"
    payload = base64.b64decode(envelope.get("payload") or "")
    pae = dsse_pae(IN_TOTO, payload)
    signatures = [base64.b64decode(s.get("sig") or "") for s in envelope.get("signatures") or []]
    if not any(_ecdsa_ok(key, signature, pae) for signature in signatures):
        return f"none of {len(signatures)} DSSE signature(s) verifies over the PAE with this key"
    statement = json.loads(payload)
    _, encoded = _split_digest(digest)
    subjects = [s.get("digest", {}).get("sha256") for s in statement.get("subject") or []]
    if encoded not in subjects:
        return f"statement subjects {subjects} do not name {digest}"
    stated = statement.get("predicateType")
    annotated = (descriptor.get("annotations") or {}).get(PREDICATE_TYPE_ANNOTATION)
    if annotated is not None and annotated != stated:
        return f"annotation predicateType {annotated!r} but statement says {stated!r}"
    if predicate_type is not None and stated != predicate_type:
        return f"predicateType {stated!r}, expected {predicate_type!r}"
    return None


def verify_attestation(
    registry: RegistryRef,
    repository: str,
    digest: str,
    public_key_pem: bytes | str,
    *,
    auth: Auth | None = None,
    predicate_type: str | None = None,
) -> int:
    """Verify the cosign attestations of ``digest`` (``cosign verify-attestation --key``).

    ``GET`` ``sha256-<hex>.att``; for each ``application/vnd.dsse.envelope.v1+json``
    layer: the envelope's ``payloadType`` is ``application/vnd.in-toto+json``,
    one of its signatures verifies (ECDSA-SHA256) over the DSSE PAE of the
    decoded payload (``secure-systems-lab/dsse`` ``protocol.md``), the in-toto
    statement names ``digest`` among its subjects, and its ``predicateType``
    agrees with the layer's ``predicateType`` annotation (cosign
    ``cmd/cosign/cli/attest/attest.go``) and with ``predicate_type`` if given.

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base URL.
        repository: where the image and its ``.att`` are.
        digest: ``sha256:<hex>`` of the attested manifest.
        public_key_pem: PEM public key.
        auth: ``(username, password)``; None uses the registry's own.
        predicate_type: count only attestations of this predicate type.

    Returns:
        How many attestations verified (>= 1).

    Raises:
        VerificationError (an ``AssertionError``): no ``.att`` tag, none
            verifying (reasons in the message), a blob missing or altered.
    """
    key = _public_key(public_key_pem)
    failures: list[str] = []
    verified = 0
    for number, descriptor in enumerate(_cosign_layers(registry, repository, digest, "att", auth)):
        reason = _check_attestation_layer(
            registry, repository, digest, descriptor, key, predicate_type, auth
        )
        if reason is None:
            verified += 1
        else:
            tag = cosign_tag(digest, "att")
            failures.append(f"{tag} layer {number} ({descriptor.get('digest')}): {reason}")
    return _count_or_raise(f"attestation for {repository}@{digest}", verified, failures)


def verify_sbom(
    registry: RegistryRef,
    repository: str,
    digest: str,
    public_key_pem: bytes | str,
    *,
    auth: Auth | None = None,
) -> tuple[str, int]:
    """Check the ``.sbom`` of ``digest`` and the signatures of that SBOM manifest.

    ``GET`` ``sha256-<hex>.sbom``: one ``text/spdx+json`` layer (cosign
    ``cmd/cosign/cli/attach/sbom.go``) holding an SPDX document whose
    ``spdxVersion`` starts with ``SPDX-``; then :func:`verify_signatures` of
    the ``.sbom`` manifest's own digest (``cosign sign`` of the attachment).

    Returns:
        ``(digest of the .sbom manifest, signatures verified on it)``.

    Raises:
        VerificationError (an ``AssertionError``): no ``.sbom``, a wrong
            layer, no valid signature on it.
    """
    tag = cosign_tag(digest, "sbom")
    found = _fetch_manifest(registry, repository, tag, auth)
    if found is None:
        raise VerificationError(f"no {tag} in {repository}")
    _, body = found
    layers = json.loads(body).get("layers") or []
    if len(layers) != 1 or layers[0].get("mediaType") != SPDX_JSON:
        kinds = [layer.get("mediaType") for layer in layers]
        raise VerificationError(f"{repository}:{tag} layers {kinds}, expected one {SPDX_JSON}")
    document = json.loads(_fetch_blob(registry, repository, layers[0]["digest"], auth))
    if not str(document.get("spdxVersion", "")).startswith("SPDX-"):
        raise VerificationError(f"{repository}:{tag} is not an SPDX document")
    sbom_digest = images.sha256_digest(body)
    signed = verify_signatures(registry, repository, sbom_digest, public_key_pem, auth=auth)
    return sbom_digest, signed


ReferrersSource = Literal["api", "tag"]


def list_referrers(
    registry: RegistryRef,
    repository: str,
    digest: str,
    *,
    auth: Auth | None = None,
    artifact_type: str | None = None,
    source: Literal["auto", "api", "tag"] = "auto",
) -> tuple[ReferrersSource, list[dict[str, Any]]]:
    """The referrers of ``digest``, as a distribution-spec v1.1 client finds them.

    ``GET /v2/<repository>/referrers/<digest>``; a 404 means the registry has
    no referrers API, and then the image index tagged ``sha256-<hex>`` is read
    (absent: no referrers). Source: OCI distribution-spec v1.1 ``spec.md``,
    "Listing Referrers" and "Unavailable Referrers API". ``Link`` pagination
    of the API is followed.

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base URL.
        repository: where ``digest`` is.
        digest: ``sha256:<hex>`` of the subject.
        auth: ``(username, password)``; None uses the registry's own.
        artifact_type: keep only descriptors with this ``artifactType``
            (filtered here too, whether the registry filtered or not).
        source: ``auto`` (API, then tag on 404), ``api`` only, ``tag`` only.

    Returns:
        ``("api" | "tag", descriptors)``.

    Raises:
        VerificationError (an ``AssertionError``): ``source="api"`` and the
            registry has no API; an unexpected status; a tag that is not an
            OCI image index.
    """
    manifests: list[dict[str, Any]] = []
    used: ReferrersSource = "api"
    if source in ("auto", "api"):
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        if artifact_type:
            path = f"{path}?artifactType={urllib.parse.quote(artifact_type, safe='')}"
        while path:
            status, headers, body = _http(registry, path, auth=auth)
            if status == 404 and not manifests:
                if source == "api":
                    raise VerificationError(f"{_base_url(registry)} has no referrers API (404)")
                path, used = None, "tag"
                break
            if status != 200:
                raise VerificationError(f"GET {path} answered {status}: {body[:300]!r}")
            manifests.extend(json.loads(body).get("manifests") or [])
            path = _next(headers.get("Link"))
    else:
        used = "tag"
    if used == "tag":
        found = _fetch_manifest(registry, repository, referrers_tag(digest), auth)
        if found is not None:
            media_type, body = found
            if media_type != images.OCI_INDEX:
                raise VerificationError(
                    f"{repository}:{referrers_tag(digest)} is {media_type}, not an OCI index"
                )
            manifests = list(json.loads(body).get("manifests") or [])
    if artifact_type:
        manifests = [m for m in manifests if m.get("artifactType") == artifact_type]
    return used, manifests


def list_tags(registry: RegistryRef, repository: str, *, auth: Auth | None = None) -> list[str]:
    """The tags of ``repository`` (``GET /v2/<name>/tags/list``, ``Link`` pagination followed).

    Source: OCI distribution-spec ``spec.md``, "Listing Tags". Works with any
    registry (a harness ``Registry``, an object with ``.url``, a base URL).

    Returns:
        The tags in the registry's order; [] when the repository is unknown (404).

    Raises:
        VerificationError (an ``AssertionError``): another status than 200 or 404.
    """
    tags: list[str] = []
    path: str | None = f"/v2/{repository}/tags/list?n=1000"
    while path:
        status, headers, body = _http(registry, path, auth=auth)
        if status == 404:
            return tags
        if status != 200:
            raise VerificationError(f"GET {path} answered {status}: {body[:300]!r}")
        tags.extend(json.loads(body).get("tags") or [])
        path = _next(headers.get("Link"))
    return tags


def _next(link: str | None) -> str | None:
    if not link or 'rel="next"' not in link:
        return None
    return link.split(";")[0].strip().strip("<>")


def _check_bundle_referrer(
    registry: RegistryRef,
    repository: str,
    digest: str,
    referrer: str,
    key: ec.EllipticCurvePublicKey,
    auth: Auth | None,
) -> str | None:
    found = _fetch_manifest(registry, repository, referrer, auth)
    if found is None:
        return "listed but the manifest is not in the repository"
    manifest = json.loads(found[1])
    if (manifest.get("subject") or {}).get("digest") != digest:
        return f"subject {(manifest.get('subject') or {}).get('digest')}, not {digest}"
    layers = [d for d in manifest.get("layers") or [] if d.get("mediaType") == SIGSTORE_BUNDLE_V03]
    if not layers:
        return f"no {SIGSTORE_BUNDLE_V03} layer"
    bundle = json.loads(_fetch_blob(registry, repository, layers[0]["digest"], auth))
    if bundle.get("mediaType") != SIGSTORE_BUNDLE_V03:
        return f"bundle mediaType {bundle.get('mediaType')!r}"
    message = bundle.get("messageSignature") or {}
    hashed = message.get("messageDigest") or {}
    _, encoded = _split_digest(digest)
    if hashed.get("algorithm") != "SHA2_256" or base64.b64decode(
        hashed.get("digest") or ""
    ) != bytes.fromhex(encoded):
        return f"messageDigest {hashed} does not name {digest}"
    signature = base64.b64decode(message.get("signature") or "")
    try:
        key.verify(signature, bytes.fromhex(encoded), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return "messageSignature does not verify over the digest with this key"
    return None


def verify_bundle_referrer(
    registry: RegistryRef,
    repository: str,
    digest: str,
    public_key_pem: bytes | str,
    *,
    auth: Auth | None = None,
    source: Literal["auto", "api", "tag"] = "auto",
) -> int:
    """Verify the Sigstore bundle referrers of ``digest``.

    Finds referrers with :func:`list_referrers` (API, else the ``sha256-<hex>``
    tag index), keeps those of ``artifactType``
    ``application/vnd.dev.sigstore.bundle.v0.3+json``, and for each: the
    manifest's ``subject.digest`` is ``digest``, its bundle layer is a v0.3
    bundle whose ``messageSignature.messageDigest`` is ``SHA2_256`` of
    ``digest`` and whose ``signature`` verifies (ECDSA P-256 over that
    SHA-256, i.e. over the manifest bytes) with the key
    (``sigstore/protobuf-specs`` ``sigstore_bundle.proto``; cosign
    ``pkg/oci/remote/write.go`` ``WriteReferrer``).

    Args:
        registry: a harness ``Registry``, an object with ``.url``, or a base URL.
        repository: where ``digest`` and its referrers are.
        digest: ``sha256:<hex>`` of the signed manifest.
        public_key_pem: PEM public key.
        auth: ``(username, password)``; None uses the registry's own.
        source: as :func:`list_referrers`.

    Returns:
        How many bundle referrers verified (>= 1).

    Raises:
        VerificationError (an ``AssertionError``): no bundle referrer found,
            none verifying (reasons in the message), a blob missing or altered.
    """
    key = _public_key(public_key_pem)
    used, referrers = list_referrers(
        registry, repository, digest, auth=auth, artifact_type=SIGSTORE_BUNDLE_V03, source=source
    )
    failures: list[str] = []
    verified = 0
    for descriptor in referrers:
        reason = _check_bundle_referrer(
            registry, repository, digest, descriptor["digest"], key, auth
        )
        if reason is None:
            verified += 1
        else:
            failures.append(f"referrer {descriptor['digest']} (via {used}): {reason}")
    if not referrers:
        failures.append(f"no {SIGSTORE_BUNDLE_V03} referrer of {digest} (looked via {used})")
    return _count_or_raise(f"bundle referrer for {repository}@{digest}", verified, failures)
