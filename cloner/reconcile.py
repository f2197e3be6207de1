"""One reconcile pass: list, plan, clone what is missing, patch what is ready.

Called by ``loop`` (every ``pollInterval``) and by ``controller.py --once``.
It depends on the ``KubeAPI`` and ``ImageRegistry`` protocols, not on the
``kubernetes`` or ``docker`` libraries, so unit tests drive it with small
in-memory stand-ins. It never raises for one bad image or workload: failures
are collected in the ``Summary`` and the pass goes on (skopeo sync
``--keep-going``). It updates no metrics itself; ``metrics.record_cycle``
reads the Summary.

Order inside a pass (push before patch, always):

1. list Deployments, DaemonSets and StatefulSets (paginated, all namespaces);
2. plan every container (pure, ``workloads.plan_workload``);
3. for each distinct source image, once: ask the owned registry for the owned
   name; clone only if it is missing; the result is cached for later passes;
4. patch each workload once, changing only the containers whose image is
   verified in the owned registry.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloner.config import Settings
from cloner.credentials import DockerConfig
from cloner.errors import KubeError, RegistryError
from cloner.provisioning import Credentials, ProvisionReport, PullSecrets, SecretAPI
from cloner.reference import Reference
from cloner.workloads import (
    KINDS,
    Container,
    NamespaceInfo,
    Workload,
    image_patch,
    namespace_in_scope,
    plan_workload,
)

log = logging.getLogger(__name__)


class KubeAPI(SecretAPI, Protocol):
    """What a pass needs from Kubernetes (implemented by ``kube.KubeClient``)."""

    def list_workloads(self, kind: str, excluded_namespaces: Iterable[str]) -> Iterator[Workload]:
        """Every workload of ``kind`` outside the excluded namespaces; raises ``KubeError``."""
        ...

    def patch_workload(self, workload: Workload, patch: list[dict[str, Any]]) -> None:
        """Apply a JSON patch; raises ``KubeError``."""
        ...

    def list_namespaces(self) -> Iterator[NamespaceInfo]:
        """Every namespace with its labels and annotations; raises ``KubeError``."""
        ...


class ImageRegistry(Protocol):
    """What a pass needs from registries (implemented by ``registry.DockerRegistry``)."""

    def manifest_digest(self, ref: Reference) -> str | None:
        """Digest of ``ref``'s manifest, None if absent; raises ``RegistryError``."""
        ...

    def clone(self, source: Reference, owned: Reference) -> str:
        """Copy ``source`` to ``owned``; returns the verified pushed digest."""
        ...


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The outcome for one distinct source image in a pass.

    Attributes:
        source: the source reference.
        image: the reference to patch workloads to (None when it failed).
        cloned: True when this pass pushed it (False: it was already there).
        reason: the failure reason (``RegistryError.reason``), None on success.
        message: the failure message, None on success.
    """

    source: Reference
    image: str | None
    cloned: bool = False
    reason: str | None = None
    message: str | None = None


@dataclass(slots=True)
class Summary:
    """What one pass did, for the log line and the metrics.

    Attributes:
        workloads: workloads seen, by kind.
        images: outcome per distinct source image (canonical source -> result).
        patched: workloads patched, by kind.
        patch_failures: ``(workload key, message)`` of refused patches.
        invalid: ``(workload key, container, problem)`` of unparseable references.
        excluded: containers left alone by a rule or an opt-out.
        list_failures: ``(kind, message)`` of failed list calls.
        provisioning: pull secrets written and namespaces that could not be
            made ready (their workloads were not patched).
        started, duration: wall-clock start (epoch seconds) and length (seconds).
    """

    workloads: Counter[str] = field(default_factory=Counter)
    images: dict[str, ImageResult] = field(default_factory=dict)
    patched: Counter[str] = field(default_factory=Counter)
    patch_failures: list[tuple[str, str]] = field(default_factory=list)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)
    excluded: int = 0
    list_failures: list[tuple[str, str]] = field(default_factory=list)
    provisioning: ProvisionReport = field(default_factory=ProvisionReport)
    started: float = 0.0
    duration: float = 0.0

    @property
    def cloned(self) -> int:
        """Images pushed in this pass."""
        return sum(1 for r in self.images.values() if r.cloned)

    @property
    def clone_failures(self) -> Counter[str]:
        """Failed images by reason; each unparseable reference counts as ``invalid_reference``."""
        failures = Counter(r.reason for r in self.images.values() if r.reason)
        if self.invalid:
            failures["invalid_reference"] += len(self.invalid)
        return failures

    @property
    def ok(self) -> bool:
        """True when nothing failed (invalid references count as failures)."""
        return not (
            self.clone_failures
            or self.patch_failures
            or self.invalid
            or self.list_failures
            or self.provisioning.failures
        )

    def line(self) -> str:
        """One log line summing up the pass."""
        failures = ",".join(f"{k}={v}" for k, v in sorted(self.clone_failures.items()))
        failures = f" ({failures})" if failures else ""
        return (
            f"reconcile: workloads={sum(self.workloads.values())} "
            f"images={len(self.images)} cloned={self.cloned} "
            f"clone_failures={sum(self.clone_failures.values())}{failures} "
            f"patched={sum(self.patched.values())} patch_failures={len(self.patch_failures)} "
            f"excluded={self.excluded} list_failures={len(self.list_failures)} "
            f"secrets_written={sum(self.provisioning.secrets.values())} "
            f"namespace_failures={len(self.provisioning.failures)} "
            f"duration={self.duration:.2f}s"
        )


class Reconciler:
    """Runs passes and remembers, across passes, which images are verified.

    Args:
        kube: the Kubernetes side (``KubeAPI``).
        registry: the registry side (``ImageRegistry``).
        settings: the controller's settings (target, exclusions).
        credentials: the registry credentials in force, for pull secrets
            (``credentials.CredentialStore``); None means none (no Secret).
    """

    def __init__(
        self,
        kube: KubeAPI,
        registry: ImageRegistry,
        settings: Settings,
        credentials: Credentials | None = None,
    ) -> None:
        self._kube = kube
        self._registry = registry
        self._settings = settings
        self._pull_secrets: PullSecrets | None = None
        if settings.pull_secret_provision:
            self._pull_secrets = PullSecrets(
                kube,
                credentials or _NoCredentials(),
                settings.owned.registry,
                settings.pull_secret_name,
                settings.pull_secret_attach == "serviceaccount",
            )
        # canonical source reference -> the owned reference workloads point to,
        # once the owned registry has answered for it. Saves a manifest lookup
        # per image per pass; a source in here is never pulled again.
        self._verified: dict[str, str] = {}
        # owned repository -> the one source repository it holds copies of,
        # so two sources that would map to one owned name are caught.
        self._owned_sources: dict[str, str] = {}

    def reconcile_once(self) -> Summary:
        """Run one pass; see the module docstring for the order.

        Returns:
            The ``Summary``. Never raises for a failing image, workload or
            list call; those are recorded in the Summary.
        """
        summary = Summary(started=time.time())
        if self._pull_secrets is not None:
            summary.provisioning = self._pull_secrets.start_cycle()
        clock = time.monotonic()
        try:
            namespaces = {ns.name: ns for ns in self._kube.list_namespaces()}
        except KubeError as exc:
            # Without namespace metadata a namespace opt-out cannot be
            # honoured, so nothing is touched this cycle.
            summary.list_failures.append(("Namespace", str(exc)))
            log.error("listing namespaces failed, skipping this cycle: %s", exc)
            summary.duration = time.monotonic() - clock
            return summary
        workloads = self._list(summary)
        policy = self._settings.policy
        plans = {w.key: plan_workload(w, policy, namespaces.get(w.namespace)) for w in workloads}
        for workload in workloads:
            for plan in plans[workload.key]:
                if plan.decision == "invalid":
                    summary.invalid.append(
                        (workload.key, plan.container.name, plan.reason or "invalid")
                    )
                    log.warning(
                        "skipping container %s of %s: invalid reference %r: %s",
                        plan.container.name,
                        workload.key,
                        plan.container.image,
                        plan.reason,
                    )
                elif plan.decision == "excluded":
                    summary.excluded += 1
                    log.debug(
                        "leaving container %s of %s alone: %s",
                        plan.container.name,
                        workload.key,
                        plan.reason,
                    )
                elif plan.decision == "clone" and plan.source and plan.owned:
                    key = str(plan.source)
                    if key not in summary.images:
                        summary.images[key] = self._ensure(plan.source, plan.owned)
        if self._pull_secrets is not None:
            self._pull_secrets.sweep(w.namespace for w in workloads)
        for workload in workloads:
            changes: list[tuple[Container, str]] = []
            for plan in plans[workload.key]:
                if plan.decision != "clone" or plan.source is None:
                    continue
                result = summary.images[str(plan.source)]
                if result.image is not None:
                    changes.append((plan.container, result.image))
            if not changes:
                continue
            pull_secret = None
            if self._pull_secrets is not None:
                # Credentials first: no new pod may start without them.
                if not self._pull_secrets.namespace_ready(
                    workload.namespace, workload.service_account
                ):
                    continue
                pull_secret = self._pull_secrets.workload_pull_secret()
            self._patch(workload, changes, summary, pull_secret)
        summary.duration = time.monotonic() - clock
        return summary

    def _list(self, summary: Summary) -> list[Workload]:
        workloads: list[Workload] = []
        include = self._settings.include_namespaces
        excluded = self._settings.excluded_namespaces
        # Exact names go to the API server as a field selector, so it does
        # not send what would be dropped; patterns are applied here only.
        exact = [ns for ns in excluded if not any(c in ns for c in "*?[")]
        for kind in KINDS:
            try:
                found = list(self._kube.list_workloads(kind, exact))
            except KubeError as exc:
                summary.list_failures.append((kind, str(exc)))
                log.error("listing %s failed, skipping them this cycle: %s", kind, exc)
                continue
            # The rule is applied here; the field selector is an optimisation.
            found = [w for w in found if namespace_in_scope(w.namespace, include, excluded)]
            summary.workloads[kind] += len(found)
            workloads += found
        return workloads

    def _ensure(self, source: Reference, owned: Reference) -> ImageResult:
        """Make sure the owned copy of ``source`` exists; clone it if not."""
        key = str(source)
        cached = self._verified.get(key)
        if cached is not None:
            return ImageResult(source, cached)
        claimed = self._owned_sources.setdefault(owned.name, source.name)
        if claimed != source.name:
            message = (
                f"owned name {owned.name} of {source} is already used by {claimed}; "
                "not cloned (change naming or flatSeparator)"
            )
            log.error(message)
            return ImageResult(source, None, reason="naming_collision", message=message)
        try:
            digest = self._registry.manifest_digest(owned)
            # The owned tag of a digest-only source is derived from that digest,
            # so its presence is proof enough. A source with a tag and a digest
            # reuses the owned tag only if it holds that very manifest.
            reuse = digest is not None and (
                source.digest is None or source.tag is None or source.digest == digest
            )
            cloned = False
            if not reuse:
                digest = self._registry.clone(source, owned)
                cloned = True
                log.info("cloned %s to %s (%s)", source, owned, digest)
        except RegistryError as exc:
            log.error("clone of %s to %s failed (%s): %s", source, owned, exc.reason, exc)
            return ImageResult(source, None, reason=exc.reason, message=str(exc))
        assert digest is not None
        image = _patched_image(source, owned, digest, self._settings.pin_digest)
        self._verified[key] = image
        return ImageResult(source, image, cloned=cloned)

    def _patch(
        self,
        workload: Workload,
        changes: list[tuple[Container, str]],
        summary: Summary,
        pull_secret: str | None = None,
    ) -> None:
        patch = image_patch(workload, changes, pull_secret)
        if not patch:
            return
        try:
            self._kube.patch_workload(workload, patch)
        except KubeError as exc:
            summary.patch_failures.append((workload.key, str(exc)))
            if exc.conflict:
                log.warning("%s changed since it was read; reconsidered next cycle", workload.key)
            else:
                log.error("patching %s failed: %s", workload.key, exc)
            return
        summary.patched[workload.kind] += 1
        for container, image in changes:
            if image != container.image:
                log.info(
                    "patched %s container %s: %s -> %s",
                    workload.key,
                    container.name,
                    container.image,
                    image,
                )


def _patched_image(source: Reference, owned: Reference, digest: str, pin: bool) -> str:
    """The reference a workload is patched to.

    A source pinned by digest stays pinned: ``owned@digest`` (and the tag too
    when the source had one). A tagged source points to ``owned:tag``, or to
    ``owned:tag@digest`` with ``pin`` (``pinDigest``), so that a later move of
    the owned tag cannot change what runs.
    """
    if source.digest is None:
        return str(owned.with_digest(digest)) if pin else str(owned)
    if source.tag is None:
        return str(owned.with_tag(None).with_digest(digest))
    return str(owned.with_digest(digest))


class _NoCredentials:
    """Credentials with no entries (no pull secret is ever needed)."""

    current = DockerConfig({})
    version = ""
