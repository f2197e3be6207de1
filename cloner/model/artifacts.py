"""Artifacts that refer to an image: cosign tags and OCI referrers. Pure: no I/O.

Signatures, attestations and SBOMs live beside the image they describe, in the
same repository, found in one of two ways:

- cosign (v2 and older) tags: ``sha256-<hex>.sig``, ``.att`` and ``.sbom``
  name an artifact of the manifest whose digest is ``sha256:<hex>``;
- OCI 1.1 referrers (distribution-spec v1.1, "Listing Referrers"): manifests
  whose ``subject`` names the digest, listed by ``GET
  /v2/<name>/referrers/<digest>``, or, where a registry has no such API, by
  the "referrers tag schema" fallback: an image index under the tag
  ``sha256-<hex>`` whose entries are the referrers.

A signature names the digest it signs, so it is valid for an owned copy only
when the copy keeps every digest (the skopeo backend). This module decides the
names, reads and merges fallback indexes, and decides whether a switch may go
ahead (``signatures: copy | require | off``). ``cloner.ops.artifacts`` asks
registries and writes through ``cloner.adapters.distribution``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cloner.model.identity import OCI_INDEX

#: How deep artifacts of artifacts are followed: the image (0), its
#: signature or SBOM (1), a signature on that SBOM (2), one more level (3).
MAX_DEPTH = 3
#: Artifacts followed per copied image at most (a runaway referrer list stops here).
MAX_ARTIFACTS = 256
#: The empty descriptor's media type (OCI image-spec 1.1, "Guidance for an Empty Descriptor").
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


class SignatureMode(StrEnum):
    """What is done with the artifacts of a copied image (``signatures``)."""

    COPY = "copy"  #: copy what exists; a failure is a Warning and a retry
    REQUIRE = "require"  #: switch only when every artifact is in the owned registry
    OFF = "off"  #: neither looked for nor copied


class ArtifactKind(StrEnum):
    """The kind of an artifact, as counted in metrics and shown by ``plan``."""

    SIGNATURE = "signature"  #: cosign ``.sig`` tag
    ATTESTATION = "attestation"  #: cosign ``.att`` tag
    SBOM = "sbom"  #: cosign ``.sbom`` tag
    REFERRER = "referrer"  #: an OCI 1.1 referrer (API or fallback tag)


#: cosign's tag suffixes (sigstore/cosign ``pkg/oci/remote``: SignatureTagSuffix,
#: AttestationTagSuffix, SBOMTagSuffix) and the kind each names.
COSIGN_SUFFIXES: Mapping[str, ArtifactKind] = {
    ".sig": ArtifactKind.SIGNATURE,
    ".att": ArtifactKind.ATTESTATION,
    ".sbom": ArtifactKind.SBOM,
}


def _hex(digest: str) -> tuple[str, str]:
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise ValueError(f"not a digest: {digest!r}")
    return algorithm, encoded


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for the referrers of ``digest``.

    distribution-spec v1.1, "Referrers Tag Schema": ``<alg>-<ref>``, the
    algorithm and encoded digest joined by ``-`` and cut to 64 characters of
    ``<ref>`` (``sha256:abc...`` gives ``sha256-abc...``).

    Raises:
        ValueError: ``digest`` is not ``<algorithm>:<encoded>``.
    """
    algorithm, encoded = _hex(digest)
    return f"{algorithm[:32]}-{encoded[:64]}"


def cosign_tag(digest: str, suffix: str) -> str:
    """cosign's tag of an artifact of ``digest``: ``sha256-<hex>.sig`` and so on.

    Args:
        digest: the subject's manifest digest, ``sha256:<hex>``.
        suffix: one of ``COSIGN_SUFFIXES`` (``.sig``, ``.att``, ``.sbom``).

    Raises:
        ValueError: an unknown suffix or a malformed digest.
    """
    if suffix not in COSIGN_SUFFIXES:
        raise ValueError(f"not a cosign tag suffix: {suffix!r}")
    algorithm, encoded = _hex(digest)
    return f"{algorithm}-{encoded}{suffix}"


