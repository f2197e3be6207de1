"""``controller.py revert``: undo what the controller did to workloads and ServiceAccounts.

Every patch the controller makes records what it replaced: the workload
annotation ``image-cloner.io/original-images`` (container name -> the
reference it replaced) and, where it extended an ``imagePullSecrets`` list,
the annotation ``image-cloner.io/added-pull-secret`` (the Secret name it
added) on the workload (``pullSecret.attach: workload``) or on the
ServiceAccount (``serviceaccount``). Revert reads those annotations and undoes
exactly that:

- each recorded container is set back to its original reference, but only
  while it still holds an owned image (under ``target`` or one of
  ``ownedRegistries``); a container someone has changed since is left alone
  and reported;
- the added pull Secret entry is removed from the pod template (the whole
  ``imagePullSecrets`` field when that entry was its only one), unless a
  container of the workload still uses an owned image after the revert;
- the annotations go.

One JSON patch per workload, with ``test`` operations on every value it is
based on (the container's name and image at its index, the pull Secret entry,
the annotation values), so an edit made after the list makes the API server
refuse the whole patch instead of being overwritten. Then each ServiceAccount
annotated by the controller loses the entry it added and the annotation, but
only when no workload in its namespace that still uses an owned image runs as
it (patched with a ``resourceVersion`` test). Secrets are left in place.

The plans are pure functions of the objects as read (``revert_patch``,
``service_account_revert_patch``); ``revert_all`` does the I/O through the
``RevertAPI`` protocol (implemented by ``kube.KubeClient``) and
``run_revert`` wires it to the command line. Neither imports ``kubernetes``
at module level.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from cloner.errors import InvalidReference, KubeError
from cloner.model.events import (
    NORMAL,
    REVERTED,
    reverted_message,
)
from cloner.model.pullsecrets import ServiceAccount
from cloner.model.reference import Policy, parse_reference
from cloner.model.workloads import (
    ADDED_PULL_SECRET,
    KINDS,
    ORIGINAL_IMAGES,
    JsonPatch,
    Workload,
    annotation_pointer,
    pull_secret_ops,
    recorded_originals,
)
from cloner.ops.events import EventRecorder, NullRecorder

if TYPE_CHECKING:
    from cloner.config import Settings

log = logging.getLogger(__name__)


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


class RevertAPI(Protocol):
    """The Kubernetes calls revert needs (implemented by ``kube.KubeClient``)."""

    def list_workloads(
        self, kind: str, excluded_namespaces: Iterable[str] = (), namespace: str | None = None
    ) -> Iterator[Workload]:
        """Every workload of a kind, in one namespace or all; raises ``KubeError``."""
        ...

    def patch_workload(self, workload: Workload, patch: JsonPatch) -> None:
        """Apply a JSON patch to a workload; raises ``KubeError``."""
        ...

    def get_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ServiceAccount, None if absent; raises ``KubeError``."""
        ...

    def patch_service_account(self, namespace: str, name: str, patch: JsonPatch) -> object:
        """Apply a JSON patch to a ServiceAccount (the result is not used); raises ``KubeError``."""
        ...


@dataclass
class RevertReport:
    """Counts of one revert run.

    Attributes:
        workloads: workloads carrying a controller annotation.
        patched: workloads patched (would be, with ``--dry-run``).
        containers: containers set back to their original images.
        service_accounts: ServiceAccounts patched.
        left: containers, pull Secret entries and workloads left as they are
            (changed by someone since, still needed, or unreadable annotations).
        failed: list, get and patch calls that failed.
        secrets: ``namespace/name`` of the pull Secrets named by the annotations seen.
    """

    dry_run: bool = False
    workloads: int = 0
    patched: int = 0
    containers: int = 0
    service_accounts: int = 0
    left: int = 0
    failed: int = 0
    secrets: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        """True when everything was reverted: nothing left, nothing failed."""
        return not self.left and not self.failed

    def line(self) -> str:
        """The final summary line."""
        return (
            f"revert{' (dry run, nothing written)' if self.dry_run else ''}: "
            f"workloads={self.workloads} patched={self.patched} containers={self.containers} "
            f"serviceaccounts={self.service_accounts} left={self.left} failed={self.failed}"
        )


def _failure(exc: KubeError) -> str:
    if exc.conflict:
        return f"{exc} (it changed since it was read; nothing of it was written, run revert again)"
    return str(exc)


def revert_all(
    api: RevertAPI,
    is_owned: Callable[[str], bool],
    namespace: str | None = None,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
    events: EventRecorder | NullRecorder | None = None,
) -> RevertReport:
    """Revert every workload and ServiceAccount the controller changed.

    Lists every Deployment, DaemonSet, StatefulSet and CronJob (in ``namespace``, or
    all), patches each one carrying a controller annotation (``revert_patch``),
    then reads by name the ServiceAccounts the listed workloads run as plus
    ``default``, in each namespace that has a workload (or ``namespace``),
    and patches those the controller annotated (``service_account_revert_patch``).
    A ServiceAccount keeps the entry while a workload in its namespace that
    runs as it still uses an owned image after this run: one the controller
    never patched (it was on owned images already), one whose patch failed,
    or one with a container that could not be restored to a public image.

    Args:
        api: the Kubernetes calls.
        is_owned: see ``revert_patch``.
        namespace: only this namespace; None for all.
        dry_run: report what would change, write nothing.
        out: receives every output line (one per change, then the summary).

    Returns:
        The report; ``ok`` is False when something was left or failed. A
        failing list call stops the run before anything is written. Never
        raises ``KubeError``.
    """
    run = _Revert(api, is_owned, dry_run, out, events)
    workloads = run.list_all(namespace)
    if workloads is not None:
        namespaces: set[str] = {namespace} if namespace else set()
        accounts: set[tuple[str, str]] = set()
        for workload in workloads:
            run.workload(workload)
            namespaces.add(workload.namespace)
            accounts.add((workload.namespace, workload.service_account))
        accounts |= {(ns, "default") for ns in namespaces}
        for ns, name in sorted(accounts):
            run.service_account(ns, name)
        for secret in sorted(run.report.secrets):
            ns, _, name = secret.partition("/")
            out(
                f"note: Secret {secret} is left in place; once no pod needs it: "
                f"kubectl -n {ns} delete secret {name}"
            )
    out(run.report.line())
    return run.report


