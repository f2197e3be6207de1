"""The fields of a workload object that a snapshot reads, as typed structs. Pure.

``workloads.Workload.from_item`` builds every snapshot from these, and
``Workload.from_api`` converts a JSON dict to them first, so there is one
mapping from the API's object to a snapshot. ``adapters.kube`` decodes the
list pages straight into them (``decode_page``): ``msgspec`` parses the
whole page but builds Python objects only for the fields below, so
``managedFields``, ``status``, probes, resources and ``env`` are skipped
while parsing. A page of 500 Deployments becomes some 10^4 objects instead
of 10^5, and the structs are not tracked by the cyclic collector
(``gc=False``: they hold no reference cycles). Bench figures: issue 31.

Field names are the API's own (lowerCamelCase, Kubernetes API conventions),
so ``KindInfo.pod_spec`` paths walk them as they walk the JSON.
"""

from __future__ import annotations

from typing import Any

import msgspec


class OwnerReference(msgspec.Struct, gc=False):
    """``metadata.ownerReferences[]``: who controls the object."""

    kind: str | None = None
    name: str | None = None
    controller: bool | None = None


class ObjectMeta(msgspec.Struct, gc=False):
    """``metadata``: identity, version, labels and annotations."""

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    ownerReferences: list[OwnerReference] | None = None


class ContainerFields(msgspec.Struct, gc=False):
    """``containers[]`` / ``initContainers[]``: name and image."""

    name: str | None = None
    image: str | None = None


class LocalObjectReference(msgspec.Struct, gc=False):
    """``imagePullSecrets[]``."""

    name: str | None = None


class PodSpec(msgspec.Struct, gc=False):
    """The pod template's ``spec``. ``imagePullSecrets`` is ``UNSET`` when absent, not None."""

    containers: list[ContainerFields] | None = None
    initContainers: list[ContainerFields] | None = None
    serviceAccountName: str | None = None
    imagePullSecrets: list[LocalObjectReference | None] | msgspec.UnsetType | None = msgspec.UNSET


class PodTemplate(msgspec.Struct, gc=False):
    """``template``."""

    spec: PodSpec | None = None


class JobSpec(msgspec.Struct, gc=False):
    """A CronJob's ``jobTemplate.spec``."""

    template: PodTemplate | None = None


class JobTemplate(msgspec.Struct, gc=False):
    """A CronJob's ``jobTemplate``."""

    spec: JobSpec | None = None


class UpdateStrategy(msgspec.Struct, gc=False):
    """``updateStrategy`` of a StatefulSet or DaemonSet."""

    type: str | None = None


class WorkloadSpec(PodSpec, gc=False):
    """``spec`` of a workload: what a snapshot reads.

    A Deployment's, DaemonSet's, StatefulSet's, Job's or CronJob's holds its
    pod template; a Pod's is itself a pod spec (``PodSpec``'s fields).
    """

    replicas: int | None = None
    paused: bool | None = None
    updateStrategy: UpdateStrategy | None = None
    template: PodTemplate | None = None
    jobTemplate: JobTemplate | None = None

    def rollout_fields(self) -> dict[str, Any]:
        """What ``rollout.exemption`` reads, as the JSON ``spec`` has it (absent: left out)."""
        out: dict[str, Any] = {}
        if self.paused is not None:
            out["paused"] = self.paused
        if self.replicas is not None:
            out["replicas"] = self.replicas
        if self.updateStrategy is not None:
            out["updateStrategy"] = {"type": self.updateStrategy.type}
        return out


class WorkloadItem(msgspec.Struct, gc=False):
    """One workload object: ``metadata`` and ``spec``."""

    metadata: ObjectMeta | None = None
    spec: WorkloadSpec | None = None

    @property
    def uid(self) -> str:
        """``metadata.uid`` ("" when absent)."""
        return (self.metadata.uid if self.metadata else None) or ""


class ListMeta(msgspec.Struct, gc=False):
    """A list's ``metadata``: the continue token of the next page."""

    continue_: str | None = msgspec.field(default=None, name="continue")


class WorkloadPage(msgspec.Struct, gc=False):
    """One page of a workload list (``limit``/``continue``)."""

    items: list[WorkloadItem] | None = None
    metadata: ListMeta | None = None

    @property
    def token(self) -> str | None:
        """The continue token, None on the last page."""
        return (self.metadata.continue_ if self.metadata else None) or None


_PAGE = msgspec.json.Decoder(WorkloadPage)


def decode_page(body: bytes) -> WorkloadPage:
    """Decode one list page (JSON bytes).

    Raises:
        msgspec.DecodeError: not JSON, or a field of the wrong type (a
            ``ValueError``, as ``orjson``'s).
    """
    return _PAGE.decode(body)


def item_of(obj: Any) -> WorkloadItem:
    """A workload object as the API returns it (JSON dict), as a ``WorkloadItem``.

    Raises:
        msgspec.ValidationError: a field of the wrong type (a ``ValueError``).
    """
    return msgspec.convert(obj, WorkloadItem)


def pod_spec(item: WorkloadItem, path: tuple[str, ...]) -> PodSpec | None:
    """The pod spec at ``path`` (``KindInfo.pod_spec``, API field names), None when absent."""
    node: Any = item
    for part in path:
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if isinstance(node, PodSpec) else None
