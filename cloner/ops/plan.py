"""``python controller.py plan``: what a cycle would do, with no writes anywhere.

Called by ``controller.py``. It lists namespaces and workloads, plans every
container with the same pure functions a cycle uses, and asks the owned
registry (manifest lookup through the engine, no layers pulled) whether each
owned copy exists. It never pulls, pushes or patches. The model is skopeo
sync's dry run ("Would have copied"), with from/to fields: the "to" is the
reference the cycle would write, built by the cycle's own rule
(``reference.patched_image``; ``_switched_to``).

A separate process has none of the running controller's memory, so the
backoff of an image comes from the running controller's metrics port
(``/state/backoff``), when it answers, and the workloads and namespaces the
rollout guard holds back after a failed switch come from the durable state
ConfigMaps (``read_holds``), as do the signatures and referrers found at each
source's last sync and how many of them the owned registry serves
(``read_records``). A source not synced yet is asked now for the artifacts
of its top manifest (the cosign tags and referrers of the digest its tag
names: a few ``HEAD`` and one ``GET``; docs/signatures.md).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from cloner.config import Settings
from cloner.errors import KubeError, RegistryError
from cloner.model.artifacts import SignatureMode
from cloner.model.events import rfc3339
from cloner.model.identity import Descriptor
from cloner.model.reference import Reference, planned_image
from cloner.model.rollout import Hold, namespace_key
from cloner.model.state import Record, StateBook
from cloner.model.workloads import (
    ContainerPlan,
    NamespaceInfo,
    Workload,
    describe,
    plan_workload,
)
from cloner.ops.artifacts import ArtifactCopier
from cloner.ops.listing import list_in_scope, unpatchable_public
from cloner.ops.reconcile import KubeAPI
from cloner.ops.state import read_shards


class ManifestLookup(Protocol):
    """The one registry call a plan makes (``distribution.DistributionClient.head``)."""

    def head(self, ref: Reference) -> Descriptor | None:
        """The manifest's descriptor, None if absent; raises ``RegistryError``."""
        ...


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One workload container and what a cycle would do with its image.

    Attributes:
        namespace, kind, name, container: where the image is.
        image: the current reference.
        owned: the reference a cycle would switch the container to (None
            when none), computed as the cycle computes it
            (``reference.patched_image``): with a digest when the source
            has one or ``pinDigest`` is on. A digest that only the copy will
            give (the Docker engine's new digest, or a tag pinned with
            ``pinDigest`` before anything was copied) is written
            ``<digest after copy>`` (``reference.DIGEST_AFTER_COPY``); a
            verified record or an owned copy that exists makes it exact.
        decision: ``clone``, ``patch (copy exists)``, ``backing off until
            <time> (<reason>)``, ``already owned``,
            ``excluded by <rule>``, ``held: managed by <owner> (gitops: report)``,
            ``invalid reference: <why>``, ``clone (owned registry: <problem>)``
            when the owned registry could not be asked, or ``held after a
            failed switch (<reason>) until <time>: <message>`` (rollout guard);
            a source with signatures or referrers adds ``; artifacts M/N in
            the owned registry`` (skopeo) or ``; N signatures or referrers
            lost: ...`` (docker).
        artifacts: how many signatures, attestations, SBOMs and referrers the
            source has (None: not looked for, or ``signatures: off``).
        artifacts_owned: how many of them the owned registry serves (None
            when not known).
    """

    namespace: str
    kind: str
    name: str
    container: str
    image: str
    owned: str | None
    decision: str
    artifacts: int | None = None
    artifacts_owned: int | None = None


def fetch_backoff(controller: str | None, timeout: float = 2.0) -> Mapping[str, Any]:
    """The backoff state of a running controller, or {} when it does not answer.

    Args:
        controller: base URL of its metrics port, for example ``http://127.0.0.1:9090``.
        timeout: seconds to wait.

    Returns:
        Canonical source -> ``{"until": RFC 3339, "reason": ...}``.
    """
    if not controller:
        return {}
    try:
        with urllib.request.urlopen(
            controller.rstrip("/") + "/state/backoff", timeout=timeout
        ) as r:
            data = json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_state(kube: KubeAPI, settings: Settings) -> StateBook:
    """The durable state, read from the state ConfigMaps (no write).

    Returns:
        The book; empty without ``controllerNamespace`` or when a shard
        cannot be read (a plan then shows less rather than failing).
    """
    book = StateBook(settings.state.config_map, settings.state.ttl)
    namespace = settings.controller_namespace
    if namespace is None:
        return book
    try:
        shards = read_shards(kube, namespace, book.prefix)
    except KubeError:
        return book
    book.load(shards)
    return book


def read_holds(kube: KubeAPI, settings: Settings) -> dict[str, Hold]:
    """The holds of the rollout guard (``read_state``).

    Returns:
        Workload key (``Kind ns/name``) or ``Namespace <name>`` -> its hold.
    """
    return dict(read_state(kube, settings).holds)


def read_records(kube: KubeAPI, settings: Settings) -> dict[str, Record]:
    """The verified copies (``read_state``): canonical source -> its record."""
    return dict(read_state(kube, settings).records)


def build_plan(
    kube: KubeAPI,
    registry: ManifestLookup,
    settings: Settings,
    backoff: Mapping[str, Any] | None = None,
    holds: Mapping[str, Hold] | None = None,
    now: float | None = None,
    records: Mapping[str, Record] | None = None,
    artifacts: ArtifactCopier | None = None,
    out_of_scope: bool = False,
) -> list[PlanRow]:
    """Plan every container in scope, checking the owned registry for each owned name once.

    Args:
        kube, registry, settings: as for a cycle.
        backoff: a running controller's backoff state (``fetch_backoff``).
        holds: the rollout guard's holds (``read_holds``); a container that
            would be switched in a held workload or namespace shows
            ``held after a failed switch (<reason>) until <time>: <message>``.
        now: epoch seconds (default: the time now); a hold past its end is
            not shown.
        records: the verified copies (``read_records``): their artifact
            counts as of the last sync.
        artifacts: looks for the artifacts of a source without a synced
            record (``ops.artifacts.ArtifactCopier.discover``); None, or
            ``signatures: off``, looks for none.
        out_of_scope: also list the workloads of the namespaces out of scope
            (``plan --all``), each container ``excluded by <rule>`` with the
            rule ``NamespaceScope.exclusion`` names, such as
            ``namespaces.exclude (kube-system)``. Jobs and bare Pods there
            are not listed.

    Raises:
        KubeError: namespaces or workloads could not be listed.
    """
    now = time.time() if now is None else now
    namespaces = {ns.name: ns for ns in kube.list_namespaces()}
    workloads, failures = list_in_scope(kube, settings, out_of_scope)
    if failures:
        kind, message = failures[0]
        raise KubeError(0, f"listing {kind} failed: {message}")
    exists: dict[str, tuple[str, str | None]] = {}
    counts = _ArtifactCounts(records, artifacts, registry, settings)
    keeps_digests = settings.copy.backend.keeps_digests
    rows = []
    for workload in workloads:
        plans = plan_workload(
            workload,
            settings.policy,
            namespaces.get(workload.namespace),
            settings.gitops,
            settings.namespace_scope,
        )
        for plan in plans:
            owned = None
            waiting = (backoff or {}).get(str(plan.source)) if plan.source else None
            hold = _hold_of(workload, holds or {}, now)
            if plan.decision == "clone" and plan.source is not None and plan.owned is not None:
                owned_digest = None
                if hold is not None:
                    decision = (
                        f"held after a failed switch ({hold.reason}) until "
                        f"{rfc3339(hold.until)}: {hold.message}"
                    )
                elif waiting:
                    decision = f"backing off until {waiting.get('until')} ({waiting.get('reason')})"
                else:
                    key = str(plan.owned)
                    if key not in exists:
                        exists[key] = _lookup(registry, plan.owned)
                    decision, owned_digest = exists[key]
                    if not keeps_digests and plan.source.digest:
                        decision += DIGEST_CHANGES
                owned = _switched_to(
                    plan.source,
                    plan.owned,
                    (records or {}).get(str(plan.source)),
                    owned_digest,
                    settings,
                    now,
                )
            else:
                decision = describe(plan)
            found = counts.of(plan.source, owned)
            decision += _artifacts_text(found, not keeps_digests)
            rows.append(_row(workload, plan, owned, decision, found))
    rows += _unpatchable_rows(kube, settings, namespaces)
    return rows


def _hold_of(workload: Workload, holds: Mapping[str, Hold], now: float) -> Hold | None:
    """The hold of the workload, else of its namespace, that has not ended by ``now``."""
    for key in (workload.key, namespace_key(workload.namespace)):
        hold = holds.get(key)
        if hold is not None and hold.until > now:
            return hold
    return None


def _row(
    workload: Workload,
    plan: ContainerPlan,
    owned: str | None,
    decision: str,
    artifacts: tuple[int | None, int | None] = (None, None),
) -> PlanRow:
    return PlanRow(
        workload.namespace,
        workload.kind,
        workload.name,
        plan.container.name,
        plan.container.image,
        owned,
        decision,
        *artifacts,
    )


class _ArtifactCounts:
    """``(found, owned)`` artifacts per source: from its record, else asked once now."""

    def __init__(
        self,
        records: Mapping[str, Record] | None,
        copier: ArtifactCopier | None,
        registry: ManifestLookup,
        settings: Settings,
    ) -> None:
        self._records = records or {}
        self._copier = copier if settings.signatures is not SignatureMode.OFF else None
        self._registry = registry
        self._known: dict[str, tuple[int | None, int | None]] = {}

    def of(self, source: Reference | None, owned: str | None) -> tuple[int | None, int | None]:
        """The counts of ``source``; ``(None, None)`` when not known or not to be switched."""
        if source is None or owned is None:
            return None, None
        key = str(source)
        if key not in self._known:
            self._known[key] = self._count(source)
        return self._known[key]

    def _count(self, source: Reference) -> tuple[int | None, int | None]:
        record = self._records.get(str(source))
        if record is not None and (record.artifacts_synced or record.artifacts_error):
            return record.artifacts_found, record.artifacts_owned
        if self._copier is None:
            return None, None
        try:
            head = self._registry.head(source)
            if head is None:
                return None, None
            return len(self._copier.discover(source, [head.digest])), None
        except RegistryError:
            return None, None


def _artifacts_text(found: tuple[int | None, int | None], docker: bool) -> str:
    """The decision's suffix for a source with artifacts; "" for one without."""
    count, owned = found
    if not count:
        return ""
    if docker:
        return (
            f"; {count} signatures or referrers lost: new digests with the docker backend "
            "(signatures_lost)"
        )
    if owned is None:
        return f"; {count} signatures or referrers at the source, copied with the image"
    return f"; artifacts {owned}/{count} in the owned registry"


