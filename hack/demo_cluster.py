"""`make demo-cluster`: image-cloner on a real single-node cluster, deployed by `make deploy`.

Starts the end-to-end environment with a node (devenv/cluster.py:
containerd, kubelet, controller-manager, scheduler; hostNetwork pods, all on
127.0.0.1), builds the controller image with `make image` from an offline
base (cached after the first run), deploys the shipped manifests with `make
deploy` through an overlay, creates a Deployment, a StatefulSet and a
DaemonSet from the "public" registry, waits until the controller has patched
them and their pods run, prints a before/after table and the pods with the
images they run and pulled, then tears everything down.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from devenv.cluster import Cluster, host_workload, make, write_overlay
from devenv.harness import Environment, ensure_components

NAMESPACE = "demo"
WORKLOADS = (("deployment", "web"), ("statefulset", "db"), ("daemonset", "agent"))


def kubectl(env: Environment, *args: str) -> str:
    """Run kubectl as the admin and return stdout; exit the demo with its error if it fails."""
    result = env.run_kubectl(*args, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def template_images(env: Environment, kind: str, name: str) -> list[str]:
    """Images of a workload's pod template, init containers first."""
    spec = json.loads(kubectl(env, "-n", NAMESPACE, "get", kind, name, "-o", "json"))
    pod = spec["spec"]["template"]["spec"]
    return [c["image"] for c in pod.get("initContainers", []) + pod["containers"]]


def deploy(cluster: Cluster, env: Environment, workdir: Path) -> str | None:
    """``make deploy`` of an overlay with the locally built image; returns its target, or None."""
    deployment = write_overlay(cluster, workdir / "overlay")
    print(f"demo-cluster: make deploy DEPLOY_DIR=overlay IMAGE={deployment.image}")
    result = make(cluster, "deploy", deployment)
    print(result.stdout.strip())
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return None
    kubectl(env, "-n", "image-cloner", "rollout", "status", "deploy/image-cloner", "--timeout=240s")
    print(kubectl(env, "-n", "image-cloner", "get", "pods").strip())
    return deployment.target


def create_workloads(cluster: Cluster, env: Environment, workdir: Path) -> dict[str, list[str]]:
    """Build runnable images, apply the three sample workloads; returns their images by name."""
    public = env.public.host
    images = {name: f"{public}/library/{name}:1" for name in ("web", "migrate", "db", "agent")}
    for reference in images.values():
        cluster.build_runnable_image(reference, seed=reference)
    kubectl(env, "create", "namespace", NAMESPACE)
    cluster.wait_namespace_ready(NAMESPACE)
    objects = [
        host_workload("Deployment", NAMESPACE, "web", images["web"], images["migrate"]),
        host_workload("StatefulSet", NAMESPACE, "db", images["db"]),
        host_workload("DaemonSet", NAMESPACE, "agent", images["agent"]),
    ]
    path = workdir / "demo-workloads.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    kubectl(env, "apply", "-f", str(path))
    return {name: template_images(env, kind, name) for kind, name in WORKLOADS}


def all_switched(env: Environment, prefix: str) -> bool:
    """True when every container of every sample workload uses an image under ``prefix``."""
    return all(
        all(i.startswith(prefix) for i in template_images(env, kind, name))
        for kind, name in WORKLOADS
    )


def show_pods_and_pulls(env: Environment) -> int:
    """Print the pods, their Pulled events; returns containerd's authenticated manifest pulls."""
    print("\npods (image from the pod spec; Pulled events from the kubelet):")
    columns = (
        "custom-columns=POD:.metadata.name,STATUS:.status.phase,IMAGE:.spec.containers[0].image"
    )
    print(kubectl(env, "-n", NAMESPACE, "get", "pods", "-o", columns).strip())
    events = json.loads(
        kubectl(
            env, "-n", NAMESPACE, "get", "events", "--field-selector", "reason=Pulled", "-o", "json"
        )
    )["items"]
    for event in events:
        print(f"  {event['involvedObject']['name']}: {event['message']}")
    owned_log = env.owned.log_path.read_text(errors="replace")
    pulls = sum(
        1
        for line in owned_log.splitlines()
        if "response completed" in line
        and 'useragent="containerd/' in line
        and "/manifests/" in line
        and "http.response.status=200" in line
    )
    print(f"\nowned registry: {pulls} authenticated manifest requests from containerd")
    return pulls


def main() -> int:
    """Run the demo; returns the process exit code (0 when every workload switched and runs)."""
    kube_bin = ensure_components()
    workdir = Path(tempfile.mkdtemp(prefix="ic-democ-", dir="/tmp"))
    started = time.monotonic()
    print(f"demo-cluster: starting a control plane, registries and a node in {workdir}")
    env = Environment.start(workdir, kube_bin=kube_bin, node=True)
    cluster: Cluster | None = None
    try:
        cluster = Cluster.start(env)
        print(f"demo-cluster: node 127.0.0.1 Ready ({time.monotonic() - started:.0f}s)")
        target = deploy(cluster, env, workdir)
        if target is None:
            return 1
        before = create_workloads(cluster, env, workdir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all_switched(env, target + "/"):
            time.sleep(1)
        for kind, name in WORKLOADS:
            kubectl(env, "-n", NAMESPACE, "rollout", "status", f"{kind}/{name}", "--timeout=180s")
        print("\nworkload          before -> after")
        for kind, name in WORKLOADS:
            after = template_images(env, kind, name)
            for old, new in zip(before[name], after, strict=True):
                print(f"{kind + '/' + name:17} {old}\n{'':17}   -> {new}")
        pulls = show_pods_and_pulls(env)
        ok = all_switched(env, target + "/") and pulls > 0
        print(f"demo-cluster: {'done' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s")
        return 0 if ok else 1
    finally:
        print("demo-cluster: tearing down")
        if cluster is not None:
            cluster.stop()
        env.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
