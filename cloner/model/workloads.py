"""Workload snapshots, which containers need a clone, and the patch. Pure: no I/O.

Called by ``kube`` (to turn API objects into ``Workload`` snapshots) and by
``reconcile`` (to plan and to build patches). It must stay free of
``kubernetes`` and ``docker``: every decision here is testable with plain data.

Patches are built from the plan, never by editing the object that was read
(sample-controller ``syncHandler``). They are JSON patches (RFC 6902) whose
``test`` operations make the API server refuse them when a container moved or
its image changed since the read, so a concurrent edit is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import msgspec

from cloner.errors import InvalidReference
from cloner.model import wire
from cloner.model.reference import Policy, Reference, parse_reference
from cloner.model.rollout import exemption


class WorkloadKind(StrEnum):
    """The kinds of object whose pod templates the controller reads (``kind``)."""

    DEPLOYMENT = "Deployment"
    DAEMON_SET = "DaemonSet"
    STATEFUL_SET = "StatefulSet"
    CRON_JOB = "CronJob"
    JOB = "Job"
    POD = "Pod"


@dataclass(frozen=True, slots=True)
class KindInfo:
    """Everything the controller needs to know about one kind, in one row.

    Attributes:
        kind: the kind.
        group_version: its API group and version (``apps/v1``, ``batch/v1``,
            ``v1`` for the core group; Kubernetes API conventions).
        plural: its resource name (``deployments``).
        snake: its name in the ``kubernetes`` client's method names
            (``list_<snake>_for_all_namespaces``, ``read_namespaced_<snake>``).
        pod_spec: where it keeps its pod spec (a CronJob's Jobs are made from
            ``spec.jobTemplate``; Kubernetes API reference, batch/v1
            CronJobSpec).
        patchable: True when its pod template can be switched; a Job's
            template is immutable and a Pod's images are fixed for its life,
            so those are only reported.
    """

    kind: WorkloadKind
    group_version: str
    plural: str
    snake: str
    pod_spec: tuple[str, ...]
    patchable: bool = True

    def path(self, namespace: str, name: str) -> str:
        """The object's API path (``/apis/apps/v1/namespaces/NS/deployments/NAME``).

        ``namespace`` and ``name`` are used as given: quote them for a URL.
        """
        root = "/api" if "/" not in self.group_version else "/apis"
        return f"{root}/{self.group_version}/namespaces/{namespace}/{self.plural}/{name}"

    @property
    def pod_spec_pointer(self) -> str:
        """JSON pointer (RFC 6901) of the pod spec, e.g. ``/spec/template/spec``."""
        return "/" + "/".join(self.pod_spec)


_TEMPLATE = ("spec", "template", "spec")

#: The one table of kinds (what kube-janitor calls its resource table).
KIND_INFO: Mapping[WorkloadKind, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(WorkloadKind.DEPLOYMENT, "apps/v1", "deployments", "deployment", _TEMPLATE),
        KindInfo(WorkloadKind.DAEMON_SET, "apps/v1", "daemonsets", "daemon_set", _TEMPLATE),
        KindInfo(WorkloadKind.STATEFUL_SET, "apps/v1", "statefulsets", "stateful_set", _TEMPLATE),
        KindInfo(
            WorkloadKind.CRON_JOB,
            "batch/v1",
            "cronjobs",
            "cron_job",
            ("spec", "jobTemplate", "spec", "template", "spec"),
        ),
        KindInfo(WorkloadKind.JOB, "batch/v1", "jobs", "job", _TEMPLATE, patchable=False),
        KindInfo(WorkloadKind.POD, "v1", "pods", "pod", ("spec",), patchable=False),
    )
}

#: Kinds reconciled (patched), in the order cycles list them.
KINDS: tuple[WorkloadKind, ...] = tuple(k for k, i in KIND_INFO.items() if i.patchable)
#: Kinds only reported (``KindInfo.patchable`` False).
UNPATCHABLE_KINDS: tuple[WorkloadKind, ...] = tuple(
    k for k, i in KIND_INFO.items() if not i.patchable
)


def kind_info(kind: str) -> KindInfo:
    """The row of ``KIND_INFO`` for ``kind``.

    Raises:
        ValueError: ``kind`` is not a ``WorkloadKind`` (never a silent default).
    """
    return KIND_INFO[WorkloadKind(kind)]


def pod_spec_pointer(kind: str) -> str:
    """JSON pointer (RFC 6901) of a kind's pod spec, e.g. ``/spec/template/spec``.

    Raises:
        ValueError: unknown kind.
    """
    return kind_info(kind).pod_spec_pointer


def pod_spec_of(kind: str, obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of a workload object as the API returns it ({} when absent).

    Raises:
        ValueError: unknown kind.
    """
    node: Any = obj
    for part in kind_info(kind).pod_spec:
        node = (node or {}).get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