#: Why a Job or bare Pod is only reported.
UNPATCHABLE_REASONS = {
    "Job": "not patched: a Job's template is immutable (patch its CronJob; its next Job "
    "uses the owned copy)",
    "Pod": "not patched: a bare Pod's images cannot be switched (recreate it with the owned image)",
}


def _unpatchable_rows(
    kube: KubeAPI, settings: Settings, namespaces: Mapping[str, NamespaceInfo]
) -> list[PlanRow]:
    """Rows for the public images of Jobs and bare Pods, which a cycle only reports."""
    return [
        _row(workload, p, str(p.owned) if p.owned else None, UNPATCHABLE_REASONS[workload.kind])
        for workload, plans in unpatchable_public(kube, settings, namespaces)
        for p in plans
    ]


DIGEST_CHANGES = "; new digest with the docker backend (copyBackend: skopeo keeps it)"


def _lookup(registry: ManifestLookup, owned: Reference) -> tuple[str, str | None]:
    """The decision for an owned name and the digest the owned registry serves for it.

    Returns:
        ``("clone", None)``, ``("patch (copy exists)", digest)`` or
        ``("clone (owned registry: <reason>)", None)`` when it cannot be asked.
    """
    try:
        found = registry.head(owned)
    except RegistryError as exc:
        return f"clone (owned registry: {exc.reason})", None
    return ("clone", None) if found is None else ("patch (copy exists)", found.digest)


