"""Following a switch until it has rolled out. Pure: no I/O, no clock, no threads.

A *switch* is a patch that pointed containers of a workload at owned copies.
It is complete when the workload's rollout for the generation the patch
produced is complete. ``ops.guard`` reads the workload, its pods and the
Events of its namespace and asks this module:

- ``exemption``: does the workload need a rollout at all (a paused
  Deployment, ``OnDelete``, zero replicas, a CronJob)? Such workloads are
  never canaries.
- ``rollout_status``: is the rollout complete? The rules are those of
  ``kubectl rollout status`` (``k8s.io/kubectl/pkg/polymorphichelpers/
  rollout_status.go``), one branch per line there.
- ``classify``: did the switch cause a failure that must be undone
  (``owned_pull_failed``, ``admission_denied``, ``progress_deadline``), or
  is the rollout only slow for reasons that are not ours (reported, never
  undone)? Only what the workload's own pods and controllers report is read:
  the pods of the new revision and the Events on them, the new ReplicaSet,
  or the StatefulSet / DaemonSet.
- ``CanaryGate``: may this workload be patched now, given the namespace's
  canary (``rollout.canary``)?
- ``Hold``: a workload or namespace held back after a failed switch, until
  the configuration, the credentials or the owned copy change, or
  ``backoff.max`` has passed.

The records (``PendingSwitch``, ``Hold``) are kept in the durable state
(``state.StateBook``) as JSON, so a restart or a new leader goes on.
This module must not import ``kubernetes``; the objects it reads are the
API's JSON dicts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

#: Failure causes (``image_cloner_switch_failures_total{reason}``).
OWNED_PULL_FAILED = "owned_pull_failed"
ADMISSION_DENIED = "admission_denied"
PROGRESS_DEADLINE = "progress_deadline"
CAUSES = (OWNED_PULL_FAILED, ADMISSION_DENIED, PROGRESS_DEADLINE)

#: Kubelet waiting reasons of a container whose image could not be pulled.
PULL_WAITING = ("ErrImagePull", "ImagePullBackOff")
#: Pull attempts (kubelet ``Failed`` Events naming the owned reference) that
#: confirm a pull failure before ``rollout.pullFailureGrace`` has passed.
PULL_ATTEMPTS = 2
#: Seconds of clock skew allowed between the controller and the Event's
#: timestamps when deciding that an Event came after the switch.
SKEW = 2.0


_AUTH_WORDS = (
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "forbidden",
)
_POLICY_WORDS = (
    "admission webhook",
    "validatingadmissionpolicy",
    "denied request",
    "denied the request",
    "admission denied",
)
#: An HTTP status 401 or 403 standing alone ("status code [manifests 1]: 401
#: Unauthorized"), not digits inside a reference the message quotes (a digest's
#: hex, a tag, a port).
_AUTH_CODE = re.compile(r"(?:^|(?<=[\s\[(]))40[13](?=$|[\s\]),:;.])")
#: Forbidden for reasons that are not the image: reported, never undone.
_NOT_OURS = ("exceeded quota", "violates podsecurity", "error looking up service account")


# --- Does a workload need a rollout -------------------------------------------


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def exemption(kind: str, obj: Mapping[str, Any]) -> str | None:
    """Why a workload's patch starts no rollout to follow, or None when it does.

    Args:
        kind: ``Deployment``, ``DaemonSet``, ``StatefulSet`` or ``CronJob``.
        obj: the object as the API returns it (JSON dict).

    Returns:
        ``cronjob`` (its next Job's pods are what runs the switch: followed,
        never a canary), ``paused`` (``spec.paused`` Deployment),
        ``on_delete`` (``updateStrategy.type: OnDelete``: pods change only
        when deleted) or ``zero_replicas`` (``spec.replicas: 0``); None
        for a workload whose rollout can be followed.
    """
    if kind == "CronJob":
        return "cronjob"
    spec = obj.get("spec") or {}
    if kind == "Deployment" and spec.get("paused"):
        return "paused"
    if kind in ("StatefulSet", "DaemonSet") and _get(spec, "updateStrategy", "type") == "OnDelete":
        return "on_delete"
    if kind in ("Deployment", "StatefulSet") and spec.get("replicas") == 0:
        return "zero_replicas"
    return None


class Progress(StrEnum):
    """Where a rollout stands (``RolloutStatus.progress``)."""

    DONE = "done"  #: complete, as ``kubectl rollout status`` would say
    WAITING = "waiting"  #: still rolling out
    NONE_NEEDED = "none_needed"  #: nothing to roll out (``exemption``)


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """The answer of ``rollout_status``.

    Attributes:
        progress: done, waiting or none needed.
        message: ``kubectl rollout status``'s words for it.
        deadline_exceeded: a Deployment's ``Progressing`` condition says
            ``ProgressDeadlineExceeded`` (kubectl reports it as an error).
    """

    progress: Progress
    message: str
    deadline_exceeded: bool = False


def rollout_status(kind: str, obj: Mapping[str, Any], generation: int = 0) -> RolloutStatus:
    """Is the workload's rollout complete, by the rules of ``kubectl rollout status``?

    Source: ``k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go``
    (``DeploymentStatusViewer``, ``DaemonSetStatusViewer``,
    ``StatefulSetStatusViewer``). Exempt workloads (``exemption``) need none.

    Args:
        kind: the workload kind.
        obj: the workload as the API returns it now (``metadata``, ``spec``,
            ``status``).
        generation: the ``metadata.generation`` the switch's patch produced;
            the rollout must have observed at least that one (0: the
            object's own generation only).

    Returns:
        ``RolloutStatus``; never raises for missing fields (absent counts are 0).
    """
    name = _get(obj, "metadata", "name") or ""
    exempt = exemption(kind, obj)
    if exempt is not None:
        return RolloutStatus(
            Progress.NONE_NEEDED, f"{kind.lower()} {name!r} needs no rollout ({exempt})"
        )
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    wanted = max(_int(_get(obj, "metadata", "generation")), generation)
    observed = _int(status.get("observedGeneration"))
    replicas = spec.get("replicas")
    replicas = replicas if isinstance(replicas, int) else None
    if kind == "Deployment":
        return _deployment(name, wanted, observed, replicas, status)
    if kind == "DaemonSet":
        return _daemon_set(name, wanted, observed, status)
    if kind == "StatefulSet":
        return _stateful_set(name, wanted, observed, replicas, spec, status)
    return RolloutStatus(Progress.NONE_NEEDED, f"{kind} has no rollout status")


def _deployment(
    name: str, wanted: int, observed: int, replicas: int | None, status: Mapping[str, Any]
) -> RolloutStatus:
    waiting = Progress.WAITING
    if wanted > observed:
        return RolloutStatus(waiting, "Waiting for deployment spec update to be observed")
    updated = _int(status.get("updatedReplicas"))
    exceeded = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    )
    if exceeded:
        return RolloutStatus(
            waiting, f"deployment {name!r} exceeded its progress deadline", deadline_exceeded=True
        )
    if replicas is not None and updated < replicas:
        return RolloutStatus(waiting, f"{updated} out of {replicas} new replicas have been updated")
    total = _int(status.get("replicas"))
    if total > updated:
        return RolloutStatus(waiting, f"{total - updated} old replicas are pending termination")
    available = _int(status.get("availableReplicas"))
    if available < updated:
        return RolloutStatus(waiting, f"{available} of {updated} updated replicas are available")
    return RolloutStatus(Progress.DONE, f"deployment {name!r} successfully rolled out")


def _daemon_set(name: str, wanted: int, observed: int, status: Mapping[str, Any]) -> RolloutStatus:
    if wanted > observed:
        return RolloutStatus(Progress.WAITING, "Waiting for daemon set spec update to be observed")
    desired = _int(status.get("desiredNumberScheduled"))
    updated = _int(status.get("updatedNumberScheduled"))
    if updated < desired:
        return RolloutStatus(
            Progress.WAITING, f"{updated} out of {desired} new pods have been updated"
        )
    available = _int(status.get("numberAvailable"))
    if available < desired:
        return RolloutStatus(
            Progress.WAITING, f"{available} of {desired} updated pods are available"
        )
    return RolloutStatus(Progress.DONE, f"daemon set {name!r} successfully rolled out")


def _stateful_set(
    name: str,
    wanted: int,
    observed: int,
    replicas: int | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
) -> RolloutStatus:
    waiting = Progress.WAITING
    if observed == 0 or wanted > observed:
        return RolloutStatus(waiting, "Waiting for statefulset spec update to be observed")
    ready = _int(status.get("readyReplicas"))
    if replicas is not None and ready < replicas:
        return RolloutStatus(waiting, f"Waiting for {replicas - ready} pods to be ready")
    rolling = _get(spec, "updateStrategy", "rollingUpdate")
    updated = _int(status.get("updatedReplicas"))
    if isinstance(rolling, Mapping):
        partition = rolling.get("partition")
        if replicas is not None and isinstance(partition, int) and updated < replicas - partition:
            return RolloutStatus(
                waiting,
                f"Waiting for partitioned roll out to finish: {updated} out of "
                f"{replicas - partition} new pods have been updated",
            )
        return RolloutStatus(
            Progress.DONE, f"partitioned roll out complete: {updated} new pods have been updated"
        )
    update, current = status.get("updateRevision"), status.get("currentRevision")
    if update != current:
        return RolloutStatus(
            waiting,
            f"waiting for statefulset rolling update to complete {updated} pods "
            f"at revision {update}",
        )
    return RolloutStatus(
        Progress.DONE, f"statefulset {name!r} rolling update complete at revision {current}"
    )


# --- Records kept in the durable state ----------------------------------------


def _to_json(record: Any, **values: Any) -> dict[str, Any]:
    """A record's fields as a JSON object: names in lowerCamelCase (Kubernetes API
    conventions), with ``values`` given for the fields that need converting."""
    return {
        json_name: values.get(name, getattr(record, name))
        for name, json_name in _json_names(type(record))
    }


@functools.cache
def _json_names(cls: type) -> tuple[tuple[str, str], ...]:
    """``(field, lowerCamelCase name)`` of each field of the dataclass ``cls``."""
    out = []
    for item in fields(cls):
        head, *rest = item.name.split("_")
        out.append((item.name, head + "".join(part.title() for part in rest)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SwitchedContainer:
    """One container a switch changed: its name, original and owned references."""

    name: str
    original: str
    owned: str


@dataclass(frozen=True, slots=True)
class PendingSwitch:
    """A patch whose rollout is still followed.

    Attributes:
        kind, namespace, name, uid: the workload.
        generation: the ``metadata.generation`` the patch produced (0 when
            the API server's answer did not say; the object's own is used).
        containers: the containers switched.
        started: epoch seconds the patch was accepted.
        canary: the namespace's canary (the others there wait for it).
        slow_reported: a slow rollout was reported already (once only).
    """

    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    containers: tuple[SwitchedContainer, ...]
    started: float
    canary: bool = False
    slow_reported: bool = False

    @property
    def key(self) -> str:
        """``Kind namespace/name``, the key of the switch in the state and the logs."""
        return workload_key(self.kind, self.namespace, self.name)

    @property
    def owned(self) -> dict[str, str]:
        """Container name -> owned reference it was switched to."""
        return {c.name: c.owned for c in self.containers}

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``from_json`` reads it back)."""
        return _to_json(self, containers=[[c.name, c.original, c.owned] for c in self.containers])

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PendingSwitch:
        """Read ``to_json``'s dict.

        Raises:
            KeyError, TypeError, ValueError: the entry is damaged.
        """
        containers = tuple(
            SwitchedContainer(str(n), str(o), str(w)) for n, o, w in raw["containers"]
        )
        if not containers:
            raise ValueError("a switch without containers")
        return cls(
            kind=str(raw["kind"]),
            namespace=str(raw["namespace"]),
            name=str(raw["name"]),
            uid=str(raw.get("uid", "")),
            generation=int(raw.get("generation", 0)),
            containers=containers,
            started=float(raw["started"]),
            canary=bool(raw.get("canary", False)),
            slow_reported=bool(raw.get("slowReported", False)),
        )


