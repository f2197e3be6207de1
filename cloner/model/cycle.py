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


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one workload adds to a ``CycleIndex``: the same for the same workload and inputs.

    Attributes:
        plans: its container plans, in pod order.
        to_copy: ``(source, owned)`` of its ``clone`` decisions.
        needed: canonical sources of those decisions, without repeats.
        notes: its ``invalid``, ``excluded`` and ``gitops`` plans.
        users: canonical sources it uses, to clone or as a recorded original.
        switched: ``(container name, current, source, owned)`` of each
            container on an owned copy of a recorded public original
            (``CycleIndex.switched`` and ``in_use``).
        owned: canonical sources of its ``owned`` decisions not traced to a
            public source.
    """

    plans: tuple[ContainerPlan, ...]
    to_copy: tuple[tuple[Reference, Reference], ...]
    needed: frozenset[str]
    notes: tuple[ContainerPlan, ...]
    users: tuple[str, ...]
    switched: tuple[tuple[str, Reference, Reference, Reference], ...]
    owned: tuple[str, ...]


@dataclass(slots=True)
class PlanCache:
    """Each workload's ``Contribution``, kept from one cycle to the next.

    A contribution is used again only while all of these are as they were
    when it was made: the workload's ``uid`` and ``resourceVersion`` (the API
    server gives every change a new one: API conventions, "Concurrency
    Control and Consistency"), its namespace's metadata (the opt-out), and
    ``inputs`` (the reconciler's fingerprint of the settings and the
    credentials). An object without a uid or resourceVersion is planned
    every cycle. The entries of workloads a cycle did not list (deleted,
    out of scope, or in a list that failed) are dropped with it.

    Attributes:
        inputs: the fingerprint the entries were made under.
        namespaces: namespace name -> its metadata when the entries were made.
        entries: workload uid -> ``(resourceVersion, contribution)``.
        hits: workloads whose contribution the last cycle took from here.
    """

    inputs: str | None = None
    namespaces: dict[str, NamespaceInfo] = field(default_factory=dict)
    entries: dict[str, tuple[str, Contribution]] = field(default_factory=dict)
    hits: int = 0

    def start(self, inputs: str, namespaces: Mapping[str, NamespaceInfo]) -> _CachedCycle:
        """Begin a cycle under ``inputs`` and ``namespaces``; its ``end`` replaces the entries."""
        old = self.entries if inputs == self.inputs else {}
        return _CachedCycle(self, inputs, namespaces, old)


@dataclass(slots=True)
class _CachedCycle:
    """One cycle's use of a ``PlanCache``: what it reuses, and what it keeps for the next."""

    cache: PlanCache
    inputs: str
    namespaces: Mapping[str, NamespaceInfo]
    old: dict[str, tuple[str, Contribution]]
    new: dict[str, tuple[str, Contribution]] = field(default_factory=dict)
    #: namespace name -> its metadata is what it was when ``old`` was made
    unchanged: dict[str, bool] = field(default_factory=dict)
    hits: int = 0

    def reuse(self, workload: Workload) -> Contribution | None:
        """The workload's contribution of the last cycle, if everything it depends on holds."""
        entry = self.old.get(workload.uid)
        if entry is None or not workload.resource_version or entry[0] != workload.resource_version:
            return None
        name = workload.namespace
        same = self.unchanged.get(name)
        if same is None:
            same = self.unchanged[name] = self.cache.namespaces.get(name) == self.namespaces.get(
                name
            )
        if not same:
            return None
        self.hits += 1
        return entry[1]

    def keep(self, workload: Workload, contribution: Contribution) -> None:
        """Keep the workload's contribution for the next cycle (if it can be recognised then)."""
        if workload.uid and workload.resource_version:
            self.new[workload.uid] = (workload.resource_version, contribution)

    def end(self) -> None:
        """Replace the cache's entries with this cycle's: the workloads not listed are gone."""
        cache = self.cache
        cache.inputs, cache.entries, cache.hits = self.inputs, self.new, self.hits
        cache.namespaces = dict(self.namespaces)


