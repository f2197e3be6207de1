"""The rollout guard on a real node (issue 27): a switch that cannot roll out is undone.

One controller, deployed by ``make deploy`` with an overlay of its own
(``pullSecret.provision: false``, a short ``pollInterval`` and
``rollout.pullFailureGrace``, ``namespaces.include: [guard-*]``), after
tests/e2e/test_cluster.py has undeployed its own (file order; the ``guard``
fixture removes a controller left behind, and undeploys its own at the end
of the module). Every scenario has a namespace of its own, set up while the
controller starts and opened to it at once (the namespaces carry
``image-cloner.io/skip`` until then), so the scenarios run in parallel and
each test below asserts one of them:

- ``guard-pull``: six Deployments (2 replicas, ``maxUnavailable: 0``) and no
  pull secret; the owned registry answers 401 to the kubelet. Only the canary
  is patched, its rollout cannot pull, it is undone; the other five never are
  patched.
- ``guard-pull-sts``: the same for an ``OrderedReady`` StatefulSet (2
  replicas), which needs the forced rollback (its broken pod deleted).
- ``guard-denied``: a ValidatingAdmissionPolicy refuses pods from the owned
  registry (the namespace has a pull secret, so only admission fails).
- ``guard-healthy``: a pull secret of the user's; three Deployments switch one
  by one (the canary first, the others once its rollout completed).
- ``guard-restart``: like ``guard-healthy``, opened only in the last
  scenario: the controller pod is deleted while the canary's switch is
  pending, and the new pod completes it. It runs last because a restart
  resets the controller's metrics and start-up state, which the other
  scenarios assert on; two tests after it check that what was held back
  before the restart stays held.

A background :class:`Watcher` lists the guard's workloads every second and
keeps each change (generation, images, the controller's annotations, rollout
complete or not) with the time it was seen: the order of patches and the
timings printed come from it. Event timestamps have whole seconds.
"""

from __future__ import annotations

import base64
import calendar
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from devenv.cluster import CONTROLLER_NAMESPACE, Cluster, Deployment, make, write_overlay
from devenv.support import scrape
from devenv.waiting import wait_for
from tests.e2e.test_cluster import (
    all_ready,
    apply,
    controller_gone,
    controller_pods,
    controller_ready,
    get_json,
    host_workload,
    kubectl,
    wait_controller_gone,
)

NS_PULL = "guard-pull"  # six Deployments, no pull secret: the canary cannot pull
NS_PULL_STS = "guard-pull-sts"  # an OrderedReady StatefulSet, no pull secret
NS_DENIED = "guard-denied"  # a ValidatingAdmissionPolicy refuses the owned registry
NS_HEALTHY = "guard-healthy"  # a pull secret of the user's: switches complete
NS_RESTART = "guard-restart"  # like NS_HEALTHY; the controller restarts mid-switch
NAMESPACES = (NS_PULL, NS_PULL_STS, NS_DENIED, NS_HEALTHY, NS_RESTART)

POLL_INTERVAL = 5  # seconds
PULL_FAILURE_GRACE = 20  # seconds
ROLLOUT_TIMEOUT = 120  # seconds
HELD_FOR = 3 * POLL_INTERVAL  # no patch of an undone workload within this
#: The controller's settings beyond write_overlay's (metrics, registries, target).
SETTINGS: dict[str, Any] = {
    "namespaces": {"include": ["guard-*"]},
    "pullSecret": {"provision": False},
    "rollout": {
        "enabled": True,
        "canary": True,
        "timeout": ROLLOUT_TIMEOUT,
        "pullFailureGrace": PULL_FAILURE_GRACE,
    },
}

ANNOTATION_PREFIX = "image-cloner.io/"
UNDONE = "image-cloner.io/undone"
ORIGINAL_IMAGES = "image-cloner.io/original-images"
SKIP = "image-cloner.io/skip"
DENY_LABEL = "rollout-guard.e2e/deny-owned"  # binds the ValidatingAdmissionPolicy
POLICY = "deny-owned-registry"
USER_SECRET = "owned-registry"  # the user's own pull secret for the owned registry
PULL_DEPLOYMENTS = tuple(f"web-{n}" for n in range(1, 7))
HEALTHY_DEPLOYMENTS = ("alpha", "beta", "gamma")
RESTART_DEPLOYMENTS = ("first", "second")
RESTART_MIN_READY = 12  # seconds: keeps the canary's switch pending across the restart
WAITING_PULL = ("ErrImagePull", "ImagePullBackOff")

Key = tuple[str, str, str]  # (namespace, kind, name)


# --- workloads -------------------------------------------------------------------


def deployment(namespace: str, name: str, image: str, replicas: int = 2) -> dict[str, Any]:
    """A Deployment of one waiting container; RollingUpdate with ``maxUnavailable: 0``."""
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    spec = {"replicas": replicas, "strategy": strategy}
    return host_workload("Deployment", namespace, name, image, spec=spec)


def statefulset(namespace: str, name: str, image: str, replicas: int = 2) -> dict[str, Any]:
    """An ``OrderedReady`` StatefulSet with the RollingUpdate strategy (no partition)."""
    spec = {
        "replicas": replicas,
        "podManagementPolicy": "OrderedReady",
        "updateStrategy": {"type": "RollingUpdate"},
    }
    return host_workload("StatefulSet", namespace, name, image, spec=spec)


