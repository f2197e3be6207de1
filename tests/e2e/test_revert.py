"""``controller.py revert`` on real components: patched workloads back to exactly what they were.

The controller patches first (``controller.py --once``), then ``controller.py
revert`` runs as a real process with a token of the image-cloner
ServiceAccount, bound by manifests/base/rbac.yaml alone, so the shipped
ClusterRole is proven to be enough. ``--namespace`` keeps each run to its
test's namespace: the API server is shared by the whole session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import closing
from typing import Any

import kubernetes.client
import pytest

from cloner.adapters.kube import KubeClient, load_api_client
from cloner.config import load_settings
from cloner.model.revert import owned_predicate
from cloner.model.workloads import ADDED_PULL_SECRET, ORIGINAL_IMAGES, Workload
from cloner.ops.revert import revert_all
from devenv.harness import Environment
from devenv.support import REPO, Scope, create, images, read

SECRET = "image-cloner-pull-secret"
MARKS = (ORIGINAL_IMAGES, ADDED_PULL_SECRET)


def run_revert(scope: Scope, *args: str) -> subprocess.CompletedProcess[str]:
    """``controller.py revert`` in the test's namespace, as the image-cloner ServiceAccount."""
    command = [
        sys.executable,
        str(REPO / "controller.py"),
        "revert",
        "--config",
        str(scope.config),
        "--kubeconfig",
        str(scope.kubeconfig),
        "--namespace",
        scope.namespace,
        *args,
    ]
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )


def account(api: kubernetes.client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    core = kubernetes.client.CoreV1Api(api)
    response = core.read_namespaced_service_account(name, namespace, _preload_content=False)
    return dict(json.loads(response.data))


def account_state(obj: dict[str, Any]) -> dict[str, Any]:
    """What revert must restore on a ServiceAccount: everything but server-kept metadata."""
    meta = obj["metadata"]
    return {
        "annotations": meta.get("annotations") or {},
        "labels": meta.get("labels") or {},
        **{key: value for key, value in obj.items() if key != "metadata"},
    }


def version(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def test_revert_restores_every_pod_template_and_service_account_exactly(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    core = kubernetes.client.CoreV1Api(api)
    apps = kubernetes.client.AppsV1Api(api)
    # A ServiceAccount with pull secrets and annotations of its own.
    core.create_namespaced_service_account(
        ns,
        {
            "metadata": {"name": "runner", "annotations": {"team": "shop"}},
            "imagePullSecrets": [{"name": "existing"}],
        },
    )
    env.build_image(scope.source("app:1.0"), layers=2, seed=f"{ns}-app")
    env.build_image(scope.source("tools:latest"), layers=1, seed=f"{ns}-tools")
    env.build_image(scope.source("base:1"), layers=1, seed=f"{ns}-base")
    agent_digest = env.build_image(scope.source("agent:1"), layers=1, seed=f"{ns}-agent")
    env.build_image(scope.source("w:1"), layers=1, seed=f"{ns}-w")

    # pullSecret.attach: serviceaccount (the default) for these three.
    create(
        api,
        "Deployment",
        ns,
        "web",
        {"app": scope.source("app:1.0"), "sidecar": scope.source("tools")},
        init={"setup": scope.source("base:1")},
    )
    apps.patch_namespaced_deployment(
        "web", ns, {"spec": {"template": {"spec": {"serviceAccountName": "runner"}}}}
    )
    create(api, "DaemonSet", ns, "agent", {"agent": f"{scope.source('agent')}@{agent_digest}"})
    create(
        api,
        "StatefulSet",
        ns,
        "db",
        {"db": scope.source("app:1.0"), "metrics": scope.source("tools")},
        init={"migrate": scope.source("base:1")},
    )
    workloads = [("Deployment", ns, "web"), ("DaemonSet", ns, "agent"), ("StatefulSet", ns, "db")]
    templates = {w: read(api, *w)["spec"]["template"] for w in workloads}
    accounts = {name: account_state(account(api, ns, name)) for name in ("runner", "default")}

    result = scope.run()
    assert result.returncode == 0, result.stderr
    assert images(read(api, "Deployment", ns, "web")) == {
        "setup": f"{scope.owned('base')}:1",
        "app": f"{scope.owned('app')}:1.0",
        "sidecar": f"{scope.owned('tools')}:latest",
    }
    assert images(read(api, "DaemonSet", ns, "agent"))["agent"].startswith(scope.owned("agent"))
    assert set(images(read(api, "StatefulSet", ns, "db")).values()) == {
        f"{scope.owned('base')}:1",
        f"{scope.owned('app')}:1.0",
        f"{scope.owned('tools')}:latest",
    }
    assert account(api, ns, "runner")["imagePullSecrets"] == [
        {"name": "existing"},
        {"name": SECRET},
    ]
    assert account(api, ns, "default")["imagePullSecrets"] == [{"name": SECRET}]

    # pullSecret.attach: workload, one template without and one with pull secrets of its own.
    create(api, "Deployment", ns, "wnew", {"main": scope.source("w:1")})
    create(api, "Deployment", ns, "wown", {"main": scope.source("w:1")})
    apps.patch_namespaced_deployment(
        "wown", ns, {"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "own"}]}}}}
    )
    for name in ("wnew", "wown"):
        workload = ("Deployment", ns, name)
        workloads.append(workload)
        templates[workload] = read(api, *workload)["spec"]["template"]
    workload_mode = scope.write_config("workload.yaml", pullSecret={"attach": "workload"})
    result = scope.run(workload_mode)
    assert result.returncode == 0, result.stderr
    wnew, wown = read(api, "Deployment", ns, "wnew"), read(api, "Deployment", ns, "wown")
    assert wnew["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    assert wown["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "own"},
        {"name": SECRET},
    ]
    assert wnew["metadata"]["annotations"][ADDED_PULL_SECRET] == SECRET
    for workload in workloads:
        obj = read(api, *workload)
        assert obj["spec"]["template"] != templates[workload], workload
        assert ORIGINAL_IMAGES in obj["metadata"]["annotations"], workload

    # --dry-run: every change is listed, nothing is written.
    versions = {w: version(read(api, *w)) for w in workloads}
    account_versions = {n: version(account(api, ns, n)) for n in ("runner", "default")}
    dry = run_revert(scope, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"would restore Deployment {ns}/web container app: " in dry.stdout
    assert f"would restore StatefulSet {ns}/db container migrate: " in dry.stdout
    assert f"would remove Deployment {ns}/wown imagePullSecrets entry {SECRET}" in dry.stdout
    assert f"would remove ServiceAccount {ns}/runner imagePullSecrets entry {SECRET}" in dry.stdout
    assert "revert (dry run, nothing written): workloads=5 patched=5 containers=9" in dry.stdout
    assert {w: version(read(api, *w)) for w in workloads} == versions
    assert {n: version(account(api, ns, n)) for n in account_versions} == account_versions

    result = run_revert(scope)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    for workload in workloads:
        obj = read(api, *workload)
        assert obj["spec"]["template"] == templates[workload], workload
        assert not set(MARKS) & set(obj["metadata"].get("annotations") or {}), workload
    assert f"restored DaemonSet {ns}/agent container agent: " in result.stdout
    assert f"@{agent_digest}" in result.stdout
    for name, state in accounts.items():
        assert account_state(account(api, ns, name)) == state, name
    assert (
        result.stdout.strip().splitlines()[-1]
        == "revert: workloads=5 patched=5 containers=9 serviceaccounts=2 left=0 failed=0"
    )
    # The Secret stays; the output says how to delete it.
    assert core.read_namespaced_secret(SECRET, ns) is not None
    assert f"note: Secret {ns}/{SECRET} is left in place" in result.stdout

    # Nothing is left to do.
    again = run_revert(scope)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-1] == (
        "revert: workloads=0 patched=0 containers=0 serviceaccounts=0 left=0 failed=0"
    )


def test_a_container_edited_after_the_patch_is_left_alone_and_reported(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    apps = kubernetes.client.AppsV1Api(api)
    env.build_image(scope.source("e:1"), layers=1, seed=f"{ns}-e")
    create(api, "Deployment", ns, "edited", {"a": scope.source("e:1"), "b": scope.source("e:1")})
    # Already on an owned image: never patched, but its pods need the pull secret.
    in_house = f"{env.owned.host}/t-{ns}/in-house/tool:3"
    create(api, "StatefulSet", ns, "house", {"tool": in_house})
    assert scope.run().returncode == 0
    owned = f"{scope.owned('e')}:1"
    assert images(read(api, "Deployment", ns, "edited")) == {"a": owned, "b": owned}
    # Someone moves container b to another image after the patch.
    apps.patch_namespaced_deployment(
        "edited",
        ns,
        {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "busybox:1.36"}]}}}},
    )

    result = run_revert(scope)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"restored Deployment {ns}/edited container a: {owned} -> {scope.source('e:1')}" in out
    assert f"left Deployment {ns}/edited container b: its image is busybox:1.36 now" in out
    assert f"recorded original {scope.source('e:1')}" in out
    assert (
        f"left ServiceAccount {ns}/default imagePullSecrets entry {SECRET}: "
        f"still used by StatefulSet {ns}/house (owned images)"
    ) in out
    assert out.strip().splitlines()[-1] == (
        "revert: workloads=1 patched=1 containers=1 serviceaccounts=0 left=2 failed=0"
    )
    edited = read(api, "Deployment", ns, "edited")
    assert images(edited) == {"a": scope.source("e:1"), "b": "busybox:1.36"}
    assert not set(MARKS) & set(edited["metadata"].get("annotations") or {})
    assert images(read(api, "StatefulSet", ns, "house")) == {"tool": in_house}
    default = account(api, ns, "default")
    assert default["imagePullSecrets"] == [{"name": SECRET}]
    assert default["metadata"]["annotations"][ADDED_PULL_SECRET] == SECRET