def _switched_to(
    source: Reference,
    owned: Reference,
    record: Record | None,
    owned_digest: str | None,
    settings: Settings,
    now: float,
) -> str:
    """The owned column: the reference a cycle would patch the container to.

    A cycle answers from a verified record that is not due for a refresh
    (``Record.answers``) with the reference recorded; otherwise it patches
    to ``reference.patched_image`` of the digest it verifies, which
    ``reference.planned_image`` knows or marks as known only after the copy.

    Args:
        source, owned: the image and its owned name.
        record: the verified copy of ``source`` in the durable state, if any.
        owned_digest: the digest the owned registry serves under ``owned``
            now (a copy the cycle would reuse), None when absent or not asked.
        settings: ``copyBackend``, ``pinDigest``, ``refreshInterval``.
        now: epoch seconds.
    """
    backend = settings.copy.backend
    pinned = source.digest is not None
    if record is not None and record.answers(
        str(owned), backend, now, settings.refresh.interval, pinned
    ):
        return record.image
    return planned_image(source, owned, settings.pin_digest, backend.keeps_digests, owned_digest)


def format_table(rows: list[PlanRow]) -> str:
    """Rows as an aligned text table with a header line."""
    header = ("NAMESPACE", "WORKLOAD", "CONTAINER", "IMAGE", "OWNED IMAGE", "DECISION")
    table = [header] + [
        (r.namespace, f"{r.kind}/{r.name}", r.container, r.image, r.owned or "-", r.decision)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        for row in table
    ]
    return "\n".join(lines)


def format_json(rows: list[PlanRow]) -> str:
    """Rows as a JSON array of objects (the ``PlanRow`` fields)."""
    return json.dumps([asdict(r) for r in rows], indent=2)
