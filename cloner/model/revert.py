"""Planning the revert of workloads and ServiceAccounts. Pure: no I/O.

The plans are pure functions of the objects as read: ``revert_patch`` for a
workload, ``service_account_revert_patch`` for a ServiceAccount. What they
undo, and why each patch ``test``s what it is based on, is told in
``cloner.ops.revert``, which reads the objects, sends the patches and prints
the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from cloner.errors import InvalidReference
from cloner.model.pullsecrets import ServiceAccount
from cloner.model.reference import Policy, parse_reference
from cloner.model.workloads import (
    ADDED_PULL_SECRET,
    ORIGINAL_IMAGES,
    JsonPatch,
    Workload,
    annotation_pointer,
    pull_secret_ops,
    recorded_originals,
)


def owned_predicate(policy: Policy) -> Callable[[str], bool]:
    """``is_owned(image)`` for ``revert_patch``: under the target or an owned registry.

    Args:
        policy: ``Settings.policy``.

    Returns:
        A function of an image reference as written; False for one that
        does not parse.
    """

    def is_owned(image: str) -> bool:
        try:
            return policy.owns(parse_reference(image))
        except InvalidReference:
            return False

    return is_owned


class ContainerAction(StrEnum):
    """What revert does with one recorded container (``ContainerRevert.action``)."""

    RESTORE = "restore"  #: it holds an owned image: set back to the original
    UNCHANGED = "unchanged"  #: it already holds the original
    CHANGED = "changed"  #: someone set another, not owned image since: left alone
    MISSING = "missing"  #: the container is gone


class PullSecretAction(StrEnum):
    """What revert does with a pull Secret entry the controller added."""

    REMOVE = "remove"  #: the entry and its annotation go
    ABSENT = "absent"  #: not listed any more: only the annotation goes
    KEPT = "kept"  #: owned images still need it: entry and annotation stay


@dataclass(frozen=True, slots=True)
class ContainerRevert:
    """What revert does with one container recorded in the original-images annotation.

    Attributes:
        name: the container name.
        original: the reference recorded as replaced.
        current: the container's image as read; None when there is no such
            container any more.
        action: see ``ContainerAction``.
    """

    name: str
    original: str
    current: str | None
    action: ContainerAction


@dataclass(frozen=True, slots=True)
class RevertPlan:
    """The revert of one workload.

    Attributes:
        kind, namespace, name: identify the workload.
        service_account: the pod template's ``serviceAccountName`` (``default`` when unset).
        operations: the JSON patch (RFC 6902); empty when nothing is to be written.
        containers: one entry per container recorded in the annotation, in pod order.
        pull_secret: the Secret named by ``image-cloner.io/added-pull-secret``, or None.
        pull_secret_action: None without ``pull_secret``; else see
            ``PullSecretAction`` (``kept``: containers still use owned images).
        owned_after: ``(container, image)`` of every container that still
            uses an owned image once the patch is applied.
        problem: why the workload is left alone entirely (a malformed
            annotation), else None.
        removed_annotations: the controller's annotations the patch removes.
        recorded: True when the workload carries either annotation (the
            controller patched it); False plans have nothing else set.
    """

    kind: str
    namespace: str
    name: str
    service_account: str = "default"
    operations: tuple[dict[str, Any], ...] = ()
    containers: tuple[ContainerRevert, ...] = ()
    pull_secret: str | None = None
    pull_secret_action: PullSecretAction | None = None
    owned_after: tuple[tuple[str, str], ...] = ()
    problem: str | None = None
    removed_annotations: tuple[str, ...] = ()
    recorded: bool = False

    @property
    def key(self) -> str:
        """``Kind namespace/name``, for output."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def restored(self) -> int:
        """Containers set back to their original reference."""
        return sum(1 for c in self.containers if c.action == ContainerAction.RESTORE)

    @property
    def left(self) -> int:
        """Things left as the controller made them, or changed by someone else since."""
        left = sum(1 for c in self.containers if c.action == ContainerAction.CHANGED)
        if self.pull_secret_action == PullSecretAction.KEPT:
            left += 1
        return left + (1 if self.problem else 0)

    def lines(self, dry_run: bool = False) -> list[str]:
        """One line per change (``would ...`` when ``dry_run``) and per thing left alone."""
        restore, remove = ("would restore", "would remove") if dry_run else ("restored", "removed")
        out: list[str] = []
        if self.problem:
            return [f"left {self.key}: {self.problem}"]
        for c in self.containers:
            where = f"{self.key} container {c.name}"
            if c.action == ContainerAction.RESTORE:
                out.append(f"{restore} {where}: {c.current} -> {c.original}")
            elif c.action == ContainerAction.CHANGED:
                out.append(
                    f"left {where}: its image is {c.current} now, not an owned copy, so it was "
                    f"changed after the controller's patch (recorded original {c.original})"
                )
            elif c.action == ContainerAction.UNCHANGED:
                out.append(f"unchanged {where}: already {c.original}")
            else:
                out.append(f"gone {where}: no such container any more (recorded {c.original})")
        if self.pull_secret_action == PullSecretAction.REMOVE:
            out.append(f"{remove} {self.key} imagePullSecrets entry {self.pull_secret}")
        elif self.pull_secret_action == PullSecretAction.KEPT:
            users = ", ".join(f"{n} ({i})" for n, i in self.owned_after)
            out.append(
                f"left {self.key} imagePullSecrets entry {self.pull_secret}: "
                f"containers still on owned images: {users}"
            )
        elif self.pull_secret_action == PullSecretAction.ABSENT:
            out.append(
                f"unchanged {self.key}: pull secret {self.pull_secret} is not listed any more"
            )
        if self.removed_annotations:
            out.append(f"{remove} {self.key} annotations {', '.join(self.removed_annotations)}")
        return out


