"""Signatures, attestations, SBOMs and OCI referrers that travel with a copy.

Called by ``cloning`` after an owned copy is verified (and again on
``refreshInterval``). For the copied manifests (the index and every platform
manifest) it finds what refers to them in the source repository and copies it
byte for byte into the owned repository, so a verifier that looks beside the
owned image (policy-controller, Kyverno, Ratify, CRI-O) finds the same
signatures, valid for the same digests:

- **Discovery**, per manifest: ``HEAD`` of the cosign tags ``sha256-<hex>.sig``,
  ``.att`` and ``.sbom`` (never a tag listing); the referrers API (``GET
  /v2/<name>/referrers/<digest>``, distribution-spec v1.1); where the source
  registry has no API (asked once per registry), the fallback tag
  ``sha256-<hex>``, whose entries are used only when each one's ``subject``
  names that digest. Then the same for each artifact found, down to
  ``artifacts.MAX_DEPTH`` (a signature on an SBOM).
- **Copy**, in the order the distribution spec's referrers tag schema needs:
  blobs, artifact manifests by digest, the fallback index where the owned
  registry has no referrers API (probed once per registry with a ``GET``;
  merged with the entries already there, none dropped), and the cosign tags.
  An artifact already in the owned registry (by digest, and for a tag: the tag
  names it) is not written again.
- **Verify arrival**: each artifact's digest is what the owned registry
  serves, and the owned referrers (API or fallback index) list the source's.

Requests for a source without artifacts: 3 ``HEAD`` and one referrers ``GET``
(or fallback ``HEAD``) per copied manifest, plus one probe per registry.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cloner.errors import FailureReason, RegistryError
from cloner.model.artifacts import (
    COSIGN_SUFFIXES,
    MAX_ARTIFACTS,
    MAX_DEPTH,
    ArtifactKind,
    ArtifactStatus,
    Found,
    SignatureMode,
    artifact_type,
    cosign_tag,
    fallback_tag,
    manifest_blobs,
    manifest_children,
    merge_fallback_index,
    names_subject,
    referrer_descriptors,
    switch_allowed,
)
from cloner.model.backoff import Backoff
from cloner.model.identity import Descriptor, refresh_due
from cloner.model.reference import Reference
from cloner.model.state import Record

log = logging.getLogger(__name__)


class ArtifactAPI(Protocol):
    """The registry operations artifacts need (``distribution.DistributionClient``)."""

    def head(self, ref: Reference) -> Descriptor | None:
        """The manifest's descriptor, None when absent; raises ``RegistryError``."""
        ...

    def get(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and bytes; raises ``RegistryError``."""
        ...

    def referrers(self, repository: Reference, digest: str) -> list[dict[str, Any]] | None:
        """The referrers list of ``digest``; None without the API; raises ``RegistryError``."""
        ...

    def copy_blob(self, source: Reference, target: Reference, digest: str, size: int) -> bool:
        """Copy one blob unless the target has it; raises ``RegistryError``."""
        ...

    def put_manifest(self, ref: Reference, media_type: str, body: bytes) -> str:
        """Push manifest bytes by digest or tag; returns the digest; raises ``RegistryError``."""
        ...


@dataclass(frozen=True, slots=True)
class Synced:
    """The outcome of one ``ArtifactCopier.sync``.

    Attributes:
        status: found, owned and the error (``model.artifacts.ArtifactStatus``).
        copied: artifacts written this time, by kind (``ArtifactKind`` value).
        known: what the owned registry now serves, as ``tag=digest`` for a
            cosign tag and ``digest`` for a referrer; kept in the record so
            the next sync writes only what changed upstream.
    """

    status: ArtifactStatus
    copied: Counter[str] = field(default_factory=Counter)
    known: tuple[str, ...] = ()


@dataclass
class _Artifact:
    """A found artifact with its manifest bytes (read once, written as read)."""

    found: Found
    body: bytes


class ArtifactCopier:
    """Finds a source's artifacts and copies them beside the owned copy.

    Thread safe: clone threads call it at once for different images; the
    per-registry knowledge of the referrers API is shared under a lock.

    Args:
        api: registry operations (``distribution.DistributionClient``).
    """

    def __init__(self, api: ArtifactAPI) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._has_api: dict[str, bool] = {}  # registry -> it answers the referrers API

    def discover(self, source: Reference, subjects: Sequence[str]) -> list[Found]:
        """Every artifact of ``subjects`` in ``source``'s repository, to ``MAX_DEPTH``.

        Args:
            source: the source reference (its repository is used).
            subjects: the copied manifests' digests: the index first, then
                every platform manifest.

        Returns:
            The artifacts found, parents before their own artifacts; a
            digest found twice (a referrer that is also tagged) once per way.

        Raises:
            RegistryError: a registry request failed.
        """
        return [a.found for a in self._discover(source, subjects)]

    def _discover(self, source: Reference, subjects: Sequence[str]) -> list[_Artifact]:
        repo = source.with_tag(None)
        found: list[_Artifact] = []
        seen: set[tuple[str, str | None]] = set()
        level = [(digest, 0) for digest in dict.fromkeys(subjects)]
        while level:
            following: list[tuple[str, int]] = []
            for subject, depth in level:
                if depth >= MAX_DEPTH:
                    continue
                for artifact in self._of(repo, subject, depth + 1):
                    key = (artifact.found.digest, artifact.found.tag)
                    if key in seen:
                        continue
                    seen.add(key)
                    found.append(artifact)
                    if len(found) >= MAX_ARTIFACTS:
                        log.warning(
                            "%s: more than %d artifacts; copying the first", source, len(found)
                        )
                        return found
                    following.append((artifact.found.digest, depth + 1))
                    following.extend(
                        (child["digest"], depth + 1) for child in manifest_children(artifact.body)
                    )
            level = following
        return found

    def _of(self, repo: Reference, subject: str, depth: int) -> list[_Artifact]:
        """The artifacts of one manifest: its cosign tags, then its referrers."""
        out: list[_Artifact] = []
        for suffix, kind in COSIGN_SUFFIXES.items():
            tag = cosign_tag(subject, suffix)
            head = self._api.head(repo.with_tag(tag))
            if head is None:
                continue
            descriptor, body = self._api.get(repo.with_digest(head.digest))
            found = Found(
                kind, descriptor.digest, descriptor.media_type, len(body), subject, tag, depth=depth
            )
            out.append(_Artifact(found, body))
        for entry in self._referrers(repo, subject):
            digest = entry["digest"]
            descriptor, body = self._api.get(repo.with_digest(digest))
            if not names_subject(body, subject):
                continue  # a fallback entry that is no referrer of this subject
            annotations = entry.get("annotations")
            found = Found(
                ArtifactKind.REFERRER,
                descriptor.digest,
                descriptor.media_type,
                len(body),
                subject,
                artifact_type=str(entry.get("artifactType") or artifact_type(body)),
                annotations=dict(annotations) if isinstance(annotations, dict) else {},
                depth=depth,
            )
            out.append(_Artifact(found, body))
        return out

    def _referrers(self, repo: Reference, subject: str) -> list[dict[str, Any]]:
        """The referrers of ``subject``: the API where there is one, else the fallback tag."""
        listed = self._listed(repo, subject)
        return listed if listed is not None else self._fallback_entries(repo, subject)

    def _listed(self, repo: Reference, subject: str) -> list[dict[str, Any]] | None:
        """The referrers API's list, or None for a registry without the API.

        Whether a registry has it is asked with a ``GET`` (distribution-spec
        v1.1: 200 with an index; an ``OCI-Subject`` header alone is not
        trusted) and remembered per registry, so one without it is asked once.
        """
        with self._lock:
            has_api = self._has_api.get(repo.registry)
        if has_api is False:
            return None
        listed = self._api.referrers(repo, subject)
        with self._lock:
            self._has_api[repo.registry] = listed is not None
        return listed

    def _fallback_entries(self, repo: Reference, subject: str) -> list[dict[str, Any]]:
        """The entries of the fallback index under ``sha256-<hex>``; [] when there is none."""
        head = self._api.head(repo.with_tag(fallback_tag(subject)))
        if head is None or not head.is_index or head.digest == subject:
            return []  # no index there, or the image itself (an older owned tag)
        _, body = self._api.get(repo.with_digest(head.digest))
        try:
            return referrer_descriptors(body)
        except ValueError:
            return []

    def sync(
        self,
        source: Reference,
        owned: Reference,
        subjects: Sequence[str],
        known: Sequence[str] = (),
    ) -> Synced:
        """Discover the source's artifacts and make the owned repository serve them.

        Args:
            source: the source reference (its repository is read).
            owned: the owned reference (its repository is written).
            subjects: the copied manifests' digests (index, then platforms).
            known: ``Synced.known`` of the last sync: what needs no write.

        Returns:
            What was found and copied. A failure is in ``status.error`` (the
            ``RegistryError`` reason) with its message logged; it never raises.
        """
        try:
            artifacts = self._discover(source, subjects)
        except RegistryError as exc:
            log.warning("finding the signatures and referrers of %s failed: %s", source, exc)
            return Synced(ArtifactStatus(0, 0, exc.reason))
        if not artifacts:
            return Synced(ArtifactStatus(0, 0, ""))
        copied: Counter[str] = Counter()
        try:
            new = self._copy(source, owned, artifacts, set(known), copied)
            self._verify(owned, new)
        except RegistryError as exc:
            log.warning(
                "copying the signatures and referrers of %s to %s failed: %s", source, owned, exc
            )
            return Synced(ArtifactStatus(len(artifacts), 0, exc.reason), copied)
        known_now = _known([a.found for a in artifacts])
        return Synced(ArtifactStatus(len(artifacts), len(artifacts), ""), copied, known_now)

    def _copy(
        self,
        source: Reference,
        owned: Reference,
        artifacts: list[_Artifact],
        known: set[str],
        copied: Counter[str],
    ) -> list[_Artifact]:
        """Write what the owned repository lacks: blobs, manifests, fallback indexes, tags.

        Returns:
            The artifacts not in ``known`` (each now written or found present).
        """
        src, dst = source.with_tag(None), owned.with_tag(None)
        new: list[_Artifact] = []
        ensured: set[str] = set()  # blobs already in the owned repository
        for artifact in artifacts:
            found = artifact.found
            if _key(found) in known:
                continue
            present = self._api.head(dst.with_digest(found.digest))
            if present is None:
                for digest, size in _blobs(artifact.body):
                    if digest not in ensured:
                        self._api.copy_blob(src, dst, digest, size)
                        ensured.add(digest)
                self._api.put_manifest(
                    dst.with_digest(found.digest), found.media_type, artifact.body
                )
                copied[found.kind.value] += 1
            new.append(artifact)
        referrers = [a.found for a in new if a.found.kind is ArtifactKind.REFERRER]
        if referrers and self._listed(dst, referrers[0].subject) is None:
            # Asked after a referrer was pushed, so the repository exists.
            self._update_fallback(dst, referrers)
        for artifact in new:
            found = artifact.found
            if found.tag is not None:
                tagged = self._api.head(dst.with_tag(found.tag))
                if tagged is None or tagged.digest != found.digest:
                    self._api.put_manifest(dst.with_tag(found.tag), found.media_type, artifact.body)
        return new

    def _update_fallback(self, dst: Reference, referrers: list[Found]) -> None:
        """Merge ``referrers`` into each subject's fallback index in the owned repository."""
        by_subject: dict[str, list[Found]] = {}
        for found in referrers:
            by_subject.setdefault(found.subject, []).append(found)
        for subject, listed in by_subject.items():
            existing = self._fallback_entries(dst, subject)
            body, added = merge_fallback_index(existing, listed)
            if added:
                self._api.put_manifest(
                    dst.with_tag(fallback_tag(subject)),
                    "application/vnd.oci.image.index.v1+json",
                    body,
                )

    def _verify(self, owned: Reference, artifacts: list[_Artifact]) -> None:
        """Check that the owned registry serves ``artifacts`` as the source does.

        Each by digest (and a cosign tag naming it); the referrers of each
        subject must be listed by the owned registry's API or fallback index.

        Raises:
            RegistryError: ``verify_failed`` naming the first that differs.
        """
        dst = owned.with_tag(None)
        listed: dict[str, set[str]] = {}
        for artifact in artifacts:
            found = artifact.found
            names = [(dst.with_digest(found.digest), f"{dst.name}@{found.digest}")]
            if found.tag is not None:
                names.append((dst.with_tag(found.tag), f"{dst.name}:{found.tag}"))
            for ref, name in names:
                head = self._api.head(ref)
                if head is None or head.digest != found.digest:
                    raise RegistryError(
                        FailureReason.VERIFY_FAILED,
                        f"{name} does not serve the {found.kind.value} {found.digest}",
                        owned.registry,
                    )
            if found.kind is ArtifactKind.REFERRER:
                if found.subject not in listed:
                    listed[found.subject] = {
                        e["digest"] for e in self._referrers(dst, found.subject)
                    }
                if found.digest not in listed[found.subject]:
                    raise RegistryError(
                        FailureReason.VERIFY_FAILED,
                        f"the owned referrers of {dst.name}@{found.subject} do not list "
                        f"{found.digest}",
                        owned.registry,
                    )


def _blobs(body: bytes) -> list[tuple[str, int]]:
    """``model.artifacts.manifest_blobs``, as ``RegistryError`` for a malformed manifest."""
    try:
        return manifest_blobs(body)
    except ValueError as exc:
        raise RegistryError(FailureReason.REGISTRY_ERROR, f"artifact manifest: {exc}") from None


def _key(found: Found) -> str:
    """How ``Synced.known`` names an artifact: ``tag=digest`` or ``digest``."""
    return f"{found.tag}={found.digest}" if found.tag else found.digest


def _known(found: Sequence[Found]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_key(f) for f in found))


