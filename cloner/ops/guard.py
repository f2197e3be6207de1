"""The rollout guard: follow every switch until it has rolled out, undo one that broke.

Called by ``reconcile.Reconciler``: ``admit`` on the cycle's thread before a
workload is patched (holds and the namespace canary), ``switched`` on a
patch pool thread once a patch was accepted, ``follow`` once per cycle.
The decisions are pure (``model.rollout``: rollout status, cause, canary;
``model.workloads.undo_patch``); this module reads what they need through
the ``GuardAPI`` protocol, keeps pending switches and holds in the durable
state (``ops.state.StateStore``) and writes the undo patch, the forced
rollback of a StatefulSet and the Events. It must not import a client
library or an adapter.

Cost: nothing at all while no switch is pending. With pending switches,
each namespace that has one costs a list of its pods and of its Events,
one list per kind of the switched workloads there, and for Deployments a
list of ReplicaSets; never one request per workload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cloner.config import Settings
from cloner.errors import InvalidReference, KubeError
from cloner.model.events import (
    NORMAL,
    SWITCH_COMPLETED,
    SWITCH_FAILED,
    SWITCH_SLOW,
    SWITCH_UNDONE,
    WARNING,
    clean_message,
    rfc3339,
    switch_completed_message,
    switch_failed_message,
    switch_slow_message,
    switch_undone_message,
)
from cloner.model.reference import parse_reference
from cloner.model.rollout import (
    Admission,
    CanaryGate,
    Hold,
    Limits,
    PendingSwitch,
    Progress,
    SwitchedContainer,
    classify,
    cronjob_ran,
    namespace_key,
    new_replica_sets,
    revision_pods,
    rollout_status,
)
from cloner.model.workloads import Container, JsonPatch, Workload, kind_info, undo_patch
from cloner.ops.events import EventRecorder, NullRecorder
from cloner.ops.state import StateStore

log = logging.getLogger(__name__)


class GuardAPI(Protocol):
    """What the guard needs from Kubernetes (implemented by ``kube.KubeClient``)."""

    def list_namespaced(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        """Objects of ``resource`` (plural) in ``namespace`` as JSON dicts; raises ``KubeError``."""
        ...

    def patch_workload(self, workload: Workload, patch: JsonPatch) -> None:
        """Apply a JSON patch; raises ``KubeError`` (``conflict`` on a failed test)."""
        ...

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete a pod with a uid precondition; raises ``KubeError``."""
        ...


@dataclass(slots=True)
class RolloutReport:
    """What the guard did in one cycle (part of ``reconcile.Summary``).

    Attributes:
        failures: switches undone by cause (``model.rollout.CAUSES``).
        undone: workloads patched back to their original references.
        completed: switches whose rollout completed.
        slow: slow rollouts reported (never undone).
        pending: switches still followed at the end of the cycle.
        held: ``(workload key, why)`` of workloads not patched this cycle:
            held after a failed switch, or waiting for their namespace's canary.
    """

    failures: Counter[str] = field(default_factory=Counter)
    undone: int = 0
    completed: int = 0
    slow: int = 0
    pending: int = 0
    held: list[tuple[str, str]] = field(default_factory=list)