class EditsBeforePatching(KubeClient):
    """The real client, but someone edits each workload between the list and the patch."""

    def __init__(self, api_client: Any, admin: kubernetes.client.ApiClient) -> None:
        super().__init__(api_client)
        self._admin = kubernetes.client.AppsV1Api(admin)

    def patch_workload(self, workload: Workload, patch: list[dict[str, Any]]) -> None:
        self._admin.patch_namespaced_deployment(
            workload.name,
            workload.namespace,
            {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x:2"}]}}}},
        )
        super().patch_workload(workload, patch)


def test_a_concurrent_edit_makes_the_api_server_refuse_the_revert(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("r:1"), layers=1, seed=f"{ns}-r")
    create(api, "Deployment", ns, "racy", {"main": scope.source("r:1")})
    assert scope.run().returncode == 0
    settings = load_settings(scope.config)
    lines: list[str] = []
    with closing(load_api_client(scope.kubeconfig)) as controller_api:
        report = revert_all(
            EditsBeforePatching(controller_api, api),
            owned_predicate(settings.policy),
            namespace=ns,
            out=lines.append,
        )
    assert report.failed == 1 and report.patched == 0 and not report.ok
    failure = next(line for line in lines if line.startswith("failed"))
    assert failure.startswith(f"failed Deployment {ns}/racy: patch Deployment {ns}/racy: 422")
    assert "run revert again" in failure
    racy = read(api, "Deployment", ns, "racy")
    assert images(racy) == {"main": "x:2"}  # the concurrent edit is not overwritten
    assert ORIGINAL_IMAGES in racy["metadata"]["annotations"]  # nothing of the patch applied
    # The ServiceAccount keeps the Secret: the failed workload may still need it.
    assert f"left ServiceAccount {ns}/default" in "\n".join(lines)


@pytest.mark.parametrize("order", ["revert-first", "options-first"])
def test_command_line_forms(scope: Scope, order: str) -> None:
    base = ["--config", str(scope.config), "--kubeconfig", str(scope.kubeconfig)]
    tail = ["--namespace", scope.namespace, "--dry-run"]
    argv = ["revert", *base, *tail] if order == "revert-first" else [*base, "revert", *tail]
    result = subprocess.run(
        [sys.executable, str(REPO / "controller.py"), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "revert (dry run, nothing written): "
        "workloads=0 patched=0 containers=0 serviceaccounts=0 left=0 failed=0"
    )
