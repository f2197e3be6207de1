"""Listing what is in scope: the workloads of every kind, and Jobs and bare Pods.

Called by ``reconcile`` (every cycle) and ``plan``, so both see the same
workloads: the namespaces in scope are decided by ``Settings.namespace_scope``
(``model.workloads.NamespaceScope``) alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from cloner.config import Settings
from cloner.errors import KubeError
from cloner.model.workloads import (
    KINDS,
    ContainerPlan,
    Decision,
    GitopsMode,
    NamespaceInfo,
    Workload,
    plan_workload,
)

log = logging.getLogger(__name__)


class WorkloadLister(Protocol):
    """The list calls of listing (implemented by ``kube.KubeClient``)."""

    def list_workloads(
        self, kind: str, excluded_namespaces: Iterable[str] = (), namespace: str | None = None
    ) -> Iterator[Workload]:
        """Every workload of ``kind`` outside the excluded namespaces; raises ``KubeError``."""
        ...

    def list_unpatchable(self, excluded_namespaces: Iterable[str]) -> Iterator[Workload]:
        """Jobs and bare Pods (reported, never patched); raises ``KubeError``."""
        ...


def list_in_scope(
    kube: WorkloadLister, settings: Settings, out_of_scope: bool = False
) -> tuple[list[Workload], list[tuple[str, str]]]:
    """List the workloads of every kind in the namespaces in scope.

    Exact excluded names go to the API server as a field selector, so it does
    not send what would be dropped; ``Settings.namespace_scope`` decides the
    rest, as for ``unpatchable_public`` and ``plan``.

    Args:
        kube: the list calls.
        settings: the namespace scope.
        out_of_scope: keep the workloads of every namespace too (``plan
            --all``, which asks ``NamespaceScope.exclusion`` why each is left
            out); nothing is left out of the list calls then.

    Returns:
        ``(workloads, failures)``; a kind whose list failed is left out and
        named in ``failures`` as ``(kind, message)``.
    """
    scope = settings.namespace_scope
    excluded = () if out_of_scope else scope.exact_exclusions
    workloads: list[Workload] = []
    failures: list[tuple[str, str]] = []
    decided: dict[str, bool] = {}
    for kind in KINDS:
        try:
            found = list(kube.list_workloads(kind, excluded))
        except KubeError as exc:
            failures.append((kind, str(exc)))
            log.error("listing %s failed, skipping them this cycle: %s", kind, exc)
            continue
        if out_of_scope:
            workloads += found
            continue
        for workload in found:
            inside = decided.get(workload.namespace)
            if inside is None:  # one decision per namespace, not one per workload
                inside = decided[workload.namespace] = scope.contains(workload.namespace)
            if inside:
                workloads.append(workload)
    return workloads, failures


def unpatchable_public(
    kube: WorkloadLister, settings: Settings, namespaces: Mapping[str, NamespaceInfo]
) -> Iterator[tuple[Workload, list[ContainerPlan]]]:
    """Jobs and bare Pods in scope, each with the plans of its images that would be cloned.

    Their templates cannot be patched, so a cycle only reports them and
    ``plan`` lists them. Workloads without such images are left out.

    Raises:
        KubeError: the list failed.
    """
    scope = settings.namespace_scope
    for workload in kube.list_unpatchable(scope.exact_exclusions):
        if not scope.contains(workload.namespace):
            continue
        plans = plan_workload(
            workload, settings.policy, namespaces.get(workload.namespace), GitopsMode.PATCH
        )
        public = [p for p in plans if p.decision == Decision.CLONE]
        if public:
            yield workload, public
