"""The controller on a real node: ``make deploy``, patched pods running from owned copies.

One cluster per session (the ``cluster`` fixture, devenv/cluster.py); the
scenarios build on each other in file order, like a user's first day:
deploy, watch workloads switch and run, lose the public registry, revert one
namespace, undeploy. First of all, the backend without Docker
(``TestBackendWithoutDocker``) deploys manifests/skopeo and undeploys it
again at the end of its class, before the module's ``deployed`` fixture
deploys manifests/ with the docker-in-docker sidecar.
What is asserted is the state of the world: pod specs,
pod phases and readiness, the kubelet's ``Pulled`` events and the owned
registry's request log. A pod whose owned copy has the original's digest
shows the original name in ``status.containerStatuses[].image``
(containerd reports the first name it stored for a digest), so that field
is not used.
"""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from devenv.cluster import (
    CONTROLLER_NAMESPACE,
    Cluster,
    Deployment,
    host_workload,
    make,
    write_overlay,
)
from devenv.harness import REPO_ROOT, free_ports
from devenv.images import platforms_served
from devenv.waiting import wait_for
from devenv.workloads import workload

NS_SECRET = "apps-with-secret"  # the default ServiceAccount already has a pull secret
NS_SA = "apps-with-sa"  # every workload runs as a custom ServiceAccount
ROLLOUT_TIMEOUT = "180s"


