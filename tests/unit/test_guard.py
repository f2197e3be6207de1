"""The rollout guard (issue 27) driven through a real ``Reconciler`` cycle.

FakeKube has no controller-manager and no kubelet: a test writes what they
would report (a workload's ``status``, its pods, the namespace's Events, a
Deployment's ReplicaSets) and checks what the next cycle did to the stored
objects and what its Summary says. The decisions themselves (rollout status,
cause, canary gate) have their tables in test_rollout.py.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

import cloner.ops.guard as guard_module
from cloner.config import (
    BackoffSettings,
    CopySettings,
    PullSecretSettings,
    RolloutSettings,
    Settings,
)
from cloner.errors import KubeError
from cloner.model.events import (
    SWITCH_COMPLETED,
    SWITCH_FAILED,
    SWITCH_SLOW,
    SWITCH_UNDONE,
    rfc3339,
)
from cloner.model.rollout import namespace_key
from cloner.model.state import HOLDS_KEY, SWITCHES_KEY
from cloner.model.workloads import ORIGINAL_IMAGES, UNDONE, Workload, pod_spec_of
from cloner.ops.reconcile import Reconciler, Summary
from tests.unit.fakes import FakeKube, workload
from tests.unit.test_reconcile import Creds, FakeRegistry

OWNED = "owned.example.com"
SOURCE = "nginx:1.25"
OWNED_REF = f"{OWNED}/m/docker.io/library/nginx:1.25"
T0 = 1_700_000_000.0
CM_NS = "image-cloner"
WAITING = "waiting for the canary"


# --- stand-ins -------------------------------------------------------------------


class Wall:
    """Epoch seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Events:
    """Records ``(workload key, type, reason, message)`` of every Event."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    def record(self, workload: Workload, type: str, reason: str, message: str) -> None:
        self.seen.append((workload.key, type, reason, message))

    def reasons(self, key: str) -> list[str]:
        return [reason for k, _type, reason, _m in self.seen if k == key]


class ApiKube(FakeKube):
    """FakeKube that, like the API server, bumps ``resourceVersion`` on every
    accepted write and ``metadata.generation`` when the ``spec`` changed."""

    def patch_workload(self, w: Workload, patch: list[dict[str, Any]]) -> None:
        position = self._position(w.kind, w.namespace, w.name)
        before = copy.deepcopy(self.objects[position].get("spec")) if position is not None else None
        super().patch_workload(w, patch)
        assert position is not None
        obj = self.objects[position]
        meta = obj["metadata"]
        meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 1)
        if obj.get("spec") != before:
            meta["generation"] = int(meta.get("generation") or 1) + 1


# --- objects ---------------------------------------------------------------------


def _generation_1(
    kind: str, ns: str, name: str, image: str, status: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    """One container of ``image``, labelled app=NAME, at generation 1 with ``status``."""
    labels = {"app": name}
    return workload(
        kind, ns, name, image, labels=labels, spec=spec, status=status, metadata={"generation": 1}
    )


def deployment(ns: str, name: str, image: str = SOURCE, replicas: int = 2) -> dict[str, Any]:
    """A Deployment rolled out at generation 1."""
    status = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }
    return _generation_1("Deployment", ns, name, image, status, replicas=replicas)


def stateful_set(ns: str, name: str, image: str = SOURCE, replicas: int = 3) -> dict[str, Any]:
    status = {
        "observedGeneration": 1,
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "currentRevision": f"{name}-1",
        "updateRevision": f"{name}-1",
    }
    return _generation_1("StatefulSet", ns, name, image, status, replicas=replicas)


def daemon_set(ns: str, name: str, image: str = SOURCE) -> dict[str, Any]:
    status = {
        "observedGeneration": 1,
        "desiredNumberScheduled": 1,
        "updatedNumberScheduled": 1,
        "numberAvailable": 1,
    }
    return _generation_1("DaemonSet", ns, name, image, status)


def cron_job(ns: str, name: str, image: str = SOURCE) -> dict[str, Any]:
    return workload(
        "CronJob", ns, name, image, spec={"schedule": "0 3 * * *"}, metadata={"generation": 1}
    )


def rolled_out(obj: dict[str, Any]) -> None:
    """Write the status the controller-manager reports once the current generation rolled out."""
    generation = obj["metadata"]["generation"]
    replicas = obj["spec"].get("replicas", 1)
    status = obj["status"]
    status["observedGeneration"] = generation
    if obj["kind"] == "Deployment":
        status.update(updatedReplicas=replicas, replicas=replicas, availableReplicas=replicas)
    elif obj["kind"] == "StatefulSet":
        status.update(readyReplicas=replicas, updatedReplicas=replicas)
        status["currentRevision"] = status["updateRevision"] = f"rev-{generation}"
    else:
        status.update(updatedNumberScheduled=1, numberAvailable=1)


def pod(
    ns: str,
    name: str,
    app: str,
    image: str = OWNED_REF,
    *,
    pull_error: str | None = None,
    ready: bool = False,
    unschedulable: bool = False,
) -> dict[str, Any]:
    """A pod of workload ``app``; waiting on a pull error, Running and Ready, or Pending."""
    if pull_error is not None:
        state: dict[str, Any] = {"waiting": {"reason": "ErrImagePull", "message": pull_error}}
    elif ready:
        state = {"running": {"startedAt": rfc3339(T0)}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status: dict[str, Any] = {
        "phase": "Running" if ready else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if unschedulable:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        )
    else:
        status["containerStatuses"] = [{"name": "c0", "image": image, "state": state}]
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": {"app": app}},
        "spec": {"containers": [{"name": "c0", "image": image}]},
        "status": status,
    }


def pull_failed(ns: str, pod_name: str, at: float, count: int = 2) -> dict[str, Any]:
    """The kubelet's ``Failed`` Event of a pull refused with 401."""
    return {
        "kind": "Event",
        "metadata": {"name": f"{pod_name}.1", "namespace": ns},
        "involvedObject": {
            "kind": "Pod",
            "namespace": ns,
            "name": pod_name,
            "uid": f"uid-{pod_name}",
        },
        "reason": "Failed",
        "type": "Warning",
        "message": (
            f'Failed to pull image "{OWNED_REF}": rpc error: code = Unknown desc = failed to '
            f'pull and unpack image "{OWNED_REF}": failed to authorize: failed to fetch '
            "anonymous token: unexpected status from GET request: 401 Unauthorized"
        ),
        "count": count,
        "firstTimestamp": rfc3339(at),
        "lastTimestamp": rfc3339(at + 10),
    }