def _restore(
    workload: Workload, originals: Mapping[str, str], is_owned: Callable[[str], bool]
) -> tuple[list[ContainerRevert], JsonPatch, list[tuple[str, str]]]:
    """Per recorded container its action; the patch operations; what stays owned after it."""
    operations: JsonPatch = []
    containers: list[ContainerRevert] = []
    owned_after: list[tuple[str, str]] = []
    seen: set[str] = set()
    for container in workload.containers:
        name, image, after = container.name, container.image, container.image
        original = originals.get(name)
        if original is not None and name not in seen:
            seen.add(name)
            if image == original:
                action = ContainerAction.UNCHANGED
            elif is_owned(image):
                action = ContainerAction.RESTORE
                operations += [
                    {"op": "test", "path": container.name_path, "value": name},
                    {"op": "test", "path": container.image_path, "value": image},
                    {"op": "replace", "path": container.image_path, "value": original},
                ]
                after = original
            else:
                action = ContainerAction.CHANGED
            containers.append(ContainerRevert(name, original, image, action))
        if is_owned(after):
            owned_after.append((name, after))
    for name in sorted(set(originals) - seen):
        containers.append(ContainerRevert(name, originals[name], None, ContainerAction.MISSING))
    return containers, operations, owned_after


def revert_patch(workload: Workload, is_owned: Callable[[str], bool]) -> RevertPlan:
    """Plan the revert of one workload, from the same snapshot a cycle plans from. Pure.

    Args:
        workload: the snapshot (``Workload.from_api``), as listed.
        is_owned: True for an image reference under the owned target or an
            owned registry (see ``owned_predicate``).

    Returns:
        The plan. Its ``operations`` are empty when the workload carries
        neither annotation, when its original-images annotation is malformed
        (``problem`` says so; nothing is touched), or when only a pull Secret
        entry is recorded and it must stay. Otherwise they are, in order: per
        restored container a ``test`` of its name and image at its index and
        a ``replace`` of the image; for the pull Secret a ``test`` of the
        entry (or of the whole list when it is the only entry) and its
        ``remove``; per annotation removed a ``test`` of its value and its
        ``remove``.
    """
    annotations = workload.annotations
    plan = RevertPlan(
        kind=workload.kind,
        namespace=workload.namespace,
        name=workload.name,
        service_account=workload.service_account,
    )
    raw_originals = annotations.get(ORIGINAL_IMAGES)
    pull_secret = annotations.get(ADDED_PULL_SECRET)
    if raw_originals is None and pull_secret is None:
        return plan
    plan = replace(plan, recorded=True)
    originals = recorded_originals(annotations)
    if originals is None:
        return replace(
            plan,
            problem=f"annotation {ORIGINAL_IMAGES} is not a JSON object of container "
            f"name to image ({raw_originals!r}); nothing changed",
        )
    containers, operations, owned_after = _restore(workload, originals, is_owned)

    pull_secret_action: PullSecretAction | None = None
    if pull_secret is not None:
        removal = pull_secret_ops(
            workload.pull_secrets_path, workload.pull_secrets, pull_secret, remove=True
        )
        if not removal:
            pull_secret_action = PullSecretAction.ABSENT
        elif owned_after:
            pull_secret_action = PullSecretAction.KEPT
        else:
            pull_secret_action = PullSecretAction.REMOVE
            operations += removal

    removed = []
    if raw_originals is not None:
        removed.append((ORIGINAL_IMAGES, raw_originals))
    if pull_secret is not None and pull_secret_action != PullSecretAction.KEPT:
        removed.append((ADDED_PULL_SECRET, pull_secret))
    for key, value in removed:
        path = annotation_pointer(key)
        operations += [{"op": "test", "path": path, "value": value}, {"op": "remove", "path": path}]

    return replace(
        plan,
        operations=tuple(operations),
        containers=tuple(containers),
        pull_secret=pull_secret,
        pull_secret_action=pull_secret_action,
        owned_after=tuple(owned_after),
        removed_annotations=tuple(key for key, _ in removed),
    )