def is_reserved_tag(tag: str) -> bool:
    """True when ``tag`` is a name the cosign or referrers tag schemes use.

    ``sha256-<hex>`` (a fallback index) and ``sha256-<hex>[.sig|.att|.sbom]``
    (cosign) for any algorithm: an owned image must never be pushed under such
    a tag, or referrer clients read it as a list of referrers.
    """
    head, sep, rest = tag.partition("-")
    if not sep or not head.isalnum():
        return False
    for suffix in COSIGN_SUFFIXES:
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    return bool(rest) and all(c in "0123456789abcdef" for c in rest)


@dataclass(frozen=True, slots=True)
class Found:
    """One artifact found for a subject manifest.

    Attributes:
        kind: how it was found (``ArtifactKind``).
        digest: the artifact manifest's digest, ``sha256:...``.
        media_type: its manifest media type.
        size: its manifest size in bytes (0 when not known).
        subject: the digest of the manifest it refers to.
        tag: the cosign tag it sits under, or None for a referrer.
        artifact_type: the referrer's artifact type (referrers only, may be "").
        annotations: the referrer descriptor's annotations (referrers only).
        depth: 1 for an artifact of the copied image, 2 for one of that
            artifact, and so on.
    """

    kind: ArtifactKind
    digest: str
    media_type: str
    size: int
    subject: str
    tag: str | None = None
    artifact_type: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    depth: int = 1

    def descriptor(self) -> dict[str, Any]:
        """The referrer's descriptor as a referrers list holds it (distribution-spec v1.1)."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    """Decode a manifest or index body as a JSON object.

    Raises:
        ValueError: the body is not a JSON object; the message names ``what``.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} is not a JSON object")
    return data


def referrer_descriptors(body: bytes, subject: str | None = None) -> list[dict[str, Any]]:
    """The entries of a referrers list (an OCI image index), as descriptors.

    Used for both the referrers API's answer and a fallback tag's index.
    Entries without a string ``digest`` and ``mediaType`` are dropped, and so
    are repeats of a digest. ``subject`` is not checked here (an index entry
    does not carry it): see ``names_subject``.

    Raises:
        ValueError: the body is not an OCI image index.
    """
    data = parse_json(body, "referrers list")
    manifests = data.get("manifests")
    if not isinstance(manifests, list):
        raise ValueError("referrers list has no manifests array")
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for entry in manifests:
        if not isinstance(entry, dict):
            continue
        digest, media_type = entry.get("digest"), entry.get("mediaType")
        if not isinstance(digest, str) or not isinstance(media_type, str) or digest in seen:
            continue
        seen.add(digest)
        out.append(entry)
    return out


def names_subject(manifest: bytes, subject: str) -> bool:
    """True when an artifact manifest's ``subject`` is the descriptor of ``subject``.

    OCI image-spec 1.1: a referrer names the manifest it refers to in its
    ``subject`` field. A fallback tag's entries are used only when this holds,
    so an image index that happens to sit under ``sha256-<hex>`` (an older
    copy under that tag) is never read as a list of referrers.
    """
    try:
        data = parse_json(manifest, "artifact manifest")
    except ValueError:
        return False
    named = data.get("subject")
    return isinstance(named, dict) and named.get("digest") == subject


def artifact_type(manifest: bytes) -> str:
    """A referrer's artifact type: ``artifactType``, else the config's media type.

    OCI image-spec 1.1 ("artifactType"): the referrers API reports the
    manifest's ``artifactType`` or, when absent, ``config.mediaType``.
    """
    try:
        data = parse_json(manifest, "artifact manifest")
    except ValueError:
        return ""
    value = data.get("artifactType")
    if isinstance(value, str) and value:
        return value
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return ""