def workload_key(kind: str, namespace: str, name: str) -> str:
    """``Kind namespace/name`` (the same as ``Workload.key``)."""
    return f"{kind} {namespace}/{name}"


def namespace_key(namespace: str) -> str:
    """``Namespace <name>``: the key of a hold on a whole namespace."""
    return f"Namespace {namespace}"


@dataclass(frozen=True, slots=True)
class Hold:
    """A workload (or a whole namespace) not patched again after a failed switch.

    Attributes:
        reason: the cause (``CAUSES``).
        message: the kubelet's or API server's words, credentials removed.
        inputs: fingerprint of the configuration and registry credentials in
            force when it failed; a change releases the hold.
        until: epoch seconds the hold ends by itself (now + ``backoff.max``).
        copies: ``(canonical source reference, owned manifest digest)`` of
            the copies the switch used; an owned copy that changes (verified
            again with another digest) releases the hold.
    """

    reason: str
    message: str
    inputs: str
    until: float
    copies: tuple[tuple[str, str], ...] = ()

    def in_force(self, now: float, inputs: str, digests: Mapping[str, str | None]) -> bool:
        """True while the hold stands.

        Args:
            now: epoch seconds.
            inputs: the fingerprint of the configuration and credentials now.
            digests: canonical source -> the owned manifest digest verified
                now (None when unknown: it does not release the hold).
        """
        if now >= self.until or inputs != self.inputs:
            return False
        for owned, digest in self.copies:
            now_digest = digests.get(owned)
            if now_digest is not None and now_digest != digest:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``from_json`` reads it back)."""
        return _to_json(self, copies=[list(c) for c in self.copies])

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Hold:
        """Read ``to_json``'s dict.

        Raises:
            KeyError, TypeError, ValueError: the entry is damaged.
        """
        return cls(
            reason=str(raw["reason"]),
            message=str(raw.get("message", "")),
            inputs=str(raw["inputs"]),
            until=float(raw["until"]),
            copies=tuple((str(o), str(d)) for o, d in raw.get("copies") or ()),
        )


# --- Which pods and Events belong to the new revision ------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Does a ``metav1.LabelSelector`` (matchLabels, matchExpressions) select ``labels``?

    An absent or empty selector selects nothing here (workloads always have
    one; selecting every pod of a namespace would misattribute failures).
    Operators: ``In``, ``NotIn``, ``Exists``, ``DoesNotExist`` (Kubernetes
    API conventions, ``LabelSelectorRequirement``).
    """
    if not selector:
        return False
    match = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or ()
    if not match and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expression in expressions:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or ()
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_images(pod_spec: Mapping[str, Any]) -> dict[str, str]:
    images: dict[str, str] = {}
    for list_name in ("initContainers", "containers"):
        for container in pod_spec.get(list_name) or ():
            if isinstance(container, Mapping) and container.get("name"):
                images[container["name"]] = container.get("image", "")
    return images