@dataclass(frozen=True, slots=True)
class ServiceAccountPlan:
    """The revert of one ServiceAccount the controller added a pull Secret to.

    Attributes:
        namespace, name: identify the ServiceAccount.
        pull_secret: the Secret named by ``image-cloner.io/added-pull-secret``.
        action: see ``PullSecretAction`` (``kept``: workloads still on owned
            images run as it; nothing changes).
        operations: the JSON patch; empty for ``kept``.
        users: for ``kept``, the workloads (``Kind ns/name``) that still use owned images.
    """

    namespace: str
    name: str
    pull_secret: str
    action: PullSecretAction
    operations: tuple[dict[str, Any], ...] = ()
    users: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``ServiceAccount namespace/name``, for output."""
        return f"ServiceAccount {self.namespace}/{self.name}"

    def lines(self, dry_run: bool = False) -> list[str]:
        """One line describing the change (``would ...`` when ``dry_run``) or why there is none."""
        remove = "would remove" if dry_run else "removed"
        if self.action == PullSecretAction.REMOVE:
            return [f"{remove} {self.key} imagePullSecrets entry {self.pull_secret}"]
        if self.action == PullSecretAction.ABSENT:
            return [
                f"{remove} {self.key} annotation {ADDED_PULL_SECRET} "
                f"(pull secret {self.pull_secret} is not listed any more)"
            ]
        return [
            f"left {self.key} imagePullSecrets entry {self.pull_secret}: "
            f"still used by {', '.join(self.users)} (owned images)"
        ]


def service_account_revert_patch(
    account: ServiceAccount, users: Iterable[str] = ()
) -> ServiceAccountPlan | None:
    """Plan the revert of one ServiceAccount. Pure: no I/O.

    Args:
        account: the ServiceAccount as read (``pullsecrets.ServiceAccount``).
        users: the workloads (``Kind ns/name``) in its namespace that run as it
            and still use owned images (after their own revert).

    Returns:
        None when it carries no ``image-cloner.io/added-pull-secret``
        annotation. Otherwise the plan; its patch ``test``s the
        ``resourceVersion`` that was read, then removes the last entry of that
        name from ``imagePullSecrets`` (the whole field when it is the only
        entry, as the controller then created the field) and the annotation.
    """
    pull_secret = account.annotations.get(ADDED_PULL_SECRET)
    if pull_secret is None:
        return None
    namespace, name = account.namespace, account.name
    users = tuple(sorted(users))
    if users:
        return ServiceAccountPlan(namespace, name, pull_secret, PullSecretAction.KEPT, users=users)
    operations: JsonPatch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": account.resource_version}
    ]
    removal = pull_secret_ops("/imagePullSecrets", account.pull_secrets, pull_secret, remove=True)
    action = PullSecretAction.REMOVE if removal else PullSecretAction.ABSENT
    operations += removal
    operations.append({"op": "remove", "path": annotation_pointer(ADDED_PULL_SECRET)})
    return ServiceAccountPlan(namespace, name, pull_secret, action, tuple(operations))