def manifest_blobs(manifest: bytes) -> list[tuple[str, int]]:
    """The blobs an artifact manifest needs, config first: ``[(digest, size), ...]``.

    An image manifest's ``config`` and ``layers`` (OCI image-spec). An index
    (an artifact may be one) has no blobs of its own: see ``manifest_children``.

    Raises:
        ValueError: the body is not JSON, or a blob descriptor is malformed.
    """
    data = parse_json(manifest, "artifact manifest")
    out: list[tuple[str, int]] = []
    entries: list[Any] = []
    if isinstance(data.get("config"), dict):
        entries.append(data["config"])
    layers = data.get("layers", [])
    if isinstance(layers, list):
        entries.extend(layers)
    for entry in entries:
        digest, size = entry.get("digest") if isinstance(entry, dict) else None, None
        if isinstance(entry, dict):
            size = entry.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise ValueError("artifact manifest has a malformed blob descriptor")
        if (digest, size) not in out:
            out.append((digest, size))
    return out


def manifest_children(manifest: bytes) -> list[dict[str, Any]]:
    """The ``manifests`` entries of an artifact that is an index; ``[]`` otherwise."""
    try:
        data = parse_json(manifest, "artifact manifest")
    except ValueError:
        return []
    children = data.get("manifests")
    if not isinstance(children, list):
        return []
    return [c for c in children if isinstance(c, dict) and isinstance(c.get("digest"), str)]


def merge_fallback_index(
    existing: Sequence[Mapping[str, Any]], found: Iterable[Found]
) -> tuple[bytes, int]:
    """The fallback index of a subject's referrers, with ``found`` merged in.

    distribution-spec v1.1, "Pushing Manifests with Subject": a client that
    pushes a referrer to a registry without the referrers API updates the
    index under the fallback tag. Every existing entry is kept in its order
    (another tool may have pushed it), new referrers are appended, and a
    digest already listed is not listed twice.

    Args:
        existing: the descriptors already under the fallback tag (from
            ``referrer_descriptors``), or ``[]``.
        found: the referrers to list (cosign tags are not referrers and are
            skipped).

    Returns:
        ``(body, added)``: the index bytes to push (an OCI image index,
        ``schemaVersion`` 2) and how many entries are new. ``added`` 0 means
        the existing index already lists them all and nothing needs pushing.
    """
    manifests = [dict(e) for e in existing]
    listed = {e["digest"] for e in manifests}
    added = 0
    for artifact in found:
        if artifact.kind is not ArtifactKind.REFERRER or artifact.digest in listed:
            continue
        manifests.append(artifact.descriptor())
        listed.add(artifact.digest)
        added += 1
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return json.dumps(body, separators=(",", ":")).encode(), added


@dataclass(frozen=True, slots=True)
class ArtifactStatus:
    """What is known of one source's artifacts after a sync.

    Attributes:
        found: how many artifacts the source has (every depth).
        owned: how many of them the owned registry serves with the same digest.
        error: why the last sync failed, or "" (a category such as
            ``network``, ``denied``, ``refused``).
    """

    found: int = 0
    owned: int = 0
    error: str = ""

    @property
    def complete(self) -> bool:
        """True when every artifact found is in the owned registry."""
        return not self.error and self.owned >= self.found


def switch_allowed(
    mode: SignatureMode, status: ArtifactStatus | None, keeps_digests: bool
) -> str | None:
    """Whether a verified copy may be switched to, as far as its artifacts go.

    Rules (issue 28): ``off`` and ``copy`` never hold a switch (a failed copy
    of artifacts is a Warning and a retry). ``require`` holds a source whose
    artifacts are not all verified in the owned registry; a source with none
    is switched as before. A backend that gives copies new digests (the
    Docker engine) cannot carry signatures, so under ``require`` a source
    that has any is refused.

    Args:
        mode: the ``signatures`` setting.
        status: the source's artifacts after the last sync, or None when
            not known yet (not looked for).
        keeps_digests: True for a backend whose copies keep every digest.

    Returns:
        None when the switch may go ahead; otherwise the reason it may not
        (a ``RegistryError`` reason): ``signatures_not_copied`` (also when
        not looked for yet) or ``signatures_lost``.
    """
    if mode is not SignatureMode.REQUIRE:
        return None
    if status is None:
        return "signatures_not_copied"
    if status.found == 0 and not status.error:
        return None
    if not keeps_digests:
        return "signatures_lost" if status.found else "signatures_not_copied"
    return None if status.complete else "signatures_not_copied"
