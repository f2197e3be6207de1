"""One reconcile pass: list, plan, clone what is missing, patch what is ready.

Called by ``loop`` (every ``pollInterval``) and by ``controller.py --once``.
It depends on the ``KubeAPI``, ``ManifestAPI`` and ``CopyBackend`` protocols, not on the
``kubernetes`` or ``docker`` libraries, so unit tests drive it with small
in-memory stand-ins. It never raises for one bad image or workload: failures
are collected in the ``Summary`` and the pass goes on (skopeo sync
``--keep-going``). It updates no metrics itself; ``metrics.record_cycle``
reads the Summary.

Order inside a pass (push before patch, always):

1. list namespaces, then Deployments, DaemonSets and StatefulSets (paginated,
   all namespaces);
2. plan every container (pure, ``workloads.plan_workload``);
3. for each distinct source image, once: ``cloning.ImageCloner`` answers
   from the record of an earlier verification, or asks the source and the
   owned registry and reuses, copies or refuses (identity, backoff, registry
   pauses and tag refresh live there); the sources of workloads patched
   earlier are included, so their owned tags follow ``refreshInterval``;
   then the changed records are written to the state ConfigMaps;
4. every ``verifyInterval``: check that the owned copies patched workloads
   use still exist, and clone a missing one again from the original;
5. make each namespace ready to pull (``provisioning``), then patch each
   workload once, changing only the containers whose image is verified. A
   patch refused because the workload changed is retried once with the
   workload read again; a workload patched ``fightLimit`` times within an
   hour (something keeps setting it back) is left alone and reported.
   Patches go to the ``writes.WritePool``; the Events about them wait there
   behind every patch, so a cold start switches workloads at the rate the
   API server allows and the Events follow.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloner import collector
from cloner.config import Settings
from cloner.errors import FailureReason, KubeError, RegistryError
from cloner.model.credentials import DockerConfig
from cloner.model.cycle import CycleIndex, PlanCache, index_cycle
from cloner.model.events import (
    CLONE_FAILED,
    CLONED,
    NORMAL,
    OWNED_COPY_REPLACED,
    PATCHED,
    SIGNATURES_LOST,
    SIGNATURES_NOT_COPIED,
    SOURCE_MOVED,
    WARNING,
    clone_failed_message,
    cloned_message,
    owned_copy_replaced_message,
    patched_message,
    signatures_lost_message,
    signatures_not_copied_message,
    source_moved_message,
)
from cloner.model.reference import Reference
from cloner.model.state import StateBook
from cloner.model.workloads import (
    UNPATCHABLE_KINDS,
    Container,
    ContainerPlan,
    Decision,
    JsonPatch,
    NamespaceInfo,
    Workload,
    describe,
    image_patch,
)
from cloner.ops.artifacts import ArtifactAPI, ArtifactCopier
from cloner.ops.cloning import CopyBackend, ImageCloner, ImageResult
from cloner.ops.copycheck import ManifestAPI
from cloner.ops.events import EventRecorder, NullRecorder
from cloner.ops.guard import GuardAPI, RolloutGuard, RolloutReport
from cloner.ops.listing import list_in_scope, unpatchable_public
from cloner.ops.provisioning import Credentials, ProvisionReport, PullSecrets, SecretAPI
from cloner.ops.state import StateStore
from cloner.ops.writes import WritePool

__all__ = [
    "CopyBackend",
    "ImageResult",
    "KubeAPI",
    "ManifestAPI",
    "Reconciler",
    "Summary",
]

FIGHT_WINDOW = 3600.0  # seconds over which fightLimit counts patches

log = logging.getLogger(__name__)


class KubeAPI(SecretAPI, GuardAPI, Protocol):
    """What a pass needs from Kubernetes (implemented by ``kube.KubeClient``)."""

    def list_workloads(
        self, kind: str, excluded_namespaces: Iterable[str] = (), namespace: str | None = None
    ) -> Iterator[Workload]:
        """Every workload of ``kind`` outside the excluded namespaces; raises ``KubeError``."""
        ...

    def patch_workload(self, workload: Workload, patch: JsonPatch) -> None:
        """Apply a JSON patch; raises ``KubeError``."""
        ...

    def list_namespaces(self) -> Iterator[NamespaceInfo]:
        """Every namespace with its labels and annotations; raises ``KubeError``."""
        ...

    def get_workload(self, kind: str, namespace: str, name: str) -> Workload | None:
        """The workload as it is now, None if gone; raises ``KubeError``."""
        ...

    def node_platforms(self) -> list[str]:
        """``os/arch`` of every Node; raises ``KubeError``."""
        ...

    def list_unpatchable(self, excluded_namespaces: Iterable[str]) -> Iterator[Workload]:
        """Jobs and bare Pods (reported, never patched); raises ``KubeError``."""
        ...

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap as JSON, None if absent; raises ``KubeError``."""
        ...

    def create_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap; raises ``KubeError``."""
        ...

    def replace_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Update a ConfigMap; raises ``KubeError``."""
        ...


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
        gitops: ``(workload key, owner)`` held back by ``gitops: report``.
        fights: ``(workload key, message)`` of workloads no longer patched
            because something keeps setting their images back.
        healed: owned copies found missing and cloned again.
        conflicts_retried: patches refused for a concurrent change and retried.
        in_flight: clones still running when the cycle ended (collected later).
        unpatchable: containers of Jobs and bare Pods using images that would
            be cloned, by kind; counted every ``verifyInterval`` (None in the
            other cycles).
        stopped: the pass ended early for shutdown.
        owned_images: distinct images in use that are owned copies or whose
            copy is verified (for the ``images{state="owned"}`` gauge).
        list_failures: ``(kind, message)`` of failed list calls.
        provisioning: pull secrets written and namespaces that could not be
            made ready (their workloads were not patched).
        rollout: what the rollout guard did (``guard.RolloutReport``):
            switches completed, undone, slow, pending, workloads held back.
        started, duration: wall-clock start (epoch seconds) and length (seconds).
    """

    workloads: Counter[str] = field(default_factory=Counter)
    images: dict[str, ImageResult] = field(default_factory=dict)
    patched: Counter[str] = field(default_factory=Counter)
    patch_failures: list[tuple[str, str]] = field(default_factory=list)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)
    excluded: int = 0
    gitops: list[tuple[str, str]] = field(default_factory=list)
    fights: list[tuple[str, str]] = field(default_factory=list)
    healed: int = 0
    conflicts_retried: int = 0
    in_flight: int = 0
    unpatchable: dict[str, int] | None = None
    stopped: bool = False
    owned_images: int = 0
    list_failures: list[tuple[str, str]] = field(default_factory=list)
    provisioning: ProvisionReport = field(default_factory=ProvisionReport)
    rollout: RolloutReport = field(default_factory=RolloutReport)
    started: float = 0.0
    duration: float = 0.0

    @property
    def cloned(self) -> int:
        """Images pushed in this pass."""
        return sum(1 for r in self.images.values() if r.cloned)

    @property
    def replaced(self) -> int:
        """Owned names that held other content and were copied over in this pass."""
        return sum(1 for r in self.images.values() if r.replaced)

    @property
    def artifacts_copied(self) -> Counter[str]:
        """Artifact manifests written in this pass, by kind (``ArtifactKind`` value)."""
        total: Counter[str] = Counter()
        for result in self.images.values():
            if result.artifacts is not None:
                total.update(result.artifacts.copied)
        return total

    @property
    def artifact_failures(self) -> Counter[str]:
        """Artifact syncs that failed in this pass, by reason."""
        return Counter(
            r.artifacts.status.error
            for r in self.images.values()
            if r.artifacts is not None and r.artifacts.status.error
        )

    @property
    def moved(self) -> int:
        """Tagged sources found naming other content than when they were verified."""
        return sum(1 for r in self.images.values() if r.moved)

    @property
    def not_tried(self) -> int:
        """Images not tried this pass (backing off, registry paused, shutting down)."""
        return sum(1 for r in self.images.values() if r.retry_in is not None)

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
            or self.rollout.failures
            or self.not_tried
            or self.fights
            or self.in_flight
            or self.stopped
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
            f"waiting={self.not_tried} gitops_held={len(self.gitops)} fights={len(self.fights)} "
            f"healed={self.healed} in_flight={self.in_flight} "
            f"secrets_written={sum(self.provisioning.secrets.values())} "
            f"namespace_failures={len(self.provisioning.failures)} "
            f"switches_pending={self.rollout.pending} undone={self.rollout.undone} "
            f"held={len(self.rollout.held)} "
            f"duration={self.duration:.2f}s"
        )


class Reconciler:
    """Runs passes and remembers what must outlive one: verified images,
    backoff, patch history, the last verification.

    Args:
        kube: the Kubernetes side (``KubeAPI``).
        manifests: manifest lookups in every registry (``copycheck.ManifestAPI``).
        backend: the copy backend (``cloning.CopyBackend``), as
            ``settings.copy.backend`` names it.
        settings: the controller's settings.
        credentials: the registry credentials in force, for pull secrets
            (``credentials.CredentialStore``); None means none (no Secret).
        clock: monotonic seconds (injectable for tests).
        events: records Kubernetes Events on the workloads acted on
            (``ops.events.EventRecorder``); None records none.
        engine_platform: for the Docker backend, returns the engine's
            ``os/arch`` (``engine.DockerRegistry.engine_platform``).
        wall: epoch seconds (injectable for tests).
        clone_wait: seconds a cycle waits for clones before it ends and
            leaves the rest in flight for later cycles; None waits for all
            (``--once``).
        writes: the pool that sends patches (``writes.WritePool``), shared
            with the EventRecorder so that Events wait behind patches; None
            makes one of ``patchConcurrency`` threads.
        artifacts: the registry operations that copy signatures and
            referrers (``ops.artifacts.ArtifactAPI``, the same
            ``DistributionClient``); None copies none whatever
            ``signatures`` says.
        pull_credentials: the read-only credentials of
            ``pullSecret.dockerConfig`` (``credentials.CredentialStore``),
            which the pull Secrets then hold; None when that setting is unset.
    """

    def __init__(
        self,
        kube: KubeAPI,
        manifests: ManifestAPI,
        backend: CopyBackend,
        settings: Settings,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: EventRecorder | NullRecorder | None = None,
        engine_platform: Callable[[], str] | None = None,
        wall: Callable[[], float] = time.time,
        clone_wait: float | None = None,
        writes: WritePool | None = None,
        artifacts: ArtifactAPI | None = None,
        pull_credentials: Credentials | None = None,
    ) -> None:
        self._kube = kube
        self._events = events or NullRecorder()
        self._manifests = manifests
        self._settings = settings
        self._clock = clock
        self._wall = wall
        # The durable state has one owner, shared with the clone threads.
        self._state = StateStore(
            StateBook(settings.state.config_map, settings.state.ttl),
            kube,
            settings.controller_namespace,
        )
        # What a permanent failure depends on: the settings and the credentials.
        self._settings_digest = hashlib.sha256(repr(settings).encode()).hexdigest()[:16]
        self._credentials: Credentials = credentials or _NoCredentials()
        #: each workload's plan, kept while its uid, resourceVersion, namespace and inputs hold
        self._plans = PlanCache()
        self._images = ImageCloner(
            manifests,
            backend,
            copy=settings.copy,
            backoff=settings.backoff,
            engine_platform=engine_platform,
            node_platforms=self._node_platforms,
            refresh_interval=settings.refresh.interval,
            state=self._state,
            wall=wall,
            pin_digest=settings.pin_digest,
            inputs=self._inputs,
            artifacts=ArtifactCopier(artifacts) if artifacts is not None else None,
            signatures=settings.signatures,
            clock=clock,
        )
        self._guard: RolloutGuard | None = None
        if settings.rollout.enabled:
            self._guard = RolloutGuard(
                kube, self._state, settings, self._inputs, self._owned_digests, self._events, wall
            )
        self._pull_secrets: PullSecrets | None = None
        if settings.pull_secrets.provision:
            self._pull_secrets = PullSecrets(
                kube,
                self._credentials,
                settings.owned.registry,
                settings.pull_secrets,
                pull_credentials,
            )
        self._patch_times: dict[str, deque[float]] = {}
        self._summary_lock = threading.Lock()
        self._writes = writes or WritePool(settings.patch_concurrency, name="patch")
        self._ready: dict[tuple[str, str], Future[bool]] = {}
        self._clone_wait = clone_wait
        self._fight_reported: set[str] = set()
        self._gitops_reported: set[str] = set()
        self._last_report: float | None = None

    def _owned_digests(self, sources: Iterable[str]) -> dict[str, str | None]:
        """Canonical source -> the owned manifest digest of its verified copy (None: no record)."""
        with self._state.locked() as book:
            return {
                s: (record.owned_digest if (record := book.records.get(s)) else None)
                for s in sources
            }

    def _node_platforms(self) -> list[str]:
        try:
            return self._kube.node_platforms()
        except KubeError as exc:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR, f"cannot list nodes to check their platforms: {exc}"
            ) from None

    # Durable state ---------------------------------------------------------

    def _load_state(self) -> None:
        """Read the state ConfigMaps once, before the first cycle decides anything.

        A shard that cannot be read now is tried again next cycle; until all
        are read nothing is written, so no shard is overwritten unseen
        (``state.StateStore.load``).
        """
        if self._state.loaded or not self._state.load():
            return
        self._images.gate.restore()
        with self._state.locked() as book:
            log.info(
                "state: %d verified copies and %d backing-off images read from %s/%s-*",
                len(book.records),
                len(book.failures),
                self._state.namespace,
                book.prefix,
            )

    def _save_state(self) -> None:
        """Write the shards that changed (``state.StateStore.save``; a failed one next time)."""
        self._state.save()

    def stop(self) -> None:
        """Shut down: no new clone, and nothing is patched for a clone in flight.

        A cycle waiting for clones stops waiting at once.
        """
        self._images.stop()

    def clones_in_flight(self) -> int:
        """Clones still running (after a stop: abandoned, their results unused)."""
        return self._images.in_flight()

    def waiting_images(self) -> dict[str, dict[str, str]]:
        """Images backing off now (see ``cloning.RetryGate.waiting``)."""
        return self._images.gate.waiting()

    def reconcile_once(self) -> Summary:
        """Run one pass; see the module docstring for the order.

        Returns:
            The ``Summary``. Never raises for a failing image, workload or
            list call; those are recorded in the Summary.
        """
        summary = Summary(started=time.time())
        self._load_state()
        clock = time.monotonic()  # the duration includes following switches
        if self._guard is not None and not self._images.stopping:
            self._guard.follow(summary.rollout)
        if self._pull_secrets is not None:
            summary.provisioning = self._pull_secrets.start_cycle()
        try:
            namespaces = {ns.name: ns for ns in self._kube.list_namespaces()}
        except KubeError as exc:
            # Without namespace metadata a namespace opt-out cannot be
            # honoured, so nothing is touched this cycle.
            summary.list_failures.append(("Namespace", str(exc)))
            log.error("listing namespaces failed, skipping this cycle: %s", exc)
            summary.duration = time.monotonic() - clock
            return summary
        # Listing and planning make no reference cycles: the collector would
        # only walk the live snapshots again and again (collector.paused).
        with collector.paused():
            workloads = self._list(summary)
            index = index_cycle(
                workloads,
                self._settings.policy,
                namespaces,
                self._settings.gitops,
                self._plans,
                self._inputs(),
            )
        for workload, plan in index.notes:
            self._note(workload, plan, summary)
        self._clone_and_patch(index, summary, clock)
        self._images.used(str(source) for source, _ in index.pairs)
        self._save_state()
        # An owned image traced to its source counts once, under its source.
        owned_in_use = index.owned_sources | {
            key for key, result in summary.images.items() if result.image
        }
        summary.owned_images = len(owned_in_use)
        if not self._images.stopping:
            self._report_unpatchable(namespaces, summary)
            self._verify(workloads, index, summary)
            self._save_state()
            if self._pull_secrets is not None:
                self._pull_secrets.sweep(w.namespace for w in workloads)
        if self._guard is not None:
            self._guard.count_pending(summary.rollout)  # with this cycle's switches
        summary.stopped = self._images.stopping
        summary.duration = time.monotonic() - clock
        return summary

    def _clone_and_patch(self, index: CycleIndex, summary: Summary, started: float) -> None:
        """Start every clone, and patch each workload as soon as its last image is ready.

        Images answered from a record are ready at once, so their workloads
        are patched first; the others as their clones finish. The wait ends
        after ``clone_wait`` seconds (all clones with None): clones still in
        flight go on and are collected by a later cycle, which never starts
        a second copy of them. Patches go to the patch pool; this returns
        when every patch it started has been sent.
        """
        with self._writes.hold():  # the Events of this cycle follow its last patch
            self._patch_when_ready(index, summary, started)

    def _patch_when_ready(self, index: CycleIndex, summary: Summary, started: float) -> None:
        self._ready = {}  # namespace readiness is decided once per cycle
        futures = self._images.submit(index.pairs)
        needed = {key: set(sources) for key, sources in index.needed.items()}
        deadline = None if self._clone_wait is None else started + self._clone_wait
        pending = dict(futures)
        sent: list[Future[None]] = []
        while pending and not self._images.stopping:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = wait(
                [*pending.values(), self._images.stopped],
                timeout=timeout,
                return_when=FIRST_COMPLETED,
            )
            if not done or self._images.stopping:
                break  # a clone that ended with the stop is abandoned, not collected
            for key in [k for k, f in pending.items() if f in done]:
                result = self._images.collect(key, pending.pop(key))
                summary.images[key] = result
                self._record_image_events(key, result, index.users.get(key, ()))
                for workload in index.awaiting_clone.get(key, ()):
                    needed[workload.key].discard(key)
                    if not needed[workload.key] and not self._images.stopping:
                        sent += self._switch(workload, index.plans[workload.key], summary)
        summary.in_flight = len(pending)
        if pending:
            log.info(
                "%d clones still in flight after %.0fs; later cycles collect them",
                len(pending),
                time.monotonic() - started,
            )
        for future in sent:
            future.result()

    def _switch(
        self, workload: Workload, plans: list[ContainerPlan], summary: Summary
    ) -> list[Future[None]]:
        """Switch a workload whose images are all decided, if it has changes (``_submit``)."""
        changes = [
            (plan.container, image)
            for plan in plans
            if plan.decision == Decision.CLONE
            and plan.source is not None
            and (image := summary.images[str(plan.source)].image) is not None
        ]
        if not changes or self._fighting(workload, summary):
            return []
        canary = False
        if self._guard is not None:
            admission = self._guard.admit(workload)
            if not admission.allowed:
                summary.rollout.held.append((workload.key, admission.reason))
                log.info("not switching %s now: %s", workload.key, admission.reason)
                return []
            canary = admission.canary
        return self._submit(workload, changes, summary, canary)

    def _submit(
        self,
        workload: Workload,
        changes: list[tuple[Container, str]],
        summary: Summary,
        canary: bool | None,
    ) -> list[Future[None]]:
        """The one patch path: namespace readiness, then ``_send``, all on the write pool.

        Used for switches (``canary`` True or False: the rollout guard follows
        them) and for self-heal (``canary`` None: one owned copy for another).
        The cycle's thread never waits for the API server or for the
        admission wait (a timer does), so it keeps the pool fed.

        Returns:
            The futures to wait for (none when nothing is sent).
        """
        if self._pull_secrets is None:
            return [self._writes.submit(self._send, workload, changes, None, summary, canary)]
        # The namespace is made ready on the pool too, several at once, and
        # the patch follows when it is: the cycle's thread never waits for
        # the API server, so it keeps the pool fed.
        pull_secrets = self._pull_secrets
        patched: Future[None] = Future()

        def send(ready: Future[bool]) -> None:
            try:
                if not ready.result():
                    if self._guard is not None and canary:
                        self._guard.not_switched(workload)
                    patched.set_result(None)
                    return
                pull_secret = pull_secrets.workload_pull_secret(workload.pull_secrets)
                sent = self._writes.submit(
                    self._send, workload, changes, pull_secret, summary, canary
                )
                sent.add_done_callback(lambda done: _relay(done, patched))
            except BaseException as exc:  # handed to the cycle, which waits on it
                patched.set_exception(exc)

        self._readiness(workload.namespace, workload.service_account).add_done_callback(send)
        return [patched]

    def _readiness(self, namespace: str, service_account: str) -> Future[bool]:
        """This cycle's future of ``PullSecrets.namespace_ready`` for a namespace and account.

        When the ServiceAccount was just given the Secret, the future is
        resolved only after ``PullSecrets.admission_wait``: a timer waits, not
        a pool thread, so other namespaces' patches go on meanwhile.
        """
        key = (namespace, service_account)
        with self._summary_lock:
            ready = self._ready.get(key)
            if ready is not None:
                return ready
            ready = self._ready[key] = Future()
        assert self._pull_secrets is not None
        checked = self._writes.submit(self._pull_secrets.namespace_ready, *key)
        checked.add_done_callback(lambda done: self._settle(done, ready, key))
        return ready

    def _settle(self, checked: Future[bool], ready: Future[bool], key: tuple[str, str]) -> None:
        """Pass ``checked``'s outcome to ``ready``, after the admission wait if there is one."""
        error = checked.exception()
        if error is not None:
            ready.set_exception(error)
            return
        assert self._pull_secrets is not None
        delay = self._pull_secrets.admission_wait(*key)
        if not checked.result() or delay <= 0:
            ready.set_result(checked.result())
            return
        timer = threading.Timer(delay, ready.set_result, (True,))
        timer.daemon = True
        timer.start()

    def _record_image_events(
        self, source: str, result: ImageResult, workloads: Iterable[Workload]
    ) -> None:
        """``Cloned`` / ``CloneFailed`` / ``OwnedCopyReplaced`` / ``SourceMoved`` on its users."""
        for workload in workloads:
            if result.replaced and result.image:
                self._events.record(
                    workload,
                    WARNING,
                    OWNED_COPY_REPLACED,
                    owned_copy_replaced_message(source, result.replaced, result.image),
                )
            if result.moved:
                self._events.record(
                    workload, NORMAL, SOURCE_MOVED, source_moved_message(source, *result.moved)
                )
            synced = result.artifacts
            if synced is not None and synced.status.error:
                self._events.record(
                    workload,
                    WARNING,
                    SIGNATURES_NOT_COPIED,
                    signatures_not_copied_message(source, synced.status.found, synced.status.error),
                )
            elif synced is not None and synced.status.found > synced.status.owned:
                self._events.record(
                    workload,
                    WARNING,
                    SIGNATURES_LOST,
                    signatures_lost_message(source, synced.status.found),
                )
            if result.cloned and result.image:
                self._events.record(workload, NORMAL, CLONED, cloned_message(source, result.image))
            elif result.reason:
                self._events.record(
                    workload,
                    WARNING,
                    CLONE_FAILED,
                    clone_failed_message(source, result.reason, result.message),
                )

    def _note(self, workload: Workload, plan: ContainerPlan, summary: Summary) -> None:
        """Count and log an ``invalid``, ``excluded`` or ``gitops`` decision."""
        container = plan.container
        if plan.decision == Decision.INVALID:
            summary.invalid.append((workload.key, container.name, plan.reason or "invalid"))
            log.warning(
                "skipping container %s of %s: %s",
                container.name,
                workload.key,
                describe(plan, image=True),
            )
        elif plan.decision == Decision.EXCLUDED:
            summary.excluded += 1
            log.debug(
                "leaving container %s of %s alone: %s", container.name, workload.key, plan.reason
            )
        elif plan.decision == Decision.GITOPS and (
            not summary.gitops or summary.gitops[-1][0] != workload.key
        ):  # index.notes come workload by workload: count each workload once
            summary.gitops.append((workload.key, plan.reason or "gitops"))
            if workload.uid not in self._gitops_reported:
                self._gitops_reported.add(workload.uid)
                log.warning(
                    "not patching %s: %s would undo it (gitops: report); change the "
                    "image in its source instead, e.g. to the owned copy",
                    workload.key,
                    plan.reason,
                )

    def _list(self, summary: Summary) -> list[Workload]:
        workloads, failures = list_in_scope(self._kube, self._settings)
        summary.list_failures += failures
        for workload in workloads:
            summary.workloads[workload.kind] += 1
        return workloads

    # Self-heal -------------------------------------------------------------

    def _report_unpatchable(self, namespaces: dict[str, NamespaceInfo], summary: Summary) -> None:
        """Every ``verifyInterval``: count the public images Jobs and bare Pods still use.

        Their templates cannot be changed: a Job's is immutable (a CronJob's
        next Job uses the owned copy once the CronJob is patched), a Pod is
        replaced only by whoever made it. They are logged at INFO and counted
        (``image_cloner_unpatchable_public_images``), never patched.
        """
        interval = self._settings.refresh.verify_interval
        now = self._clock()
        if not interval or (self._last_report is not None and now - self._last_report < interval):
            return
        self._last_report = now
        counts: Counter[str] = Counter({kind: 0 for kind in UNPATCHABLE_KINDS})
        try:
            for workload, plans in unpatchable_public(self._kube, self._settings, namespaces):
                counts[workload.kind] += len(plans)
                log.info(
                    "%s uses public images it cannot be switched from (not patched): %s",
                    workload.key,
                    ", ".join(p.container.image for p in plans),
                )
        except KubeError as exc:
            log.warning("cannot list Jobs and Pods to report their images: %s", exc)
            return
        summary.unpatchable = dict(counts)

    def _inputs(self) -> str:
        """What a permanent failure or a hold depends on: the settings and the credentials."""
        return f"{self._settings_digest}:{self._credentials.version}"

    def _verify(self, workloads: list[Workload], index: CycleIndex, summary: Summary) -> None:
        """Every ``verifyInterval``: re-clone owned copies that patched workloads miss.

        The containers looked at are those ``index_cycle`` traced
        (``CycleIndex.in_use``): on an owned copy of a recorded public original.
        """
        interval = self._settings.refresh.verify_interval
        now = self._wall()
        with self._state.locked() as book:
            last = book.last_verify  # kept in the state: a restart does not check again
        if not interval or (last is not None and now - last < interval):
            return
        with self._state.locked() as book:
            book.verify_done(now)
        checked: dict[str, str | None] = {}  # owned reference in use -> image to patch to
        healing: list[Future[None]] = []
        for workload in workloads:
            changes: list[tuple[Container, str]] = []
            for container in workload.containers:
                traced = index.in_use.get((workload.key, container.name))
                if traced is None:
                    continue
                if container.image not in checked:
                    checked[container.image] = self._heal(container.image, *traced, summary)
                healed = checked[container.image]
                if healed is not None and healed != container.image:
                    changes.append((container, healed))
            if changes and not self._images.stopping:
                healing += self._submit(workload, changes, summary, None)
        for future in healing:
            future.result()

    def _heal(
        self, current: str, in_use: Reference, source: Reference, summary: Summary
    ) -> str | None:
        """Check one owned reference in use; clone it again from ``source`` if missing.

        Args:
            current: the container's image as written.
            in_use: ``current`` parsed (an owned reference).
            source: the public original it was switched from.

        Returns:
            The reference the workload should use (``current`` when it is
            fine), or None when it could not be checked or restored.
        """
        try:
            if self._manifests.head(in_use) is not None:
                return current
        except RegistryError as exc:
            log.warning("cannot verify %s now: %s", current, exc)
            return None
        owned = self._settings.owned.owned_name(source)
        log.warning("owned copy %s is missing; cloning it again from %s", current, source)
        self._images.forget(source)
        result = self._images.ensure_all([(source, owned)])[str(source)]
        if result.image is None:
            log.error("could not restore %s: %s", current, result.message)
            return None
        summary.healed += 1
        return result.image

    # Patching --------------------------------------------------------------

    def _fighting(self, workload: Workload, summary: Summary) -> bool:
        """True when the workload was patched ``fightLimit`` times within the last hour."""
        times = self._patch_times.get(workload.uid)
        if times is None:
            return False
        now = self._clock()
        while times and now - times[0] > FIGHT_WINDOW:
            times.popleft()
        if len(times) < self._settings.fight_limit:
            return False
        message = (
            f"its images were set back {len(times)} times within an hour after being "
            "patched; not patching it again (something else manages it: change the "
            "image at its source, or add the label image-cloner.io/skip=true)"
        )
        summary.fights.append((workload.key, message))
        if workload.uid not in self._fight_reported:
            self._fight_reported.add(workload.uid)
            log.error("fight detected on %s: %s", workload.key, message)
        return True

    def _send(
        self,
        workload: Workload,
        changes: list[tuple[Container, str]],
        pull_secret: str | None,
        summary: Summary,
        canary: bool | None = None,
    ) -> None:
        """Patch (on a patch pool thread); retry once on a concurrent change.

        ``canary`` is None for a patch that is no switch (self-heal: one
        owned copy for another); else the patch is a switch the rollout
        guard follows once accepted, and True when it is its namespace's
        canary.
        """
        error = self._write_patch(workload, changes, pull_secret)
        if error is not None and error.conflict:
            with self._summary_lock:
                summary.conflicts_retried += 1
            log.info("%s changed since it was read; reading it again", workload.key)
            try:
                fresh = self._kube.get_workload(workload.kind, workload.namespace, workload.name)
            except KubeError as exc:
                fresh, error = None, exc
            if fresh is not None:
                changes = _rebase(changes, fresh)
                workload = fresh
                error = self._write_patch(workload, changes, pull_secret) if changes else None
        if error is not None:
            with self._summary_lock:
                summary.patch_failures.append((workload.key, str(error)))
            if error.conflict:
                log.warning("%s changed again; reconsidered next cycle", workload.key)
            else:
                log.error("patching %s failed: %s", workload.key, error)
            self._followed(workload, [], canary)
            return
        self._followed(workload, changes, canary)
        if not changes:
            return
        with self._summary_lock:
            summary.patched[workload.kind] += 1
            self._patch_times.setdefault(workload.uid, deque()).append(self._clock())
        self._events.record(
            workload,
            NORMAL,
            PATCHED,
            patched_message([(c.name, c.image, image) for c, image in changes if image != c.image]),
        )
        # One line per workload: ``patched Deployment shop/web container web: a -> b; ...``.
        switched = "; ".join(
            f"container {container.name}: {container.image} -> {image}"
            for container, image in changes
            if image != container.image
        )
        if switched:
            log.info("patched %s %s", workload.key, switched)

    def _followed(
        self, workload: Workload, changes: list[tuple[Container, str]], canary: bool | None
    ) -> None:
        """Tell the rollout guard a switch was accepted (``changes``) or not (``[]``)."""
        if self._guard is None or canary is None:
            return
        if changes:
            self._guard.switched(workload, changes, canary)
        elif canary:
            self._guard.not_switched(workload)

    def _write_patch(
        self,
        workload: Workload,
        changes: list[tuple[Container, str]],
        pull_secret: str | None,
    ) -> KubeError | None:
        """One PATCH of the workload (``image_patch``); the error instead of raising it."""
        patch = image_patch(workload, changes, pull_secret)
        if not patch:
            return None
        try:
            self._kube.patch_workload(workload, patch)
        except KubeError as exc:
            return exc
        return None


def _relay(done: Future[None], to: Future[None]) -> None:
    """Give ``to`` the outcome of ``done``."""
    error = done.exception()
    if error is not None:
        to.set_exception(error)
    else:
        to.set_result(None)


def _rebase(changes: list[tuple[Container, str]], fresh: Workload) -> list[tuple[Container, str]]:
    """The changes still valid on a workload read again.

    A container keeps its change only if it still exists (matched by name)
    and still holds the image the decision was based on; a value someone set
    meanwhile stands.
    """
    by_name = {c.name: c for c in fresh.containers}
    rebased = []
    for container, image in changes:
        now = by_name.get(container.name)
        if now is not None and now.image == container.image:
            rebased.append((now, image))
    return rebased


class _NoCredentials:
    """Credentials with no entries (no pull secret is ever needed)."""

    current = DockerConfig({})
    version = ""