def kubectl(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kubectl as the admin; raise with its output when ``check`` and it fails."""
    result = cluster.env.run_kubectl(*args, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}")
    return result


def get_json(cluster: Cluster, *args: str) -> Any:
    """``kubectl get ARGS -o json``, parsed."""
    return json.loads(kubectl(cluster, "get", *args, "-o", "json").stdout)


def apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    """``kubectl apply -f -`` of a list of objects."""
    result = subprocess.run(
        [
            str(cluster.env.kubectl),
            f"--kubeconfig={cluster.env.kubeconfig}",
            "apply",
            "-f",
            "-",
        ],
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Workloads:
    """The sample workloads and the public images they started with."""

    public: dict[str, dict[str, str]]  # namespace -> short name -> public reference
    kinds: list[tuple[str, str, str]] = field(default_factory=list)  # (namespace, kind, name)


def sample_workloads(
    namespace: str, public: dict[str, str], sa: str | None, secret: str | None
) -> list[dict[str, Any]]:
    """A Deployment (with an init container), a StatefulSet and a DaemonSet in ``namespace``."""
    pod = {"serviceAccountName": sa} if sa else {}
    web_pod = {**pod, "imagePullSecrets": [{"name": secret}]} if secret else pod
    return [
        host_workload(
            "Deployment",
            namespace,
            "web",
            public["web"],
            public["init"],
            pod=web_pod,
            spec={"replicas": 2},
        ),
        host_workload("StatefulSet", namespace, "db", public["db"], pod=pod, spec={"replicas": 1}),
        host_workload("DaemonSet", namespace, "agent", public["agent"], pod=pod),
    ]


def template_images(cluster: Cluster, namespace: str, kind: str, name: str) -> list[str]:
    """Every image of a workload's pod template, init containers first."""
    spec = get_json(cluster, "-n", namespace, kind, name)["spec"]["template"]["spec"]
    return [c["image"] for c in (spec.get("initContainers") or []) + spec["containers"]]


def workload_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The pods of the workload labelled ``app=name`` that are not being deleted."""
    pods = get_json(cluster, "-n", namespace, "pods", "-l", f"app={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def pods_running_on(cluster: Cluster, namespace: str, name: str, prefix: str, count: int) -> bool:
    """Whether exactly ``count`` pods run, all containers ready, every image under ``prefix``."""
    pods = workload_pods(cluster, namespace, name)
    if len(pods) != count:
        return False
    for pod in pods:
        if pod["status"].get("phase") != "Running":
            return False
        statuses = pod["status"].get("containerStatuses") or []
        if not statuses or not all(s.get("ready") for s in statuses):
            return False
        spec = pod["spec"]
        images = [c["image"] for c in (spec.get("initContainers") or []) + spec["containers"]]
        if not all(i.startswith(prefix) for i in images):
            return False
    return True


def controller_gone(cluster: Cluster) -> bool:
    """Whether the controller's namespace is gone (``make undeploy``, ``helm uninstall``)."""
    return kubectl(cluster, "get", "namespace", CONTROLLER_NAMESPACE, check=False).returncode != 0


def wait_controller_gone(cluster: Cluster) -> None:
    """Poll once a second, for up to 120 s, until :func:`controller_gone`."""
    wait_for(
        lambda: controller_gone(cluster),
        120,
        f"namespace {CONTROLLER_NAMESPACE} gone",
        interval=1.0,
    )


def wait_pods_running(
    cluster: Cluster, namespace: str, name: str, prefix: str, count: int, what: str
) -> None:
    """Poll once a second, for up to 120 s, until :func:`pods_running_on` holds."""
    wait_for(
        lambda: pods_running_on(cluster, namespace, name, prefix, count), 120, what, interval=1.0
    )


def recreated_and_running(
    cluster: Cluster, namespace: str, name: str, prefix: str, since: float
) -> bool:
    """Whether the workload's pods run on ``prefix`` images and were all created after ``since``.

    ``since`` is a Unix time in seconds; creationTimestamp has 1 s resolution.
    """
    if not pods_running_on(cluster, namespace, name, prefix, counts(name)):
        return False
    return all(
        calendar.timegm(time.strptime(p["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
        >= int(since)
        for p in workload_pods(cluster, namespace, name)
    )


def rollout(cluster: Cluster, namespace: str, kind: str, name: str) -> None:
    """``kubectl rollout status`` to completion (fails the test on timeout)."""
    kubectl(
        cluster,
        "-n",
        namespace,
        "rollout",
        "status",
        f"{kind}/{name}",
        f"--timeout={ROLLOUT_TIMEOUT}",
    )


def pulled_messages(cluster: Cluster, namespace: str, pod: str) -> list[str]:
    """Messages of the kubelet's ``Pulled`` events for one pod."""
    events = get_json(
        cluster,
        "-n",
        namespace,
        "events",
        "--field-selector",
        f"involvedObject.name={pod},reason=Pulled",
    )["items"]
    return [e.get("message", "") for e in events]


def containerd_manifest_gets(cluster: Cluster, repository: str) -> list[str]:
    """Owned registry log lines: containerd got a manifest of ``repository`` (200).

    The owned registry has htpasswd auth, so a 200 means the request carried
    the owned credentials (containerd's anonymous first try gets a 401).
    """
    text = cluster.env.owned.log_path.read_text(errors="replace")
    return [
        line
        for line in text.splitlines()
        if "response completed" in line
        and f"/v2/{repository}/manifests/" in line
        and 'useragent="containerd/' in line
        and "http.response.status=200" in line
    ]


def controller_pods(cluster: Cluster) -> list[dict[str, Any]]:
    """The controller's pods in its namespace, not being deleted."""
    pods = get_json(
        cluster, "-n", CONTROLLER_NAMESPACE, "pods", "-l", "app.kubernetes.io/name=image-cloner"
    )
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def all_ready(pod: dict[str, Any], containers: int) -> bool:
    """Whether the pod is Running with ``containers`` ready containers."""
    statuses = pod["status"].get("containerStatuses") or []
    return (
        pod["status"].get("phase") == "Running"
        and len(statuses) == containers
        and all(s.get("ready") for s in statuses)
    )


def controller_ready(cluster: Cluster, containers: int, rollout_timeout: int = 240) -> None:
    """Wait for the controller Deployment's rollout, then for a pod with every container Ready."""
    kubectl(
        cluster,
        "-n",
        CONTROLLER_NAMESPACE,
        "rollout",
        "status",
        "deploy/image-cloner",
        f"--timeout={rollout_timeout}s",
    )
    wait_for(
        lambda: any(all_ready(p, containers) for p in controller_pods(cluster)),
        120,
        f"controller pod {containers}/{containers} Ready",
        interval=1.0,
    )


# --- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> Iterator[Deployment]:
    """``make deploy`` of an overlay of the shipped manifests; the controller pod 2/2 Ready."""
    deployment = write_overlay(cluster, cluster.env.workdir / "overlay")
    started = time.monotonic()
    result = make(cluster, "deploy", deployment)
    assert result.returncode == 0, result.stdout + result.stderr
    controller_ready(cluster, 2)
    print(f"\nmake deploy -> controller 2/2 Ready in {time.monotonic() - started:.1f}s")
    yield deployment


@pytest.fixture(scope="module")
def workloads(cluster: Cluster, deployed: Deployment) -> Workloads:
    """Sample workloads in two namespaces, from public images, created after the controller."""
    # Images of their own per namespace: a pod can only run if the kubelet
    # pulled it with that namespace's credentials (nothing already on the node).
    public = {
        ns: {n: f"{cluster.env.public.host}/{ns}/{n}:1" for n in ("web", "init", "db", "agent")}
        for ns in (NS_SECRET, NS_SA)
    }
    for images in public.values():
        for reference in images.values():
            cluster.build_runnable_image(reference, seed=reference)
    for namespace in (NS_SECRET, NS_SA):
        kubectl(cluster, "create", "namespace", namespace)
        cluster.wait_namespace_ready(namespace)
    # A pull secret of the namespace's own (for another registry) on its
    # default ServiceAccount: the controller must add its own next to it.
    kubectl(
        cluster,
        "-n",
        NS_SECRET,
        "create",
        "secret",
        "docker-registry",
        "team-registry",
        "--docker-server=registry.team.invalid",
        "--docker-username=team",
        "--docker-password=not-used",
    )
    kubectl(
        cluster,
        "-n",
        NS_SECRET,
        "patch",
        "serviceaccount",
        "default",
        "-p",
        '{"imagePullSecrets": [{"name": "team-registry"}]}',
    )
    kubectl(cluster, "-n", NS_SA, "create", "serviceaccount", "runner")
    apply(cluster, sample_workloads(NS_SECRET, public[NS_SECRET], None, None))
    apply(cluster, sample_workloads(NS_SA, public[NS_SA], "runner", None))
    kinds = [
        (ns, kind, name)
        for ns in (NS_SECRET, NS_SA)
        for kind, name in (("deployment", "web"), ("statefulset", "db"), ("daemonset", "agent"))
    ]
    return Workloads(public=public, kinds=kinds)


def counts(name: str) -> int:
    """Pods per workload: web has 2 replicas, db and agent 1."""
    return 2 if name == "web" else 1


# --- scenarios -----------------------------------------------------------------

NS_SKOPEO = "apps-skopeo"  # the workloads of the backend without Docker


@pytest.fixture(scope="class")
def skopeo_deployed(cluster: Cluster) -> Iterator[Deployment]:
    """``make deploy`` of an overlay of manifests/skopeo; the controller pod 1/1 Ready.

    Runs before the module's ``deployed`` fixture (file order) and undeploys
    at the end of its class, waiting until the namespace is gone, so the
    scenarios after it deploy manifests/ with the sidecar on a clean cluster.
    """
    absent = kubectl(cluster, "get", "namespace", CONTROLLER_NAMESPACE, check=False)
    assert absent.returncode != 0, "manifests/ already deployed: run this class first"
    deployment = write_overlay(cluster, cluster.env.workdir / "overlay-skopeo", skopeo=True)
    started = time.monotonic()
    result = make(cluster, "deploy", deployment)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        controller_ready(cluster, 1, rollout_timeout=180)
        print(
            f"\nmake deploy (skopeo) -> controller 1/1 Ready in {time.monotonic() - started:.1f}s"
        )
        yield deployment
    finally:
        started = time.monotonic()
        kubectl(cluster, "delete", "namespace", NS_SKOPEO, "--wait=false", check=False)
        result = make(cluster, "undeploy", deployment)
        wait_for(
            lambda: all(
                kubectl(cluster, "get", "namespace", ns, check=False).returncode != 0
                for ns in (CONTROLLER_NAMESPACE, NS_SKOPEO)
            ),
            120,
            f"namespaces {CONTROLLER_NAMESPACE} and {NS_SKOPEO} gone",
            interval=1.0,
        )
        print(f"\nmake undeploy (skopeo) -> namespaces gone in {time.monotonic() - started:.1f}s")
        assert result.returncode == 0, result.stdout + result.stderr


def container_specs(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a pod spec (or pod template spec), init containers first."""
    spec = pod["spec"]
    return (spec.get("initContainers") or []) + spec["containers"]


class TestBackendWithoutDocker:
    """copyBackend skopeo from manifests/skopeo: no sidecar, restricted, same digests."""

    def test_one_unprivileged_container_admitted_under_restricted(
        self, cluster: Cluster, skopeo_deployed: Deployment
    ) -> None:
        namespace = get_json(cluster, "namespace", CONTROLLER_NAMESPACE)
        labels = namespace["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
        (pod,) = controller_pods(cluster)
        assert all_ready(pod, 1)
        assert not pod["spec"].get("hostNetwork")  # restricted refuses it
        assert [c["name"] for c in container_specs(pod)] == ["controller"]
        (container,) = pod["spec"]["containers"]
        assert container["image"] == skopeo_deployed.image
        assert not any(
            (c.get("securityContext") or {}).get("privileged") for c in container_specs(pod)
        )
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get("IMAGE_CLONER_COPY_BACKEND") == "skopeo" and "DOCKER_HOST" not in env
        assert [v["name"] for v in pod["spec"]["volumes"] if "dind" in v["name"]] == []
        # The label is enforced: the same admission refuses a privileged pod
        # here, so the controller pod above was admitted as restricted.
        refused = subprocess.run(
            [
                str(cluster.env.kubectl),
                f"--kubeconfig={cluster.env.kubeconfig}",
                "create",
                "--dry-run=server",
                "-f",
                "-",
            ],
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "probe", "namespace": CONTROLLER_NAMESPACE},
                    "spec": {
                        "containers": [
                            {
                                "name": "c",
                                "image": skopeo_deployed.image,
                                "securityContext": {"privileged": True},
                            }
                        ]
                    },
                }
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert refused.returncode != 0
        assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
        exec_ = kubectl(
            cluster,
            "-n",
            CONTROLLER_NAMESPACE,
            "exec",
            pod["metadata"]["name"],
            "-c",
            "controller",
            "--",
            "python",
            "-c",
            "import os\nprint(os.getuid(), os.getgid())",
        )
        assert exec_.stdout.split("\n")[0] == "10001 10001"

    def test_index_single_and_pinned_images_run_from_owned_copies_with_their_digests(
        self, cluster: Cluster, skopeo_deployed: Deployment
    ) -> None:
        public = cluster.env.public.host
        index = cluster.build_runnable_index(f"{public}/{NS_SKOPEO}/multi:1", seed=NS_SKOPEO)
        single = cluster.build_runnable_image(f"{public}/{NS_SKOPEO}/single:1", seed="single")
        pinned = cluster.build_runnable_image(f"{public}/{NS_SKOPEO}/pinned:1", seed="pinned")
        kubectl(cluster, "create", "namespace", NS_SKOPEO)
        cluster.wait_namespace_ready(NS_SKOPEO)
        app = workload(
            "Deployment",
            "app",
            [
                {"name": "multi", "image": f"{public}/{NS_SKOPEO}/multi:1", "command": ["/pause"]},
                {"name": "pinned", "image": f"{public}/{NS_SKOPEO}/pinned@{pinned}"},
            ],
            init=[{"name": "init", "image": f"{public}/{NS_SKOPEO}/single:1", "args": ["exit"]}],
            namespace=NS_SKOPEO,
            labels={"app": "app"},
            pod={"hostNetwork": True, "terminationGracePeriodSeconds": 2},
            spec={"replicas": 1},
        )
        apply(cluster, [app])
        prefix = skopeo_deployed.target + "/"
        started = time.monotonic()
        wait_for(
            lambda: all(
                i.startswith(prefix)
                for i in template_images(cluster, NS_SKOPEO, "deployment", "app")
            ),
            120,
            "the Deployment patched to owned images",
            interval=1.0,
        )
        print(f"\nskopeo: workload patched {time.monotonic() - started:.1f}s after apply")
        owned_path = f"{skopeo_deployed.target.split('/', 1)[1]}/{public.replace(':', '-')}"
        repository = {n: f"{owned_path}/{NS_SKOPEO}/{n}" for n in ("multi", "single", "pinned")}
        host = cluster.env.owned.host
        assert template_images(cluster, NS_SKOPEO, "deployment", "app") == [
            f"{host}/{repository['single']}:1",
            f"{host}/{repository['multi']}:1",
            f"{host}/{repository['pinned']}@{pinned}",  # still the source's digest
        ]
        # The owned copies are the sources, byte for byte: the index with
        # both platforms (each child and blob present), the single image.
        owned = cluster.env.owned
        assert owned.manifest_digest(repository["multi"], "1") == index.digest
        assert platforms_served(owned, repository["multi"], "1") == index.manifests
        assert set(index.manifests) == {"linux/amd64", "linux/arm64"}
        assert owned.manifest_digest(repository["single"], "1") == single
        assert platforms_served(owned, repository["pinned"], pinned) == {"linux/amd64": pinned}
        rollout(cluster, NS_SKOPEO, "deployment", "app")
        wait_pods_running(
            cluster, NS_SKOPEO, "app", prefix, 1, "the new pod Running on owned images"
        )
        print(f"skopeo: new pod Running {time.monotonic() - started:.1f}s after apply")
        # The first pod pulled the public images (created before the patch),
        # and the owned copies have the same digests, so containerd already
        # holds their content. Forget it and replace the pod: the new one
        # must fetch everything from the owned registry.
        # Every name of those images: tag, repo@digest and the bare image ID.
        listed = [line.split() for line in cluster.ctr("images", "ls").stdout.splitlines()[1:]]
        digests = {row[2] for row in listed if f"/{NS_SKOPEO}/" in row[0]}
        refs = [row[0] for row in listed if row[2] in digests]
        assert len(digests) >= 3, listed
        removed = cluster.ctr("images", "rm", "--sync", *refs)
        assert removed.returncode == 0, removed.stderr
        deleted_at = time.time()
        kubectl(cluster, "-n", NS_SKOPEO, "delete", "pods", "-l", "app=app", "--wait=false")
        wait_for(
            lambda: recreated_and_running(cluster, NS_SKOPEO, "app", prefix, deleted_at),
            120,
            "a new pod Running from owned copies",
            interval=1.0,
        )
        print(f"skopeo: replacement pod Running {time.time() - deleted_at:.1f}s after the delete")
        (pod,) = workload_pods(cluster, NS_SKOPEO, "app")
        assert "image-cloner-pull-secret" in [
            s["name"] for s in pod["spec"].get("imagePullSecrets") or []
        ]
        messages = pulled_messages(cluster, NS_SKOPEO, pod["metadata"]["name"])
        for container in container_specs(pod):
            assert any(
                m.startswith(f'Successfully pulled image "{container["image"]}"') for m in messages
            ), (container["image"], messages)
        # containerd fetched the owned manifests with the provisioned
        # credentials (the owned registry answers 401 without): the index,
        # then the node's own child (amd64) by digest, never the arm64 one.
        assert owned.status("/v2/") == 401
        gets = containerd_manifest_gets(cluster, repository["multi"])
        assert any(index.digest in g for g in gets), gets
        assert any(index.manifests["linux/amd64"] in g for g in gets), gets
        assert not any(index.manifests["linux/arm64"] in g for g in gets), gets
        assert any(single in g for g in containerd_manifest_gets(cluster, repository["single"]))
        assert any(pinned in g for g in containerd_manifest_gets(cluster, repository["pinned"]))


def test_make_deploy_runs_the_controller_image_as_uid_10001_read_only(
    cluster: Cluster, deployed: Deployment
) -> None:
    pods = controller_pods(cluster)
    assert len(pods) == 1 and all_ready(pods[0], 2)
    images = {c["name"]: c["image"] for c in pods[0]["spec"]["containers"]}
    assert images["controller"] == deployed.image  # what make image built and make deploy set
    assert cluster.images is not None and images["dind"] == cluster.images.dind
    exec_ = kubectl(
        cluster,
        "-n",
        CONTROLLER_NAMESPACE,
        "exec",
        pods[0]["metadata"]["name"],
        "-c",
        "controller",
        "--",
        "python",
        "-c",
        "import os, sys\nprint(os.getuid(), os.getgid())\n"
        "try:\n open('/app/probe', 'w')\nexcept OSError as e:\n print('read-only', e.errno)\n",
    )
    assert exec_.stdout.split("\n")[0] == "10001 10001"
    assert "read-only 30" in exec_.stdout  # EROFS
    skopeo = kubectl(
        cluster,
        "-n",
        CONTROLLER_NAMESPACE,
        "exec",
        pods[0]["metadata"]["name"],
        "-c",
        "controller",
        "--",
        "skopeo",
        "--version",
    )
    assert skopeo.stdout.startswith("skopeo version")


def test_workloads_roll_out_on_owned_copies_pulled_with_the_provisioned_secret(
    cluster: Cluster, deployed: Deployment, workloads: Workloads
) -> None:
    prefix = deployed.target + "/"
    for namespace, kind, name in workloads.kinds:
        wait_for(
            lambda namespace=namespace, kind=kind, name=name: all(
                i.startswith(prefix) for i in template_images(cluster, namespace, kind, name)
            ),
            120,
            f"{namespace}/{kind}/{name} patched to owned images",
            interval=1.0,
        )
    for namespace, kind, name in workloads.kinds:
        rollout(cluster, namespace, kind, name)
        what = f"{namespace}/{name} pods Running on owned images"
        wait_pods_running(cluster, namespace, name, prefix, counts(name), what)
    # The provisioned secret: next to the team's on the default SA, on the custom SA.
    default = get_json(cluster, "-n", NS_SECRET, "serviceaccount", "default")
    secrets = [s["name"] for s in default.get("imagePullSecrets", [])]
    assert secrets == ["team-registry", "image-cloner-pull-secret"], secrets
    runner = get_json(cluster, "-n", NS_SA, "serviceaccount", "runner")
    assert "image-cloner-pull-secret" in [s["name"] for s in runner.get("imagePullSecrets", [])]
    for namespace in (NS_SECRET, NS_SA):
        for pod in get_json(cluster, "-n", namespace, "pods")["items"]:
            if pod["metadata"].get("deletionTimestamp"):
                # A pod of the old ReplicaSet or DaemonSet in its grace
                # period: made before the switch, on the public image.
                continue
            spec = pod["spec"]
            assert "image-cloner-pull-secret" in [
                s["name"] for s in spec.get("imagePullSecrets", [])
            ], (pod["metadata"]["name"], [c["image"] for c in spec["containers"]])
            messages = pulled_messages(cluster, namespace, pod["metadata"]["name"])
            for container in (spec.get("initContainers") or []) + spec["containers"]:
                assert any(container["image"] in m for m in messages), (
                    container["image"],
                    messages,
                )
    # containerd fetched every owned manifest from the owned registry, which
    # answers only authenticated requests.
    assert cluster.env.owned.status("/v2/") == 401
    host = cluster.env.public.host.replace(":", "-")
    for namespace, images in workloads.public.items():
        for name in images:
            repository = f"{deployed.target.split('/', 1)[1]}/{host}/{namespace}/{name}"
            assert containerd_manifest_gets(cluster, repository), repository


NS_TEMPLATE = "apps-template-secret"  # the pod template lists its own imagePullSecrets


def test_template_with_its_own_pull_secret_gets_the_managed_one_and_runs(
    cluster: Cluster, deployed: Deployment
) -> None:
    image = f"{cluster.env.public.host}/{NS_TEMPLATE}/web:1"
    cluster.build_runnable_image(image, seed=image)
    kubectl(cluster, "create", "namespace", NS_TEMPLATE)
    cluster.wait_namespace_ready(NS_TEMPLATE)
    kubectl(
        cluster,
        "-n",
        NS_TEMPLATE,
        "create",
        "secret",
        "docker-registry",
        "team-registry",
        "--docker-server=registry.team.invalid",
        "--docker-username=team",
        "--docker-password=not-used",
    )
    apply(
        cluster,
        sample_workloads(
            NS_TEMPLATE,
            {"web": image, "init": image, "db": image, "agent": image},
            None,
            "team-registry",
        )[:1],
    )
    prefix = deployed.target + "/"
    wait_for(
        lambda: all(
            i.startswith(prefix) for i in template_images(cluster, NS_TEMPLATE, "deployment", "web")
        ),
        120,
        "the Deployment patched to owned images",
        interval=1.0,
    )

    def settled() -> str:
        """ "running" once the new pods run, the waiting reason once one cannot pull."""
        if pods_running_on(cluster, NS_TEMPLATE, "web", prefix, 2):
            return "running"
        for pod in workload_pods(cluster, NS_TEMPLATE, "web"):
            statuses = (pod["status"].get("initContainerStatuses") or []) + (
                pod["status"].get("containerStatuses") or []
            )
            for status in statuses:
                reason = (status.get("state", {}).get("waiting") or {}).get("reason", "")
                if reason in ("ErrImagePull", "ImagePullBackOff") and status["image"].startswith(
                    prefix
                ):
                    return reason
        return ""

    assert wait_for(settled, 120, "the new pods to run or fail to pull", interval=1.0) == "running"


NS_CRON = "apps-cron"  # a CronJob that runs every minute


def test_cron_job_is_patched_and_its_next_job_pulls_the_owned_copy(
    cluster: Cluster, deployed: Deployment
) -> None:
    image = f"{cluster.env.public.host}/{NS_CRON}/task:1"
    cluster.build_runnable_image(image, seed=image)
    kubectl(cluster, "create", "namespace", NS_CRON)
    cluster.wait_namespace_ready(NS_CRON)
    minutely = workload(
        "CronJob",
        "minutely",
        [{"name": "task", "image": image, "args": ["exit"], "imagePullPolicy": "IfNotPresent"}],
        namespace=NS_CRON,
        pod={"hostNetwork": True, "terminationGracePeriodSeconds": 2},
        spec={
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {"spec": {"backoffLimit": 0}},
        },
    )
    apply(cluster, [minutely])
    prefix = deployed.target + "/"

    def job_template_image() -> str:
        cron = get_json(cluster, "-n", NS_CRON, "cronjob", "minutely")
        spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return str(spec["containers"][0]["image"])

    owned = wait_for(
        lambda: job_template_image() if job_template_image().startswith(prefix) else "",
        120,
        "the CronJob patched to the owned image",
        interval=1.0,
    )
    patched_at = time.time()

    def next_job_pod() -> dict[str, Any] | None:
        """A pod of a Job created after the patch, once its container ran to completion.

        ``patched_at`` is when the patch was seen, at or after it was made,
        and creation timestamps are whole seconds: a pod stamped at least a
        second later was surely created after the patch. One stamped about
        then may belong to a Job the CronJob controller made from the old
        template just before the patch (seen in CI); the next minute's Job
        comes well within the wait.
        """
        for pod in get_json(cluster, "-n", NS_CRON, "pods")["items"]:
            created = pod["metadata"]["creationTimestamp"]
            started = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
            if started < patched_at + 1:
                continue
            if pod["status"].get("phase") == "Succeeded":
                return pod
        return None

    pod = wait_for(
        next_job_pod, 150, "a Job started after the patch to run from the owned copy", interval=1.0
    )
    assert [c["image"] for c in pod["spec"]["containers"]] == [owned]
    pulled = pulled_messages(cluster, NS_CRON, pod["metadata"]["name"])
    assert any(owned.split("@")[0] in message for message in pulled), pulled
    # The kubelet fetched the owned copy with the provisioned credentials.
    owned_repository = owned.split("/", 1)[1].rsplit(":", 1)[0]
    assert containerd_manifest_gets(cluster, owned_repository)


def test_pods_come_back_from_owned_copies_without_the_public_registry(
    cluster: Cluster, deployed: Deployment, workloads: Workloads
) -> None:
    prefix = deployed.target + "/"
    for namespace, kind, name in workloads.kinds:
        rollout(cluster, namespace, kind, name)
    cluster.env.public.stop()
    try:
        # Forget every sample image on the node, so the new pods must pull.
        refs = [
            r
            for r in cluster.ctr("images", "ls", "-q").stdout.split()
            if r.startswith((cluster.env.public.host, cluster.env.owned.host))
        ]
        assert refs
        removed = cluster.ctr("images", "rm", "--sync", *refs)
        assert removed.returncode == 0, removed.stderr
        deleted_at = time.time()
        for namespace in (NS_SECRET, NS_SA):
            kubectl(cluster, "-n", namespace, "delete", "pods", "--all", "--wait=false")
        for namespace, _kind, name in workloads.kinds:
            wait_for(
                lambda namespace=namespace, name=name: recreated_and_running(
                    cluster, namespace, name, prefix, deleted_at
                ),
                180,
                f"{namespace}/{name} back Running from owned copies",
                interval=1.0,
            )
        for namespace in (NS_SECRET, NS_SA):
            for pod in get_json(cluster, "-n", namespace, "pods")["items"]:
                messages = pulled_messages(cluster, namespace, pod["metadata"]["name"])
                assert any(
                    re.search(r"Successfully pulled image \"" + re.escape(prefix), m)
                    for m in messages
                ) or any("already present" in m and prefix in m for m in messages), messages
    finally:
        cluster.env.public.start()


LEASE_DURATION = 15  # seconds, leaderElection.leaseDuration default (cloner/config.py)
POLL_INTERVAL = 5  # seconds, pollInterval of write_overlay


def pod_identity(cluster: Cluster, pod: str) -> str:
    """The leader-election identity a controller pod logged (``... X is a candidate ...``)."""
    logs = kubectl(
        cluster, "-n", CONTROLLER_NAMESPACE, "logs", pod, "-c", "controller", check=False
    ).stdout
    found = re.search(r"leader election: (\S+) is a candidate", logs)
    return found.group(1) if found else ""


def lease_holder(cluster: Cluster) -> str:
    """``holderIdentity`` of the Lease image-cloner/image-cloner ("" when released)."""
    lease = get_json(cluster, "-n", CONTROLLER_NAMESPACE, "lease", "image-cloner")
    return str(lease["spec"].get("holderIdentity") or "")


def test_leader_election_the_standby_takes_over_when_the_leader_pod_is_deleted(
    cluster: Cluster, deployed: Deployment, workloads: Workloads
) -> None:
    # Two controller pods competing for the Lease. On the host network two
    # replicas of one Deployment would need the same metrics port, so the
    # second is a copy of the deployed Deployment with its own labels and
    # port (IMAGE_CLONER_METRICS_PORT); everything else is as deployed.
    original = get_json(cluster, "-n", CONTROLLER_NAMESPACE, "deployment", "image-cloner")
    copy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "image-cloner-b", "namespace": CONTROLLER_NAMESPACE},
        "spec": original["spec"],
    }
    labels = {"app.kubernetes.io/name": "image-cloner", "app.kubernetes.io/component": "standby"}
    copy["spec"]["selector"] = {"matchLabels": labels}
    copy["spec"]["template"]["metadata"]["labels"] = labels
    (port,) = free_ports(1)
    controller = copy["spec"]["template"]["spec"]["containers"][0]
    controller["ports"][0]["containerPort"] = port
    controller["env"].append({"name": "IMAGE_CLONER_METRICS_PORT", "value": str(port)})
    apply(cluster, [copy])
    try:
        kubectl(
            cluster,
            "-n",
            CONTROLLER_NAMESPACE,
            "rollout",
            "status",
            "deploy/image-cloner-b",
            "--timeout=180s",
        )
        pods = {p["metadata"]["name"]: p for p in controller_pods(cluster)}
        assert len(pods) == 2 and all(all_ready(p, 2) for p in pods.values()), list(pods)
        identities = wait_for(
            lambda: (ids := {pod_identity(cluster, n): n for n in pods}) and "" not in ids and ids,
            60,
            "both pods to log their identity",
            interval=1.0,
        )
        holder = wait_for(lambda: lease_holder(cluster), 60, "a leader", interval=1.0)
        leader_pod = identities[holder]
        standby_identity = next(i for i in identities if i != holder)
        started = time.monotonic()
        kubectl(cluster, "-n", CONTROLLER_NAMESPACE, "delete", "pod", leader_pod, "--wait=false")
        # A new workload only a working leader can patch.
        image = f"{cluster.env.public.host}/{NS_SECRET}/late:1"
        cluster.build_runnable_image(image, seed=image)
        late = host_workload("Deployment", NS_SECRET, "late", image, image, spec={"replicas": 2})
        apply(cluster, [late])
        prefix = deployed.target + "/"
        wait_for(
            lambda: all(
                i.startswith(prefix)
                for i in template_images(cluster, NS_SECRET, "deployment", "late")
            ),
            LEASE_DURATION + POLL_INTERVAL + 30,
            "the late Deployment patched by the new leader",
            interval=1.0,
        )
        took = time.monotonic() - started
        print(f"\nleader pod deleted -> new workload patched by the standby in {took:.1f}s")
        assert lease_holder(cluster) == standby_identity
        assert took <= LEASE_DURATION + POLL_INTERVAL + 10  # lease, one cycle, clone and patch
        rollout(cluster, NS_SECRET, "deployment", "late")
    finally:
        kubectl(
            cluster,
            "-n",
            CONTROLLER_NAMESPACE,
            "delete",
            "deployment",
            "image-cloner-b",
            "--wait=true",
            "--timeout=60s",
            check=False,
        )
        kubectl(
            cluster,
            "-n",
            CONTROLLER_NAMESPACE,
            "rollout",
            "status",
            "deploy/image-cloner",
            "--timeout=180s",
        )


def test_revert_in_the_pod_with_the_loop_paused_rolls_back_to_public_images(
    cluster: Cluster, deployed: Deployment, workloads: Workloads
) -> None:
    # README "Remove": pause the loop, wait for its one start-up cycle, revert.
    kubectl(
        cluster,
        "-n",
        CONTROLLER_NAMESPACE,
        "set",
        "env",
        "deploy/image-cloner",
        "-c",
        "controller",
        "IMAGE_CLONER_POLL_INTERVAL=86400",
    )
    controller_ready(cluster, 2)

    # With leader election the restarted pod stands by in its start-up cycle,
    # then becomes leader and waits a whole pollInterval (a day) for the next
    # one: "became leader" is the sign that the loop is paused.
    def paused() -> bool:
        logs = kubectl(
            cluster,
            "-n",
            CONTROLLER_NAMESPACE,
            "logs",
            "deploy/image-cloner",
            "-c",
            "controller",
            check=False,
        ).stdout
        return "pollInterval=86400" in logs and ("became leader" in logs or "reconcile:" in logs)

    wait_for(
        paused, 90, "the restarted controller to hold the lease with its loop paused", interval=1.0
    )
    result = kubectl(
        cluster,
        "-n",
        CONTROLLER_NAMESPACE,
        "exec",
        "deploy/image-cloner",
        "-c",
        "controller",
        "--",
        "python",
        "controller.py",
        "revert",
        "--namespace",
        NS_SA,
        "--config",
        "/etc/image-cloner/config/config.yaml",
    )
    assert "revert:" in result.stdout + result.stderr
    public_prefix = cluster.env.public.host + "/"
    for namespace, kind, name in workloads.kinds:
        if namespace != NS_SA:
            continue
        assert all(
            i.startswith(public_prefix) for i in template_images(cluster, namespace, kind, name)
        )
        rollout(cluster, namespace, kind, name)
        what = f"{namespace}/{name} pods Running on public images again"
        wait_pods_running(cluster, namespace, name, public_prefix, counts(name), what)
    runner = get_json(cluster, "-n", NS_SA, "serviceaccount", "runner")
    assert "image-cloner-pull-secret" not in [
        s["name"] for s in runner.get("imagePullSecrets") or []
    ]
    # The other namespace is untouched: still on the owned copies.
    for kind, name in (("deployment", "web"), ("statefulset", "db"), ("daemonset", "agent")):
        assert all(
            i.startswith(deployed.target + "/")
            for i in template_images(cluster, NS_SECRET, kind, name)
        )


def test_make_undeploy_removes_the_controller_and_workloads_keep_running(
    cluster: Cluster, deployed: Deployment, workloads: Workloads
) -> None:
    result = make(cluster, "undeploy", deployed)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_controller_gone(cluster)
    for kind in ("clusterrole", "clusterrolebinding"):
        assert kubectl(cluster, "get", kind, "image-cloner", check=False).returncode != 0
    for namespace, _kind, name in workloads.kinds:
        prefix = deployed.target + "/" if namespace == NS_SECRET else cluster.env.public.host + "/"
        assert pods_running_on(cluster, namespace, name, prefix, counts(name)), (namespace, name)


# --- what make image and make deploy agree on (no cluster needed) ----------------


def test_make_image_tags_the_name_the_shipped_kustomization_deploys() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    default = re.search(r"^IMAGE \?= (\S+)$", makefile, re.MULTILINE)
    assert default is not None
    kustomization = yaml.safe_load((REPO_ROOT / "manifests/base/kustomization.yaml").read_text())
    (entry,) = [i for i in kustomization["images"] if i["name"] == "image-cloner"]
    assert default.group(1) == f"{entry['newName']}:{entry['newTag']}"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", dockerfile, re.MULTILINE | re.IGNORECASE)
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile


def test_every_docs_reference_in_the_manifests_exists() -> None:
    for path in (REPO_ROOT / "manifests").rglob("*.yaml"):
        for doc in re.findall(r"docs/[\w./-]+\.md", path.read_text()):
            assert (REPO_ROOT / doc).is_file(), f"{path.name} refers to missing {doc}"
    deploy = (REPO_ROOT / "docs/deploy.md").read_text()
    assert "The docker-in-docker sidecar's privileges" in deploy  # cited by namespace.yaml