class RolloutGuard:
    """Follows switches, undoes failed ones, holds workloads and namespaces back.

    Args:
        kube: the Kubernetes side (``GuardAPI``).
        store: the durable state; pending switches and holds live in its book.
        settings: ``rollout`` (timeout, grace, canary), ``backoff.max`` (how
            long a hold lasts at most, seconds) and the owned registries.
        inputs: the fingerprint of the configuration and the registry
            credentials now; a change releases every hold and makes every
            namespace show a healthy switch again before the rest follow.
        owned_digests: canonical source references -> the owned manifest
            digest verified for each now (None when unknown).
        events: records Kubernetes Events on the workloads.
        wall: epoch seconds (injectable for tests).
    """

    def __init__(
        self,
        kube: GuardAPI,
        store: StateStore[Any],
        settings: Settings,
        inputs: Callable[[], str],
        owned_digests: Callable[[Iterable[str]], Mapping[str, str | None]],
        events: EventRecorder | NullRecorder | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._kube = kube
        self._store = store
        self._inputs = inputs
        self._owned_digests = owned_digests
        self._events = events or NullRecorder()
        self._wall = wall
        rollout = settings.rollout
        self._limits = Limits(rollout.pull_failure_grace, rollout.timeout)
        self._hold_for = settings.backoff.maximum
        self._hosts = [
            settings.owned.registry,
            *(t.registry for t in settings.policy.owned_registries),
        ]
        self._lock = threading.Lock()  # the gate and first_seen: cycle and pool threads
        self._gate = CanaryGate(rollout.canary)
        self._first_seen: dict[str, float] = {}
        self._inputs_seen: str | None = None
        self._restored = False

    # Before a patch ----------------------------------------------------------

    def admit(self, workload: Workload) -> Admission:
        """May ``workload`` be switched now? (cycle thread, before the patch is sent)

        Nothing is admitted before the durable state (pending canaries,
        holds) has been read. A hold of the workload or of its namespace
        that is still in force (``Hold.in_force``: same configuration and
        credentials, same owned copies, ``backoff.max`` not passed) refuses
        it; an expired hold is dropped. Then the namespace's canary decides (``CanaryGate``).

        Returns:
            ``Admission``: allowed or not, whether it is the canary, and why not.
        """
        self._refresh()
        if not self._state_read():
            # The pending canaries and the holds are in the state: without
            # them, a held namespace or a second canary would be switched.
            return Admission(False, reason="the durable state is not read yet")
        now = self._wall()
        inputs = self._inputs()
        for key in (workload.key, namespace_key(workload.namespace)):
            with self._store.locked() as book:
                hold = book.holds.get(key)
            if hold is None:
                continue
            digests = self._owned_digests([source for source, _ in hold.copies])
            if hold.in_force(now, inputs, digests):
                what = "namespace" if key != workload.key else "workload"
                return Admission(False, reason=f"{what} held after a failed switch ({hold.reason})")
            with self._store.locked() as book:
                book.release(key)
            log.info("%s: hold (%s) released; it may be switched again", key, hold.reason)
        with self._lock:
            return self._gate.admit(workload.namespace, workload.key, workload.exempt)

    def switched(
        self, workload: Workload, changes: Iterable[tuple[Container, str]], canary: bool
    ) -> None:
        """Start following a patch the API server accepted (patch pool thread).

        Exempt workloads (``Workload.exempt``) other than CronJobs start no
        rollout and are not followed.

        Args:
            workload: the snapshot the patch was planned from.
            changes: ``(container as read, owned reference)`` of the patch.
            canary: the namespace's canary (``admit`` said so).
        """
        containers = tuple(
            SwitchedContainer(c.name, c.image, image) for c, image in changes if image != c.image
        )
        if not containers:
            return
        if workload.exempt not in (None, "cronjob"):
            with self._lock:
                self._gate.ended(workload.namespace, workload.key)
            return
        switch = PendingSwitch(
            kind=workload.kind,
            namespace=workload.namespace,
            name=workload.name,
            uid=workload.uid,
            # A patch that changes the template raises the generation by one
            # (concurrent changes may raise it further; rollout_status takes
            # the object's own generation when it is higher).
            generation=workload.generation + 1,
            containers=containers,
            started=self._wall(),
            canary=canary,
        )
        with self._store.locked() as book:
            earlier = book.switches.get(switch.key)
            if earlier is not None and earlier.uid == switch.uid:
                switch = _merged(earlier, switch)
            book.switch_started(switch)
        with self._lock:
            self._first_seen.pop(switch.key, None)  # a new revision: its own symptoms

    def not_switched(self, workload: Workload) -> None:
        """An admitted patch was refused or had nothing to change: the canary slot is free again."""
        with self._lock:
            self._gate.ended(workload.namespace, workload.key)

    # Every cycle --------------------------------------------------------------

    def follow(self, report: RolloutReport) -> None:
        """Decide every pending switch: complete, undone, still rolling out, or slow.

        Never raises for one namespace or workload: a failed read leaves its
        switches pending for the next cycle.
        """
        self._refresh()
        with self._store.locked() as book:
            pending = list(book.switches.values())
        by_namespace: dict[str, list[PendingSwitch]] = defaultdict(list)
        for switch in pending:
            by_namespace[switch.namespace].append(switch)
        for namespace, switches in sorted(by_namespace.items()):
            try:
                seen = self._read(namespace, {s.kind for s in switches})
            except KubeError as exc:
                log.warning("cannot follow the switches in %s now: %s", namespace, exc)
                continue
            for switch in switches:
                try:
                    self._follow(switch, seen, report)
                except Exception:  # one switch must not stop the others or the cycle
                    log.exception(
                        "%s: following its switch failed; tried again next cycle", switch.key
                    )
        self.count_pending(report)

    def count_pending(self, report: RolloutReport) -> None:
        """Set ``report.pending`` to the switches followed now (the cycle calls it last)."""
        with self._store.locked() as book:
            report.pending = len(book.switches)

    def _refresh(self) -> None:
        """Read pending canaries back once; forget healthy namespaces when the inputs change."""
        inputs = self._inputs()
        with self._lock:
            if not self._restored and self._state_read():
                self._restored = True
                with self._store.locked() as book:
                    for switch in book.switches.values():
                        self._gate.restored(switch)
            if self._inputs_seen is not None and inputs != self._inputs_seen:
                log.info(
                    "configuration or credentials changed: each namespace switches a canary again"
                )
                self._gate.reset()
            self._inputs_seen = inputs

    def _state_read(self) -> bool:
        """True once the durable state was loaded (always when it is kept in memory only)."""
        return self._store.namespace is None or self._store.loaded

    def _read(self, namespace: str, kinds: set[str]) -> _Namespace:
        seen = _Namespace(
            pods=self._kube.list_namespaced("pods", namespace),
            events=self._kube.list_namespaced("events", namespace),
        )
        for kind in kinds:
            seen.objects[kind] = {
                (item.get("metadata") or {}).get("name", ""): item
                for item in self._kube.list_namespaced(kind_info(kind).plural, namespace)
            }
        if "Deployment" in kinds:
            seen.replica_sets = self._kube.list_namespaced("replicasets", namespace)
        return seen

    def _followed(
        self, switch: PendingSwitch, seen: _Namespace
    ) -> tuple[dict[str, Any], Workload] | None:
        """The workload of a switch still to follow, or None (the switch is ended)."""
        obj = seen.objects.get(switch.kind, {}).get(switch.name)
        meta = (obj or {}).get("metadata") or {}
        if obj is None or (switch.uid and meta.get("uid") != switch.uid):
            self._end(switch, "the workload is gone")
            return None
        workload = Workload.from_api(switch.kind, obj)
        images = {c.name: c.image for c in workload.containers}
        if any(images.get(c.name) != c.owned for c in switch.containers):
            self._end(switch, "its images were changed since (not followed further)")
            return None
        return obj, workload

    def _follow(self, switch: PendingSwitch, seen: _Namespace, report: RolloutReport) -> None:
        followed = self._followed(switch, seen)
        if followed is None:
            return
        obj, workload = followed
        now = self._wall()
        status = rollout_status(switch.kind, obj, switch.generation)
        selector = None if switch.kind == "CronJob" else (obj.get("spec") or {}).get("selector")
        pods = revision_pods(seen.pods, switch, selector)
        if switch.kind == "CronJob":
            done = cronjob_ran(pods, switch)
        else:
            done = status.progress in (Progress.DONE, Progress.NONE_NEEDED)
        if done:
            # Only a real rollout shows the namespace can run owned copies.
            self._completed(switch, workload, report, healthy=status.progress == Progress.DONE)
            return
        if switch.kind == "Deployment":
            creators = [("ReplicaSet", n) for n in new_replica_sets(seen.replica_sets, switch)]
        else:
            creators = [(switch.kind, switch.name)]
        with self._lock:
            first_seen = self._first_seen.get(switch.key)
        verdict = classify(
            switch, status, pods, seen.events, creators, now, self._limits, first_seen, self._hosts
        )
        if verdict.symptom and first_seen is None:
            with self._lock:
                self._first_seen[switch.key] = verdict.since or now
        if verdict.cause is not None:
            self._undo(
                switch,
                workload,
                pods,
                verdict.cause,
                verdict.message,
                verdict.namespace_wide,
                report,
            )
        elif verdict.slow and not switch.slow_reported:
            self._report_slow(switch, workload, now, verdict.message, report)

    def _report_slow(
        self,
        switch: PendingSwitch,
        workload: Workload,
        now: float,
        message: str,
        report: RolloutReport,
    ) -> None:
        """Report a slow rollout once: a log line, a ``SwitchSlow`` Event, the state's flag."""
        report.slow += 1
        log.warning(
            "%s: rollout not complete %.0fs after the switch, for reasons that are not "
            "the owned copy's (not undone): %s",
            switch.key,
            now - switch.started,
            message,
        )
        self._events.record(
            workload, WARNING, SWITCH_SLOW, switch_slow_message(now - switch.started, message)
        )
        with self._store.locked() as book:
            book.switch_started(_slow_reported(switch))

    def _completed(
        self, switch: PendingSwitch, workload: Workload, report: RolloutReport, healthy: bool
    ) -> None:
        report.completed += 1
        log.info("%s: rolled out on owned copies", switch.key)
        self._events.record(
            workload,
            NORMAL,
            SWITCH_COMPLETED,
            switch_completed_message((c.name, c.owned) for c in switch.containers),
        )
        with self._lock:
            if healthy or switch.kind == "CronJob":
                self._gate.completed(switch.namespace, switch.key)
            else:
                self._gate.ended(switch.namespace, switch.key)
            self._first_seen.pop(switch.key, None)
        with self._store.locked() as book:
            book.switch_ended(switch.key)

    def _end(self, switch: PendingSwitch, why: str) -> None:
        log.info("%s: no longer following its switch: %s", switch.key, why)
        with self._lock:
            self._gate.ended(switch.namespace, switch.key)
            self._first_seen.pop(switch.key, None)
        with self._store.locked() as book:
            book.switch_ended(switch.key)

    def _undo(
        self,
        switch: PendingSwitch,
        workload: Workload,
        pods: list[Mapping[str, Any]],
        cause: str,
        detail: str,
        namespace_wide: bool,
        report: RolloutReport,
    ) -> None:
        """Patch the workload back, roll a StatefulSet's stuck pods back, hold, tell."""
        detail = clean_message(detail)
        now = self._wall()
        record = {
            "reason": cause,
            "message": detail[:512],
            "at": rfc3339(now),
            "containers": switch.owned,
        }
        originals = {c.name: c.original for c in switch.containers}
        patch = undo_patch(workload, switch.owned, originals, record)
        if not patch:
            self._end(switch, "no switched container holds its owned reference any more")
            return
        try:
            self._kube.patch_workload(workload, patch)
        except KubeError as exc:
            level = logging.INFO if exc.conflict else logging.ERROR
            log.log(
                level,
                "%s: undoing the failed switch (%s) failed, tried again next cycle: %s",
                switch.key,
                cause,
                exc,
            )
            return
        report.failures[cause] += 1
        report.undone += 1
        log.error(
            "%s: switch to owned copies failed (%s): %s; patched back to %s",
            switch.key,
            cause,
            detail,
            ", ".join(f"{c.name}={c.original}" for c in switch.containers),
        )
        self._events.record(workload, WARNING, SWITCH_FAILED, switch_failed_message(cause, detail))
        self._events.record(
            workload,
            NORMAL,
            SWITCH_UNDONE,
            switch_undone_message(((c.name, c.original) for c in switch.containers), cause),
        )
        if switch.kind == "StatefulSet":
            self._forced_rollback(switch, pods)
        hold = Hold(cause, detail[:512], self._inputs(), now + self._hold_for, self._copies(switch))
        with self._store.locked() as book:
            book.hold(switch.key, hold)
            if namespace_wide:
                book.hold(namespace_key(switch.namespace), hold)
            book.switch_ended(switch.key)
        if namespace_wide:
            log.error(
                "namespace %s held back: %s is not about one workload (%s); no other "
                "workload there is switched until the config, the credentials or the "
                "owned copy change, or backoff.max passes",
                switch.namespace,
                cause,
                detail,
            )
        with self._lock:
            self._gate.ended(switch.namespace, switch.key)
            self._first_seen.pop(switch.key, None)

    def _forced_rollback(self, switch: PendingSwitch, pods: list[Mapping[str, Any]]) -> None:
        """Delete the failed revision's pods that are not Ready (never a Ready pod).

        Kubernetes does not replace a StatefulSet pod stuck on a broken
        revision even after the template is fixed (docs, StatefulSet
        "Forced rollback"); the StatefulSet controller recreates the deleted
        pods from the restored template.
        """
        for pod in pods:
            if _ready(pod):
                continue
            meta = pod.get("metadata") or {}
            try:
                self._kube.delete_pod(switch.namespace, meta.get("name", ""), meta.get("uid", ""))
                log.info(
                    "%s: deleted pod %s of the failed revision (not Ready)",
                    switch.key,
                    meta.get("name"),
                )
            except KubeError as exc:
                log.error(
                    "%s: cannot delete pod %s of the failed revision: %s",
                    switch.key,
                    meta.get("name"),
                    exc,
                )

    def _copies(self, switch: PendingSwitch) -> tuple[tuple[str, str], ...]:
        """``(canonical source, owned digest)`` of the switch's copies, to tell when one changes."""
        sources = []
        for container in switch.containers:
            try:
                sources.append(str(parse_reference(container.original)))
            except InvalidReference:
                continue
        digests = self._owned_digests(sources)
        return tuple((s, d) for s in sources if (d := digests.get(s)) is not None)


@dataclass(slots=True)
class _Namespace:
    """What one namespace holds, read once per cycle for all its pending switches."""

    pods: list[dict[str, Any]]
    events: list[dict[str, Any]]
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    replica_sets: list[dict[str, Any]] = field(default_factory=list)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _merged(earlier: PendingSwitch, later: PendingSwitch) -> PendingSwitch:
    """One switch of a workload patched in parts (an image was ready only later).

    The containers switched before stay in it, so an undo takes every one
    back to its original reference, not only the last patch's.
    """
    before = {c.name: c for c in earlier.containers}
    containers = [
        SwitchedContainer(c.name, before[c.name].original, c.owned)
        if c.name in before and before[c.name].owned == c.original
        else c
        for c in later.containers
    ]
    names = {c.name for c in containers}
    kept = tuple(c for c in earlier.containers if c.name not in names)
    return replace(
        later, containers=kept + tuple(containers), canary=earlier.canary or later.canary
    )


def _slow_reported(switch: PendingSwitch) -> PendingSwitch:
    return replace(switch, slow_reported=True)
