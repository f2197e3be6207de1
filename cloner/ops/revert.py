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

The plans are pure functions of the objects as read (``model.revert``:
``revert_patch``, ``service_account_revert_patch``); ``revert_all`` does the I/O through the
``RevertAPI`` protocol (implemented by ``kube.KubeClient``) and
``run_revert`` wires it to the command line. Neither imports ``kubernetes``
at module level.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cloner.errors import KubeError
from cloner.model.events import (
    NORMAL,
    REVERTED,
    reverted_message,
)
from cloner.model.pullsecrets import ServiceAccount
from cloner.model.revert import (
    ContainerAction,
    PullSecretAction,
    RevertPlan,
    owned_predicate,
    revert_patch,
    service_account_revert_patch,
)
from cloner.model.workloads import (
    KINDS,
    JsonPatch,
    Workload,
)
from cloner.ops.events import EventRecorder, NullRecorder

if TYPE_CHECKING:
    from cloner.config import Settings

log = logging.getLogger(__name__)


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

    def get_service_account(self, namespace: str, name: str) -> ServiceAccount | None:
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
        plan = service_account_revert_patch(found, self.users.get((namespace, name), ()))
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