#: What a snapshot reads of an object without ``metadata`` or without a pod spec.
_NO_META = wire.ObjectMeta()
_NO_POD = wire.PodSpec()

#: A JSON patch (RFC 6902): the list of its operations, as sent with
#: ``application/json-patch+json``.
JsonPatch = list[dict[str, Any]]

#: Pod template lists that hold containers whose image can be changed.
#: (Ephemeral containers cannot be set on a template.)
CONTAINER_LISTS = ("initContainers", "containers")


@dataclass(frozen=True, slots=True)
class Container:
    """One container of a pod template.

    Attributes:
        name: the container name (unique within the pod).
        image: the image reference exactly as written.
        list_name: ``containers`` or ``initContainers``.
        index: position in that list (for the JSON patch path).
        spec_path: JSON pointer of the pod spec holding it (``pod_spec_pointer``).
    """

    name: str
    image: str
    list_name: str
    index: int
    spec_path: str = "/spec/template/spec"

    @property
    def image_path(self) -> str:
        """JSON pointer of this container's image in the workload."""
        return f"{self.spec_path}/{self.list_name}/{self.index}/image"

    @property
    def name_path(self) -> str:
        """JSON pointer of this container's name in the workload."""
        return f"{self.spec_path}/{self.list_name}/{self.index}/name"


