"""`make demo`: image-cloner on a local control plane, Docker engine and registries.

Starts the same real components as the end-to-end tests (etcd, kube-apiserver,
dockerd, a "public" registry and an owned registry with htpasswd auth, all on
127.0.0.1), pushes a few small images to the public registry, creates sample
Deployments, a DaemonSet and a StatefulSet that use them, runs the controller
loop for a few cycles, prints a before/after table and shuts everything down.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes.client
import yaml

from devenv.harness import Environment, ensure_components
from devenv.support import (
    REPO,
    controller_command,
    create,
    create_namespace,
    images,
    install_controller_rbac,
    read,
)


def workload_images(
    api: kubernetes.client.ApiClient, kind: str, ns: str, name: str
) -> dict[str, str]:
    """Container name -> image of a workload as the API server holds it."""
    return images(read(api, kind, ns, name))


Key = tuple[str, str, str]  # (kind, namespace, name)


def create_samples(env: Environment) -> dict[Key, dict[str, str]]:
    """Build the sample images, create the sample workloads; returns their images as created."""
    public = env.public.host
    env.build_image(f"{public}/library/web:1.25", layers=3, seed="web")
    env.build_image(f"{public}/library/cache:latest", layers=2, seed="cache")
    env.build_image(f"{public}/acme/migrate:0.9", layers=1, seed="migrate")
    agent_digest = env.build_image(f"{public}/acme/agent:stable", layers=2, seed="agent")
    samples = [
        (
            "Deployment",
            "shop",
            "web",
            {"web": f"{public}/library/web:1.25", "cache": f"{public}/library/cache"},
            {"migrate": f"{public}/acme/migrate:0.9"},
        ),
        ("StatefulSet", "shop", "cache", {"cache": f"{public}/library/cache"}, {}),
        ("DaemonSet", "ops", "agent", {"agent": f"{public}/acme/agent@{agent_digest}"}, {}),
        ("Deployment", "kube-system", "dns", {"dns": f"{public}/library/web:1.25"}, {}),
    ]
    api = env.api_client()
    for ns in ("shop", "ops"):
        create_namespace(env, ns)
    before = {}
    for kind, ns, name, containers, init in samples:
        create(api, kind, ns, name, containers, init)
        before[(kind, ns, name)] = workload_images(api, kind, ns, name)
    return before


def write_config(env: Environment, workdir: Path) -> Path:
    """The demo's controller config: the owned registry, a 2 s poll, no metrics port."""
    config = workdir / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "target": f"{env.owned.host}/mirror",
                "pollInterval": 2,
                "dockerHost": env.docker_host,
                "dockerConfig": str(env.docker_config),
                "metricsPort": 0,
                # the demo registries are plain HTTP on 127.0.0.1, which the
                # engine reaches without TLS verification: allow them explicitly
                "insecureRegistries": ["127.0.0.1:*"],
                # its own namespace: excluded, and where its leader-election Lease lives
                "controllerNamespace": "image-cloner",
                # no controller-manager here, so no rollout completes: without
                # this the canary (rollout.canary) would switch one workload
                # per namespace and wait for its rollout for good
                "rollout": {"canary": False},
            }
        )
    )
    return config


def run_controller(env: Environment, config: Path, before: dict[Key, dict[str, str]]) -> None:
    """Run the controller loop until every workload outside kube-system is switched; stop it."""
    print(
        "demo: running the controller loop (pollInterval 2s) as the image-cloner "
        "ServiceAccount with the RBAC of manifests/base/rbac.yaml; its log follows\n"
    )
    api = env.api_client()
    controller = subprocess.Popen(
        controller_command(install_controller_rbac(env), config),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        assert controller.stdout is not None
        stream = controller.stdout
        threading.Thread(
            target=lambda: [print(f"  | {line}", end="") for line in stream], daemon=True
        ).start()
        expected = [k for k in before if k[1] != "kube-system"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(workload_images(api, *k) != before[k] for k in expected):
                break
            time.sleep(1)
        time.sleep(4.5)  # two more cycles: they find nothing to do
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=30)
    finally:
        if controller.poll() is None:
            controller.kill()


def report(env: Environment, before: dict[Key, dict[str, str]]) -> int:
    """Print the before/after table, the owned catalog and the pull secrets; returns the count."""
    api = env.api_client()
    core = kubernetes.client.CoreV1Api(api)
    rows = [("WORKLOAD", "CONTAINER", "BEFORE", "AFTER")]
    changed = 0
    for key, old in before.items():
        new = workload_images(api, *key)
        for container, image in old.items():
            after = new[container]
            changed += after != image
            rows.append(
                (
                    f"{key[0]} {key[1]}/{key[2]}",
                    container,
                    image,
                    after if after != image else "(unchanged)",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    print(f"\nowned registry now holds: {', '.join(env.owned.catalog())}")
    for ns in ("shop", "ops"):
        secret = core.read_namespaced_secret("image-cloner-pull-secret", ns)
        account = core.read_namespaced_service_account("default", ns)
        attached = [ref.name for ref in account.image_pull_secrets or []]
        print(
            f"namespace {ns}: Secret image-cloner-pull-secret ({secret.type}), "
            f"ServiceAccount default imagePullSecrets={attached}"
        )
    return changed


def main() -> int:
    kube_bin = ensure_components()
    workdir = Path(tempfile.mkdtemp(prefix="ic-demo-", dir="/tmp"))
    print(f"demo: starting etcd, kube-apiserver, dockerd and two registries in {workdir}")
    env = Environment.start(workdir, kube_bin=kube_bin)
    try:
        print(
            f"demo: public registry {env.public.host} (anonymous), "
            f"owned registry {env.owned.host} (htpasswd)"
        )
        before = create_samples(env)
        run_controller(env, write_config(env, workdir), before)
        changed = report(env, before)
        print(
            f"demo: {changed} container images switched to owned copies; "
            "kube-system is excluded by default"
        )
        return 0 if changed == 5 else 1
    finally:
        env.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