def runs_switch(pod_spec: Mapping[str, Any], switch: PendingSwitch) -> bool:
    """True when a pod spec (or a pod template's spec) uses every owned reference of the switch."""
    images = _pod_images(pod_spec)
    return all(images.get(c.name) == c.owned for c in switch.containers)


def revision_pods(
    pods: Iterable[Mapping[str, Any]],
    switch: PendingSwitch,
    selector: Mapping[str, Any] | None,
) -> list[Mapping[str, Any]]:
    """The pods of the switch's revision: selected by the workload and running its owned references.

    A pod's own spec says which revision it is of, so no ReplicaSet or
    ControllerRevision is needed to find them (``pod-template-hash`` and
    ``controller-revision-hash`` name the same template). For a CronJob the
    selector is None and the pods are those of its Jobs (label
    ``job-name`` = ``<cronjob>-<digits>``, ``batch/v1``).

    Args:
        pods: the namespace's pods (JSON dicts).
        switch: the pending switch.
        selector: the workload's ``spec.selector`` (None for a CronJob).
    """
    out = []
    job = re.compile(re.escape(switch.name) + r"-[0-9]+")
    for pod in pods:
        labels = _get(pod, "metadata", "labels") or {}
        if switch.kind == "CronJob":
            job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or ""
            if not job.fullmatch(job_name):
                continue
        elif not selector_matches(selector, labels):
            continue
        if runs_switch(pod.get("spec") or {}, switch):
            out.append(pod)
    return out