def index_cycle(
    workloads: Iterable[Workload],
    policy: Policy,
    namespaces: Mapping[str, NamespaceInfo],
    gitops: GitopsMode = GitopsMode.PATCH,
    cache: PlanCache | None = None,
    inputs: str = "",
) -> CycleIndex:
    """Plan every workload and derive the cycle's work from that one pass.

    Args:
        workloads: the snapshots listed this cycle.
        policy: ``Settings.policy`` (ownership, naming, image scope).
        namespaces: namespace name -> its metadata, for the opt-out.
        gitops: the ``gitops`` setting (see ``workloads.plan_workload``).
        cache: contributions of the last cycle to use again (``PlanCache``
            says when); updated to this cycle's. None plans every workload.
        inputs: the fingerprint of everything else a plan depends on (the
            settings ``policy`` and ``gitops`` come from, the credentials);
            a different one empties ``cache``.

    Returns:
        The ``CycleIndex``, the same with or without ``cache``. A recorded
        original that does not parse, or whose owned name would not be
        valid, is left out of ``switched`` (the container was planned as
        usual).
    """
    index = CycleIndex()
    if cache is None:
        for workload in workloads:
            namespace = namespaces.get(workload.namespace)
            _merge(index, workload, contribute(workload, policy, namespace, gitops))
        return index
    cycle = cache.start(inputs, namespaces)
    for workload in workloads:
        contribution = cycle.reuse(workload)
        if contribution is None:
            namespace = namespaces.get(workload.namespace)
            contribution = contribute(workload, policy, namespace, gitops)
        cycle.keep(workload, contribution)
        _merge(index, workload, contribution)
    cycle.end()
    return index


def contribute(
    workload: Workload,
    policy: Policy,
    namespace: NamespaceInfo | None,
    gitops: GitopsMode = GitopsMode.PATCH,
) -> Contribution:
    """Plan one workload: what it adds to the cycle's index.

    Args:
        workload: the snapshot.
        policy: ``Settings.policy``.
        namespace: its namespace's metadata (None when not known).
        gitops: the ``gitops`` setting.
    """
    plans = plan_workload(workload, policy, namespace, gitops)
    to_copy: list[tuple[Reference, Reference]] = []
    clones: list[str] = []
    notes: list[ContainerPlan] = []
    for plan in plans:
        if plan.decision == Decision.CLONE and plan.source and plan.owned:
            to_copy.append((plan.source, plan.owned))
            clones.append(str(plan.source))
        elif plan.decision in (Decision.INVALID, Decision.EXCLUDED, Decision.GITOPS):
            notes.append(plan)
    originals = original_images(workload.annotations)
    switched = _trace(workload, originals, policy.target)
    traced = {name for name, *_ in switched}
    owned = tuple(
        str(plan.source)
        for plan in plans
        if plan.decision == Decision.OWNED
        and plan.source is not None
        and plan.container.name not in traced
    )
    return Contribution(
        plans=tuple(plans),
        to_copy=tuple(to_copy),
        needed=frozenset(clones),
        notes=tuple(notes),
        users=tuple(dict.fromkeys(clones + _parsed(originals.values()))),
        switched=switched,
        owned=owned,
    )


def _merge(index: CycleIndex, workload: Workload, contribution: Contribution) -> None:
    """Add one workload's contribution to the index."""
    key = workload.key
    index.plans[key] = list(contribution.plans)
    if contribution.to_copy:
        index.to_copy += contribution.to_copy
        index.needed[key] = set(contribution.needed)
        for source_key in contribution.needed:
            index.awaiting_clone.setdefault(source_key, []).append(workload)
    for plan in contribution.notes:
        index.notes.append((workload, plan))
    for name, current, source, owned in contribution.switched:
        index.switched.append((source, owned))
        index.in_use[(key, name)] = (current, source)
    for source_key in contribution.users:
        index.users.setdefault(source_key, []).append(workload)
    index.owned_sources.update(contribution.owned)


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
    workload: Workload, originals: Mapping[str, str], target: Target
) -> tuple[tuple[str, Reference, Reference, Reference], ...]:
    """``(container name, current, source, owned)`` of each container on an owned copy of
    a recorded public original (one whose owned name would not be valid is left out)."""
    out = []
    for container in workload.containers:
        original = originals.get(container.name)
        if original is None:
            continue
        try:
            current = parse_reference(container.image)
            source = parse_reference(original)
            if target.owns(current) and not target.owns(source):
                out.append((container.name, current, source, target.owned_name(source)))
        except InvalidReference:
            continue
    return tuple(out)