@dataclass(eq=False)
class ArtifactSync:
    """When a verified source's artifacts are synced, and whether they hold its switch.

    ``cloning.ImageCloner`` asks it around each verification; it keeps the
    retry timing of failed syncs apart from the image's own backoff, which
    would hold a switch that ``signatures: copy`` must not hold.

    Args:
        copier: finds and copies the artifacts.
        mode: ``signatures`` (``copy`` or ``require``; ``off`` makes no
            ``ArtifactSync`` at all).
        keeps_digests: the backend's copies keep every digest (skopeo): the
            artifacts are copied; otherwise (Docker engine) only looked for,
            and reported as lost.
        refresh_interval: ``refreshInterval``, seconds (0: never again).
        backoff: retry timing of a failed sync (``backoff.Backoff``).
        clock: monotonic seconds; wall: epoch seconds.
        inputs: the fingerprint of the config and credentials in force.
    """

    copier: ArtifactCopier
    mode: SignatureMode
    keeps_digests: bool
    refresh_interval: float
    backoff: Backoff
    clock: Callable[[], float]
    wall: Callable[[], float]
    inputs: Callable[[], str]

    def answers_from_record(self, key: str, record: Record) -> bool:
        """Whether a fresh record answers without asking about its artifacts again.

        No when they are due (``due``) and not backing off after a failed
        sync, or when ``signatures: require`` holds the switch.
        """
        if switch_allowed(self.mode, record_status(record), self.keeps_digests) is not None:
            return False
        if not self.due(key, record):
            return True
        return self.backoff.backing_off(key, self.clock(), self.inputs()) is not None

    def due(self, key: str, record: Record | None) -> bool:
        """Whether the artifacts of a verified source should be synced now.

        Never synced, the last sync failed, or ``refreshInterval`` passed
        since the last one (spread as ``identity.refresh_due`` spreads tags;
        also for a source pinned by digest: signatures are added upstream
        after an image is published).
        """
        if record is None or not record.artifacts_synced or record.artifacts_error:
            return True
        return refresh_due(key, record.artifacts_synced, self.wall(), self.refresh_interval, False)

    def source_unreachable(self, key: str, record: Record, reason: str) -> None:
        """The source cannot be asked: a due sync waits as long as its backoff says."""
        if self.due(key, record):
            self.backoff.failed(key, reason, self.clock(), None, False, self.inputs())

    def verified(
        self,
        source: Reference,
        owned: Reference,
        subject: str,
        children: Callable[[], Sequence[str]],
        record: Record,
        previous: Record | None,
        cloned: bool,
    ) -> tuple[Record, Synced | None]:
        """Sync after a verification when due, and carry the outcome in the record.

        Args:
            source, owned: the pair just verified.
            subject: the copied manifest's digest (an index, or one image).
            children: returns the index's platform manifest digests (asked
                only for a backend that keeps digests).
            record: the new record, without artifact fields yet.
            previous: the record it replaces, if any.
            cloned: True when this verification copied the image.

        Returns:
            ``(record with its artifact fields, the sync made or None)``.

        Raises:
            RegistryError: ``signatures_not_copied`` or ``signatures_lost``
                when ``signatures: require`` holds the switch
                (``model.artifacts.switch_allowed``); the record stays valid.
        """
        key = str(source)
        synced = None
        if cloned or previous is None or self.due(key, previous):
            synced = self._sync(source, owned, subject, children, previous)
        if synced is not None:
            status = synced.status
            kept = previous.artifacts if previous is not None and status.error else synced.known
            record = replace(
                record,
                artifacts=kept,
                artifacts_found=status.found,
                artifacts_owned=status.owned,
                artifacts_error=status.error,
                artifacts_synced=record.verified if not status.error else 0.0,
            )
        elif previous is not None:
            record = replace(
                record,
                artifacts=previous.artifacts,
                artifacts_found=previous.artifacts_found,
                artifacts_owned=previous.artifacts_owned,
                artifacts_error=previous.artifacts_error,
                artifacts_synced=previous.artifacts_synced,
            )
        return record, synced

    def held(self, source: Reference, owned: Reference, record: Record) -> RegistryError | None:
        """The error that holds the switch under ``signatures: require``, or None."""
        reason = switch_allowed(self.mode, record_status(record), self.keeps_digests)
        if reason is None:
            return None
        return RegistryError(reason, _held_message(source, owned, record, reason), owned.registry)

    def _sync(
        self,
        source: Reference,
        owned: Reference,
        subject: str,
        children: Callable[[], Sequence[str]],
        previous: Record | None,
    ) -> Synced:
        """Sync (skopeo) or only look for (Docker) the source's signatures and referrers."""
        key = str(source)
        if self.keeps_digests:
            known = previous.artifacts if previous else ()
            try:
                synced = self.copier.sync(source, owned, [subject, *children()], known)
            except Exception:  # the image's copy stands; its artifacts are retried
                log.exception("unexpected error while copying the artifacts of %s", source)
                synced = Synced(ArtifactStatus(0, 0, "registry_error"))
        else:
            synced = self._look(source, owned, subject)
        if synced.status.error:
            self.backoff.failed(key, synced.status.error, self.clock(), None, False, self.inputs())
        else:
            self.backoff.succeeded(key)
        return synced

    def _look(self, source: Reference, owned: Reference, digest: str) -> Synced:
        """The Docker backend: count the source's artifacts; none can be valid for its copy."""
        try:
            found = tuple(self.copier.discover(source, [digest]))
        except RegistryError as exc:
            log.warning("looking for the signatures of %s failed: %s", source, exc)
            return Synced(ArtifactStatus(0, 0, exc.reason))
        if found:
            log.warning(
                "%s has %d signatures, attestations or referrers; the Docker backend's "
                "copy %s has new digests, so none of them is valid for it "
                "(signatures_lost; use copyBackend: skopeo)",
                source,
                len(found),
                owned,
            )
        return Synced(ArtifactStatus(len(found), 0, ""))


def record_status(record: Record) -> ArtifactStatus | None:
    """A record's artifact status; None when they were never looked for."""
    if not record.artifacts_synced and not record.artifacts_error:
        return None
    return ArtifactStatus(record.artifacts_found, record.artifacts_owned, record.artifacts_error)


def _held_message(source: Reference, owned: Reference, record: Record, reason: str) -> str:
    """Why ``signatures: require`` holds the switch of ``source``."""
    if reason == "signatures_lost":
        return (
            f"{source} has {record.artifacts_found} signatures or referrers; the Docker "
            f"backend's copy {owned} has new digests, so none of them would be valid for it "
            "(signatures: require; use copyBackend: skopeo)"
        )
    if record.artifacts_error:
        return (
            f"the signatures and referrers of {source} could not be copied to {owned} "
            f"({record.artifacts_error}); not switched (signatures: require)"
        )
    return (
        f"{record.artifacts_owned} of the {record.artifacts_found} signatures and referrers of "
        f"{source} are in {owned}; not switched (signatures: require)"
    )