def new_replica_sets(replica_sets: Iterable[Mapping[str, Any]], switch: PendingSwitch) -> list[str]:
    """Names of the Deployment's ReplicaSets whose template runs the switch's owned references.

    Owned by the Deployment (``ownerReferences`` uid, or name and kind when
    the uid is unknown); the ``FailedCreate`` Events of admission refusals
    are on them.
    """
    names = []
    for rs in replica_sets:
        owners = _get(rs, "metadata", "ownerReferences") or ()
        if not any(
            o.get("kind") == "Deployment"
            and (o.get("uid") == switch.uid if switch.uid else o.get("name") == switch.name)
            for o in owners
            if isinstance(o, Mapping)
        ):
            continue
        if runs_switch(_get(rs, "spec", "template", "spec") or {}, switch):
            names.append(_get(rs, "metadata", "name") or "")
    return names


# --- What went wrong ------------------------------------------------------------


def timestamp(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp as the API writes it, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _event_time(event: Mapping[str, Any]) -> float | None:
    """When the Event last happened: the first of its times that is set."""
    return _time_of(event, ("lastTimestamp", "eventTime", "firstTimestamp"))


def _first_time(event: Mapping[str, Any]) -> float | None:
    """When the Event first happened: the first of its times that is set."""
    return _time_of(event, ("firstTimestamp", "eventTime", "lastTimestamp"))


def _time_of(event: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        at = timestamp(event.get(key))
        if at is not None:
            return at
    return timestamp(_get(event, "metadata", "creationTimestamp"))


def _count(event: Mapping[str, Any]) -> int:
    series = _get(event, "series", "count")
    return max(_int(event.get("count"), 1), _int(series, 1), 1)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``classify`` found.

    Attributes:
        cause: a failure the switch caused (``CAUSES``), to be undone; None
            when there is none (yet).
        message: the kubelet's or API server's words for it (or for the
            symptom, or for what keeps the rollout slow).
        namespace_wide: the cause is not about this workload alone (a pull
            refused for authentication or authorisation, an admission policy):
            the namespace is held back too.
        symptom: a pull failure or admission refusal of the owned references
            is present, confirmed or not; its first sign at ``since``
            (epoch seconds, None when unknown).
        slow: the rollout took longer than ``rollout.timeout`` (or a
            Deployment's progress deadline passed) for reasons that are not
            ours: reported, never undone.
    """

    cause: str | None = None
    message: str = ""
    namespace_wide: bool = False
    symptom: bool = False
    since: float | None = None
    slow: bool = False


def is_auth_failure(message: str) -> bool:
    """True when a pull failure says the registry refused the credentials (or their absence)."""
    text = message.lower()
    return any(word in text for word in _AUTH_WORDS) or _AUTH_CODE.search(text) is not None


def is_admission_denial(message: str, owned_hosts: Iterable[str] = ()) -> bool:
    """True when a ``FailedCreate`` message says admission refused the pod for its images.

    Denials by an admission webhook or a ValidatingAdmissionPolicy count, and
    a "forbidden" that names an owned registry; a quota, a Pod Security
    violation or a missing ServiceAccount do not (they are not the image's).
    """
    text = message.lower()
    if any(word in text for word in _NOT_OURS):
        return False
    if any(word in text for word in _POLICY_WORDS):
        return True
    return "forbidden" in text and any(host.lower() in text for host in owned_hosts if host)


@dataclass(frozen=True, slots=True)
class Limits:
    """The guard's settings as the classifier needs them.

    Attributes:
        pull_failure_grace: seconds a pull failure of an owned reference must
            last to count when fewer than ``PULL_ATTEMPTS`` attempts are seen
            (``rollout.pullFailureGrace``).
        timeout: seconds after the switch when an incomplete rollout with a
            symptom is a failure, and one without is reported slow
            (``rollout.timeout``).
    """

    pull_failure_grace: float = 60.0
    timeout: float = 600.0


def _pull_failure(
    switch: PendingSwitch, pods: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> tuple[str, int, float | None] | None:
    """``(message, attempts, since)`` when a revision pod cannot pull an owned reference."""
    owned = switch.owned
    waiting = _waiting_on_pull(pods, owned)
    # A pod that started its switched containers pulled them in the end: its
    # Failed Events are of attempts before a pull that worked.
    stuck = [pod for pod in pods if not _pod_started(pod, owned)]
    attempts, since, failed = _pull_events(events, stuck, set(owned.values()))
    if waiting is None and not attempts:
        return None
    return failed or waiting or "", attempts, since


def _waiting_on_pull(pods: Sequence[Mapping[str, Any]], owned: Mapping[str, str]) -> str | None:
    """The first ``ErrImagePull`` / ``ImagePullBackOff`` of a switched container, in words."""
    for pod in pods:
        for cs in _statuses(pod):
            state = _get(cs, "state", "waiting") or {}
            if cs.get("name") in owned and state.get("reason") in PULL_WAITING:
                return f"{state.get('reason')}: {state.get('message') or ''}".strip()
    return None


def _pull_events(
    events: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], refs: set[str]
) -> tuple[int, float | None, str]:
    """Pull attempts of ``refs`` by ``pods`` the kubelet reported: ``(count, first, message)``.

    An Event is matched to a pod by name and, when both say it, uid: a
    StatefulSet's pod comes back under the same name, and the Events of the
    one before (an earlier switch, undone) are not this pod's attempts.
    """
    uids = {_get(pod, "metadata", "name"): _get(pod, "metadata", "uid") for pod in pods}
    attempts, since, message = 0, None, ""
    for event in events:
        involved = event.get("involvedObject") or {}
        text = event.get("message") or ""
        name, uid = involved.get("name"), involved.get("uid")
        if (
            involved.get("kind") != "Pod"
            or name not in uids
            or (uid and uids[name] and uid != uids[name])
            or event.get("reason") != "Failed"
            or not text.startswith("Failed to pull image")
            or not any(f'"{ref}"' in text for ref in refs)
        ):
            continue
        attempts += _count(event)
        first = _first_time(event)
        if first is not None and (since is None or first < since):
            since = first
        message = message or text
    return attempts, since, message


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]


def _pod_started(pod: Mapping[str, Any], owned: Mapping[str, str]) -> bool:
    status = pod.get("status") or {}
    statuses = [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]
    seen = [cs for cs in statuses if cs.get("name") in owned]
    return bool(seen) and all(
        "running" in (cs.get("state") or {}) or "terminated" in (cs.get("state") or {})
        for cs in seen
    )


def _admission_denial(
    switch: PendingSwitch,
    events: Sequence[Mapping[str, Any]],
    creators: Iterable[tuple[str, str]],
    owned_hosts: Iterable[str],
) -> tuple[str, float | None] | None:
    """``(message, since)`` of a ``FailedCreate`` admission refusal after the switch."""
    wanted = set(creators)
    hosts = list(owned_hosts)
    job = re.compile(re.escape(switch.name) + r"-[0-9]+")
    found: tuple[str, float | None] | None = None
    for event in events:
        if event.get("reason") != "FailedCreate":
            continue
        involved = event.get("involvedObject") or {}
        creator = (involved.get("kind"), involved.get("name"))
        # A CronJob's pods are created by its Jobs (``<cronjob>-<digits>``).
        of_job = switch.kind == "CronJob" and creator[0] == "Job"
        if creator not in wanted and not (of_job and job.fullmatch(creator[1] or "")):
            continue
        at = _event_time(event)
        if at is not None and at < switch.started - SKEW:
            continue
        text = event.get("message") or ""
        if not is_admission_denial(text, hosts):
            continue
        first = _first_time(event)
        if found is None or (first is not None and (found[1] is None or first < found[1])):
            found = (text, first)
    return found


def classify(
    switch: PendingSwitch,
    status: RolloutStatus,
    pods: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    creators: Iterable[tuple[str, str]],
    now: float,
    limits: Limits,
    first_seen: float | None = None,
    owned_hosts: Iterable[str] = (),
) -> Verdict:
    """Decide whether a pending switch failed because of the switch.

    Rules (issue 27; the kubelet's and the controllers' own reports only):

    - ``owned_pull_failed``: a container of a revision pod waits in
      ``ErrImagePull`` / ``ImagePullBackOff`` on an owned reference, for at
      least ``PULL_ATTEMPTS`` pull attempts (the kubelet's ``Failed`` Events
      naming the reference, with their counts) or ``pull_failure_grace``
      seconds since its first sign;
    - ``admission_denied``: ``FailedCreate`` after the switch on one of
      ``creators`` (the new ReplicaSet, or the StatefulSet / DaemonSet)
      whose message says admission denied it (``is_admission_denial``);
    - ``progress_deadline``: the rollout is not complete ``timeout``
      seconds after the switch while one of those symptoms is present but
      not yet confirmed.

    A rollout that is merely slow (pending pods, quota, a crashing
    application, a passed ``progressDeadlineSeconds`` with no owned-image
    failure) is ``slow``, never a cause.

    Args:
        switch: the pending switch.
        status: ``rollout_status`` of the workload now.
        pods: the revision's pods (``revision_pods``).
        events: the namespace's Events (JSON dicts).
        creators: ``(kind, name)`` of the objects that create the revision's
            pods: ``("ReplicaSet", name)`` per ``new_replica_sets``, or the
            StatefulSet / DaemonSet itself; for a CronJob, its Jobs
            (``<cronjob>-<digits>``) count without being named.
        now: epoch seconds.
        limits: the grace and timeout.
        first_seen: epoch seconds the caller first saw a symptom (kept
            across cycles), used when no Event dates it.
        owned_hosts: the owned registries' hosts (``host:port``).

    Returns:
        The ``Verdict``; a complete rollout (``Progress.DONE``) has none.
    """
    if status.progress != Progress.WAITING and switch.kind != "CronJob":
        return Verdict()
    elapsed = now - switch.started
    # An admission refusal is confirmed at once: it goes first.
    denial = _admission_denial(switch, events, creators, owned_hosts)
    if denial is not None:
        message, since = denial
        return Verdict(ADMISSION_DENIED, message, True, True, since or first_seen or now)
    pull = _pull_failure(switch, pods, events)
    if pull is not None:
        message, attempts, since = pull
        since = min(x for x in (since, first_seen, now) if x is not None)
        wide = is_auth_failure(message)
        if attempts >= PULL_ATTEMPTS or now - since >= limits.pull_failure_grace:
            return Verdict(OWNED_PULL_FAILED, message, wide, True, since)
        if elapsed >= limits.timeout:
            return Verdict(PROGRESS_DEADLINE, message, wide, True, since)
        return Verdict(None, message, wide, True, since)
    if status.progress == Progress.WAITING and (
        elapsed >= limits.timeout or status.deadline_exceeded
    ):
        return Verdict(None, status.message, slow=True)
    return Verdict()


def cronjob_ran(pods: Sequence[Mapping[str, Any]], switch: PendingSwitch) -> bool:
    """True when a pod of the CronJob's next Job started every switched container.

    The pods of the next Job are what a CronJob's switch rolls out to (its
    template is not used before then).
    """
    owned = switch.owned
    return any(_pod_started(pod, owned) for pod in pods)


# --- The canary -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """``CanaryGate.admit``'s answer: may the workload be patched, is it the canary, why not."""

    allowed: bool
    canary: bool = False
    reason: str = ""


@dataclass(slots=True)
class CanaryGate:
    """Which workloads of a namespace may be switched now (``rollout.canary``).

    While a namespace has had no healthy switch since start-up (or since the
    last change of credentials), one workload there that needs a rollout is
    switched first, the canary; the others wait until its rollout completes.
    Workloads that need no rollout (``exemption``) are never canaries and
    never wait. With ``enabled`` False everything is admitted.

    Attributes:
        enabled: ``rollout.canary``.
        healthy: namespaces with a completed switch.
        canaries: namespace -> key of its pending canary switch.
    """

    enabled: bool = True
    healthy: set[str] = field(default_factory=set)
    canaries: dict[str, str] = field(default_factory=dict)

    def admit(self, namespace: str, key: str, exempt: str | None) -> Admission:
        """May workload ``key`` (``Kind ns/name``) of ``namespace`` be patched now?

        The first workload admitted in an unhealthy namespace becomes its
        canary (the caller records it with ``PendingSwitch.canary``).
        """
        if not self.enabled or exempt is not None or namespace in self.healthy:
            return Admission(True)
        canary = self.canaries.get(namespace)
        if canary is None:
            self.canaries[namespace] = key
            return Admission(True, canary=True)
        if canary == key:
            return Admission(True, canary=True)
        return Admission(False, reason=f"waiting for the canary {canary} to roll out")

    def completed(self, namespace: str, key: str) -> None:
        """A switch in ``namespace`` rolled out: the namespace is healthy."""
        self.healthy.add(namespace)
        if self.canaries.get(namespace) == key:
            del self.canaries[namespace]

    def ended(self, namespace: str, key: str) -> None:
        """The switch ``key`` ended without rolling out (undone, or gone): the next one may try."""
        if self.canaries.get(namespace) == key:
            del self.canaries[namespace]

    def restored(self, switch: PendingSwitch) -> None:
        """A pending canary read back from the state after a restart."""
        if switch.canary and self.enabled:
            self.canaries.setdefault(switch.namespace, switch.key)

    def reset(self) -> None:
        """The credentials changed: every namespace must show a healthy switch again."""
        self.healthy.clear()
