"""Workload objects of every kind as JSON dicts, built from the controller's own kind table.

The one builder of the unit tests' stand-in objects and of what the
end-to-end tests, benchmarks and demos create on a real API server. Where a
kind keeps its pod template comes from ``cloner.model.workloads.KIND_INFO``
(a CronJob's is under ``spec.jobTemplate.spec.template``, a Pod is its own),
so a new kind in that table is built right here without a change. What the
API server requires beyond the pod template is filled in unless given: a
selector for the ``apps/v1`` kinds given ``labels``, a StatefulSet's
``serviceName``, a CronJob's ``schedule``, and ``restartPolicy: Never`` for
the pods of Jobs and CronJobs (``Always`` is refused there).

Pure: no client library; standard library and ``cloner.model`` only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from cloner.model.workloads import WorkloadKind, kind_info

#: ``name -> image``, or container objects taken as they are.
Containers = Mapping[str, str] | Sequence[Mapping[str, Any]]

#: The schedule a CronJob gets when none is given: every minute.
EVERY_MINUTE = "*/1 * * * *"

_JOB_KINDS = (WorkloadKind.JOB, WorkloadKind.CRON_JOB)


def containers_of(containers: Containers) -> list[dict[str, Any]]:
    """Container objects: ``{"name": n, "image": i}`` for a mapping, copies of given objects."""
    if isinstance(containers, Mapping):
        return [{"name": name, "image": image} for name, image in containers.items()]
    return [dict(c) for c in containers]


def pod_spec(
    containers: Containers, init: Containers | None = None, **fields: Any
) -> dict[str, Any]:
    """A pod spec: ``containers``, ``initContainers`` when ``init`` is given, then ``fields``."""
    spec: dict[str, Any] = {"containers": containers_of(containers)}
    if init is not None:
        spec["initContainers"] = containers_of(init)
    spec.update(copy.deepcopy(fields))
    return spec


def workload(
    kind: str,
    name: str,
    containers: Containers,
    *,
    init: Containers | None = None,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    pod: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One object of ``kind`` with its pod template where the kind keeps it.

    Args:
        kind: a ``WorkloadKind`` value (``Deployment`` ... ``Pod``).
        name: ``metadata.name``.
        containers: the pod's containers (``name -> image``, or objects).
        init: its init containers; no ``initContainers`` key without them.
        namespace: ``metadata.namespace``, when given.
        labels: the pod template's labels (a Pod's own), and for the
            ``apps/v1`` kinds the selector's ``matchLabels``.
        pod: more pod spec fields (``serviceAccountName``, ``hostNetwork``...).
        spec: more fields of the object's ``spec`` (``replicas``, ``schedule``...),
            set before the defaults, which they override.
        metadata: more ``metadata`` fields (``uid``, ``resourceVersion``, ``annotations``...).
        status: the object's ``status``, when given.

    Raises:
        ValueError: ``kind`` is not a ``WorkloadKind``.
    """
    info = kind_info(kind)
    fields = dict(pod or {})
    if info.kind in _JOB_KINDS:
        fields.setdefault("restartPolicy", "Never")
    obj: dict[str, Any] = {
        "apiVersion": info.group_version,
        "kind": info.kind.value,
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
    }
    obj["metadata"].update(copy.deepcopy(dict(metadata or {})))
    obj_spec: dict[str, Any] = copy.deepcopy(dict(spec or {}))
    if info.kind is WorkloadKind.CRON_JOB:
        obj_spec.setdefault("schedule", EVERY_MINUTE)
    if info.kind is WorkloadKind.STATEFUL_SET:
        obj_spec.setdefault("serviceName", name)
    if labels and info.group_version == "apps/v1":
        obj_spec.setdefault("selector", {"matchLabels": dict(labels)})
    obj["spec"] = obj_spec
    # The template is the node that holds the pod spec: spec.template,
    # spec.jobTemplate.spec.template, or a Pod itself.
    template = obj
    for part in info.pod_spec[:-1]:
        template = template.setdefault(part, {})
    if labels:
        template.setdefault("metadata", {})["labels"] = dict(labels)
    template[info.pod_spec[-1]] = pod_spec(containers, init, **fields)
    if status is not None:
        obj["status"] = copy.deepcopy(dict(status))
    return obj