def deny_owned_policy(owned_host: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy refusing pods with owned images, bound by DENY_LABEL."""
    prefix = f"{owned_host}/"
    expression = (
        f"object.spec.containers.all(c, !c.image.startsWith('{prefix}')) && "
        "(!has(object.spec.initContainers) || "
        f"object.spec.initContainers.all(c, !c.image.startsWith('{prefix}')))"
    )
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["pods"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": expression,
                        "message": "images of the owned registry are not allowed here",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {
                "policyName": POLICY,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {DENY_LABEL: "true"}}},
            },
        },
    ]


def dry_run_pod(cluster: Cluster, namespace: str, image: str) -> subprocess.CompletedProcess[str]:
    """``kubectl create --dry-run=server`` of a pod running ``image`` in ``namespace``."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "admission-probe", "namespace": namespace},
        "spec": {"hostNetwork": True, "containers": [{"name": "main", "image": image}]},
    }
    return subprocess.run(
        [
            str(cluster.env.kubectl),
            f"--kubeconfig={cluster.env.kubeconfig}",
            "create",
            "--dry-run=server",
            "-f",
            "-",
        ],
        input=json.dumps(pod),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def add_user_pull_secret(cluster: Cluster, namespace: str, docker_config: Path) -> None:
    """The user's own docker-registry Secret for the owned registry on the default SA.

    Made from a file, so the credentials are never on a command line.
    """
    kubectl(
        cluster,
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        USER_SECRET,
        f"--from-file=.dockerconfigjson={docker_config}",
        "--type=kubernetes.io/dockerconfigjson",
    )
    kubectl(
        cluster,
        "-n",
        namespace,
        "patch",
        "serviceaccount",
        "default",
        "-p",
        json.dumps({"imagePullSecrets": [{"name": USER_SECRET}]}),
    )


# --- what the watcher sees ------------------------------------------------------------


def template_images_of(obj: dict[str, Any]) -> tuple[str, ...]:
    """Every image of a workload object's pod template, init containers first."""
    spec = obj["spec"]["template"]["spec"]
    return tuple(c["image"] for c in (spec.get("initContainers") or []) + spec["containers"])


def rollout_complete(obj: dict[str, Any]) -> bool:
    """``kubectl rollout status``'s rule for a Deployment or StatefulSet object."""
    spec, status = obj["spec"], obj.get("status") or {}
    if status.get("observedGeneration", 0) < obj["metadata"]["generation"]:
        return False
    replicas = spec.get("replicas", 1)
    if obj["kind"] == "Deployment":
        updated = status.get("updatedReplicas", 0)
        return (
            updated >= replicas
            and status.get("replicas", 0) <= updated
            and status.get("availableReplicas", 0) >= updated
        )
    return (
        status.get("readyReplicas", 0) >= replicas
        and status.get("updatedReplicas", 0) >= replicas
        and status.get("updateRevision") == status.get("currentRevision")
    )


@dataclass(frozen=True)
class Seen:
    """One state of a workload, as the watcher first saw it."""

    at: float  # time.time() of the list that first showed it
    generation: int
    images: tuple[str, ...]
    annotations: tuple[tuple[str, str], ...]  # the controller's (image-cloner.io/...)
    complete: bool

    @property
    def annotated(self) -> dict[str, str]:
        return dict(self.annotations)


class Watcher:
    """Lists the guard's Deployments and StatefulSets every second, keeping each change."""

    def __init__(self, cluster: Cluster, namespaces: tuple[str, ...], owned_prefix: str) -> None:
        # The API client, not kubectl: a process a second would load the
        # machine the controller's timings are measured on.
        self._api = cluster.env.api_client()
        self._namespaces = set(namespaces)
        self.owned_prefix = owned_prefix
        self._history: dict[Key, list[Seen]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-watcher", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._api.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a failed list is retried the next second
                self.errors += 1
            self._stop.wait(1.0)

    def poll(self) -> None:
        """One list of the Deployments and one of the StatefulSets; record what changed."""
        apps = kubernetes.client.AppsV1Api(self._api)
        listed = []
        for kind, method in (
            ("Deployment", apps.list_deployment_for_all_namespaces),
            ("StatefulSet", apps.list_stateful_set_for_all_namespaces),
        ):
            for obj in json.loads(method(_preload_content=False).data)["items"]:
                obj["kind"] = kind  # items of a list carry no kind
                listed.append(obj)
        now = time.time()
        with self._lock:
            for obj in listed:
                meta = obj["metadata"]
                if meta["namespace"] not in self._namespaces:
                    continue
                key = (meta["namespace"], obj["kind"], meta["name"])
                seen = Seen(
                    at=now,
                    generation=meta["generation"],
                    images=template_images_of(obj),
                    annotations=tuple(
                        sorted(
                            (k, v)
                            for k, v in (meta.get("annotations") or {}).items()
                            if k.startswith(ANNOTATION_PREFIX)
                        )
                    ),
                    complete=rollout_complete(obj),
                )
                history = self._history.setdefault(key, [])
                last = history[-1] if history else None
                if last is None or (
                    last.generation,
                    last.images,
                    last.annotations,
                    last.complete,
                ) != (seen.generation, seen.images, seen.annotations, seen.complete):
                    history.append(seen)

    def history(self, key: Key) -> list[Seen]:
        with self._lock:
            return list(self._history.get(key, []))

    def keys(self, namespace: str) -> list[Key]:
        with self._lock:
            return sorted(k for k in self._history if k[0] == namespace)

    def owned(self, seen: Seen) -> bool:
        return any(i.startswith(self.owned_prefix) for i in seen.images)

    def first(self, key: Key, condition: Callable[[Seen], bool]) -> Seen | None:
        """The first state of ``key`` for which ``condition`` holds."""
        return next((s for s in self.history(key) if condition(s)), None)

    def patched_at(self, key: Key) -> float | None:
        """When the workload was first seen on an owned reference."""
        seen = self.first(key, self.owned)
        return seen.at if seen else None

    def completed_at(self, key: Key) -> float | None:
        """When the workload's rollout was first seen complete on owned references."""
        seen = self.first(key, lambda s: self.owned(s) and s.complete)
        return seen.at if seen else None

    def undone(self, key: Key) -> Seen | None:
        """The first state after a patch that is back on public references and marked undone."""
        history = self.history(key)
        patched = next((n for n, s in enumerate(history) if self.owned(s)), None)
        if patched is None:
            return None
        return next(
            (s for s in history[patched:] if not self.owned(s) and UNDONE in s.annotated), None
        )

    def patched_keys(self, namespace: str) -> list[Key]:
        return [k for k in self.keys(namespace) if self.patched_at(k) is not None]


# --- the fixture: every scenario set up, one controller deployed ---------------------


@dataclass
class Guard:
    """The deployed controller, the scenarios' public images and what the watcher sees."""

    deployment: Deployment
    watcher: Watcher
    public_prefix: str  # the public registry's host and a slash
    public: dict[Key, str]  # the public reference each workload started with
    pod_uids: dict[str, dict[str, str]]  # namespace -> pod name -> uid, before the controller
    opened: float  # time.time() when the scenarios' namespaces were opened to the controller
    timings: dict[str, float] = field(default_factory=dict)
    restarted: float | None = None  # when the controller of the restart scenario started

    @property
    def owned_prefix(self) -> str:
        return self.deployment.target + "/"


def build_images(cluster: Cluster, references: list[str]) -> None:
    """Build and push a runnable image per reference (seeded by it), four at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(cluster.build_runnable_image, r, r) for r in references]:
            future.result()


def scenario_workloads(public_host: str) -> dict[str, list[dict[str, Any]]]:
    """Namespace -> its workloads, all from public images of their own."""

    def image(namespace: str, name: str) -> str:
        return f"{public_host}/{namespace}/{name}:1"

    return {
        NS_PULL: [deployment(NS_PULL, n, image(NS_PULL, n)) for n in PULL_DEPLOYMENTS],
        NS_PULL_STS: [statefulset(NS_PULL_STS, "db", image(NS_PULL_STS, "db"))],
        NS_DENIED: [deployment(NS_DENIED, "web", image(NS_DENIED, "web"))],
        NS_HEALTHY: [
            deployment(NS_HEALTHY, n, image(NS_HEALTHY, n), replicas=1) for n in HEALTHY_DEPLOYMENTS
        ],
        NS_RESTART: [
            deployment(NS_RESTART, n, image(NS_RESTART, n), replicas=1) for n in RESTART_DEPLOYMENTS
        ],
    }


def key_of(obj: dict[str, Any]) -> Key:
    return (obj["metadata"]["namespace"], obj["kind"], obj["metadata"]["name"])


def verify_policy_in_force(cluster: Cluster, owned_image: str, public_image: str) -> float:
    """Wait until the API server refuses an owned image in NS_DENIED (server-side dry run).

    Also checks that the policy refuses nothing else: a public image there,
    and the owned image in NS_HEALTHY, are admitted. Returns the seconds waited.
    """
    started = time.monotonic()

    def refused() -> str:
        result = dry_run_pod(cluster, NS_DENIED, owned_image)
        return result.stderr if result.returncode != 0 else ""

    message = wait_for(refused, 60, "the admission policy in force", interval=0.5)
    assert POLICY in message and "denied request" in message, message
    assert dry_run_pod(cluster, NS_DENIED, public_image).returncode == 0
    allowed = dry_run_pod(cluster, NS_HEALTHY, owned_image)
    assert allowed.returncode == 0, allowed.stderr
    return time.monotonic() - started


def workloads_rolled_out(cluster: Cluster, count: int) -> bool:
    """Whether the ``count`` guard workloads' rollouts on their public images are complete."""
    listed = get_json(cluster, "deployments,statefulsets", "--all-namespaces")["items"]
    ours = [o for o in listed if o["metadata"]["namespace"] in NAMESPACES]
    return len(ours) == count and all(rollout_complete(o) for o in ours)


def pod_uids(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {
        ns: {p["metadata"]["name"]: p["metadata"]["uid"] for p in namespace_pods(cluster, ns)}
        for ns in NAMESPACES
    }


@pytest.fixture(scope="module")
def guard(cluster: Cluster) -> Iterator[Guard]:
    """``make deploy``, and meanwhile every scenario's namespace and workloads on public images.

    The namespaces carry ``image-cloner.io/skip`` until the workloads' public
    rollouts are complete and the controller is Ready, so the pods there
    before any switch are known (``Guard.pod_uids``); then all but
    NS_RESTART are opened at once. At the end: ``make undeploy``, the policy
    and the guard's namespaces removed.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    overlay = cluster.env.workdir / "overlay-rollout-guard"
    deployment_ = write_overlay(cluster, overlay, poll_interval=POLL_INTERVAL, config=SETTINGS)
    if not controller_gone(cluster):
        # Left by a module that failed before its undeploy (same names).
        make(cluster, "undeploy", deployment_)
    wait_controller_gone(cluster)
    env = cluster.env
    workloads = scenario_workloads(env.public.host)
    public = {key_of(o): template_images_of(o)[0] for ws in workloads.values() for o in ws}
    watcher = Watcher(cluster, NAMESPACES, deployment_.target + "/")
    try:
        deploying = time.monotonic()
        result = make(cluster, "deploy", deployment_)
        assert result.returncode == 0, result.stdout + result.stderr
        apply(
            cluster,
            [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": namespace,
                        "annotations": {SKIP: "true"},
                        "labels": {DENY_LABEL: "true"} if namespace == NS_DENIED else {},
                    },
                }
                for namespace in NAMESPACES
            ],
        )
        for namespace in NAMESPACES:
            cluster.wait_namespace_ready(namespace)
        docker_config = env.workdir / "rollout-guard-dockerconfig.json"
        docker_config.touch(mode=0o600)
        assert env.owned.username is not None and env.owned.password is not None
        auth = base64.b64encode(f"{env.owned.username}:{env.owned.password}".encode()).decode()
        docker_config.write_text(json.dumps({"auths": {env.owned.host: {"auth": auth}}}))
        for namespace in (NS_DENIED, NS_HEALTHY, NS_RESTART):
            add_user_pull_secret(cluster, namespace, docker_config)
        apply(cluster, deny_owned_policy(env.owned.host))
        mark = time.monotonic()
        build_images(cluster, sorted(public.values()))
        timings["images built"] = time.monotonic() - mark
        for objects in workloads.values():
            apply(cluster, objects)
        owned_example = f"{deployment_.target}/example/app:1"
        timings["policy in force (dry run)"] = verify_policy_in_force(
            cluster, owned_example, public[(NS_DENIED, "Deployment", "web")]
        )
        mark = time.monotonic()
        wait_for(
            lambda: workloads_rolled_out(cluster, len(public)),
            180,
            "the guard's workloads rolled out on public images",
            interval=1.0,
        )
        timings["public rollouts"] = time.monotonic() - mark
        uids = pod_uids(cluster)
        controller_ready(cluster, 2)
        timings["make deploy -> controller Ready"] = time.monotonic() - deploying
        watcher.start()
        opened = time.time()
        opening = [n for n in NAMESPACES if n != NS_RESTART]
        kubectl(cluster, "annotate", "namespace", *opening, f"{SKIP}-")
        timings["setup"] = time.monotonic() - started
        print("\nrollout guard setup: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        yield Guard(deployment_, watcher, env.public.host + "/", public, uids, opened, timings)
    finally:
        watcher.stop()
        mark = time.monotonic()
        undeploy = make(cluster, "undeploy", deployment_)
        wait_controller_gone(cluster)
        kubectl(cluster, "delete", "validatingadmissionpolicybinding", POLICY, check=False)
        kubectl(cluster, "delete", "validatingadmissionpolicy", POLICY, check=False)
        kubectl(
            cluster,
            "delete",
            "namespace",
            *NAMESPACES,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
            check=False,
        )
        print(f"\nrollout guard teardown {time.monotonic() - mark:.1f}s")
        print(f"rollout guard module {time.monotonic() - started:.1f}s in all")
        if timings:
            print(
                "rollout guard timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
            )
        assert undeploy.returncode == 0, undeploy.stdout + undeploy.stderr


# --- assertions shared by the scenarios ------------------------------------------------


def namespace_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """The pods of ``namespace`` that are not being deleted."""
    pods = get_json(cluster, "-n", namespace, "pods")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def waiting_reasons(pod: dict[str, Any]) -> list[str]:
    status = pod["status"]
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    return [(s.get("state", {}).get("waiting") or {}).get("reason", "") for s in statuses]


def pods_healthy_on(cluster: Cluster, namespace: str, prefix: str, count: int) -> bool:
    """Exactly ``count`` pods in the namespace, all Running and Ready, every image on ``prefix``.

    Also false while any pod (terminating ones included) waits on a pull.
    """
    every = get_json(cluster, "-n", namespace, "pods")["items"]
    if any(r in WAITING_PULL for p in every for r in waiting_reasons(p)):
        return False
    pods = [p for p in every if not p["metadata"].get("deletionTimestamp")]
    if len(pods) != count:
        return False
    for pod in pods:
        if not all_ready(pod, len(pod["spec"]["containers"])):
            return False
        if not all(c["image"].startswith(prefix) for c in pod["spec"]["containers"]):
            return False
    return True


def events_of(cluster: Cluster, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    """Events whose involved object is the named workload."""
    return get_json(
        cluster,
        "-n",
        namespace,
        "events",
        "--field-selector",
        f"involvedObject.kind={kind},involvedObject.name={name}",
    )["items"]


def with_reason(events: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("reason") == reason]


def stamp_time(stamp: str) -> float:
    """Epoch seconds of an RFC 3339 time as the API server writes it (whole seconds used)."""
    return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))


def event_time(event: dict[str, Any]) -> float:
    """The first time of an Event (``firstTimestamp``, else ``eventTime``), epoch seconds."""
    return stamp_time(event.get("firstTimestamp") or event.get("eventTime") or "")


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def metrics(guard: Guard) -> dict[str, float]:
    return scrape(guard.deployment.metrics_port)


def wait_metric(
    guard: Guard, what: str, check: Callable[[dict[str, float]], bool], timeout: float = 60
) -> dict[str, float]:
    """Scrape until ``check(samples)``; tolerate a scrape that fails (restart)."""

    def scraped() -> dict[str, float] | None:
        try:
            samples = metrics(guard)
        except OSError:
            return None
        return samples if check(samples) else None

    return wait_for(scraped, timeout, what, interval=1.0)


def wait_undone(guard: Guard, key: Key, timeout: float = 150) -> Seen:
    return wait_for(lambda: guard.watcher.undone(key), timeout, f"{key} undone", interval=1.0)


def assert_undone(cluster: Cluster, guard: Guard, key: Key, reason: str) -> dict[str, Any]:
    """The workload is back on its public reference, annotated undone with ``reason``.

    The undone container's original reference is no longer recorded.
    Returns the ``image-cloner.io/undone`` annotation, parsed.
    """
    namespace, kind, name = key
    obj = get_json(cluster, "-n", namespace, kind.lower(), name)
    assert template_images_of(obj) == (guard.public[key],), template_images_of(obj)
    annotations = obj["metadata"].get("annotations") or {}
    undone = json.loads(annotations[UNDONE])
    assert isinstance(undone, dict) and undone.get("reason") == reason, undone
    originals = json.loads(annotations.get(ORIGINAL_IMAGES) or "{}")
    assert "main" not in originals, originals
    return undone


def assert_switch_events(
    cluster: Cluster, guard: Guard, key: Key, reason: str
) -> list[dict[str, Any]]:
    """Warning ``SwitchFailed`` naming ``reason`` and Normal ``SwitchUndone`` on the workload.

    No Event message holds the owned registry's password. Returns the events.
    """
    namespace, kind, name = key

    def found() -> list[dict[str, Any]] | None:
        events = events_of(cluster, namespace, kind, name)
        failed = [e for e in with_reason(events, "SwitchFailed") if reason in e.get("message", "")]
        if failed and with_reason(events, "SwitchUndone"):
            return events
        return None

    events = wait_for(found, 30, f"SwitchFailed ({reason}) and SwitchUndone on {key}", interval=1.0)
    for event in with_reason(events, "SwitchFailed"):
        assert event["type"] == "Warning", event
    for event in with_reason(events, "SwitchUndone"):
        assert event["type"] == "Normal", event
    password = cluster.env.owned.password
    assert password and not any(password in e.get("message", "") for e in events)
    return events


def assert_held(guard: Guard, key: Key, undone: Seen) -> None:
    """No patch of the undone workload for HELD_FOR seconds after the undo was seen.

    Its generation stays (a patch of the template would raise it) and no
    owned reference or recorded original comes back.
    """
    remaining = undone.at + HELD_FOR + 2 - time.time()
    if remaining > 0:
        time.sleep(remaining)
    guard.watcher.poll()
    after = [s for s in guard.watcher.history(key) if s.at >= undone.at]
    assert after, key
    assert all(s.generation == undone.generation for s in after), [
        (round(s.at - undone.at, 1), s.generation, s.images) for s in after
    ]
    assert not any(guard.watcher.owned(s) for s in after), after
    assert not any(
        ORIGINAL_IMAGES in s.annotated and "main" in s.annotated[ORIGINAL_IMAGES] for s in after
    ), after


def failed_pull_events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """The kubelet's ``Failed`` Events on pods of ``namespace`` (pull errors among them)."""
    events = get_json(
        cluster, "-n", namespace, "events", "--field-selector", "involvedObject.kind=Pod"
    )["items"]
    return [e for e in events if e.get("reason") == "Failed"]


# --- 1. pull failure ----------------------------------------------------------------------


def test_pull_failure_undoes_the_canary_and_the_other_five_deployments_are_never_patched(
    cluster: Cluster, guard: Guard
) -> None:
    watcher = guard.watcher
    canary_keys = wait_for(
        lambda: watcher.patched_keys(NS_PULL),
        120,
        f"a Deployment of {NS_PULL} patched",
        interval=1.0,
    )
    assert len(canary_keys) == 1, f"more than one canary: {canary_keys}"
    (canary,) = canary_keys
    undone = wait_undone(guard, canary)
    assert_undone(cluster, guard, canary, "owned_pull_failed")
    # The kubelet could not pull the owned copy: 401 from the owned registry.
    failed = [
        e
        for e in failed_pull_events(cluster, NS_PULL)
        if guard.owned_prefix in e.get("message", "")
    ]
    assert any("401 Unauthorized" in e["message"] for e in failed), failed
    public_prefix = guard.public_prefix
    wait_for(
        lambda: pods_healthy_on(cluster, NS_PULL, public_prefix, 2 * len(PULL_DEPLOYMENTS)),
        60,
        f"every pod of {NS_PULL} Running and Ready on public images",
        interval=1.0,
    )
    # The old pods stayed (maxUnavailable 0): none of the canary's was replaced.
    uids = {p["metadata"]["uid"] for p in namespace_pods(cluster, NS_PULL)}
    assert uids == set(guard.pod_uids[NS_PULL].values())
    assert_switch_events(cluster, guard, canary, "owned_pull_failed")
    # The canary alone was ever patched; the other five never were.
    assert watcher.patched_keys(NS_PULL) == [canary]
    for name in PULL_DEPLOYMENTS:
        if name == canary[2]:
            continue
        obj = get_json(cluster, "-n", NS_PULL, "deployment", name)
        annotations = obj["metadata"].get("annotations") or {}
        assert obj["metadata"]["generation"] == 1, (name, obj["metadata"]["generation"])
        assert not [a for a in annotations if a.startswith(ANNOTATION_PREFIX)], annotations
    patched_at = watcher.patched_at(canary)
    assert patched_at is not None
    first_failed = min(event_time(e) for e in failed)
    guard.timings["pull: namespaces opened -> canary patch seen"] = patched_at - guard.opened
    guard.timings["pull: patch seen -> first Failed pull event"] = first_failed - patched_at
    guard.timings["pull: first Failed pull event -> back on public"] = undone.at - first_failed
    guard.timings["pull: patch seen -> back on public"] = undone.at - patched_at
    print(
        f"\npull failure: canary {canary[2]} patched {patched_at - guard.opened:.1f}s after the "
        f"namespaces were opened; first Failed pull event {first_failed - patched_at:+.0f}s "
        "(whole-second stamp) after the patch was seen, back on public "
        f"{undone.at - first_failed:.0f}s after it ({undone.at - patched_at:.1f}s after the patch)"
    )
    assert_held(guard, canary, undone)


def test_pull_failure_rolls_the_ordered_ready_statefulset_back(
    cluster: Cluster, guard: Guard
) -> None:
    key = (NS_PULL_STS, "StatefulSet", "db")
    undone = wait_undone(guard, key)
    assert_undone(cluster, guard, key, "owned_pull_failed")
    public_prefix = guard.public_prefix
    wait_for(
        lambda: pods_healthy_on(cluster, NS_PULL_STS, public_prefix, 2),
        90,
        f"both pods of {NS_PULL_STS} Running and Ready on public images",
        interval=1.0,
    )
    healed = time.time()
    obj = get_json(cluster, "-n", NS_PULL_STS, "statefulset", "db")
    wait_for(
        lambda: rollout_complete(get_json(cluster, "-n", NS_PULL_STS, "statefulset", "db")),
        60,
        "the StatefulSet's rollout complete",
        interval=1.0,
    )
    # Forced rollback: only the broken pod (the highest ordinal, updated
    # first) was replaced; db-0 stayed Ready on its public image throughout.
    pods = {
        p["metadata"]["name"]: p["metadata"]["uid"] for p in namespace_pods(cluster, NS_PULL_STS)
    }
    assert pods["db-0"] == guard.pod_uids[NS_PULL_STS]["db-0"]
    assert pods["db-1"] != guard.pod_uids[NS_PULL_STS]["db-1"]
    failed = [
        e
        for e in failed_pull_events(cluster, NS_PULL_STS)
        if guard.owned_prefix in e.get("message", "")
    ]
    assert any("401 Unauthorized" in e["message"] for e in failed), failed
    assert_switch_events(cluster, guard, key, "owned_pull_failed")
    patched_at = guard.watcher.patched_at(key)
    assert patched_at is not None
    first_failed = min(event_time(e) for e in failed)
    guard.timings["sts: first Failed pull event -> back on public"] = undone.at - first_failed
    guard.timings["sts: first Failed pull event -> pods healthy"] = healed - first_failed
    print(
        f"\nstatefulset: back on public {undone.at - first_failed:.0f}s after the first Failed "
        f"pull event, both pods Ready {healed - first_failed:.0f}s after it "
        f"(generation {obj['metadata']['generation']})"
    )
    assert_held(guard, key, undone)


def test_pull_failures_are_counted(cluster: Cluster, guard: Guard) -> None:
    samples = wait_metric(
        guard,
        "switch failures and undos counted",
        lambda s: (
            metric(s, "image_cloner_switch_failures_total", reason="owned_pull_failed") >= 2
            and metric(s, "image_cloner_switches_undone_total") >= 2
        ),
        30,
    )
    print(
        "\nmetrics: "
        + ", ".join(f"{k} {v:g}" for k, v in samples.items() if k.startswith("image_cloner_switch"))
    )


# --- 2. admission denial -----------------------------------------------------------------


def test_admission_denial_is_undone(cluster: Cluster, guard: Guard) -> None:
    key = (NS_DENIED, "Deployment", "web")
    undone = wait_undone(guard, key)
    assert_undone(cluster, guard, key, "admission_denied")
    # The ReplicaSet of the switched template was refused by the policy.
    events = get_json(
        cluster, "-n", NS_DENIED, "events", "--field-selector", "involvedObject.kind=ReplicaSet"
    )["items"]
    refused = [
        e for e in events if e.get("reason") == "FailedCreate" and POLICY in e.get("message", "")
    ]
    assert refused, [e.get("message") for e in events]
    wait_for(
        lambda: pods_healthy_on(cluster, NS_DENIED, guard.public_prefix, 2),
        60,
        f"both pods of {NS_DENIED} Running and Ready on public images",
        interval=1.0,
    )
    uids = {p["metadata"]["uid"] for p in namespace_pods(cluster, NS_DENIED)}
    assert uids == set(guard.pod_uids[NS_DENIED].values())
    assert_switch_events(cluster, guard, key, "admission_denied")
    wait_metric(
        guard,
        "the admission denial counted",
        lambda s: metric(s, "image_cloner_switch_failures_total", reason="admission_denied") >= 1,
        30,
    )
    patched_at = guard.watcher.patched_at(key)
    assert patched_at is not None
    first_refused = min(event_time(e) for e in refused)
    guard.timings["denied: first FailedCreate -> back on public"] = undone.at - first_refused
    print(
        f"\nadmission denial: first FailedCreate {first_refused - patched_at:+.0f}s after the "
        f"patch was seen, back on public {undone.at - first_refused:.0f}s after it"
    )
    assert_held(guard, key, undone)


# --- 3. healthy switch -------------------------------------------------------------------


def test_healthy_switches_go_canary_first_then_the_rest_and_complete(
    cluster: Cluster, guard: Guard
) -> None:
    watcher = guard.watcher
    keys = [(NS_HEALTHY, "Deployment", n) for n in HEALTHY_DEPLOYMENTS]
    wait_for(
        lambda: all(watcher.completed_at(k) for k in keys),
        150,
        f"every Deployment of {NS_HEALTHY} rolled out on owned images",
        interval=1.0,
    )
    patched = {k: watcher.patched_at(k) for k in keys}
    completed = {k: watcher.completed_at(k) for k in keys}
    canary = min(keys, key=lambda k: patched[k] or 0.0)
    others = [k for k in keys if k != canary]
    canary_done = completed[canary]
    assert canary_done is not None
    # The others were patched only once the canary's rollout was complete:
    # no list showed one of them patched while the canary's was not.
    for key in others:
        at = patched[key]
        assert at is not None and at >= canary_done, (key, at, canary_done)
    wait_for(
        lambda: pods_healthy_on(cluster, NS_HEALTHY, guard.owned_prefix, len(keys)),
        60,
        f"every pod of {NS_HEALTHY} Running and Ready on owned images",
        interval=1.0,
    )

    def completed_events() -> dict[Key, list[dict[str, Any]]] | None:
        found = {k: with_reason(events_of(cluster, *k), "SwitchCompleted") for k in keys}
        return found if all(found.values()) else None

    events = wait_for(completed_events, 30, "SwitchCompleted on each Deployment", interval=1.0)
    for key in keys:
        assert all(e["type"] == "Normal" for e in events[key]), events[key]
        assert not with_reason(events_of(cluster, *key), "SwitchUndone")
    # The controller's own record agrees (whole seconds): the canary's
    # switch completed before the others' Patched Events.
    canary_completed = min(event_time(e) for e in events[canary])
    for key in others:
        patched_events = with_reason(events_of(cluster, *key), "Patched")
        assert patched_events, key
        assert min(event_time(e) for e in patched_events) >= canary_completed
    wait_metric(
        guard,
        "switches_pending back to 0 and three switches completed",
        lambda s: (
            metric(s, "image_cloner_switches_pending") == 0
            and metric(s, "image_cloner_switches_completed_total") >= len(keys)
        ),
        60,
    )
    canary_patched = patched[canary] or 0.0
    guard.timings["healthy: canary patch -> its rollout complete"] = canary_done - canary_patched
    last = max(completed[k] or 0.0 for k in keys)
    guard.timings["healthy: canary patch -> all complete"] = last - canary_patched
    print(
        f"\nhealthy: canary {canary[2]} complete {canary_done - canary_patched:.1f}s after its "
        "patch; others patched "
        + ", ".join(f"{(patched[k] or 0.0) - canary_patched:.1f}s" for k in others)
        + f" after it; all complete after {last - canary_patched:.1f}s"
    )


# --- 4. restart with a switch pending -----------------------------------------------------


def controller_started_at(pod: dict[str, Any]) -> float:
    """When the pod's controller container started (epoch seconds)."""
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "controller"]
    return stamp_time(status["state"]["running"]["startedAt"])


def test_restart_with_a_switch_pending_the_new_pod_completes_it(
    cluster: Cluster, guard: Guard
) -> None:
    watcher = guard.watcher
    keys = [(NS_RESTART, "Deployment", n) for n in RESTART_DEPLOYMENTS]
    (old,) = controller_pods(cluster)
    old_name = old["metadata"]["name"]
    # New pods available only RESTART_MIN_READY s after Ready: a switch
    # stays pending long enough to delete the controller pod under it.
    # (Set now, not at creation, so the public rollout was quick.)
    for _ns, _kind, name in keys:
        kubectl(
            cluster,
            "-n",
            NS_RESTART,
            "patch",
            "deployment",
            name,
            "-p",
            json.dumps({"spec": {"minReadySeconds": RESTART_MIN_READY}}),
        )
    kubectl(cluster, "annotate", "namespace", NS_RESTART, f"{SKIP}-")
    opened = time.monotonic()
    patched = wait_for(
        lambda: watcher.patched_keys(NS_RESTART),
        3 * POLL_INTERVAL + 30,
        f"the canary of {NS_RESTART} patched",
        interval=1.0,
    )
    assert len(patched) == 1, f"more than one canary: {patched}"
    (canary,) = patched
    (other,) = [k for k in keys if k != canary]
    # Pending: its new pod needs RESTART_MIN_READY seconds to be available.
    obj = get_json(cluster, "-n", NS_RESTART, "deployment", canary[2])
    assert not rollout_complete(obj)
    kubectl(cluster, "-n", CONTROLLER_NAMESPACE, "delete", "pod", old_name, "--wait=false")
    deleted = time.time()
    print(f"\nrestart: canary {canary[2]} patched {time.monotonic() - opened:.1f}s after opt-in")
    assert not with_reason(events_of(cluster, *canary), "SwitchCompleted")
    assert watcher.patched_at(other) is None
    wait_for(
        lambda: (
            kubectl(
                cluster, "-n", CONTROLLER_NAMESPACE, "get", "pod", old_name, check=False
            ).returncode
            != 0
        ),
        90,
        "the old controller pod gone",
        interval=1.0,
    )
    gone = time.time()
    new = wait_for(
        lambda: next(
            (
                p
                for p in controller_pods(cluster)
                if p["metadata"]["name"] != old_name and all_ready(p, 2)
            ),
            None,
        ),
        150,
        "a new controller pod 2/2 Ready",
        interval=1.0,
    )
    ready = time.time()
    started = controller_started_at(new)
    guard.timings["restart: delete -> old pod gone"] = gone - deleted
    guard.timings["restart: delete -> new pod Ready"] = ready - deleted
    events = wait_for(
        lambda: with_reason(events_of(cluster, *canary), "SwitchCompleted"),
        ROLLOUT_TIMEOUT,
        f"SwitchCompleted on {canary}",
        interval=1.0,
    )
    completed_event = min(event_time(e) for e in events)
    # Written by the new pod: its controller started before it.
    assert completed_event >= started, (completed_event, started)
    assert not with_reason(events_of(cluster, *canary), "SwitchUndone")
    # The canary gate goes on with the new pod: the other is patched only
    # after the canary's rollout completed, and completes too.
    wait_for(
        lambda: watcher.completed_at(other),
        ROLLOUT_TIMEOUT,
        f"{other} rolled out on owned images",
        interval=1.0,
    )
    canary_done = watcher.completed_at(canary)
    other_patched = watcher.patched_at(other)
    assert canary_done is not None and other_patched is not None
    assert other_patched >= canary_done, (other_patched, canary_done)
    patched_events = with_reason(events_of(cluster, *other), "Patched")
    assert patched_events and min(event_time(e) for e in patched_events) >= completed_event
    wait_for(
        lambda: with_reason(events_of(cluster, *other), "SwitchCompleted"),
        30,
        f"SwitchCompleted on {other}",
        interval=1.0,
    )
    wait_for(
        lambda: pods_healthy_on(cluster, NS_RESTART, guard.owned_prefix, 2),
        60,
        f"both pods of {NS_RESTART} Running and Ready on owned images",
        interval=1.0,
    )
    wait_metric(
        guard,
        "switches_pending back to 0 in the new pod",
        lambda s: metric(s, "image_cloner_switches_pending") == 0,
        60,
    )
    guard.timings["restart: delete -> SwitchCompleted by the new pod"] = completed_event - deleted
    guard.restarted = started
    print(
        f"restart: old pod gone {gone - deleted:.1f}s and new pod Ready {ready - deleted:.1f}s "
        f"after the delete; SwitchCompleted {completed_event - deleted:.0f}s after it; "
        f"{other[2]} patched {other_patched - canary_done:.1f}s after the canary completed"
    )


def test_after_the_restart_undone_workloads_stay_held(cluster: Cluster, guard: Guard) -> None:
    # The new pod changed none of what lifts a hold (configuration,
    # credentials, owned copy) and backoff.max has not passed: what was
    # undone before the restart is not patched again.
    # These two build on the restart scenario above (file order): without it
    # they would prove nothing, so they fail rather than pass or skip.
    assert guard.restarted is not None, "the restart scenario did not run before this test"
    remaining = guard.restarted + HELD_FOR + 2 - time.time()
    if remaining > 0:
        time.sleep(remaining)
    guard.watcher.poll()
    for key in (
        *guard.watcher.patched_keys(NS_PULL),
        (NS_PULL_STS, "StatefulSet", "db"),
        (NS_DENIED, "Deployment", "web"),
    ):
        undone = guard.watcher.undone(key)
        assert undone is not None, key
        after = guard.watcher.history(key)[-1]
        assert after.generation == undone.generation and not guard.watcher.owned(after), (
            key,
            after,
        )


def test_after_the_restart_the_held_namespace_patches_no_other_workload(
    cluster: Cluster, guard: Guard
) -> None:
    # The canary of guard-pull failed with an authentication error: the
    # namespace is held with that cause, across the restart too.
    # These two build on the restart scenario above (file order): without it
    # they would prove nothing, so they fail rather than pass or skip.
    assert guard.restarted is not None, "the restart scenario did not run before this test"
    patched = guard.watcher.patched_keys(NS_PULL)
    assert len(patched) == 1, patched
    for name in PULL_DEPLOYMENTS:
        if (NS_PULL, "Deployment", name) in patched:
            continue
        obj = get_json(cluster, "-n", NS_PULL, "deployment", name)
        assert obj["metadata"]["generation"] == 1, name