class _Revert:
    """One revert run: its calls, its output and its report (see ``revert_all``)."""

    def __init__(
        self,
        api: RevertAPI,
        is_owned: Callable[[str], bool],
        dry_run: bool,
        out: Callable[[str], None],
        events: EventRecorder | NullRecorder | None,
    ) -> None:
        self.api, self.is_owned, self.dry_run, self.out = api, is_owned, dry_run, out
        self.events = events
        self.report = RevertReport(dry_run=dry_run)
        # (namespace, ServiceAccount) -> workloads still on owned images after the revert.
        self.users: dict[tuple[str, str], set[str]] = defaultdict(set)

    def list_all(self, namespace: str | None) -> list[Workload] | None:
        """Every workload of every kind as a snapshot; None (reported) when a list failed."""
        listed: list[Workload] = []
        for kind in KINDS:
            try:
                listed += self.api.list_workloads(kind, (), namespace)
            except KubeError as exc:
                self.report.failed += 1
                self.out(f"failed: {exc}; nothing was changed")
                return None
        return listed

    def workload(self, workload: Workload) -> None:
        """Revert one workload (or report it); note whether it still runs owned images."""
        plan = revert_patch(workload, self.is_owned)
        account = (plan.namespace, plan.service_account)
        owned_now = any(self.is_owned(c.image) for c in workload.containers)
        if not plan.recorded:  # never patched by the controller
            if owned_now:
                self.users[account].add(plan.key)
            return
        report = self.report
        report.workloads += 1
        report.left += plan.left
        if plan.pull_secret:
            report.secrets.add(f"{plan.namespace}/{plan.pull_secret}")
        lines = plan.lines(self.dry_run)
        still_owned = bool(plan.owned_after)
        if plan.operations:
            try:
                if not self.dry_run:
                    self.api.patch_workload(workload, [*plan.operations])
            except KubeError as exc:
                report.failed += 1
                lines = [f"failed {plan.key}: {_failure(exc)}"]
                still_owned = owned_now
            else:
                report.patched += 1
                report.containers += plan.restored
                self._reverted(workload, plan)
        if still_owned:
            self.users[account].add(plan.key)
        for line in lines:
            self.out(line)

    def _reverted(self, workload: Workload, plan: RevertPlan) -> None:
        """The ``Reverted`` Event on a workload whose revert was written."""
        if self.dry_run or self.events is None:
            return
        restored = [
            (c.name, c.original) for c in plan.containers if c.action == ContainerAction.RESTORE
        ]
        self.events.record(workload, NORMAL, REVERTED, reverted_message(restored))

    def service_account(self, namespace: str, name: str) -> None:
        """Revert one ServiceAccount the controller annotated, unless workloads still need it."""
        report = self.report
        try:
            found = self.api.get_service_account(namespace, name)
        except KubeError as exc:
            report.failed += 1
            self.out(f"failed ServiceAccount {namespace}/{name}: {exc}")
            return
        if found is None:
            return
        plan = service_account_revert_patch(
            ServiceAccount.from_api(found), self.users.get((namespace, name), ())
        )
        if plan is None:
            return
        report.secrets.add(f"{namespace}/{plan.pull_secret}")
        lines = plan.lines(self.dry_run)
        if plan.action == PullSecretAction.KEPT:
            report.left += 1
        elif self.dry_run:
            report.service_accounts += 1
        else:
            try:
                self.api.patch_service_account(namespace, name, list(plan.operations))
            except KubeError as exc:
                report.failed += 1
                lines = [f"failed {plan.key}: {_failure(exc)}"]
            else:
                report.service_accounts += 1
        for line in lines:
            self.out(line)


def run_revert(
    kube: RevertAPI,
    settings: Settings,
    namespace: str | None,
    dry_run: bool,
    events: EventRecorder | NullRecorder | None = None,
) -> int:
    """``controller.py revert``: revert, print one line per change.

    Args:
        kube: the Kubernetes side, built by the caller (``adapters.kube.KubeClient``).
        settings: the loaded settings (``policy`` decides what is owned).
        namespace: only this namespace, or None for all.
        dry_run: print what would change, write nothing.
        events: records ``Reverted`` Events; None records none.

    Returns:
        The exit code: 0 when everything was reverted (or, with ``--dry-run``,
        always unless listing failed), 1 when something was left or failed.
    """
    report = revert_all(
        kube,
        owned_predicate(settings.policy),
        namespace=namespace,
        dry_run=dry_run,
        out=lambda line: print(line, flush=True),
        events=events,
    )
    if dry_run:
        return 0 if not report.failed else 1
    return 0 if report.ok else 1
