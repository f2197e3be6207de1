"""What one reconcile cycle has to do, read from the workload snapshots in one pass. Pure.

Called by ``ops.reconcile`` once per cycle, after the lists. For every
workload it plans each container (``workloads.plan_workload``) and reads the
original-images annotation once, and from that single pass it derives
everything the cycle needs: the images to copy, the workloads waiting on
each image, the sources of workloads patched earlier (their owned tags follow
``refreshInterval``), who to tell about an image's outcome, and the owned
images in use (the ``image_cloner_owned_images`` gauge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cloner.errors import InvalidReference
from cloner.model.reference import Policy, Reference, Target, parse_reference
from cloner.model.workloads import (
    ContainerPlan,
    Decision,
    GitopsMode,
    NamespaceInfo,
    Workload,
    original_images,
    plan_workload,
)


@dataclass(slots=True)
class CycleIndex:
    """The cycle's work, keyed for the clone-and-patch step.

    Attributes:
        plans: workload key (``Workload.key``) -> its container plans, in pod order.
        to_copy: ``(source, owned)`` of every ``clone`` decision, in workload
            order (duplicates kept; ``ImageCloner.submit`` starts each source once).
        switched: ``(source, owned)`` traced back from the original-images
            annotation of containers already on an owned copy of a public source.
        in_use: ``(workload key, container name)`` -> ``(current, source)``
            of those containers: the parsed owned reference the container
            runs and the parsed public original it was switched from, so the
            verify step does not parse them again (``traced``: its keys).
        needed: workload key -> canonical sources its ``clone`` decisions wait
            on (workloads with none are absent).
        awaiting_clone: canonical source -> the workloads whose ``clone`` decisions
            need it, in list order.
        users: canonical source -> the workloads that use it, to clone or as a
            recorded original (the Events about the source go to them).
        notes: ``(workload, plan)`` of every ``invalid``, ``excluded`` and
            ``gitops`` decision, for the log and the summary.
        owned_sources: canonical sources of ``owned`` decisions not traced
            to a public source.
    """

    plans: dict[str, list[ContainerPlan]] = field(default_factory=dict)
    to_copy: list[tuple[Reference, Reference]] = field(default_factory=list)
    switched: list[tuple[Reference, Reference]] = field(default_factory=list)
    in_use: dict[tuple[str, str], tuple[Reference, Reference]] = field(default_factory=dict)
    needed: dict[str, set[str]] = field(default_factory=dict)
    awaiting_clone: dict[str, list[Workload]] = field(default_factory=dict)
    users: dict[str, list[Workload]] = field(default_factory=dict)
    notes: list[tuple[Workload, ContainerPlan]] = field(default_factory=list)
    owned_sources: set[str] = field(default_factory=set)

    @property
    def traced(self) -> set[tuple[str, str]]:
        """``(workload key, container name)`` of the containers in ``in_use``."""
        return set(self.in_use)

    @property
    def pairs(self) -> list[tuple[Reference, Reference]]:
        """``to_copy`` then ``switched``: everything ``ImageCloner.submit`` is given."""
        return self.to_copy + self.switched


def index_cycle(
    workloads: Iterable[Workload],
    policy: Policy,
    namespaces: Mapping[str, NamespaceInfo],
    gitops: GitopsMode = GitopsMode.PATCH,
) -> CycleIndex:
    """Plan every workload and derive the cycle's work from that one pass.

    Args:
        workloads: the snapshots listed this cycle.
        policy: ``Settings.policy`` (ownership, naming, image scope).
        namespaces: namespace name -> its metadata, for the opt-out.
        gitops: the ``gitops`` setting (see ``workloads.plan_workload``).

    Returns:
        The ``CycleIndex``. A recorded original that does not parse, or whose
        owned name would not be valid, is left out of ``switched`` (the
        container was planned as usual).
    """
    index = CycleIndex()
    for workload in workloads:
        plans = plan_workload(workload, policy, namespaces.get(workload.namespace), gitops)
        index.plans[workload.key] = plans
        sources = _add_decisions(index, workload, plans)
        originals = original_images(workload.annotations)
        sources += _parsed(originals.values())
        _trace(index, workload, originals, policy.target)
        for source_key in dict.fromkeys(sources):
            index.users.setdefault(source_key, []).append(workload)
        index.owned_sources.update(
            str(plan.source)
            for plan in plans
            if plan.decision == Decision.OWNED
            and plan.source is not None
            and (workload.key, plan.container.name) not in index.in_use
        )
    return index


def _add_decisions(index: CycleIndex, workload: Workload, plans: list[ContainerPlan]) -> list[str]:
    """Add a workload's copies, waits and notes; returns the canonical sources it clones."""
    sources: list[str] = []
    for plan in plans:
        if plan.decision == Decision.CLONE and plan.source and plan.owned:
            index.to_copy.append((plan.source, plan.owned))
            sources.append(str(plan.source))
        elif plan.decision in (Decision.INVALID, Decision.EXCLUDED, Decision.GITOPS):
            index.notes.append((workload, plan))
    if sources:
        index.needed[workload.key] = set(sources)
        for key in index.needed[workload.key]:
            index.awaiting_clone.setdefault(key, []).append(workload)
    return sources


def _parsed(references: Iterable[str]) -> list[str]:
    """The canonical form of each reference that parses."""
    out = []
    for text in references:
        try:
            out.append(str(parse_reference(text)))
        except InvalidReference:
            continue
    return out


def _trace(
    index: CycleIndex, workload: Workload, originals: Mapping[str, str], target: Target
) -> None:
    """Add ``(source, owned)`` for each container on an owned copy of a recorded public original."""
    for container in workload.containers:
        original = originals.get(container.name)
        if original is None:
            continue
        try:
            current = parse_reference(container.image)
            source = parse_reference(original)
            if target.owns(current) and not target.owns(source):
                index.switched.append((source, target.owned_name(source)))
                index.in_use[(workload.key, container.name)] = (current, source)
        except InvalidReference:
            continue
