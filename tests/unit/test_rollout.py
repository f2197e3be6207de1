"""The rollout guard's pure rules (``cloner.model.rollout``) and ``undo_patch``.

- ``rollout_status``: one row per branch of kubectl's
  ``k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go``, plus ours
  (paused, zero replicas, ``OnDelete``, CronJob, the patch's generation).
- ``classify``: on pods and Events shaped as the API returns them (core/v1
  Pod, core/v1 Event from the kubelet and the controllers), run through
  ``revision_pods`` and ``new_replica_sets`` as ``ops.guard`` does.
- ``CanaryGate``: scripts of admissions and outcomes.
- ``PendingSwitch`` / ``Hold``: the durable records.
- ``undo_patch``: the operations, and the object after applying them with
  the ``jsonpatch`` package (RFC 6902), as an API server would.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonpatch
import pytest

from cloner.model.rollout import (
    ADMISSION_DENIED,
    OWNED_PULL_FAILED,
    PROGRESS_DEADLINE,
    Admission,
    CanaryGate,
    Hold,
    Limits,
    PendingSwitch,
    Progress,
    RolloutStatus,
    SwitchedContainer,
    Verdict,
    classify,
    cronjob_ran,
    exemption,
    is_admission_denial,
    is_auth_failure,
    new_replica_sets,
    revision_pods,
    rollout_status,
    selector_matches,
    timestamp,
)
from cloner.model.workloads import ORIGINAL_IMAGES, UNDONE, Workload, image_patch, undo_patch
from devenv.workloads import workload

NS = "shop"
NODE = "kind-control-plane"
HOST = "127.0.0.1:5001"
ORIGINAL = "docker.io/library/nginx:1.25"
OWNED = f"{HOST}/mirror/docker.io/library/nginx:1.25"
SIDE = "docker.io/library/busybox:1.36"
#: A digest whose hex holds "401" and "403": not an HTTP status.
PINNED = f"{HOST}/mirror/docker.io/library/redis@sha256:{'0' * 10}401{'c' * 20}403{'e' * 28}"

STARTED = timestamp("2024-05-02T10:00:00Z")
assert STARTED is not None


def at(seconds: float) -> str:
    """RFC 3339 as the API writes it, ``seconds`` after the switch."""
    return datetime.fromtimestamp(STARTED + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def drop_zero(status: dict[str, Any]) -> dict[str, Any]:
    """The API omits zero counts (``omitempty``)."""
    return {k: v for k, v in status.items() if v != 0}


# --- rollout_status -------------------------------------------------------------


def deployment_obj(
    *,
    generation: int = 2,
    observed: int = 2,
    replicas: int = 3,
    updated: int = 3,
    total: int = 3,
    available: int = 3,
    progressing: str = "NewReplicaSetAvailable",
    paused: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
        },
        "progressDeadlineSeconds": 600,
        "revisionHistoryLimit": 10,
    }
    if paused:
        spec["paused"] = True
    deadline = progressing == "ProgressDeadlineExceeded"
    metadata = {
        "uid": "d-web",
        "resourceVersion": "4712",
        "generation": generation,
        "annotations": {"deployment.kubernetes.io/revision": "2"},
    }
    return workload(
        "Deployment",
        "web",
        {"app": OWNED},
        namespace=NS,
        labels={"app": "web"},
        spec=spec,
        metadata=metadata,
        status={
            **drop_zero(
                {
                    "observedGeneration": observed,
                    "replicas": total,
                    "updatedReplicas": updated,
                    "readyReplicas": available,
                    "availableReplicas": available,
                    "unavailableReplicas": max(total - available, 0),
                }
            ),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "message": "Deployment has minimum availability.",
                    "lastUpdateTime": at(-600),
                    "lastTransitionTime": at(-600),
                },
                {
                    "type": "Progressing",
                    "status": "False" if deadline else "True",
                    "reason": progressing,
                    "message": (
                        'ReplicaSet "web-6f7d8b9c4d" has timed out progressing.'
                        if deadline
                        else 'ReplicaSet "web-6f7d8b9c4d" is progressing.'
                    ),
                    "lastUpdateTime": at(5),
                    "lastTransitionTime": at(5),
                },
            ],
        },
    )


def daemon_set_obj(
    *,
    generation: int = 2,
    observed: int = 2,
    desired: int = 3,
    updated: int = 3,
    available: int = 3,
    strategy: str = "RollingUpdate",
) -> dict[str, Any]:
    update: dict[str, Any] = {"type": strategy}
    if strategy == "RollingUpdate":
        update["rollingUpdate"] = {"maxUnavailable": 1, "maxSurge": 0}
    return workload(
        "DaemonSet",
        "agent",
        {"app": OWNED},
        namespace=NS,
        spec={"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": update},
        metadata={"generation": generation},
        status=drop_zero(
            {
                "observedGeneration": observed,
                "currentNumberScheduled": desired,
                "desiredNumberScheduled": desired,
                "numberMisscheduled": 0,
                "numberReady": available,
                "numberAvailable": available,
                "numberUnavailable": desired - available,
                "updatedNumberScheduled": updated,
            }
        ),
    )


def stateful_set_obj(
    *,
    generation: int = 2,
    observed: int = 2,
    replicas: int = 3,
    ready: int = 3,
    updated: int = 3,
    current_revision: str = "db-7b5c9d8f6",
    update_revision: str = "db-7b5c9d8f6",
    strategy: str = "RollingUpdate",
    partition: int | None = 0,
) -> dict[str, Any]:
    update: dict[str, Any] = {"type": strategy}
    if strategy == "RollingUpdate" and partition is not None:
        update["rollingUpdate"] = {"partition": partition}
    status = drop_zero(
        {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": replicas - updated
            if current_revision != update_revision
            else replicas,
            "updatedReplicas": updated,
        }
    )
    status.update(
        {
            "currentRevision": current_revision,
            "updateRevision": update_revision,
            "collisionCount": 0,
        }
    )
    spec = {
        "replicas": replicas,
        "podManagementPolicy": "OrderedReady",
        "selector": {"matchLabels": {"app": "db"}},
        "updateStrategy": update,
    }
    return workload(
        "StatefulSet",
        "db",
        {"app": OWNED},
        namespace=NS,
        spec=spec,
        metadata={"generation": generation},
        status=status,
    )


CRONJOB_OBJ: dict[str, Any] = workload(
    "CronJob",
    "report",
    {"app": OWNED},
    namespace=NS,
    pod={"restartPolicy": "OnFailure"},
    spec={"schedule": "*/5 * * * *"},
    metadata={"generation": 2},
    status={"lastScheduleTime": at(-300)},
)

WAITING, DONE, NONE = Progress.WAITING, Progress.DONE, Progress.NONE_NEEDED

ROLLOUT_ROWS = [
    # Deployment (DeploymentStatusViewer)
    pytest.param(
        "Deployment",
        deployment_obj(generation=3, observed=2),
        0,
        WAITING,
        "Waiting for deployment spec update to be observed",
        False,
        id="deployment-spec-not-observed",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(updated=1, total=4, available=3, progressing="ProgressDeadlineExceeded"),
        0,
        WAITING,
        "deployment 'web' exceeded its progress deadline",
        True,
        id="deployment-progress-deadline-exceeded",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(updated=1, total=4, available=3),
        0,
        WAITING,
        "1 out of 3 new replicas have been updated",
        False,
        id="deployment-updated-below-replicas",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(updated=3, total=4, available=3),
        0,
        WAITING,
        "1 old replicas are pending termination",
        False,
        id="deployment-old-replicas-pending-termination",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(updated=3, total=3, available=2),
        0,
        WAITING,
        "2 of 3 updated replicas are available",
        False,
        id="deployment-available-below-updated",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(),
        0,
        DONE,
        "deployment 'web' successfully rolled out",
        False,
        id="deployment-done",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(updated=0, total=3, available=3),
        0,
        WAITING,
        "0 out of 3 new replicas have been updated",
        False,
        id="deployment-zero-counts-omitted-by-the-api",
    ),
    # DaemonSet (DaemonSetStatusViewer)
    pytest.param(
        "DaemonSet",
        daemon_set_obj(generation=3, observed=2),
        0,
        WAITING,
        "Waiting for daemon set spec update to be observed",
        False,
        id="daemonset-spec-not-observed",
    ),
    pytest.param(
        "DaemonSet",
        daemon_set_obj(updated=1, available=3),
        0,
        WAITING,
        "1 out of 3 new pods have been updated",
        False,
        id="daemonset-updated-below-desired",
    ),
    pytest.param(
        "DaemonSet",
        daemon_set_obj(updated=3, available=2),
        0,
        WAITING,
        "2 of 3 updated pods are available",
        False,
        id="daemonset-available-below-desired",
    ),
    pytest.param(
        "DaemonSet",
        daemon_set_obj(),
        0,
        DONE,
        "daemon set 'agent' successfully rolled out",
        False,
        id="daemonset-done",
    ),
    pytest.param(
        "DaemonSet",
        daemon_set_obj(updated=0, available=0, strategy="OnDelete"),
        0,
        NONE,
        "needs no rollout (on_delete)",
        False,
        id="daemonset-on-delete",
    ),
    # StatefulSet (StatefulSetStatusViewer)
    pytest.param(
        "StatefulSet",
        {**stateful_set_obj(generation=1), "status": {"replicas": 3}},
        0,
        WAITING,
        "Waiting for statefulset spec update to be observed",
        False,
        id="statefulset-observed-generation-zero",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(generation=3, observed=2),
        0,
        WAITING,
        "Waiting for statefulset spec update to be observed",
        False,
        id="statefulset-spec-not-observed",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(ready=2, updated=1, update_revision="db-84c6f7d5b"),
        0,
        WAITING,
        "Waiting for 1 pods to be ready",
        False,
        id="statefulset-ready-below-replicas",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(partition=1, updated=1, update_revision="db-84c6f7d5b"),
        0,
        WAITING,
        "Waiting for partitioned roll out to finish: 1 out of 2 new pods have been updated",
        False,
        id="statefulset-partition-not-reached",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(partition=1, updated=2, update_revision="db-84c6f7d5b"),
        0,
        DONE,
        "partitioned roll out complete: 2 new pods have been updated",
        False,
        id="statefulset-partition-reached",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(updated=2, update_revision="db-84c6f7d5b"),
        0,
        WAITING,
        "2 out of 3 new pods have been updated",
        False,
        id="statefulset-default-partition-zero-not-reached",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(partition=None, updated=2, update_revision="db-84c6f7d5b"),
        0,
        WAITING,
        "waiting for statefulset rolling update to complete 2 pods at revision db-84c6f7d5b",
        False,
        id="statefulset-revisions-differ-without-rolling-update",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(partition=None),
        0,
        DONE,
        "rolling update complete at revision db-7b5c9d8f6",
        False,
        id="statefulset-done-without-rolling-update",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(strategy="OnDelete", updated=0, update_revision="db-84c6f7d5b"),
        0,
        NONE,
        "needs no rollout (on_delete)",
        False,
        id="statefulset-on-delete",
    ),
    # Ours
    pytest.param(
        "Deployment",
        deployment_obj(updated=1, total=3, available=3, paused=True),
        0,
        NONE,
        "deployment 'web' needs no rollout (paused)",
        False,
        id="deployment-paused",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(replicas=0, updated=0, total=1, available=1),
        0,
        NONE,
        "needs no rollout (zero_replicas)",
        False,
        id="deployment-zero-replicas",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(replicas=0, ready=0, updated=0),
        0,
        NONE,
        "needs no rollout (zero_replicas)",
        False,
        id="statefulset-zero-replicas",
    ),
    pytest.param(
        "CronJob", CRONJOB_OBJ, 0, NONE, "needs no rollout (cronjob)", False, id="cronjob"
    ),
    pytest.param(
        "Deployment",
        deployment_obj(generation=2, observed=2),
        3,
        WAITING,
        "Waiting for deployment spec update to be observed",
        False,
        id="deployment-patch-generation-not-observed-yet",
    ),
    pytest.param(
        "Deployment",
        deployment_obj(generation=3, observed=3),
        2,
        DONE,
        "successfully rolled out",
        False,
        id="deployment-later-generation-observed",
    ),
    pytest.param(
        "DaemonSet",
        daemon_set_obj(generation=2, observed=2),
        3,
        WAITING,
        "Waiting for daemon set spec update to be observed",
        False,
        id="daemonset-patch-generation-not-observed-yet",
    ),
    pytest.param(
        "StatefulSet",
        stateful_set_obj(generation=2, observed=2),
        3,
        WAITING,
        "Waiting for statefulset spec update to be observed",
        False,
        id="statefulset-patch-generation-not-observed-yet",
    ),
]


@pytest.mark.parametrize(
    ("kind", "obj", "generation", "progress", "message", "deadline"), ROLLOUT_ROWS
)
def test_rollout_status_follows_kubectl(
    kind: str,
    obj: dict[str, Any],
    generation: int,
    progress: Progress,
    message: str,
    deadline: bool,
) -> None:
    status = rollout_status(kind, obj, generation)
    assert status.progress == progress, status.message
    assert message in status.message
    assert status.deadline_exceeded is deadline


def test_rollout_status_of_an_empty_object_never_raises() -> None:
    assert rollout_status("Deployment", {}).progress == DONE
    assert rollout_status("StatefulSet", {}).progress == WAITING  # observedGeneration 0
    assert rollout_status("Job", {"metadata": {"name": "x"}}).progress == NONE


# --- exemption and Workload.from_api ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "obj", "expected"),
    [
        pytest.param("CronJob", CRONJOB_OBJ, "cronjob", id="cronjob"),
        pytest.param("Deployment", deployment_obj(paused=True), "paused", id="paused"),
        pytest.param("Deployment", deployment_obj(replicas=0), "zero_replicas", id="deploy-zero"),
        pytest.param("Deployment", deployment_obj(), None, id="deployment"),
        pytest.param(
            "StatefulSet", stateful_set_obj(strategy="OnDelete"), "on_delete", id="sts-on-delete"
        ),
        pytest.param("StatefulSet", stateful_set_obj(replicas=0), "zero_replicas", id="sts-zero"),
        pytest.param("StatefulSet", stateful_set_obj(), None, id="statefulset"),
        pytest.param(
            "DaemonSet", daemon_set_obj(strategy="OnDelete"), "on_delete", id="ds-on-delete"
        ),
        pytest.param("DaemonSet", daemon_set_obj(), None, id="daemonset"),
        pytest.param(
            "Deployment",
            {**deployment_obj(), "spec": {**deployment_obj()["spec"], "paused": False}},
            None,
            id="paused-false",
        ),
    ],
)
def test_exemption(kind: str, obj: dict[str, Any], expected: str | None) -> None:
    assert exemption(kind, obj) == expected
    workload = Workload.from_api(kind, obj)
    assert workload.exempt == expected
    assert workload.generation == obj["metadata"]["generation"]


def test_workload_without_generation_reads_zero() -> None:
    obj = deployment_obj()
    del obj["metadata"]["generation"]
    assert Workload.from_api("Deployment", obj).generation == 0


# --- selectors, revision pods, new ReplicaSets -----------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param(None, {"app": "web"}, False, id="no-selector-selects-nothing"),
        pytest.param({}, {"app": "web"}, False, id="empty-selector-selects-nothing"),
        pytest.param(
            {"matchLabels": {}, "matchExpressions": []}, {"app": "web"}, False, id="empty-parts"
        ),
        pytest.param({"matchLabels": {"app": "web"}}, {"app": "web", "x": "1"}, True, id="labels"),
        pytest.param({"matchLabels": {"app": "web"}}, {"app": "api"}, False, id="label-differs"),
        pytest.param({"matchLabels": {"app": "web"}}, {}, False, id="label-absent"),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
            id="in",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
            {},
            False,
            id="in-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
            {"tier": "a"},
            False,
            id="notin",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
            {"app": "web"},
            True,
            id="notin-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            {"tier": ""},
            True,
            id="exists",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            {"app": "web"},
            False,
            id="exists-absent",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
            {"app": "web"},
            True,
            id="does-not-exist",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
            {"canary": "true"},
            False,
            id="does-not-exist-present",
        ),
        pytest.param(
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}],
            },
            {"app": "web", "tier": "back"},
            False,
            id="labels-and-expressions-both-needed",
        ),
    ],
)
def test_selector_matches(
    selector: dict[str, Any] | None, labels: dict[str, str], expected: bool
) -> None:
    assert selector_matches(selector, labels) is expected


def container_status(name: str, image: str, state: dict[str, Any]) -> dict[str, Any]:
    running = "running" in state
    return {
        "name": name,
        "image": image,
        "imageID": f"{image}@sha256:{'b' * 64}" if running else "",
        "ready": running,
        "restartCount": 0,
        "started": running,
        "state": state,
        "lastState": {},
    }


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


RUNNING = {"running": {"startedAt": at(30)}}
CREATING = waiting("ContainerCreating")


def pod(
    name: str,
    labels: dict[str, str],
    *,
    image: str = OWNED,
    state: dict[str, Any] | None = None,
    uid: str | None = None,
    node: str | None = NODE,
    init: tuple[str, dict[str, Any]] | None = None,
    owner: tuple[str, str] = ("ReplicaSet", "web-6f7d8b9c4d"),
) -> dict[str, Any]:
    """A core/v1 Pod as listed: container ``app`` (``image``) and sidecar ``side``."""
    spec: dict[str, Any] = {
        "containers": [
            {"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"},
            {"name": "side", "image": SIDE, "imagePullPolicy": "IfNotPresent"},
        ],
        "restartPolicy": "Always",
        "serviceAccountName": "default",
    }
    if init is not None:
        spec["initContainers"] = [{"name": "setup", "image": init[0]}]
    status: dict[str, Any] = {"qosClass": "BestEffort"}
    if node is None:
        status["phase"] = "Pending"
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 "
                "nodes are available: 1 No preemption victims found for incoming pod.",
                "lastTransitionTime": at(10),
            }
        ]
    else:
        spec["nodeName"] = node
        state = state or RUNNING
        status["phase"] = "Running" if "running" in state else "Pending"
        status["hostIP"] = "172.18.0.2"
        status["startTime"] = at(10)
        status["containerStatuses"] = [
            container_status("app", image, state),
            container_status("side", SIDE, RUNNING),
        ]
        if init is not None:
            status["initContainerStatuses"] = [container_status("setup", init[0], init[1])]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid or f"uid-{name}",
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1" if owner[0] != "Job" else "batch/v1",
                    "kind": owner[0],
                    "name": owner[1],
                    "uid": f"uid-{owner[1]}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "creationTimestamp": at(8),
        },
        "spec": spec,
        "status": status,
    }


NEW_HASH, OLD_HASH = "6f7d8b9c4d", "5c7b9d8f6b"
NEW_RS, OLD_RS = f"web-{NEW_HASH}", f"web-{OLD_HASH}"
NEW_POD, NEW_POD2, OLD_POD = f"{NEW_RS}-x2x7q", f"{NEW_RS}-k9zpl", f"{OLD_RS}-4mqrs"


def web_labels(template_hash: str = NEW_HASH) -> dict[str, str]:
    return {"app": "web", "pod-template-hash": template_hash}


def db_labels(name: str, revision: str = "db-84c6f7d5b") -> dict[str, str]:
    return {
        "app": "db",
        "controller-revision-hash": revision,
        "statefulset.kubernetes.io/pod-name": name,
        "apps.kubernetes.io/pod-index": name.rsplit("-", 1)[1],
    }


def job_labels(job: str, *, legacy_only: bool = False) -> dict[str, str]:
    labels = {"controller-uid": f"uid-{job}", "job-name": job}
    if not legacy_only:
        labels |= {"batch.kubernetes.io/controller-uid": f"uid-{job}"}
        labels |= {"batch.kubernetes.io/job-name": job}
    return labels


WEB = PendingSwitch(
    kind="Deployment",
    namespace=NS,
    name="web",
    uid="d-web",
    generation=2,
    containers=(SwitchedContainer("app", ORIGINAL, OWNED),),
    started=STARTED,
)
DB = PendingSwitch(
    "StatefulSet", NS, "db", "s-db", 2, (SwitchedContainer("app", ORIGINAL, OWNED),), STARTED
)
REPORT = PendingSwitch(
    "CronJob", NS, "report", "c-report", 2, (SwitchedContainer("app", ORIGINAL, OWNED),), STARTED
)
SELECTORS: dict[str, dict[str, Any] | None] = {
    "Deployment": {"matchLabels": {"app": "web"}},
    "StatefulSet": {"matchLabels": {"app": "db"}},
    "CronJob": None,
}


def test_revision_pods_by_selector_and_owned_references() -> None:
    pods = [
        pod(NEW_POD, web_labels()),
        pod(OLD_POD, web_labels(OLD_HASH), image=ORIGINAL, owner=("ReplicaSet", OLD_RS)),
        pod("api-1-abcde", {"app": "api", "pod-template-hash": NEW_HASH}),  # other workload
        pod(NEW_POD2, web_labels()),
    ]
    names = [p["metadata"]["name"] for p in revision_pods(pods, WEB, SELECTORS["Deployment"])]
    assert names == [NEW_POD, NEW_POD2]


def test_revision_pods_with_match_expressions() -> None:
    selector = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "www"]}]}
    pods = [
        pod(NEW_POD, web_labels()),
        pod("www-1", {"app": "www"}),
        pod("db-0", db_labels("db-0")),
    ]
    names = [p["metadata"]["name"] for p in revision_pods(pods, WEB, selector)]
    assert names == [NEW_POD, "www-1"]


def test_revision_pods_of_a_cronjob_are_those_of_its_jobs() -> None:
    owner = ("Job", "report-28571520")
    pods = [
        pod("report-28571520-abcde", job_labels("report-28571520"), owner=owner),
        pod("report-28571525-fghij", job_labels("report-28571525", legacy_only=True)),
        pod("report-manual-x1-klmno", job_labels("report-manual-x1")),  # kubectl create job
        pod("report-1-28571520-pqrst", job_labels("report-1-28571520")),  # CronJob report-1
        pod("reporter-28571520-uvwxy", job_labels("reporter-28571520")),
        pod("report-28571510-zzzzz", job_labels("report-28571510"), image=ORIGINAL),  # before
        pod("web-x", {"app": "web"}),
    ]
    names = [p["metadata"]["name"] for p in revision_pods(pods, REPORT, None)]
    assert names == ["report-28571520-abcde", "report-28571525-fghij"]


def replica_set(
    name: str, image: str, *, owner_uid: str = "d-web", owner_name: str = "web"
) -> dict[str, Any]:
    template_hash = name.rsplit("-", 1)[1]
    labels = {"app": "web", "pod-template-hash": template_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "2"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": owner_name,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": image}, {"name": "side", "image": SIDE}]
                },
            },
        },
        "status": {"replicas": 1, "observedGeneration": 1},
    }


REPLICA_SETS = [replica_set(OLD_RS, ORIGINAL), replica_set(NEW_RS, OWNED)]


def test_new_replica_sets() -> None:
    sets = [
        *REPLICA_SETS,
        replica_set("web-77aa88bb99", OWNED, owner_uid="d-web-before"),  # a deleted namesake's
        replica_set("api-5d6e7f8a9b", OWNED, owner_name="api", owner_uid="d-api"),
    ]
    assert new_replica_sets(sets, WEB) == [NEW_RS]
    without_uid = PendingSwitch("Deployment", NS, "web", "", 2, WEB.containers, STARTED)
    assert new_replica_sets(sets, without_uid) == [NEW_RS, "web-77aa88bb99"]


# --- Messages -----------------------------------------------------------------------------


def err_401(ref: str) -> str:
    return (
        f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
        f"pulling from host {HOST} failed with status code [manifests 1]: 401 Unauthorized"
    )


def failed_401(ref: str) -> str:
    return f'Failed to pull image "{ref}": {err_401(ref)}'


def failed_not_found(ref: str) -> str:
    return (
        f'Failed to pull image "{ref}": rpc error: code = NotFound desc = failed to pull and '
        f'unpack image "{ref}": failed to resolve reference "{ref}": {ref}: not found'
    )


VAP = (
    f'Error creating: pods "{NEW_RS}-7xk2p" is forbidden: ValidatingAdmissionPolicy '
    "'deny-owned' with binding 'deny-owned' denied request: failed expression: "
    f"object.spec.containers.all(c, !c.image.startsWith('{HOST}/'))"
)
WEBHOOK = (
    'Error creating: admission webhook "policy.sigstore.dev" denied the request: validation '
    f"failed: no matching signatures:\nspec.containers[0].image\n{OWNED}"
)
QUOTA = (
    f'Error creating: pods "{NEW_RS}-7xk2p" is forbidden: exceeded quota: compute, requested: '
    "limits.cpu=2, used: limits.cpu=4, limited: limits.cpu=5"
)
POD_SECURITY = (
    f'Error creating: pods "{NEW_RS}-7xk2p" is forbidden: violates PodSecurity '
    '"restricted:latest": allowPrivilegeEscalation != false (container "app" must set '
    "securityContext.allowPrivilegeEscalation=false)"
)
SERVICE_ACCOUNT = (
    f'Error creating: pods "{NEW_RS}-7xk2p" is forbidden: error looking up service account '
    'shop/web: serviceaccount "web" not found'
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(failed_401(OWNED), True, id="containerd-401"),
        pytest.param(
            f'Failed to pull image "{OWNED}": rpc error: code = Unknown desc = failed to pull '
            f'and unpack image "{OWNED}": failed to resolve reference "{OWNED}": unexpected '
            "status from HEAD request to https://127.0.0.1:5001/v2/mirror/manifests/1.25: "
            "403 Forbidden",
            True,
            id="containerd-403",
        ),
        pytest.param(
            f'Failed to pull image "{OWNED}": Error response from daemon: Head "https://'
            f'{HOST}/v2/x/manifests/1": no basic auth credentials',
            True,
            id="no-basic-auth-credentials",
        ),
        pytest.param(
            "denied: requested access to the resource is denied", True, id="docker-denied"
        ),
        pytest.param(
            f"reading manifest 1.25 in {HOST}/mirror/x: unauthorized: authentication required",
            True,
            id="cri-o-unauthorized",
        ),
        pytest.param("unexpected status code 401", True, id="bare-code-at-the-end"),
        pytest.param(failed_not_found(OWNED), False, id="not-found"),
        pytest.param(failed_not_found(PINNED), False, id="not-found-digest-holding-401-403"),
        pytest.param(
            failed_not_found(f"{HOST}/mirror/app:403"), False, id="not-found-tag-named-403"
        ),
        pytest.param(
            f'Failed to pull image "{OWNED}": dial tcp {HOST}: connect: connection refused',
            False,
            id="connection-refused",
        ),
        pytest.param(
            f'Failed to pull image "{OWNED}": tls: failed to verify certificate: x509: '
            "certificate signed by unknown authority",
            False,
            id="x509",
        ),
    ],
)
def test_is_auth_failure(message: str, expected: bool) -> None:
    assert is_auth_failure(message) is expected


@pytest.mark.parametrize(
    ("message", "hosts", "expected"),
    [
        pytest.param(VAP, (), True, id="validating-admission-policy"),
        pytest.param(WEBHOOK, (), True, id="webhook"),
        pytest.param(QUOTA, (HOST,), False, id="quota-not-ours"),
        pytest.param(POD_SECURITY, (HOST,), False, id="pod-security-not-ours"),
        pytest.param(SERVICE_ACCOUNT, (HOST,), False, id="service-account-not-ours"),
        pytest.param(
            f'Error creating: pods "x" is forbidden: image {OWNED} is not allowed',
            (HOST,),
            True,
            id="forbidden-naming-an-owned-host",
        ),
        pytest.param(
            f'Error creating: pods "x" is forbidden: image {OWNED} is not allowed',
            (),
            False,
            id="forbidden-without-owned-hosts",
        ),
        pytest.param(
            'Error creating: admission webhook "resourcequotas.quota.example.com" denied the '
            f'request: pods "x" is forbidden: exceeded quota: compute, image {OWNED}',
            (HOST,),
            False,
            id="quota-forwarded-by-a-webhook-not-ours",
        ),
        pytest.param(
            'Error creating: pods "x" is forbidden: node selector conflict',
            ("owned.example.com",),
            False,
            id="forbidden-not-about-the-image",
        ),
    ],
)
def test_is_admission_denial(message: str, hosts: tuple[str, ...], expected: bool) -> None:
    assert is_admission_denial(message, hosts) is expected


# --- classify ---------------------------------------------------------------------------


def event(
    kind: str,
    name: str,
    reason: str,
    message: str,
    *,
    first: float,
    last: float | None = None,
    count: int = 1,
    uid: str | None = None,
    component: str = "kubelet",
    warning: bool = True,
) -> dict[str, Any]:
    """A core/v1 Event as listed (the kubelet's and the controllers' recorder)."""
    involved: dict[str, Any] = {
        "apiVersion": "v1" if kind == "Pod" else "apps/v1",
        "kind": kind,
        "name": name,
        "namespace": NS,
        "uid": uid or f"uid-{name}",
        "resourceVersion": "5012",
    }
    if kind == "Pod":
        involved["fieldPath"] = "spec.containers{app}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{name}.17cbb2a1{reason.lower()}",
            "namespace": NS,
            "creationTimestamp": at(first),
        },
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "source": {"component": component, **({"host": NODE} if component == "kubelet" else {})},
        "firstTimestamp": at(first),
        "lastTimestamp": at(first if last is None else last),
        "count": count,
        "type": "Warning" if warning else "Normal",
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": NODE if component == "kubelet" else "",
    }


def pull_events(
    pod_name: str, ref: str, *, count: int, first: float = 5, uid: str | None = None
) -> list[dict[str, Any]]:
    """What the kubelet records for a pull refused with 401, ``count`` attempts."""
    last = first + 15 * (count - 1)
    return [
        event(
            "Pod",
            pod_name,
            "Pulling",
            f'Pulling image "{ref}"',
            first=first - 1,
            last=last,
            count=count,
            uid=uid,
            warning=False,
        ),
        event(
            "Pod",
            pod_name,
            "Failed",
            failed_401(ref),
            first=first,
            last=last,
            count=count,
            uid=uid,
        ),
        event(
            "Pod",
            pod_name,
            "Failed",
            "Error: ErrImagePull",
            first=first,
            last=last,
            count=count,
            uid=uid,
        ),
        event(
            "Pod",
            pod_name,
            "BackOff",
            f'Back-off pulling image "{ref}"',
            first=first + 1,
            last=last + 1,
            count=count,
            uid=uid,
            warning=False,
        ),
        event(
            "Pod",
            pod_name,
            "Failed",
            "Error: ImagePullBackOff",
            first=first + 1,
            last=last + 1,
            count=count,
            uid=uid,
        ),
    ]


def failed_create(
    kind: str, name: str, message: str, *, first: float, last: float | None = None
) -> dict[str, Any]:
    component = "replicaset-controller" if kind == "ReplicaSet" else "statefulset-controller"
    return event(
        kind, name, "FailedCreate", message, first=first, last=last, count=4, component=component
    )


ERR_PULL = waiting("ErrImagePull", err_401(OWNED))
BACKOFF = waiting("ImagePullBackOff", f'Back-off pulling image "{OWNED}"')
CRASH = waiting(
    "CrashLoopBackOff",
    f"back-off 5m0s restarting failed container=app pod={NEW_POD}_shop(uid-{NEW_POD})",
)
OLD_RUNNING = pod(OLD_POD, web_labels(OLD_HASH), image=ORIGINAL, owner=("ReplicaSet", OLD_RS))

STATUS_WAITING = rollout_status("Deployment", deployment_obj(updated=1, total=4, available=3))
STATUS_DEADLINE = rollout_status(
    "Deployment",
    deployment_obj(updated=1, total=4, available=3, progressing="ProgressDeadlineExceeded"),
)
STATUS_DONE = rollout_status("Deployment", deployment_obj())
STATUS_STS = rollout_status(
    "StatefulSet", stateful_set_obj(ready=2, updated=0, update_revision="db-84c6f7d5b")
)
STATUS_CRON = rollout_status("CronJob", CRONJOB_OBJ)

NOTHING = (None, False, False, False)
LIMITS = Limits(pull_failure_grace=60.0, timeout=600.0)


@dataclass(frozen=True)
class Row:
    """One case of ``classify``: the namespace as listed, and the verdict expected.

    ``expect`` is ``(cause, namespace_wide, symptom, slow)``; ``message`` must
    be in the verdict's message; ``since`` (seconds after the switch) is
    checked when given.
    """

    id: str
    pods: list[dict[str, Any]]
    events: list[dict[str, Any]]
    now: float
    expect: tuple[str | None, bool, bool, bool]
    message: str = ""
    since: float | None = None
    status: RolloutStatus = STATUS_WAITING
    switch: PendingSwitch = WEB
    first_seen: float | None = None
    limits: Limits = LIMITS
    replica_sets: list[dict[str, Any]] = field(default_factory=lambda: REPLICA_SETS)


CLASSIFY_ROWS = [
    Row(
        "one-pull-attempt-within-grace-is-a-symptom",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), state=ERR_PULL)],
        pull_events(NEW_POD, OWNED, count=1),
        now=20,
        expect=(None, True, True, False),
        message=f'Failed to pull image "{OWNED}"',
        since=5,
    ),
    Row(
        "two-pull-attempts-401-owned-pull-failed-namespace-wide",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), state=BACKOFF)],
        pull_events(NEW_POD, OWNED, count=2),
        now=25,
        expect=(OWNED_PULL_FAILED, True, True, False),
        message="401 Unauthorized",
        since=5,
    ),
    Row(
        "two-pods-one-attempt-each",
        [
            pod(NEW_POD, web_labels(), state=ERR_PULL),
            pod(NEW_POD2, web_labels(), state=ERR_PULL),
        ],
        [*pull_events(NEW_POD, OWNED, count=1), *pull_events(NEW_POD2, OWNED, count=1, first=7)],
        now=12,
        expect=(OWNED_PULL_FAILED, True, True, False),
        since=5,
    ),
    Row(
        "not-found-twice-is-about-this-workload-only",
        [pod(NEW_POD, web_labels(), image=PINNED, state=waiting("ErrImagePull", "not found"))],
        [
            event("Pod", NEW_POD, "Failed", failed_not_found(PINNED), first=5, last=20, count=2),
            event("Pod", NEW_POD, "Failed", "Error: ErrImagePull", first=5, last=20, count=2),
        ],
        now=25,
        expect=(OWNED_PULL_FAILED, False, True, False),
        message="not found",
        switch=PendingSwitch(
            "Deployment",
            NS,
            "web",
            "d-web",
            2,
            (SwitchedContainer("app", "redis", PINNED),),
            STARTED,
        ),
    ),
    Row(
        "grace-passed-with-one-attempt",
        [pod(NEW_POD, web_labels(), state=BACKOFF)],
        pull_events(NEW_POD, OWNED, count=1),
        now=70,
        expect=(OWNED_PULL_FAILED, True, True, False),
        since=5,
    ),
    Row(
        "grace-counted-from-first-seen-when-no-event-dates-it",
        [pod(NEW_POD, web_labels(), state=BACKOFF)],
        [],
        now=75,
        first_seen=STARTED + 10,
        expect=(OWNED_PULL_FAILED, False, True, False),
        message="ImagePullBackOff",
        since=10,
    ),
    Row(
        "waiting-without-events-first-sign-is-now",
        [pod(NEW_POD, web_labels(), state=ERR_PULL)],
        [],
        now=15,
        expect=(None, True, True, False),
        message="ErrImagePull: failed to pull and unpack image",
        since=15,
    ),
    Row(
        "pull-failure-of-an-unswitched-sidecar-is-not-ours",
        [
            {
                **pod(NEW_POD, web_labels()),
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [
                        container_status("app", OWNED, RUNNING),
                        container_status("side", SIDE, waiting("ErrImagePull", err_401(SIDE))),
                    ],
                },
            }
        ],
        [
            event("Pod", NEW_POD, "Failed", failed_401(SIDE), first=5, last=30, count=3),
            event("Pod", NEW_POD, "Failed", "Error: ErrImagePull", first=5, last=30, count=3),
        ],
        now=40,
        expect=NOTHING,
    ),
    Row(
        "pods-of-the-old-revision-failing-are-not-selected",
        [
            pod(OLD_POD, web_labels(OLD_HASH), image=ORIGINAL, state=BACKOFF),
            pod(NEW_POD, web_labels(), state=CREATING),
        ],
        [
            event("Pod", OLD_POD, "Failed", failed_401(ORIGINAL), first=5, last=40, count=4),
            event("Pod", OLD_POD, "Failed", failed_401(OWNED), first=-900, last=-800, count=4),
        ],
        now=45,
        expect=NOTHING,
    ),
    Row(
        "earlier-failed-attempts-of-a-pod-that-pulled-in-the-end",
        [
            pod(NEW_POD, web_labels(), state=RUNNING),
            pod(NEW_POD2, web_labels(), state=CREATING),
        ],
        pull_events(NEW_POD, OWNED, count=2),
        now=90,
        expect=NOTHING,
    ),
    Row(
        "admission-policy-denies-the-new-replica-set",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", NEW_RS, VAP, first=3, last=40)],
        now=45,
        expect=(ADMISSION_DENIED, True, True, False),
        message="ValidatingAdmissionPolicy 'deny-owned'",
        since=3,
    ),
    Row(
        "admission-webhook-denies-the-new-replica-set",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", NEW_RS, WEBHOOK, first=2)],
        now=5,
        expect=(ADMISSION_DENIED, True, True, False),
        message='admission webhook "policy.sigstore.dev" denied the request',
        since=2,
    ),
    Row(
        "admission-denial-on-an-old-replica-set-is-ignored",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", OLD_RS, VAP, first=3, last=40)],
        now=45,
        expect=NOTHING,
    ),
    Row(
        "admission-denial-before-the-switch-is-ignored",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", NEW_RS, VAP, first=-1800, last=-1200)],
        now=45,
        expect=NOTHING,
    ),
    Row(
        "quota-is-not-ours",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", NEW_RS, QUOTA, first=3, last=40)],
        now=45,
        expect=NOTHING,
    ),
    Row(
        "quota-after-the-timeout-is-slow",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", NEW_RS, QUOTA, first=3, last=590)],
        now=601,
        expect=(None, False, False, True),
        message="1 out of 3 new replicas have been updated",
    ),
    Row(
        "pod-security-is-not-ours",
        [OLD_RUNNING],
        [failed_create("ReplicaSet", NEW_RS, POD_SECURITY, first=3, last=40)],
        now=45,
        expect=NOTHING,
    ),
    Row(
        "pending-without-a-node-after-the-timeout-is-slow",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), node=None)],
        [
            event(
                "Pod",
                NEW_POD,
                "FailedScheduling",
                "0/1 nodes are available: 1 Insufficient cpu.",
                first=1,
                last=550,
                count=12,
                component="default-scheduler",
            )
        ],
        now=650,
        expect=(None, False, False, True),
    ),
    Row(
        "crash-loop-after-the-timeout-is-slow",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), state=CRASH)],
        [
            event(
                "Pod",
                NEW_POD,
                "BackOff",
                f"Back-off restarting failed container app in pod {NEW_POD}_shop(uid-{NEW_POD})",
                first=40,
                last=590,
                count=30,
            )
        ],
        now=600,
        expect=(None, False, False, True),
    ),
    Row(
        "crash-loop-within-the-timeout-is-nothing-yet",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), state=CRASH)],
        [],
        now=300,
        expect=NOTHING,
    ),
    Row(
        "symptom-present-and-the-timeout-passed-is-progress-deadline",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), state=BACKOFF)],
        pull_events(NEW_POD, OWNED, count=1),
        now=610,
        limits=Limits(pull_failure_grace=900.0, timeout=600.0),
        expect=(PROGRESS_DEADLINE, True, True, False),
        since=5,
    ),
    Row(
        "progress-deadline-exceeded-without-owned-failure-is-slow",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), node=None)],
        [],
        now=120,
        status=STATUS_DEADLINE,
        expect=(None, False, False, True),
        message="exceeded its progress deadline",
    ),
    Row(
        "progress-deadline-exceeded-with-owned-failure-is-owned-pull-failed",
        [OLD_RUNNING, pod(NEW_POD, web_labels(), state=BACKOFF)],
        pull_events(NEW_POD, OWNED, count=2),
        now=120,
        status=STATUS_DEADLINE,
        expect=(OWNED_PULL_FAILED, True, True, False),
    ),
    Row(
        "complete-rollout-has-no-verdict",
        [pod(NEW_POD, web_labels()), pod(NEW_POD2, web_labels(), state=BACKOFF)],
        [
            *pull_events(NEW_POD2, OWNED, count=5),
            failed_create("ReplicaSet", NEW_RS, VAP, first=3),
        ],
        now=900,
        status=STATUS_DONE,
        expect=NOTHING,
    ),
    Row(
        "statefulset-pod-name-reused-events-of-the-pod-before-are-not-counted",
        [
            pod("db-0", db_labels("db-0", "db-7b5c9d8f6"), image=ORIGINAL),
            pod("db-1", db_labels("db-1"), state=BACKOFF, uid="uid-db-1-second"),
        ],
        pull_events("db-1", OWNED, count=4, first=-1500, uid="uid-db-1-first"),
        now=20,
        switch=DB,
        status=STATUS_STS,
        expect=(None, False, True, False),
        message="ImagePullBackOff",
        since=20,
    ),
    Row(
        "statefulset-pull-attempts-of-the-pod-itself",
        [
            pod("db-0", db_labels("db-0", "db-7b5c9d8f6"), image=ORIGINAL),
            pod("db-1", db_labels("db-1"), state=BACKOFF, uid="uid-db-1-second"),
        ],
        [
            *pull_events("db-1", OWNED, count=4, first=-1500, uid="uid-db-1-first"),
            *pull_events("db-1", OWNED, count=2, first=6, uid="uid-db-1-second"),
        ],
        now=25,
        switch=DB,
        status=STATUS_STS,
        expect=(OWNED_PULL_FAILED, True, True, False),
        since=6,
    ),
    Row(
        "statefulset-admission-denied",
        [pod("db-0", db_labels("db-0", "db-7b5c9d8f6"), image=ORIGINAL)],
        [
            failed_create(
                "StatefulSet",
                "db",
                'create Pod db-1 in StatefulSet db failed error: pods "db-1" is forbidden: '
                "ValidatingAdmissionPolicy 'deny-owned' with binding 'deny-owned' denied "
                "request: failed expression: object.spec.containers.all(c, ...)",
                first=4,
            )
        ],
        now=10,
        switch=DB,
        status=STATUS_STS,
        expect=(ADMISSION_DENIED, True, True, False),
        since=4,
    ),
    Row(
        "cronjob-job-pod-cannot-pull",
        [
            pod(
                "report-28571520-abcde",
                job_labels("report-28571520"),
                state=BACKOFF,
                owner=("Job", "report-28571520"),
            )
        ],
        pull_events("report-28571520-abcde", OWNED, count=2),
        now=30,
        switch=REPORT,
        status=STATUS_CRON,
        expect=(OWNED_PULL_FAILED, True, True, False),
    ),
    Row(
        "cronjob-job-pods-denied-by-admission",
        [],
        [
            failed_create(
                "Job",
                "report-28571520",
                'Error creating: pods "report-28571520-abcde" is forbidden: '
                "ValidatingAdmissionPolicy 'deny-owned' with binding 'deny-owned' "
                "denied request: failed expression",
                first=12,
            ),
            failed_create(  # a Job of another CronJob whose name only starts the same
                "Job", "report-extra-28571520", "admission webhook denied the request", first=12
            ),
        ],
        now=30,
        switch=REPORT,
        status=STATUS_CRON,
        expect=(ADMISSION_DENIED, True, True, False),
        message="report-28571520-abcde",
    ),
    Row(
        "cronjob-not-run-yet-is-never-slow",
        [],
        [],
        now=7200,
        switch=REPORT,
        status=STATUS_CRON,
        expect=NOTHING,
    ),
]


@pytest.mark.parametrize("row", CLASSIFY_ROWS, ids=lambda row: row.id)
def test_classify(row: Row) -> None:
    switch = row.switch
    pods = revision_pods(row.pods, switch, SELECTORS[switch.kind])
    if switch.kind == "Deployment":
        creators = [("ReplicaSet", n) for n in new_replica_sets(row.replica_sets, switch)]
    else:
        creators = [(switch.kind, switch.name)]
    verdict = classify(
        switch,
        row.status,
        pods,
        row.events,
        creators,
        STARTED + row.now,
        row.limits,
        row.first_seen,
        (HOST,),
    )
    if row.expect == NOTHING:
        assert verdict == Verdict()
        return
    assert (verdict.cause, verdict.namespace_wide, verdict.symptom, verdict.slow) == row.expect
    assert row.message in verdict.message
    if row.since is not None:
        assert verdict.since == STARTED + row.since


def test_classify_reads_the_series_count_of_new_style_events() -> None:
    one = event("Pod", NEW_POD, "Failed", failed_401(OWNED), first=5, count=1)
    one["series"] = {"count": 2, "lastObservedTime": at(20)}
    pods = [pod(NEW_POD, web_labels(), state=ERR_PULL)]
    verdict = classify(WEB, STATUS_WAITING, pods, [one], [], STARTED + 21, LIMITS)
    assert verdict.cause == OWNED_PULL_FAILED


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param([], False, id="no-job-yet"),
        pytest.param([pod("report-1-a", {}, state=RUNNING)], True, id="running"),
        pytest.param(
            [pod("report-1-a", {}, state={"terminated": {"exitCode": 0, "reason": "Completed"}})],
            True,
            id="completed",
        ),
        pytest.param([pod("report-1-a", {}, state=BACKOFF)], False, id="cannot-pull"),
        pytest.param(
            [pod("report-1-a", {}, state=BACKOFF), pod("report-2-b", {}, state=RUNNING)],
            True,
            id="a-later-job-ran",
        ),
        pytest.param([pod("report-1-a", {}, node=None)], False, id="not-scheduled"),
    ],
)
def test_cronjob_ran(pods: list[dict[str, Any]], expected: bool) -> None:
    assert cronjob_ran(pods, REPORT) is expected


def test_cronjob_ran_needs_every_switched_container_started() -> None:
    switch = PendingSwitch(
        "CronJob",
        NS,
        "report",
        "c-report",
        2,
        (SwitchedContainer("setup", "alpine:3", f"{HOST}/alpine:3"), *REPORT.containers),
        STARTED,
    )
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    ran = pod("r-1", {}, state=RUNNING, init=(f"{HOST}/alpine:3", done))
    stuck = pod("r-1", {}, state=CREATING, init=(f"{HOST}/alpine:3", BACKOFF))
    assert cronjob_ran([ran], switch) is True
    assert cronjob_ran([stuck], switch) is False


# --- CanaryGate ---------------------------------------------------------------------------

A, B, C = (f"Deployment {NS}/{n}" for n in ("a", "b", "c"))
CANARY_A = PendingSwitch("Deployment", NS, "a", "d-a", 2, WEB.containers, STARTED, canary=True)


def refused(canary: str) -> Admission:
    return Admission(False, reason=f"waiting for the canary {canary} to roll out")


CANARY = Admission(True, canary=True)
ALLOWED = Admission(True)

CANARY_SCRIPTS = [
    pytest.param(
        True,
        [
            ("admit", NS, A, None, CANARY),
            ("admit", NS, B, None, refused(A)),
            ("admit", NS, A, None, CANARY),  # the canary itself, asked again
            ("admit", "other", "Deployment other/x", None, CANARY),
        ],
        id="first-is-the-canary-second-waits",
    ),
    pytest.param(
        True,
        [
            ("admit", NS, f"CronJob {NS}/report", "cronjob", ALLOWED),
            ("admit", NS, f"Deployment {NS}/paused", "paused", ALLOWED),
            ("admit", NS, A, None, CANARY),
            ("admit", NS, f"StatefulSet {NS}/db", "on_delete", ALLOWED),
            ("admit", NS, B, None, refused(A)),
        ],
        id="exempt-admitted-never-canary",
    ),
    pytest.param(
        True,
        [
            ("admit", NS, A, None, CANARY),
            ("completed", NS, A),
            ("admit", NS, B, None, ALLOWED),
            ("admit", NS, C, None, ALLOWED),
            ("admit", "other", "Deployment other/x", None, CANARY),
        ],
        id="after-completed-all-admitted",
    ),
    pytest.param(
        True,
        [
            ("admit", NS, A, None, CANARY),
            ("ended", NS, A),
            ("admit", NS, B, None, CANARY),
            ("admit", NS, A, None, refused(B)),
        ],
        id="after-ended-the-next-is-the-canary",
    ),
    pytest.param(
        True,
        [
            ("admit", NS, A, None, CANARY),
            ("ended", NS, B),
            ("admit", NS, B, None, refused(A)),
        ],
        id="ended-of-another-keeps-the-canary",
    ),
    pytest.param(
        True,
        [
            ("admit", NS, A, None, CANARY),
            ("completed", NS, A),
            ("admit", NS, B, None, ALLOWED),
            ("reset",),
            ("admit", NS, B, None, CANARY),
            ("admit", NS, C, None, refused(B)),
        ],
        id="reset-makes-namespaces-unhealthy",
    ),
    pytest.param(
        False,
        [
            ("admit", NS, A, None, ALLOWED),
            ("admit", NS, B, None, ALLOWED),
            ("restored", CANARY_A),
            ("admit", NS, C, None, ALLOWED),
        ],
        id="disabled-admits-all",
    ),
    pytest.param(
        True,
        [
            ("restored", CANARY_A),
            ("admit", NS, B, None, refused(A)),
            ("admit", NS, A, None, CANARY),
            ("completed", NS, A),
            ("admit", NS, B, None, ALLOWED),
        ],
        id="restored-canary",
    ),
    pytest.param(
        True,
        [
            ("restored", PendingSwitch("Deployment", NS, "a", "d-a", 2, WEB.containers, 0.0)),
            ("admit", NS, B, None, CANARY),
        ],
        id="restored-non-canary-is-not-a-canary",
    ),
]


@pytest.mark.parametrize(("enabled", "script"), CANARY_SCRIPTS)
def test_canary_gate(enabled: bool, script: list[tuple[Any, ...]]) -> None:
    gate = CanaryGate(enabled=enabled)
    for step, (action, *args) in enumerate(script):
        if action == "admit":
            namespace, key, exempt, expected = args
            assert gate.admit(namespace, key, exempt) == expected, f"step {step}: {key}"
        else:
            getattr(gate, action)(*args)


# --- PendingSwitch and Hold -----------------------------------------------------------------

FULL_SWITCH = PendingSwitch(
    kind="StatefulSet",
    namespace=NS,
    name="db",
    uid="s-db",
    generation=7,
    containers=(
        SwitchedContainer("setup", "alpine:3", f"{HOST}/mirror/alpine:3"),
        SwitchedContainer("app", ORIGINAL, PINNED),
    ),
    started=STARTED + 0.25,
    canary=True,
    slow_reported=True,
)
HOLD = Hold(
    reason=OWNED_PULL_FAILED,
    message="401 Unauthorized",
    inputs="cfg-1",
    until=STARTED + 3600,
    copies=((OWNED, "sha256:" + "a" * 64), (PINNED, "sha256:" + "d" * 64)),
)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(FULL_SWITCH, id="switch-full"),
        pytest.param(WEB, id="switch-defaults"),
        pytest.param(HOLD, id="hold"),
        pytest.param(Hold(ADMISSION_DENIED, "", "cfg", 1.5), id="hold-without-copies"),
    ],
)
def test_records_round_trip_through_json(record: PendingSwitch | Hold) -> None:
    text = json.dumps(record.to_json())
    assert type(record).from_json(json.loads(text)) == record


def test_switch_key_and_owned() -> None:
    assert FULL_SWITCH.key == f"StatefulSet {NS}/db"
    assert FULL_SWITCH.owned == {"setup": f"{HOST}/mirror/alpine:3", "app": PINNED}


def test_an_older_switch_entry_reads_with_defaults() -> None:
    raw = {"kind": "Deployment", "namespace": NS, "name": "web", "containers": [["app", "a", "b"]]}
    switch = PendingSwitch.from_json({**raw, "started": "12.5"})
    assert (switch.uid, switch.generation, switch.canary, switch.slow_reported) == (
        "",
        0,
        False,
        False,
    )
    assert switch.started == 12.5


GOOD_SWITCH = FULL_SWITCH.to_json()
GOOD_HOLD = HOLD.to_json()


@pytest.mark.parametrize(
    ("cls", "raw", "error"),
    [
        pytest.param(
            PendingSwitch,
            {k: v for k, v in GOOD_SWITCH.items() if k != "kind"},
            KeyError,
            id="no-kind",
        ),
        pytest.param(
            PendingSwitch, {**GOOD_SWITCH, "containers": []}, ValueError, id="no-containers"
        ),
        pytest.param(
            PendingSwitch, {**GOOD_SWITCH, "containers": None}, TypeError, id="containers-null"
        ),
        pytest.param(
            PendingSwitch,
            {**GOOD_SWITCH, "containers": [["app", "x"]]},
            ValueError,
            id="short-container",
        ),
        pytest.param(
            PendingSwitch, {**GOOD_SWITCH, "started": "soon"}, ValueError, id="bad-started"
        ),
        pytest.param(
            PendingSwitch, {**GOOD_SWITCH, "generation": "seven"}, ValueError, id="bad-generation"
        ),
        pytest.param(
            Hold,
            {k: v for k, v in GOOD_HOLD.items() if k != "inputs"},
            KeyError,
            id="hold-no-inputs",
        ),
        pytest.param(Hold, {**GOOD_HOLD, "until": None}, TypeError, id="hold-until-null"),
        pytest.param(Hold, {**GOOD_HOLD, "copies": [["only-one"]]}, ValueError, id="hold-bad-copy"),
    ],
)
def test_damaged_records_raise(cls: Any, raw: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        cls.from_json(raw)


@pytest.mark.parametrize(
    ("now", "inputs", "digests", "expected"),
    [
        pytest.param(STARTED + 10, "cfg-1", {OWNED: "sha256:" + "a" * 64}, True, id="stands"),
        pytest.param(STARTED + 10, "cfg-1", {OWNED: None, PINNED: None}, True, id="digest-unknown"),
        pytest.param(STARTED + 10, "cfg-1", {}, True, id="digest-not-read"),
        pytest.param(STARTED + 3600, "cfg-1", {}, False, id="expired"),
        pytest.param(STARTED + 10, "cfg-2", {}, False, id="inputs-changed"),
        pytest.param(
            STARTED + 10, "cfg-1", {PINNED: "sha256:" + "f" * 64}, False, id="owned-copy-changed"
        ),
        pytest.param(
            STARTED + 10,
            "cfg-1",
            {"other.example.com/x:1": "sha256:" + "f" * 64},
            True,
            id="another-copy-changed",
        ),
    ],
)
def test_hold_in_force(
    now: float, inputs: str, digests: dict[str, str | None], expected: bool
) -> None:
    assert HOLD.in_force(now, inputs, digests) is expected


# --- undo_patch ------------------------------------------------------------------------------

ORIG_INIT = "docker.io/library/alpine:3.19"
OWNED_INIT = f"{HOST}/mirror/docker.io/library/alpine:3.19"
RECORD = {
    "reason": OWNED_PULL_FAILED,
    "message": "401 Unauthorized",
    "at": "2024-05-02T10:01:00Z",
    "containers": {"app": OWNED},
}


def original_workload(
    kind: str = "Deployment", annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    labels = {"app": "web"}
    metadata: dict[str, Any] = {
        "uid": "d-web",
        "resourceVersion": "4711",
        "generation": 1,
        "labels": labels,
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    return workload(
        kind,
        "web",
        [
            {"name": "app", "image": ORIGINAL, "ports": [{"containerPort": 80}]},
            {"name": "side", "image": SIDE},
        ],
        init={"migrate": ORIG_INIT},
        namespace=NS,
        labels=labels,
        spec={"schedule": "*/5 * * * *"} if kind == "CronJob" else {"replicas": 2},
        metadata=metadata,
    )


def switched(obj: dict[str, Any], kind: str, changes: dict[str, str]) -> dict[str, Any]:
    """The object after ``image_patch`` switched ``changes`` (as the API server would hold it)."""
    workload = Workload.from_api(kind, obj)
    plan = [(c, changes[c.name]) for c in workload.containers if c.name in changes]
    result = jsonpatch.apply_patch(obj, image_patch(workload, plan))
    meta = result["metadata"]
    meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
    meta["generation"] += 1
    return result


def images(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    return {c.name: c.image for c in Workload.from_api(kind, obj).containers}


BOTH = {"app": OWNED, "migrate": OWNED_INIT}


@pytest.mark.parametrize(
    ("kind", "annotations", "switch", "owned", "edit", "restored", "left"),
    [
        pytest.param(
            "Deployment",
            {"deployment.kubernetes.io/revision": "1"},
            BOTH,
            BOTH,
            {},
            {"app": ORIGINAL, "migrate": ORIG_INIT},
            None,
            id="all-restored-annotation-removed",
        ),
        pytest.param(
            "Deployment",
            None,
            BOTH,
            BOTH,
            {},
            {"app": ORIGINAL, "migrate": ORIG_INIT},
            None,
            id="no-other-annotation",
        ),
        pytest.param(
            "Deployment",
            {"team": "shop"},
            BOTH,
            {"app": OWNED},
            {},
            {"app": ORIGINAL, "migrate": OWNED_INIT},
            {"migrate": ORIG_INIT},
            id="an-earlier-switch-stays-recorded",
        ),
        pytest.param(
            "Deployment",
            {"team": "shop"},
            BOTH,
            BOTH,
            {"app": "docker.io/library/nginx:1.27"},
            {"app": "docker.io/library/nginx:1.27", "migrate": ORIG_INIT},
            {"app": ORIGINAL},
            id="changed-since-not-restored",
        ),
        pytest.param(
            "CronJob",
            {"team": "shop"},
            {"app": OWNED},
            {"app": OWNED},
            {},
            {"app": ORIGINAL, "migrate": ORIG_INIT},
            None,
            id="cronjob",
        ),
    ],
)
def test_undo_patch_applied(
    kind: str,
    annotations: dict[str, str] | None,
    switch: dict[str, str],
    owned: dict[str, str],
    edit: dict[str, str],
    restored: dict[str, str],
    left: dict[str, str] | None,
) -> None:
    before = original_workload(kind, annotations)
    now = switched(before, kind, switch)
    if edit:  # someone else changed a container since (another rollout of theirs)
        now = switched(now, kind, {})  # keep the annotation, bump nothing
        for container in Workload.from_api(kind, now).containers:
            if container.name in edit:
                now = jsonpatch.apply_patch(
                    now,
                    [
                        {
                            "op": "replace",
                            "path": container.image_path,
                            "value": edit[container.name],
                        }
                    ],
                )
    originals = {"app": ORIGINAL, "migrate": ORIG_INIT}
    patch = undo_patch(Workload.from_api(kind, now), owned, originals, RECORD)
    assert patch[0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": now["metadata"]["resourceVersion"],
    }
    after = jsonpatch.apply_patch(now, patch)
    assert images(kind, after) == {**restored, "side": SIDE}
    result = after["metadata"]["annotations"]
    assert json.loads(result[UNDONE]) == RECORD
    if left is None:
        assert ORIGINAL_IMAGES not in result
    else:
        assert json.loads(result[ORIGINAL_IMAGES]) == left
    others = {k: v for k, v in result.items() if k not in (UNDONE, ORIGINAL_IMAGES)}
    assert others == (annotations or {})
    # Nothing else moved: the object is the one read, but for images and annotations.
    untouched = copy.deepcopy(after)
    untouched["metadata"]["annotations"] = now["metadata"].get("annotations")
    for container in Workload.from_api(kind, now).containers:
        jsonpatch.apply_patch(
            untouched,
            [{"op": "replace", "path": container.image_path, "value": container.image}],
            in_place=True,
        )
    assert untouched == now


def test_undo_patch_operations() -> None:
    now = switched(original_workload(annotations={"team": "shop"}), "Deployment", BOTH)
    recorded = now["metadata"]["annotations"][ORIGINAL_IMAGES]
    patch = undo_patch(
        Workload.from_api("Deployment", now),
        {"app": OWNED},
        {"app": ORIGINAL, "migrate": ORIG_INIT},
        RECORD,
    )
    spec = "/spec/template/spec"
    assert patch == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "4712"},
        {"op": "test", "path": f"{spec}/containers/0/name", "value": "app"},
        {"op": "test", "path": f"{spec}/containers/0/image", "value": OWNED},
        {"op": "replace", "path": f"{spec}/containers/0/image", "value": ORIGINAL},
        {
            "op": "test",
            "path": "/metadata/annotations/image-cloner.io~1original-images",
            "value": recorded,
        },
        {
            "op": "replace",
            "path": "/metadata/annotations/image-cloner.io~1original-images",
            "value": json.dumps({"migrate": ORIG_INIT}, separators=(",", ":")),
        },
        {
            "op": "add",
            "path": "/metadata/annotations/image-cloner.io~1undone",
            "value": json.dumps(RECORD, sort_keys=True, separators=(",", ":")),
        },
    ]


def test_undo_patch_removes_the_annotation_when_none_is_left() -> None:
    now = switched(original_workload(annotations={"team": "shop"}), "Deployment", {"app": OWNED})
    patch = undo_patch(
        Workload.from_api("Deployment", now), {"app": OWNED}, {"app": ORIGINAL}, RECORD
    )
    path = "/metadata/annotations/image-cloner.io~1original-images"
    assert {"op": "remove", "path": path} in patch
    assert (
        patch.index({"op": "remove", "path": path})
        == patch.index(
            {"op": "test", "path": path, "value": now["metadata"]["annotations"][ORIGINAL_IMAGES]}
        )
        + 1
    )


@pytest.mark.parametrize(
    ("owned", "originals"),
    [
        pytest.param(
            {"app": "docker.io/library/nginx:1.27"}, {"app": ORIGINAL}, id="changed-since"
        ),
        pytest.param({"app": OWNED}, {}, id="no-original-recorded"),
        pytest.param({"gone": OWNED}, {"gone": ORIGINAL}, id="container-gone"),
        pytest.param({}, {}, id="nothing-switched"),
    ],
)
def test_nothing_to_undo(owned: dict[str, str], originals: dict[str, str]) -> None:
    now = switched(original_workload(), "Deployment", {"app": OWNED})
    assert undo_patch(Workload.from_api("Deployment", now), owned, originals, RECORD) == []


def test_undo_patch_is_refused_after_a_concurrent_write() -> None:
    now = switched(original_workload(), "Deployment", {"app": OWNED})
    patch = undo_patch(
        Workload.from_api("Deployment", now), {"app": OWNED}, {"app": ORIGINAL}, RECORD
    )
    later = copy.deepcopy(now)
    later["metadata"]["resourceVersion"] = "4800"  # scaled by an HPA meanwhile
    later["spec"]["replicas"] = 5
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(later, patch)


def test_undo_patch_adds_the_map_when_the_annotations_are_gone() -> None:
    now = switched(original_workload(), "Deployment", {"app": OWNED})
    del now["metadata"]["annotations"]  # dropped since, by a tool that owns the metadata
    patch = undo_patch(
        Workload.from_api("Deployment", now), {"app": OWNED}, {"app": ORIGINAL}, RECORD
    )
    assert patch[-1]["path"] == "/metadata/annotations"
    after = jsonpatch.apply_patch(now, patch)
    assert images("Deployment", after)["app"] == ORIGINAL
    assert list(after["metadata"]["annotations"]) == [UNDONE]
