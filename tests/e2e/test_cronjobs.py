"""CronJobs are patched in their job template; Jobs and bare Pods are reported, never patched.

Real kube-apiserver, dockerd and registries; the controller runs as its
ServiceAccount, so the batch RBAC of manifests/base/rbac.yaml is exercised.
There is no CronJob controller here: that the next Job's pod pulls the owned
copy is shown on the real cluster (tests/e2e/test_cluster.py).
"""

from __future__ import annotations

import json
import subprocess

import kubernetes.client

from devenv.harness import Environment
from devenv.support import REPO, Scope, controller_command, create, images, read


def job_image(batch: kubernetes.client.BatchV1Api, ns: str, name: str) -> str:
    return images(read(batch.api_client, "CronJob", ns, name))["task"]


def test_cron_job_is_patched_reverted_and_jobs_and_pods_are_only_reported(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    batch = kubernetes.client.BatchV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    env.build_image(scope.source("task:1"), layers=1, seed=f"{ns}-task")
    env.build_image(scope.source("once:1"), layers=1, seed=f"{ns}-once")
    create(api, "CronJob", ns, "nightly", {"task": scope.source("task:1")})
    create(api, "Job", ns, "once", {"task": scope.source("once:1")})
    create(api, "Pod", ns, "bare", {"main": scope.source("once:1")})

    plan = subprocess.run(
        controller_command(scope.kubeconfig, scope.config, "plan", "--output", "json"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert plan.returncode == 0, plan.stderr
    rows = {(r["kind"], r["name"]): r["decision"] for r in json.loads(plan.stdout)}
    assert rows[("CronJob", "nightly")] == "clone"
    assert rows[("Job", "once")].startswith("not patched: a Job's template is immutable")
    assert rows[("Pod", "bare")].startswith("not patched: a bare Pod")

    result = scope.run()
    assert result.returncode == 0, result.stderr
    assert job_image(batch, ns, "nightly") == f"{scope.owned('task')}:1"
    assert "uses public images it cannot be switched from (not patched)" in result.stderr
    job = json.loads(batch.read_namespaced_job("once", ns, _preload_content=False).data)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == scope.source("once:1")
    pod = json.loads(core.read_namespaced_pod("bare", ns, _preload_content=False).data)
    assert pod["spec"]["containers"][0]["image"] == scope.source("once:1")

    reverted = subprocess.run(
        controller_command(scope.kubeconfig, scope.config, "revert", "--namespace", ns),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    assert job_image(batch, ns, "nightly") == scope.source("task:1")