@dataclass(frozen=True, slots=True)
class Workload:
    """A snapshot of a Deployment, DaemonSet, StatefulSet or CronJob.

    Attributes:
        kind: ``Deployment``, ``DaemonSet``, ``StatefulSet`` or ``CronJob``.
        namespace, name: identify the object.
        uid, resource_version: as read (``metadata``).
        containers: init containers first, then containers.
        labels, annotations: of the workload's ``metadata``.
        service_account: the pod template's ``serviceAccountName`` (``default`` when unset).
        pull_secrets: names in the pod template's ``imagePullSecrets``, or
            None when the field is absent.
        controller_owner: ``Kind/name`` of the owner reference marked
            ``controller: true``, or None.
        generation: ``metadata.generation`` as read.
        exempt: why a patch of it starts no rollout to follow
            (``rollout.exemption``: ``cronjob``, ``paused``, ``on_delete``,
            ``zero_replicas``), or None.
    """

    kind: WorkloadKind
    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""
    containers: tuple[Container, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"
    pull_secrets: tuple[str, ...] | None = None
    controller_owner: str | None = None
    generation: int = 0
    exempt: str | None = None

    def __post_init__(self) -> None:
        # A kind outside the table is an error, never a Deployment by default.
        object.__setattr__(self, "kind", WorkloadKind(self.kind))

    @property
    def key(self) -> str:
        """``Kind namespace/name``, for logs."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @classmethod
    def from_api(cls, kind: str, obj: Mapping[str, Any]) -> Workload:
        """Build a snapshot from an object as the API returns it (JSON dict).

        The same mapping as ``from_item`` (the dict is converted to a
        ``wire.WorkloadItem`` first).

        Args:
            kind: a ``WorkloadKind`` value.
            obj: the object (``metadata``, ``spec.template.spec``...).

        Raises:
            ValueError: unknown kind, or a field of the wrong type.
        """
        return cls.from_item(kind, wire.item_of(obj))

    @classmethod
    def from_item(cls, kind: str, item: wire.WorkloadItem) -> Workload:
        """Build a snapshot from the fields of a workload object (``wire``).

        Args:
            kind: a ``WorkloadKind`` value.
            item: the object's fields a snapshot reads.

        Returns:
            The snapshot; a container without an image is left out (it has
            nothing to clone and the API server would reject it anyway).
            ``pull_secrets`` is None only when the pod spec has no
            ``imagePullSecrets`` field; ``exempt`` is ``rollout.exemption``'s
            answer.

        Raises:
            ValueError: unknown kind.
        """
        kind = WorkloadKind(kind)
        info = kind_info(kind)
        meta = item.metadata or _NO_META
        pod = wire.pod_spec(item, info.pod_spec) or _NO_POD
        spec_path = info.pod_spec_pointer
        containers = []
        for list_name, listed in zip(
            CONTAINER_LISTS, (pod.initContainers, pod.containers), strict=True
        ):
            for index, container in enumerate(listed or ()):
                if container.image:
                    containers.append(
                        Container(
                            container.name or "", container.image, list_name, index, spec_path
                        )
                    )
        secrets = pod.imagePullSecrets
        return cls(
            kind=kind,
            namespace=meta.namespace or "",
            name=meta.name or "",
            uid=meta.uid or "",
            resource_version=meta.resourceVersion or "",
            containers=tuple(containers),
            labels=meta.labels or {},
            annotations=meta.annotations or {},
            service_account=pod.serviceAccountName or "default",
            pull_secrets=(
                None
                if isinstance(secrets, msgspec.UnsetType)
                else tuple((entry.name or "") if entry else "" for entry in secrets or ())
            ),
            controller_owner=next(
                (f"{ref.kind}/{ref.name}" for ref in meta.ownerReferences or () if ref.controller),
                None,
            ),
            generation=meta.generation or 0,
            exempt=exemption(kind, {"spec": item.spec.rollout_fields() if item.spec else {}}),
        )

    @property
    def pull_secrets_path(self) -> str:
        """JSON pointer of the pod template's ``imagePullSecrets`` in the workload."""
        return f"{pod_spec_pointer(self.kind)}/imagePullSecrets"


@dataclass(frozen=True, slots=True)
class NamespaceScope:
    """Which namespaces are reconciled: the one place that decides it.

    Used alike by a cycle, ``plan`` (``plan --all`` names the rule that
    leaves a namespace out) and the report of Jobs and bare Pods.

    Attributes:
        include: glob patterns (``fnmatch``, case-sensitive); empty means all
            (``namespaces.include``).
        exclude: glob patterns; an exclusion wins over an inclusion
            (``namespaces.exclude``).
        own: the controller's own namespace (``controllerNamespace``), always
            excluded; None when not known.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    own: str | None = None

    def contains(self, namespace: str) -> bool:
        """True when ``namespace`` is reconciled."""
        return self.exclusion(namespace) is None

    def exclusion(self, namespace: str) -> str | None:
        """Why ``namespace`` is not reconciled, or None when it is.

        Returns:
            The rule with the namespace in parentheses (also when a glob
            matched it, whose pattern is then named too), for
            ``excluded by <rule>``: ``namespaces.exclude (kube-system)``,
            ``namespaces.exclude 'kube-*' (kube-node-lease)``,
            ``controllerNamespace (image-cloner)`` or
            ``namespaces.include (other)`` (in none of its patterns).
        """
        for pattern in self.exclude:
            if fnmatchcase(namespace, pattern):
                rule = (
                    "namespaces.exclude"
                    if pattern == namespace
                    else f"namespaces.exclude {pattern!r}"
                )
                return f"{rule} ({namespace})"
        if namespace == self.own:
            return f"controllerNamespace ({namespace})"
        if self.include and not any(fnmatchcase(namespace, p) for p in self.include):
            return f"namespaces.include ({namespace})"
        return None

    @property
    def exact_exclusions(self) -> tuple[str, ...]:
        """The excluded names that are no pattern: what a list call may leave out.

        Sent to the API server as ``metadata.namespace!=NAME`` field selectors
        (which match names exactly, never globs), so it does not send what
        ``contains`` would drop anyway. The controller's own namespace is one
        of them.
        """
        names = [ns for ns in self.exclude if not any(c in ns for c in "*?[")]
        if self.own is not None and self.own not in names:
            names.append(self.own)
        return tuple(names)


#: Label or annotation that opts a workload, or every workload of a
#: namespace, out of cloning and patching.
SKIP_KEY = "image-cloner.io/skip"


def _opted_out(metadata_labels: Mapping[str, str], annotations: Mapping[str, str]) -> str | None:
    if str(metadata_labels.get(SKIP_KEY, "")).lower() == "true":
        return "label"
    if str(annotations.get(SKIP_KEY, "")).lower() == "true":
        return "annotation"
    return None


def skip_reason(workload: Workload, namespace: NamespaceInfo | None) -> str | None:
    """Why a whole workload is opted out, or None.

    The label or annotation ``image-cloner.io/skip: "true"`` on the workload
    or on its namespace opts it out (any other value does not).

    Args:
        workload: the snapshot.
        namespace: its namespace's labels and annotations (None if unknown).
    """
    how = _opted_out(workload.labels, workload.annotations)
    if how:
        return f"{SKIP_KEY} {how} on the workload"
    if namespace is not None:
        how = _opted_out(namespace.labels, namespace.annotations)
        if how:
            return f"{SKIP_KEY} {how} on namespace {namespace.name}"
    return None


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """A namespace's metadata, as far as decisions need it."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> NamespaceInfo:
        """Build from a core/v1 Namespace as the API returns it (JSON dict)."""
        meta = obj.get("metadata") or {}
        return cls(
            meta.get("name", ""),
            dict(meta.get("labels") or {}),
            dict(meta.get("annotations") or {}),
        )


#: Marks of tools that reconcile a workload back to a source of truth (Git):
#: (where, key, tool). Argo CD's annotation tracking and its legacy label,
#: and the labels Flux's kustomize and helm controllers set.
GITOPS_MARKS = (
    ("annotation", "argocd.argoproj.io/tracking-id", "Argo CD"),
    ("label", "argocd.argoproj.io/instance", "Argo CD"),
    ("label", "kustomize.toolkit.fluxcd.io/name", "Flux"),
    ("label", "helm.toolkit.fluxcd.io/name", "Flux"),
)


def gitops_owner(workload: Workload) -> str | None:
    """Who would undo a patch of this workload's pod template, or None.

    Returns:
        For example ``Argo CD (annotation argocd.argoproj.io/tracking-id)``,
        ``Flux (label kustomize.toolkit.fluxcd.io/name)`` or ``owner
        reference to Rollout/web`` (another controller owns the workload).
    """
    for where, key, tool in GITOPS_MARKS:
        values = workload.annotations if where == "annotation" else workload.labels
        if values.get(key):
            return f"{tool} ({where} {key})"
    if workload.controller_owner:
        return f"owner reference to {workload.controller_owner}"
    return None


class Decision(StrEnum):
    """What a cycle does with one container's image (``ContainerPlan.decision``)."""

    CLONE = "clone"  #: not owned yet: copy it, then patch
    OWNED = "owned"  #: under the target or an owned registry
    EXCLUDED = "excluded"  #: out of scope by a rule or an opt-out
    GITOPS = "gitops"  #: would be cloned, but an owner would undo the patch (gitops: report)
    INVALID = "invalid"  #: the reference (or its owned name) does not parse


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """What to do with one container's image.

    Attributes:
        container: the container.
        decision: ``clone`` (not owned yet), ``owned`` (under the target or an
            owned registry), ``excluded`` (out of scope by a rule or opt-out),
            ``gitops`` (would be cloned, but an owner would undo the patch and
            ``gitops: report`` holds it back) or ``invalid`` (the reference
            does not parse, or its owned name would not be valid).
        source: the parsed source reference (None when it does not parse).
        owned: the owned name to clone to (None unless ``clone``).
        reason: the rule for ``excluded``, the problem for ``invalid``, else None.
    """

    container: Container
    decision: Decision
    source: Reference | None = None
    owned: Reference | None = None
    reason: str | None = None


def describe(plan: ContainerPlan, image: bool = False) -> str:
    """A container's decision in words: the one wording of ``plan``'s rows and of the logs.

    Args:
        plan: the decision (``plan_workload``).
        image: name the container's image in the text (for log lines, where
            no column shows it).

    Returns:
        For example ``clone to reg.example.com/mirror/docker.io/library/nginx:1``,
        ``already owned``, ``excluded by images.exclude '**/vendor/**'``,
        ``held: managed by Argo CD (...) (gitops: report)`` or
        ``invalid reference 'nginx::1': invalid tag ':1'`` (with ``image``;
        ``invalid reference: invalid tag ':1'`` without).
    """
    what = f" {plan.container.image!r}" if image else ""
    match plan.decision:
        case Decision.CLONE:
            return f"clone{what} to {plan.owned}"
        case Decision.OWNED:
            return f"already owned{what}"
        case Decision.EXCLUDED:
            return f"excluded{what} by {plan.reason}"
        case Decision.GITOPS:
            return f"held{what}: {plan.reason} (gitops: report)"
        case _:
            return f"invalid reference{what}: {plan.reason}"


class GitopsMode(StrEnum):
    """``gitops``: what to do with a workload whose pod template an owner would undo."""

    REPORT = "report"  #: leave it, log and count it
    SKIP = "skip"  #: leave it quietly
    PATCH = "patch"  #: patch it anyway


def plan_workload(
    workload: Workload,
    policy: Policy,
    namespace: NamespaceInfo | None = None,
    gitops: GitopsMode = GitopsMode.PATCH,
    scope: NamespaceScope | None = None,
) -> list[ContainerPlan]:
    """Decide, for every container of a workload, whether its image needs a clone.

    Args:
        workload: the snapshot.
        policy: ownership, naming and image scope.
        namespace: the workload's namespace metadata, for the opt-out.
        gitops: ``gitops`` setting for a workload that ``gitops_owner`` names:
            ``report`` turns its ``clone`` decisions into ``gitops``, ``skip``
            into ``excluded``, ``patch`` leaves them.
        scope: the namespaces reconciled; None when the caller listed only
            those (a cycle).

    Returns:
        One ``ContainerPlan`` per container, in the workload's order. A
        workload outside ``scope`` (its reason is ``NamespaceScope.exclusion``)
        or opted out yields ``excluded`` for every container, whatever its
        references. An
        invalid reference yields ``invalid`` for that container only; the
        other containers are still planned.
    """
    opted_out = scope.exclusion(workload.namespace) if scope is not None else None
    opted_out = opted_out or skip_reason(workload, namespace)
    if opted_out:  # left alone entirely: not even its references are judged
        return [ContainerPlan(c, Decision.EXCLUDED, reason=opted_out) for c in workload.containers]
    plans = []
    for container in workload.containers:
        try:
            source = parse_reference(container.image)
        except InvalidReference as exc:
            plans.append(ContainerPlan(container, Decision.INVALID, reason=exc.problem))
            continue
        if policy.owns(source):
            plans.append(ContainerPlan(container, Decision.OWNED, source=source))
            continue
        excluded = policy.image_exclusion(source)
        if excluded:
            plans.append(
                ContainerPlan(container, Decision.EXCLUDED, source=source, reason=excluded)
            )
            continue
        try:
            owned = policy.target.owned_name(source)
        except InvalidReference as exc:
            plans.append(
                ContainerPlan(container, Decision.INVALID, source=source, reason=exc.problem)
            )
            continue
        plans.append(ContainerPlan(container, Decision.CLONE, source=source, owned=owned))
    if gitops != GitopsMode.PATCH and any(p.decision == Decision.CLONE for p in plans):
        owner = gitops_owner(workload)
        if owner:
            decision = Decision.GITOPS if gitops == GitopsMode.REPORT else Decision.EXCLUDED
            plans = [
                ContainerPlan(p.container, decision, p.source, None, f"managed by {owner}")
                if p.decision == Decision.CLONE
                else p
                for p in plans
            ]
    return plans


#: Annotation on a patched workload: JSON object, container name -> the
#: reference the controller replaced (for ``controller.py revert``).
ORIGINAL_IMAGES = "image-cloner.io/original-images"
#: Annotation on a workload or ServiceAccount whose ``imagePullSecrets`` the
#: controller extended: the Secret name it added (revert removes only that).
ADDED_PULL_SECRET = "image-cloner.io/added-pull-secret"


def pull_secret_ops(
    path: str,
    names: Sequence[str] | None,
    secret: str,
    *,
    remove: bool = False,
    resource_version: str | None = None,
) -> JsonPatch:
    """The one rule for an ``imagePullSecrets`` list, a pod template's or a ServiceAccount's.

    Adding: the entry is appended when absent, and entries already there are
    kept as they are; when the field is absent it is created, and since that
    would replace a list added concurrently, the ``resourceVersion`` that was
    read is ``test``ed first (RFC 6902; the API server refuses the patch if
    the object changed). Removing (``revert``): the controller appended its
    entry, so the last entry of that name is its own; when it is the only
    entry, the controller created the field, and the whole field goes. Each
    removal is guarded by a ``test`` of what it removes.

    Args:
        path: JSON pointer of the list (``Workload.pull_secrets_path``,
            ``/imagePullSecrets`` for a ServiceAccount).
        names: the names listed there, in order; None when the field is absent.
        secret: the Secret name.
        remove: remove it instead of adding it.
        resource_version: what to ``test`` before creating the field; None
            when the caller tests it already.

    Returns:
        The operations; ``[]`` when there is nothing to do (already listed,
        or not listed for a removal).
    """
    entries = list(names or ())
    if remove:
        positions = [i for i, name in enumerate(entries) if name == secret]
        if not positions:
            return []
        if len(entries) == 1:
            return [
                {"op": "test", "path": path, "value": [{"name": secret}]},
                {"op": "remove", "path": path},
            ]
        index = positions[-1]
        return [
            {"op": "test", "path": f"{path}/{index}/name", "value": secret},
            {"op": "remove", "path": f"{path}/{index}"},
        ]
    if secret in entries:
        return []
    if names is not None:
        return [{"op": "add", "path": f"{path}/-", "value": {"name": secret}}]
    created: JsonPatch = [{"op": "add", "path": path, "value": [{"name": secret}]}]
    if resource_version is None:
        return created
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        *created,
    ]