PULL_ERROR = f'failed to pull and unpack image "{OWNED_REF}": 401 Unauthorized'


def replica_set(ns: str, name: str, deployment_name: str, image: str = OWNED_REF) -> dict[str, Any]:
    return {
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "ownerReferences": [
                {
                    "kind": "Deployment",
                    "name": deployment_name,
                    "uid": f"{ns}/{deployment_name}",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "selector": {"matchLabels": {"app": deployment_name}},
            "template": {
                "metadata": {"labels": {"app": deployment_name}},
                "spec": {"containers": [{"name": "c0", "image": image}]},
            },
        },
    }


DENIED = (
    "pods \"web-x\" is forbidden: ValidatingAdmissionPolicy 'deny' with binding 'deny' "
    f"denied request: images of {OWNED} are not allowed"
)


def failed_create(ns: str, replica_set_name: str, at: float, message: str = DENIED) -> dict:
    return {
        "kind": "Event",
        "metadata": {"name": f"{replica_set_name}.2", "namespace": ns},
        "involvedObject": {"kind": "ReplicaSet", "namespace": ns, "name": replica_set_name},
        "reason": "FailedCreate",
        "type": "Warning",
        "message": message,
        "count": 1,
        "firstTimestamp": rfc3339(at),
        "lastTimestamp": rfc3339(at),
    }


# --- the reconciler ----------------------------------------------------------------


def settings(**rollout: Any) -> Settings:
    backoff = rollout.pop("backoff", BackoffSettings(jitter=0.0))
    return Settings(
        target=f"{OWNED}/m",
        copy=CopySettings(backend="skopeo"),
        controller_namespace=CM_NS,
        backoff=backoff,
        # Node credentials are assumed (issue 27's first scenario): no pull Secret.
        pull_secrets=PullSecretSettings(provision=False),
        rollout=RolloutSettings(**rollout),
    )


class Rig:
    """One FakeKube and registry, and the Reconcilers a test runs on them."""

    def __init__(self, objects: list[dict[str, Any]], **rollout: Any) -> None:
        self.kube = ApiKube(objects)
        self.kube.namespaced = {"pods": [], "events": [], "replicasets": []}
        self.registry = FakeRegistry()
        self.wall = Wall()
        self.events = Events()
        self.creds = Creds("v1")
        self.settings = settings(**rollout)
        self.reconciler = self.restart()

    def restart(self) -> Reconciler:
        """A new Reconciler on the same cluster, as after a restart or a new leader."""
        self.reconciler = Reconciler(
            self.kube,
            self.registry,
            self.registry,
            self.settings,
            self.creds,
            events=self.events,
            wall=self.wall,
            clock=self.wall,
        )
        return self.reconciler

    def cycle(self) -> tuple[Summary, list[str]]:
        """Run a cycle; returns its Summary and the workloads it patched (keys, in order)."""
        before = len(self.kube.patches)
        summary = self.reconciler.reconcile_once()
        return summary, [key for key, _ in self.kube.patches[before:]]

    def obj(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        return self.kube.object(kind, ns, name)

    def image(self, kind: str, ns: str, name: str) -> str:
        spec = pod_spec_of(kind, self.obj(kind, ns, name))
        return str(spec["containers"][0]["image"])

    def annotations(self, kind: str, ns: str, name: str) -> dict[str, str]:
        return dict(self.obj(kind, ns, name)["metadata"].get("annotations") or {})

    def stored(self, data_key: str) -> dict[str, Any]:
        """Every entry under ``data_key`` in the state ConfigMaps, merged."""
        out: dict[str, Any] = {}
        for (ns, _name), body in self.kube.config_maps.items():
            assert ns == CM_NS
            out.update(json.loads((body.get("data") or {}).get(data_key) or "{}"))
        return out


def held(summary: Summary) -> dict[str, str]:
    return dict(summary.rollout.held)


def dep(ns: str, name: str) -> str:
    return f"Deployment {ns}/{name}"


# --- 1. canary -------------------------------------------------------------------------


def test_canary_one_workload_first_the_rest_after_its_rollout_completed() -> None:
    paused = deployment("shop", "paused")
    paused["spec"]["paused"] = True
    rig = Rig(
        [
            deployment("shop", "web"),
            deployment("shop", "api"),
            deployment("shop", "cart"),
            paused,
            cron_job("shop", "nightly"),
        ]
    )
    names = {"web", "api", "cart"}
    summary, patched = rig.cycle()
    followed = [k for k in patched if k.startswith("Deployment") and k != dep("shop", "paused")]
    assert len(followed) == 1, patched
    canary = followed[0].split("/")[1]
    others = names - {canary}
    # Exempt workloads (paused, CronJob) are no canaries and do not wait for one.
    assert sorted(patched) == sorted(
        [dep("shop", canary), dep("shop", "paused"), "CronJob shop/nightly"]
    )
    assert set(held(summary)) == {dep("shop", n) for n in others}
    assert all(WAITING in why and canary in why for why in held(summary).values())
    assert rig.image("Deployment", "shop", canary) == OWNED_REF
    for name in others:
        assert rig.image("Deployment", "shop", name) == SOURCE
    # Followed: the canary and the CronJob (its next Job's pods); not the paused one.
    assert set(rig.stored(SWITCHES_KEY)) == {dep("shop", canary), "CronJob shop/nightly"}

    # Not rolled out yet: nothing more is patched, however many cycles.
    for _ in range(3):
        rig.wall.now += 30
        summary, patched = rig.cycle()
        assert patched == []
        assert set(held(summary)) == {dep("shop", n) for n in others}
        assert summary.rollout.completed == 0 and summary.rollout.undone == 0

    # The controller-manager reports the canary's rollout complete.
    rolled_out(rig.obj("Deployment", "shop", canary))
    summary, patched = rig.cycle()
    assert summary.rollout.completed == 1
    assert SWITCH_COMPLETED in rig.events.reasons(dep("shop", canary))
    assert sorted(patched) == sorted(dep("shop", n) for n in others)
    assert held(summary) == {}
    for name in names:
        assert rig.image("Deployment", "shop", name) == OWNED_REF
    # The canary is no longer followed; the two others and the CronJob are.
    assert set(rig.stored(SWITCHES_KEY)) == {dep("shop", n) for n in others} | {
        "CronJob shop/nightly"
    }


def test_canary_is_per_namespace_and_off_patches_all_at_once() -> None:
    def objects() -> list[dict[str, Any]]:
        return [deployment(ns, n) for ns in ("a", "b") for n in ("web", "api")]

    rig = Rig(objects())
    summary, patched = rig.cycle()
    assert sorted(k.split()[1].split("/")[0] for k in patched) == ["a", "b"]
    assert len(held(summary)) == 2

    off = Rig(objects(), canary=False)
    summary, patched = off.cycle()
    assert len(patched) == 4 and held(summary) == {}
    assert len(off.stored(SWITCHES_KEY)) == 4  # followed all the same


# --- 2. pull failure: undo, hold the namespace -----------------------------------------


def _canary_of(patched: list[str]) -> str:
    (key,) = patched
    return key.split("/")[1]


def _fail_pull(rig: Rig, ns: str, name: str, at: float) -> None:
    rig.kube.namespaced["pods"].append(pod(ns, f"{name}-7d9f-abcde", name, pull_error=PULL_ERROR))
    rig.kube.namespaced["events"].append(pull_failed(ns, f"{name}-7d9f-abcde", at))


def test_pull_failure_is_undone_and_the_namespace_held_until_credentials_change() -> None:
    rig = Rig([deployment("shop", n) for n in ("web", "api", "cart")])
    _summary, patched = rig.cycle()
    canary = _canary_of(patched)
    key = dep("shop", canary)
    switched_at = rig.wall.now
    rig.wall.now += 20
    _fail_pull(rig, "shop", canary, switched_at + 5)

    summary, patched = rig.cycle()
    assert patched == [key]  # the undo patch, nothing else
    assert rig.image("Deployment", "shop", canary) == SOURCE
    annotations = rig.annotations("Deployment", "shop", canary)
    undone = json.loads(annotations[UNDONE])
    assert undone["reason"] == "owned_pull_failed"
    assert undone["containers"] == {"c0": OWNED_REF}
    assert "401 Unauthorized" in undone["message"]
    assert "c0" not in json.loads(annotations.get(ORIGINAL_IMAGES, "{}"))
    assert summary.rollout.failures == Counter({"owned_pull_failed": 1})
    assert summary.rollout.undone == 1 and summary.rollout.pending == 0
    assert not summary.ok
    assert rig.events.reasons(key)[-2:] == [SWITCH_FAILED, SWITCH_UNDONE]
    # Held: the workload, and the namespace (a 401 is not about one workload).
    assert {k: h["reason"] for k, h in rig.stored(HOLDS_KEY).items()} == {
        key: "owned_pull_failed",
        namespace_key("shop"): "owned_pull_failed",
    }
    # The rest of the namespace was held in the same cycle, after the undo.
    assert set(held(summary)) == {dep("shop", n) for n in ("web", "api", "cart")}

    # The kubelet's reports go once the revision is rolled back.
    rig.kube.namespaced["pods"].clear()
    rig.kube.namespaced["events"].clear()
    for _ in range(3):
        rig.wall.now += 60
        summary, patched = rig.cycle()
        assert patched == []
        reasons = held(summary)
        assert set(reasons) == {dep("shop", n) for n in ("web", "api", "cart")}
        assert "workload held after a failed switch (owned_pull_failed)" in reasons[key]
        assert all(
            "namespace held after a failed switch (owned_pull_failed)" in why
            for k, why in reasons.items()
            if k != key
        )
    for name in ("web", "api", "cart"):
        assert rig.image("Deployment", "shop", name) == SOURCE

    # New registry credentials: the holds go, and the namespace starts with a canary again.
    rig.creds.set("v2")
    summary, patched = rig.cycle()
    assert len(patched) == 1
    assert len(held(summary)) == 2 and all(WAITING in w for w in held(summary).values())
    assert rig.stored(HOLDS_KEY) == {}


def test_a_hold_ends_after_backoff_max() -> None:
    rig = Rig(
        [deployment("shop", n) for n in ("web", "api")],
        backoff=BackoffSettings(initial=10, maximum=120, jitter=0.0),
    )
    _summary, patched = rig.cycle()
    canary = _canary_of(patched)
    _fail_pull(rig, "shop", canary, rig.wall.now + 1)
    rig.wall.now += 10
    summary, _ = rig.cycle()
    assert summary.rollout.undone == 1
    undone_at = rig.wall.now
    rig.kube.namespaced["pods"].clear()
    rig.kube.namespaced["events"].clear()
    rig.wall.now = undone_at + 119
    summary, patched = rig.cycle()
    assert patched == [] and len(held(summary)) == 2
    rig.wall.now = undone_at + 121
    summary, patched = rig.cycle()
    assert len(patched) == 1  # a canary again: the namespace has had no healthy switch
    assert rig.stored(HOLDS_KEY) == {}


def test_a_new_owned_copy_releases_the_hold() -> None:
    rig = Rig([deployment("shop", "web")])
    rig.cycle()
    _fail_pull(rig, "shop", "web", rig.wall.now + 1)
    rig.wall.now += 10
    assert rig.cycle()[0].rollout.undone == 1
    rig.kube.namespaced["pods"].clear()
    rig.kube.namespaced["events"].clear()
    assert rig.cycle()[1] == []
    # The owned copy is verified again with other content (e.g. copied over).
    source = "docker.io/library/nginx:1.25"
    with rig.reconciler._state.locked() as book:
        book.records[source] = replace(book.records[source], owned_digest="sha256:" + "e" * 64)
    _summary, patched = rig.cycle()
    assert patched == [dep("shop", "web")]


def test_a_pull_failure_not_about_credentials_holds_the_workload_only() -> None:
    rig = Rig([deployment("shop", n) for n in ("web", "api")], canary=False)
    _summary, patched = rig.cycle()
    assert len(patched) == 2
    rig.kube.namespaced["pods"].append(
        pod("shop", "web-1", "web", pull_error=f'"{OWNED_REF}": not found')
    )
    event = pull_failed("shop", "web-1", rig.wall.now + 1)
    event["message"] = f'Failed to pull image "{OWNED_REF}": manifest unknown: not found'
    rig.kube.namespaced["events"].append(event)
    rig.wall.now += 10
    summary, _ = rig.cycle()
    assert summary.rollout.failures == Counter({"owned_pull_failed": 1})
    assert set(rig.stored(HOLDS_KEY)) == {dep("shop", "web")}
    assert rig.image("Deployment", "shop", "api") == OWNED_REF  # left alone


def test_a_switch_in_two_patches_is_undone_completely() -> None:
    # The second container's image cannot be cloned at first: the first
    # patch switches c0 only, a later one c1. Both are the same switch.
    obj = deployment("shop", "web")
    obj["spec"]["template"]["spec"]["containers"].append({"name": "c1", "image": "redis:7"})
    rig = Rig([obj], backoff=BackoffSettings(initial=10, maximum=60, jitter=0.0))
    rig.registry.missing.add("docker.io/library/redis:7")
    _summary, patched = rig.cycle()
    assert patched == [dep("shop", "web")]
    redis = f"{OWNED}/m/docker.io/library/redis:7"
    rig.registry.missing.clear()
    rig.wall.now += 61
    _summary, patched = rig.cycle()
    assert patched == [dep("shop", "web")]
    spec = rig.obj("Deployment", "shop", "web")["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["containers"]] == [OWNED_REF, redis]
    # c0's owned copy cannot be pulled.
    failing = pod("shop", "web-2", "web", pull_error=PULL_ERROR)
    failing["spec"]["containers"].append({"name": "c1", "image": redis})
    rig.kube.namespaced["pods"].append(failing)
    rig.kube.namespaced["events"].append(pull_failed("shop", "web-2", rig.wall.now + 1))
    rig.wall.now += 10
    summary, _ = rig.cycle()
    assert summary.rollout.undone == 1
    spec = rig.obj("Deployment", "shop", "web")["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["containers"]] == [SOURCE, "redis:7"]
    assert ORIGINAL_IMAGES not in rig.annotations("Deployment", "shop", "web")


def test_a_pull_failure_without_events_counts_after_the_grace() -> None:
    rig = Rig([deployment("shop", "web")], pull_failure_grace=60)
    rig.cycle()
    rig.kube.namespaced["pods"].append(pod("shop", "web-1", "web", pull_error=PULL_ERROR))
    undone = []
    for step in (10, 40, 31):  # first seen at +10; +50 is 40 s later; +81 is 71 s later
        rig.wall.now += step
        undone.append(rig.cycle()[0].rollout.undone)
    assert undone == [0, 0, 1]
    assert json.loads(rig.annotations("Deployment", "shop", "web")[UNDONE])["reason"] == (
        "owned_pull_failed"
    )


def test_an_unconfirmed_pull_failure_is_undone_at_the_timeout() -> None:
    rig = Rig([deployment("shop", "web")], pull_failure_grace=1000, timeout=300)
    rig.cycle()
    rig.kube.namespaced["pods"].append(pod("shop", "web-1", "web", pull_error=PULL_ERROR))
    rig.kube.namespaced["events"].append(pull_failed("shop", "web-1", rig.wall.now + 1, count=1))
    rig.wall.now += 299
    assert rig.cycle()[0].rollout.undone == 0
    rig.wall.now += 2
    summary, _ = rig.cycle()
    assert summary.rollout.failures == Counter({"progress_deadline": 1})
    assert rig.image("Deployment", "shop", "web") == SOURCE


# --- 3. admission denial -----------------------------------------------------------------


def test_admission_denial_on_the_new_replica_set_is_undone() -> None:
    rig = Rig([deployment("shop", n) for n in ("web", "api")])
    _summary, patched = rig.cycle()
    canary = _canary_of(patched)
    rig.kube.namespaced["replicasets"] += [
        replica_set("shop", f"{canary}-old", canary, image=SOURCE),
        replica_set("shop", f"{canary}-x", canary),
    ]
    rig.kube.namespaced["events"].append(failed_create("shop", f"{canary}-x", rig.wall.now + 3))
    rig.wall.now += 15
    summary, patched = rig.cycle()
    assert patched == [dep("shop", canary)]
    assert rig.image("Deployment", "shop", canary) == SOURCE
    undone = json.loads(rig.annotations("Deployment", "shop", canary)[UNDONE])
    assert undone["reason"] == "admission_denied"
    assert "ValidatingAdmissionPolicy" in undone["message"]
    assert summary.rollout.failures == Counter({"admission_denied": 1})
    assert namespace_key("shop") in rig.stored(HOLDS_KEY)  # a policy: the whole namespace


def test_a_denial_from_before_the_switch_or_not_about_images_is_not_undone() -> None:
    rig = Rig([deployment("shop", "web")])
    rig.cycle()
    rig.kube.namespaced["replicasets"].append(replica_set("shop", "web-x", "web"))
    rig.kube.namespaced["events"] += [
        failed_create("shop", "web-x", T0 - 3600),  # an earlier refusal
        failed_create(
            "shop", "web-x", T0 + 3, 'pods "web-x-1" is forbidden: exceeded quota: compute'
        ),
    ]
    rig.wall.now += 15
    summary, _ = rig.cycle()
    assert summary.rollout.undone == 0 and summary.rollout.pending == 1
    assert rig.image("Deployment", "shop", "web") == OWNED_REF


def test_admission_denial_on_a_daemon_set_is_undone() -> None:
    rig = Rig([daemon_set("node", "agent")])
    rig.cycle()
    event = failed_create("node", "agent", rig.wall.now + 2)
    event["involvedObject"]["kind"] = "DaemonSet"
    rig.kube.namespaced["events"].append(event)
    rig.wall.now += 10
    summary, _ = rig.cycle()
    assert summary.rollout.failures == Counter({"admission_denied": 1})
    assert rig.image("DaemonSet", "node", "agent") == SOURCE
    assert ("replicasets", "node") not in rig.kube.namespaced_reads  # Deployments only


# --- 4. StatefulSet forced rollback ------------------------------------------------------


def test_stateful_set_undo_deletes_its_stuck_pods_never_a_ready_one() -> None:
    rig = Rig([stateful_set("db", "pg")])
    _summary, patched = rig.cycle()
    assert patched == ["StatefulSet db/pg"]
    rig.kube.namespaced["pods"] += [
        pod("db", "pg-0", "pg", ready=True),  # of the switch's revision, Ready
        pod("db", "pg-1", "pg", image=SOURCE),  # of the old revision, not Ready
        pod("db", "pg-2", "pg", pull_error=PULL_ERROR),  # stuck on the switch's revision
        pod("other", "pg-3", "pg", pull_error=PULL_ERROR),  # another namespace
    ]
    rig.kube.namespaced["events"].append(pull_failed("db", "pg-2", rig.wall.now + 2))
    rig.wall.now += 20
    summary, _ = rig.cycle()
    assert summary.rollout.failures == Counter({"owned_pull_failed": 1})
    assert rig.image("StatefulSet", "db", "pg") == SOURCE
    assert rig.kube.deleted_pods == [("db", "pg-2", "uid-pg-2")]


# --- 5. slow rollout -------------------------------------------------------------------------


def test_a_slow_rollout_is_reported_once_and_never_undone() -> None:
    rig = Rig([deployment("shop", "web")], timeout=300)
    rig.cycle()
    # Pending for want of a node: not the owned copy's doing.
    rig.kube.namespaced["pods"].append(pod("shop", "web-1", "web", unschedulable=True))
    rig.wall.now += 299
    summary, _ = rig.cycle()
    assert summary.rollout.slow == 0
    rig.wall.now += 2
    summary, _ = rig.cycle()
    assert summary.rollout.slow == 1
    assert rig.events.reasons(dep("shop", "web")).count(SWITCH_SLOW) == 1
    rig.wall.now += 60
    summary, patched = rig.cycle()
    assert summary.rollout.slow == 0  # once
    assert rig.events.reasons(dep("shop", "web")).count(SWITCH_SLOW) == 1
    assert patched == [] and summary.rollout.undone == 0 and not summary.rollout.failures
    assert summary.rollout.pending == 1
    assert rig.image("Deployment", "shop", "web") == OWNED_REF
    assert rig.stored(SWITCHES_KEY)[dep("shop", "web")]["slowReported"] is True


# --- 6. restart ---------------------------------------------------------------------------------


def test_a_restart_goes_on_following_the_canary_and_completes_it() -> None:
    rig = Rig([deployment("shop", n) for n in ("web", "api", "cart")])
    _summary, patched = rig.cycle()
    canary = _canary_of(patched)
    stored = rig.stored(SWITCHES_KEY)
    assert set(stored) == {dep("shop", canary)}
    assert stored[dep("shop", canary)]["canary"] is True
    assert stored[dep("shop", canary)]["generation"] == 2

    rig.restart()
    summary, patched = rig.cycle()
    assert patched == []  # the restored canary still holds the namespace
    assert summary.rollout.pending == 1
    assert len(held(summary)) == 2 and all(canary in w for w in held(summary).values())

    rig.restart()
    rolled_out(rig.obj("Deployment", "shop", canary))
    summary, patched = rig.cycle()
    assert summary.rollout.completed == 1
    assert sorted(patched) == sorted(dep("shop", n) for n in {"web", "api", "cart"} - {canary})


def test_a_restart_goes_on_following_a_switch_and_undoes_it() -> None:
    rig = Rig([deployment("shop", n) for n in ("web", "api")])
    _summary, patched = rig.cycle()
    canary = _canary_of(patched)
    rig.restart()
    _fail_pull(rig, "shop", canary, rig.wall.now + 1)
    rig.wall.now += 10
    summary, _ = rig.cycle()
    assert summary.rollout.undone == 1
    assert rig.image("Deployment", "shop", canary) == SOURCE
    assert rig.stored(SWITCHES_KEY) == {}
    # ...and the holds survive the next restart too.
    rig.restart()
    rig.kube.namespaced["pods"].clear()
    rig.kube.namespaced["events"].clear()
    summary, patched = rig.cycle()
    assert patched == [] and len(held(summary)) == 2


def test_a_canary_is_restored_even_when_the_state_could_not_be_read_at_first() -> None:
    rig = Rig([deployment("shop", n) for n in ("web", "api", "cart")])
    _summary, patched = rig.cycle()
    canary = _canary_of(patched)

    class Flaky(ApiKube):
        down = True

        def get_config_map(self, ns: str, name: str) -> dict[str, Any] | None:
            if self.down:
                raise KubeError(503, "unavailable")
            return super().get_config_map(ns, name)

    flaky = Flaky(rig.kube.objects)
    flaky.namespaced = rig.kube.namespaced
    flaky.config_maps = rig.kube.config_maps
    rig.kube = flaky
    rig.restart()
    # The state cannot be read: its pending canary (and any hold) is unknown,
    # so nothing is switched.
    summary, patched = rig.cycle()
    assert patched == []
    assert all("state is not read yet" in w for w in held(summary).values())
    flaky.down = False
    summary, patched = rig.cycle()
    # Once it is read, the restored canary holds the rest of its namespace.
    assert patched == []
    assert len(held(summary)) == 2
    assert all(WAITING in w and canary in w for w in held(summary).values())


def test_a_cron_job_switch_completes_when_a_pod_of_its_next_job_started() -> None:
    rig = Rig([cron_job("batch", "nightly")])
    _summary, patched = rig.cycle()
    assert patched == ["CronJob batch/nightly"]
    rig.wall.now += 3600
    assert rig.cycle()[0].rollout.completed == 0  # no Job yet: still followed
    job_pod = pod("batch", "nightly-29000000-abcde", "x", ready=True)
    job_pod["metadata"]["labels"] = {"batch.kubernetes.io/job-name": "nightly-29000000"}
    rig.kube.namespaced["pods"].append(job_pod)
    summary, _ = rig.cycle()
    assert summary.rollout.completed == 1
    assert rig.stored(SWITCHES_KEY) == {}


# --- 7. cost -----------------------------------------------------------------------------------


def test_no_pending_switch_costs_no_namespaced_read() -> None:
    rig = Rig([deployment("shop", "web")])
    rig.cycle()
    rolled_out(rig.obj("Deployment", "shop", "web"))
    rig.cycle()
    rig.kube.namespaced_reads.clear()
    for _ in range(2):
        summary, _ = rig.cycle()
        assert summary.rollout.pending == 0
    assert rig.kube.namespaced_reads == []


def test_following_reads_per_namespace_never_per_workload() -> None:
    rig = Rig(
        [
            *(deployment("a", f"web{i}") for i in range(3)),
            stateful_set("a", "db"),
            daemon_set("b", "agent"),
            daemon_set("b", "logs"),
            stateful_set("c", "idle"),
        ],
        canary=False,
    )
    rolled_out_ns = "c"
    summary, patched = rig.cycle()
    assert len(patched) == 7
    rolled_out(rig.obj("StatefulSet", rolled_out_ns, "idle"))
    assert rig.kube.namespaced_reads == []  # nothing was pending before this cycle
    summary, _ = rig.cycle()
    assert summary.rollout.completed == 1 and summary.rollout.pending == 6
    assert sorted(rig.kube.namespaced_reads) == sorted(
        [
            ("pods", "a"),
            ("events", "a"),
            ("deployments", "a"),
            ("statefulsets", "a"),
            ("replicasets", "a"),
            ("pods", "b"),
            ("events", "b"),
            ("daemonsets", "b"),
            ("pods", "c"),
            ("events", "c"),
            ("statefulsets", "c"),
        ]
    )
    rig.kube.namespaced_reads.clear()
    rig.cycle()
    assert sorted(rig.kube.namespaced_reads) == sorted(
        [
            ("pods", "a"),
            ("events", "a"),
            ("deployments", "a"),
            ("statefulsets", "a"),
            ("replicasets", "a"),
            ("pods", "b"),
            ("events", "b"),
            ("daemonsets", "b"),
        ]
    )  # c has nothing pending any more


def test_a_failed_read_leaves_the_switches_pending() -> None:
    rig = Rig([deployment("shop", "web")])
    rig.cycle()

    def broken(resource: str, namespace: str) -> list[dict[str, Any]]:
        raise KubeError(503, "unavailable")

    rig.kube.list_namespaced = broken  # type: ignore[method-assign]
    summary, _ = rig.cycle()
    assert summary.rollout.pending == 1 and summary.rollout.undone == 0


# --- 8. guard off --------------------------------------------------------------------------------


def test_guard_off_patches_everything_and_follows_nothing() -> None:
    rig = Rig(
        [*(deployment("shop", n) for n in ("web", "api", "cart")), stateful_set("db", "pg")],
        enabled=False,
    )
    summary, patched = rig.cycle()
    assert len(patched) == 4 and held(summary) == {}
    _fail_pull(rig, "shop", "web", rig.wall.now + 1)
    rig.wall.now += 1000
    summary, patched = rig.cycle()
    assert patched == [] and summary.rollout.pending == 0 and summary.rollout.undone == 0
    assert rig.kube.namespaced_reads == []
    assert rig.stored(SWITCHES_KEY) == {} and rig.stored(HOLDS_KEY) == {}
    assert rig.image("Deployment", "shop", "web") == OWNED_REF


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_on_delete_workloads_are_no_canaries_and_not_followed(kind: str) -> None:
    obj = stateful_set("a", "x") if kind == "StatefulSet" else daemon_set("a", "x")
    obj["spec"]["updateStrategy"] = {"type": "OnDelete"}
    rig = Rig([obj, deployment("a", "web")])
    _summary, patched = rig.cycle()
    assert sorted(patched) == sorted([f"{kind} a/x", dep("a", "web")])
    assert set(rig.stored(SWITCHES_KEY)) == {dep("a", "web")}  # the canary only


def test_a_switch_that_cannot_be_followed_does_not_stop_the_others_or_the_cycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = Rig([deployment(ns, "web") for ns in ("a", "b")], canary=False)
    _, patched = rig.cycle()
    assert len(patched) == 2
    real = guard_module.rollout_status

    def broken_for_a(kind: str, obj: dict[str, Any], generation: int = 0) -> Any:
        if obj["metadata"]["namespace"] == "a":
            raise RuntimeError("an unexpected object")
        return real(kind, obj, generation)

    monkeypatch.setattr(guard_module, "rollout_status", broken_for_a)
    rolled_out(rig.obj("Deployment", "b", "web"))
    summary, _ = rig.cycle()  # does not raise
    assert summary.rollout.completed == 1  # b's switch was still decided
    assert summary.rollout.pending == 1  # a's stays pending, tried again next cycle
    assert "SwitchCompleted" in rig.events.reasons(dep("b", "web"))