def recorded_originals(annotations: Mapping[str, str]) -> dict[str, str] | None:
    """The ``image-cloner.io/original-images`` annotation, strictly parsed.

    The one reader of that annotation (``image_patch`` extends it, the cycle
    traces owned copies back to their sources with it, ``revert`` restores
    from it). Parsing is cached per annotation text, since every cycle
    reads the same annotations again.

    Args:
        annotations: a workload's annotations.

    Returns:
        Container name -> the non-empty reference the controller replaced;
        ``{}`` when the annotation is absent; None when it is present but not
        a JSON object of string to non-empty string (malformed: revert
        leaves such a workload alone).
    """
    raw = annotations.get(ORIGINAL_IMAGES)
    if raw is None:
        return {}
    parsed = _parse_originals(raw)
    return None if parsed is None else dict(parsed)


@lru_cache(maxsize=4096)
def _parse_originals(raw: str) -> tuple[tuple[str, str], ...] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
        return None
    return tuple(value.items())


def original_images(annotations: Mapping[str, str]) -> dict[str, str]:
    """``recorded_originals``, with ``{}`` for a malformed annotation as well as an absent one."""
    return recorded_originals(annotations) or {}


def json_pointer_token(key: str) -> str:
    """Escape a key for a JSON pointer (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def annotation_pointer(key: str) -> str:
    """JSON pointer (RFC 6901) of an annotation, e.g. ``/metadata/annotations/a~1b`` for ``a/b``."""
    return f"/metadata/annotations/{json_pointer_token(key)}"


def annotation_ops(
    current: Mapping[str, str], resource_version: str, updates: Mapping[str, str]
) -> JsonPatch:
    """JSON patch operations that set annotations without losing concurrent edits.

    Args:
        current: the object's annotations as read.
        resource_version: its ``metadata.resourceVersion`` as read.
        updates: annotations to set.

    Returns:
        With no annotations at all, one ``add`` of the whole map guarded by a
        ``test`` of the resourceVersion; otherwise per key a ``test`` of the
        old value (when it had one) and an ``add`` (which replaces).
    """
    if not updates:
        return []
    if not current:
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "add", "path": "/metadata/annotations", "value": dict(updates)},
        ]
    operations: JsonPatch = []
    for key, value in updates.items():
        path = annotation_pointer(key)
        if key in current:
            if current[key] == value:
                continue
            operations.append({"op": "test", "path": path, "value": current[key]})
        operations.append({"op": "add", "path": path, "value": value})
    return operations


def image_patch(
    workload: Workload,
    changes: Sequence[tuple[Container, str]],
    pull_secret: str | None = None,
) -> JsonPatch:
    """The JSON patch (RFC 6902) that switches a workload's containers to new images.

    For each change it first ``test``s that the container at that index still
    has the same name and still has the image the decision was based on, then
    ``replace``s the image. If anything changed since the read, the API server
    rejects the whole patch (422) and nothing is written. The same patch
    records each replaced reference in the ``image-cloner.io/original-images``
    annotation, so ``revert`` can restore it.

    Args:
        workload: the snapshot the changes were planned from.
        changes: ``(container as read, new image reference)`` pairs.
        pull_secret: a Secret to add to the pod template's ``imagePullSecrets``
            in the same patch (``pullSecret.attach: workload``: one rollout,
            not two); ignored when there is no image change or it is listed.
            Recorded in ``image-cloner.io/added-pull-secret``.

    Returns:
        The list of patch operations (empty when there are no changes).
    """
    operations: JsonPatch = []
    originals = original_images(workload.annotations)
    for container, image in changes:
        if image == container.image:
            continue
        operations += [
            {"op": "test", "path": container.name_path, "value": container.name},
            {"op": "test", "path": container.image_path, "value": container.image},
            {"op": "replace", "path": container.image_path, "value": image},
        ]
        originals[container.name] = container.image
    if not operations:
        return []
    annotations = {ORIGINAL_IMAGES: json.dumps(originals, sort_keys=True, separators=(",", ":"))}
    guarded = False
    if pull_secret:
        added = pull_secret_ops(
            workload.pull_secrets_path,
            workload.pull_secrets,
            pull_secret,
            resource_version=workload.resource_version,
        )
        guarded = workload.pull_secrets is None
        operations += added
        if added:
            annotations[ADDED_PULL_SECRET] = pull_secret
    extra = annotation_ops(workload.annotations, workload.resource_version, annotations)
    if guarded and extra and extra[0]["path"] == "/metadata/resourceVersion":
        extra = extra[1:]  # the resourceVersion is tested once already
    return operations + extra


#: Annotation on a workload whose switch was undone by the rollout guard:
#: JSON object with ``reason`` (the cause), ``message``, ``at`` (RFC 3339)
#: and ``containers`` (container name -> the owned reference taken back).
UNDONE = "image-cloner.io/undone"


def undo_patch(
    workload: Workload,
    owned: Mapping[str, str],
    originals: Mapping[str, str],
    record: Mapping[str, Any],
) -> JsonPatch:
    """The JSON patch (RFC 6902) that takes a failed switch back.

    One patch, guarded by a ``test`` of the ``resourceVersion`` that was
    read (the machinery of ``image_patch`` and ``revert``): any change since
    the read makes the API server refuse all of it. Each switched container
    that still holds its owned reference gets its original reference back
    (with a ``test`` of its name and image at its index); those containers
    leave the ``image-cloner.io/original-images`` annotation (removed when
    none is left); ``image-cloner.io/undone`` records why.

    Args:
        workload: the snapshot as read now.
        owned: container name -> the owned reference the switch set.
        originals: container name -> the reference to restore.
        record: the ``UNDONE`` annotation's content (JSON-serialisable).

    Returns:
        The operations; empty when no switched container still holds its
        owned reference (someone changed it since: nothing to undo).
    """
    operations: JsonPatch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": workload.resource_version}
    ]
    restored: set[str] = set()
    for container in workload.containers:
        name = container.name
        if name in restored or owned.get(name) != container.image or name not in originals:
            continue
        restored.add(name)
        operations += [
            {"op": "test", "path": container.name_path, "value": name},
            {"op": "test", "path": container.image_path, "value": container.image},
            {"op": "replace", "path": container.image_path, "value": originals[name]},
        ]
    if not restored:
        return []
    annotations = dict(workload.annotations)
    updates = {UNDONE: json.dumps(record, sort_keys=True, separators=(",", ":"))}
    kept = {k: v for k, v in original_images(annotations).items() if k not in restored}
    if ORIGINAL_IMAGES in annotations:
        path = annotation_pointer(ORIGINAL_IMAGES)
        operations.append({"op": "test", "path": path, "value": annotations[ORIGINAL_IMAGES]})
        if kept:
            operations.append(
                {
                    "op": "replace",
                    "path": path,
                    "value": json.dumps(kept, sort_keys=True, separators=(",", ":")),
                }
            )
        else:
            operations.append({"op": "remove", "path": path})
            del annotations[ORIGINAL_IMAGES]
    if not annotations:
        operations.append({"op": "add", "path": "/metadata/annotations", "value": updates})
    else:
        operations += [
            {"op": "add", "path": annotation_pointer(key), "value": value}
            for key, value in updates.items()
        ]
    return operations
