"""The controller against real components: kube-apiserver, dockerd, two registries.

Each test runs ``controller.py`` as a real process, scoped to its own
namespaces (``namespaces.include``) and its own owned path prefix, so tests
sharing one environment do not see each other's workloads. Assertions are on
what the API server and the registries hold afterwards, and on the requests
the registries logged.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from devenv.harness import Environment
from devenv.support import (
    REPO,
    Scope,
    controller_loop,
    create,
    create_namespace,
    images,
    log_size,
    push_to_owned,
    read,
    request_lines,
    run_controller,
    scrape,
    write_config,
)
from devenv.waiting import wait_for


def test_once_clones_every_kind_and_patches_only_verified_images(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    excluded_ns = f"{ns}-excluded"
    create_namespace(env, excluded_ns)
    config = scope.write_config(
        "scoped.yaml",
        namespaces={"include": [f"{ns}*"], "exclude": [excluded_ns]},
        listPageSize=2,  # several pages per kind: exercises limit/continue for real
    )

    app_digest = env.build_image(scope.source("app:1.0"), layers=3, seed=f"{ns}-app")
    env.build_image(scope.source("tools:latest"), layers=2, seed=f"{ns}-tools")
    env.build_image(scope.source("base:1"), layers=2, seed=f"{ns}-base")
    pinned_digest = env.build_image(scope.source("pinned:moving"), layers=2, seed=f"{ns}-pin")
    prebuilt_digest = env.build_image(scope.source("prebuilt:1"), layers=2, seed=f"{ns}-pre")
    # The owned registry already holds prebuilt's owned name with other content
    # (a stale copy, a collision, someone else's push): it must be copied over
    # before any workload is pointed at it, never reused.
    env.build_image(scope.source("other:1"), layers=2, seed=f"{ns}-other")
    impostor_digest = push_to_owned(env, scope.source("other:1"), scope.owned("prebuilt:1"))
    already_owned = f"{env.owned.host}/t-{ns}/in-house/tool:3"

    create(
        api,
        "Deployment",
        ns,
        "web",
        {"app": scope.source("app:1.0"), "sidecar": scope.source("tools")},
        init={"setup": scope.source("base:1")},
    )
    create(api, "DaemonSet", ns, "agent", {"agent": f"{scope.source('pinned')}@{pinned_digest}"})
    create(
        api,
        "StatefulSet",
        ns,
        "db",
        {"db": scope.source("app:1.0"), "house": already_owned},
    )
    create(
        api,
        "Deployment",
        ns,
        "broken",
        {"good": scope.source("tools"), "missing": scope.source("ghost:1")},
    )
    create(api, "Deployment", ns, "prebuilt", {"main": scope.source("prebuilt:1")})
    create(api, "Deployment", excluded_ns, "skipped", {"main": scope.source("app:1.0")})
    public_log = log_size(env.public)

    result = scope.run(config)
    assert result.returncode == 1, result.stderr  # the ghost image failed
    assert "ghost:1" in result.stderr and "not_found" in result.stderr

    web = images(read(api, "Deployment", ns, "web"))
    assert web == {
        "setup": f"{scope.owned('base')}:1",
        "app": f"{scope.owned('app')}:1.0",
        "sidecar": f"{scope.owned('tools')}:latest",
    }
    # The owned copies are the same manifests as the sources (same layers pushed).
    owned = env.owned
    assert owned.manifest_digest(scope.owned_repository("app"), "1.0") == app_digest
    assert owned.tags(scope.owned_repository("app")) == ["1.0"]

    agent = images(read(api, "DaemonSet", ns, "agent"))["agent"]
    owned_pinned_tag = "sha256_" + pinned_digest.split(":")[1]
    pushed = owned.manifest_digest(scope.owned_repository("pinned"), owned_pinned_tag)
    assert pushed is not None
    assert agent == f"{scope.owned('pinned')}@{pushed}"

    assert images(read(api, "StatefulSet", ns, "db")) == {
        "db": f"{scope.owned('app')}:1.0",
        "house": already_owned,
    }
    assert images(read(api, "Deployment", ns, "broken")) == {
        "good": f"{scope.owned('tools')}:latest",
        "missing": scope.source("ghost:1"),
    }
    assert images(read(api, "Deployment", ns, "prebuilt")) == {
        "main": f"{scope.owned('prebuilt')}:1"
    }
    assert owned.manifest_digest(scope.owned_repository("prebuilt"), "1") == prebuilt_digest
    assert prebuilt_digest != impostor_digest
    assert "OwnedCopyReplaced" not in result.stderr  # an Event, not a log line
    assert "holds " + impostor_digest in result.stderr  # the log names what was replaced
    assert images(read(api, "Deployment", excluded_ns, "skipped")) == {
        "main": scope.source("app:1.0")
    }

    # One pull per distinct source: app is used twice but fetched once; the
    # source is asked for its digest with a HEAD (not counted as a pull).
    fetched = request_lines(env.public, public_log)
    app_manifest_gets = [line for line in fetched if f"GET /v2/{ns}/app/manifests/" in line]
    assert len(app_manifest_gets) == 1, app_manifest_gets
    assert [line for line in fetched if f"HEAD /v2/{ns}/app/manifests/1.0" in line]

    # Second cycle (a new process, so without the records of the first): no
    # writes anywhere, and no pulls of what is already owned: the sources are
    # asked for their digests only (HEAD), and the owned copies match them.
    versions = {
        (kind, name): read(api, kind, ns, name)["metadata"]["resourceVersion"]
        for kind, name in [
            ("Deployment", "web"),
            ("DaemonSet", "agent"),
            ("StatefulSet", "db"),
            ("Deployment", "broken"),
            ("Deployment", "prebuilt"),
        ]
    }
    public_log, owned_log = log_size(env.public), log_size(env.owned)
    again = scope.run(config)
    assert again.returncode == 1  # ghost is still missing and is retried
    for (kind, name), version in versions.items():
        assert read(api, kind, ns, name)["metadata"]["resourceVersion"] == version
    assert [line for line in request_lines(env.owned, owned_log) if '"PUT ' in line] == []
    refetched = [
        line
        for line in request_lines(env.public, public_log)
        if f"/v2/{ns}/" in line
        and f"/v2/{ns}/ghost/" not in line
        and '"HEAD ' not in line
        # asking whether the source has signatures (docs/signatures.md) pulls nothing
        and "/referrers/" not in line
    ]
    assert refetched == []


def test_loop_patches_new_workloads_serves_metrics_and_stops_on_sigterm(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("svc:2"), layers=2, seed=f"{ns}-svc")
    config, port = scope.metrics_config("loop.yaml")
    with controller_loop(scope.kubeconfig, config) as lines:  # exits 0 on SIGTERM
        time.sleep(2)  # the loop is running with nothing to do
        create(api, "Deployment", ns, "late", {"svc": scope.source("svc:2")})
        wait_for(
            lambda: images(read(api, "Deployment", ns, "late"))["svc"] == f"{scope.owned('svc')}:2",
            60,
            "the late Deployment patched",
            interval=0.5,
        )
        assert images(read(api, "Deployment", ns, "late"))["svc"] == f"{scope.owned('svc')}:2"
        time.sleep(2.5)  # more cycles over unchanged workloads
        metrics = scrape(port)
        assert metrics["image_cloner_images_cloned_total"] == 1
        assert metrics['image_cloner_workloads_patched_total{kind="Deployment"}'] == 1
        assert metrics['image_cloner_clone_failures_total{reason="not_found"}'] == 0
        assert metrics["image_cloner_reconcile_duration_seconds_count"] >= 3
        assert metrics['image_cloner_reconcile_cycles_total{result="error"}'] == 0
    assert "stopped after" in "".join(lines)


def test_wrong_owned_password_fails_with_auth_and_patches_nothing(
    scope: Scope, env: Environment, tmp_path: Path
) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("locked:1"), layers=1, seed=f"{ns}-locked")
    create(api, "Deployment", ns, "web", {"main": scope.source("locked:1")})
    wrong = tmp_path / "docker-config.json"
    token = base64.b64encode(f"{env.owned.username}:not-the-password".encode()).decode()
    wrong.write_text(json.dumps({"auths": {env.owned.host: {"auth": token}}}))
    config = scope.write_config("wrong.yaml", dockerConfig=str(wrong))
    owned_log = log_size(env.owned)
    result = scope.run(config)
    assert result.returncode == 1
    assert "(auth)" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
    assert images(read(api, "Deployment", ns, "web")) == {"main": scope.source("locked:1")}
    assert env.owned.tags(scope.owned_repository("locked")) == []
    assert [line for line in request_lines(env.owned, owned_log) if '"PUT ' in line] == []

    # With the right credentials the next run completes the work.
    assert scope.run().returncode == 0
    assert images(read(api, "Deployment", ns, "web")) == {"main": f"{scope.owned('locked')}:1"}


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("pollInterval", -1, "pollInterval"),
        ("target", "no-registry-host", "target"),
        ("dockerConfig", "/nonexistent/config.json", "/nonexistent/config.json"),
    ],
)
def test_bad_setting_stops_startup_naming_it(
    env: Environment, tmp_path: Path, setting: str, value: Any, named: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", env, f"{env.owned.host}/bad")
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), setting: value}))
    result = run_controller(env, config, timeout=60)
    assert result.returncode == 2
    assert named in result.stderr


def test_malformed_docker_config_stops_startup(env: Environment, tmp_path: Path) -> None:
    broken = tmp_path / "config.json"
    broken.write_text('{"auths": {"x": ')
    config = write_config(
        tmp_path / "c.yaml", env, f"{env.owned.host}/bad", dockerConfig=str(broken)
    )
    result = run_controller(env, config, timeout=60)
    assert result.returncode == 2
    assert str(broken) in result.stderr and "not valid JSON" in result.stderr


def test_manifests_pass_server_side_dry_run(env: Environment) -> None:
    core = kubernetes.client.CoreV1Api(env.api_client())
    try:
        core.create_namespace({"metadata": {"name": "image-cloner"}})
    except kubernetes.client.ApiException as exc:
        assert exc.status == 409  # already there from an earlier run in this session
    result = env.run_kubectl("apply", "--dry-run=server", "-k", str(REPO / "manifests"))
    assert result.returncode == 0, result.stderr
    for kind in ("serviceaccount", "clusterrole", "clusterrolebinding", "configmap", "deployment"):
        assert kind in result.stdout.lower(), result.stdout

    # The Secret variant: same objects, credentials volume from a Secret.
    overlay = str(REPO / "manifests" / "secret-credentials")
    result = env.run_kubectl("apply", "--dry-run=server", "-k", overlay)
    assert result.returncode == 0, result.stderr
    assert "configmap/docker-configuration" not in result.stdout
    rendered = list(yaml.safe_load_all(env.run_kubectl("kustomize", overlay).stdout))
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["docker-configuration"] == {
        "name": "docker-configuration",
        "secret": {"secretName": "docker-configuration"},
    }
    assert volumes["config"]["configMap"]["name"] == "image-cloner-config"

    # The skopeo variant: no docker-in-docker sidecar, nothing privileged.
    overlay = str(REPO / "manifests" / "skopeo")
    result = env.run_kubectl("apply", "--dry-run=server", "-k", overlay)
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(env.run_kubectl("kustomize", overlay).stdout))
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["controller"]
    assert not any(c.get("securityContext", {}).get("privileged") for c in spec["containers"])
    assert {"name": "IMAGE_CLONER_COPY_BACKEND", "value": "skopeo"} in spec["containers"][0]["env"]
    assert "DOCKER_HOST" not in {e["name"] for e in spec["containers"][0]["env"]}
    assert {v["name"] for v in spec["volumes"]} == {"config", "docker-configuration", "tmp"}
    (namespace,) = [d for d in rendered if d["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_controller_works_with_only_the_manifests_rbac(scope: Scope, env: Environment) -> None:
    """Run as the image-cloner ServiceAccount, bound by manifests/rbac.yaml alone."""
    kubeconfig = scope.kubeconfig  # manifests/ RBAC applied by the fixture
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("rbac:1"), layers=1, seed=f"{ns}-rbac")
    create(api, "StatefulSet", ns, "db", {"db": scope.source("rbac:1")})
    result = scope.run()
    assert result.returncode == 0, result.stderr
    assert images(read(api, "StatefulSet", ns, "db")) == {"db": f"{scope.owned('rbac')}:1"}
    # ...and the ServiceAccount can do nothing beyond what it uses.
    for verb, resource in [
        ("list", "secrets"),  # cannot enumerate the cluster's Secrets
        ("watch", "secrets"),
        ("get", "secrets"),  # nor read one by its name: get only the managed one
        ("get", "secret/argocd-secret"),
        ("delete", "secrets"),
        ("update", "deployments"),
        ("delete", "deployments"),
        ("create", "pods"),
        ("patch", "namespaces"),
        ("create", "serviceaccounts"),
        ("create", "clusterrolebindings"),
    ]:
        denied = env.run_kubectl(
            "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource, "-A", check=False
        )
        assert denied.stdout.strip() == "no", (verb, resource)
    for verb, resource in [
        ("list", "deployments"),
        ("patch", "statefulsets"),
        ("get", "secret/image-cloner-pull-secret"),
        ("patch", "serviceaccounts"),
    ]:
        allowed = env.run_kubectl(
            "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource, "-A", check=False
        )
        assert allowed.stdout.strip() == "yes", (verb, resource)


def test_once_exits_leaving_no_temporary_file_behind(
    scope: Scope, env: Environment, tmp_path: Path
) -> None:
    """What the process made in its TMPDIR is gone when it exits.

    The kubernetes client writes the kubeconfig's ``certificate-authority-data``
    to a temporary file, and the skopeo backend keeps its blob info cache in
    a temporary directory; both are removed by ``atexit`` handlers, which
    must still run however the process ends (``controller.exit_process``).
    """
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("app:1"), layers=2, seed=f"{ns}-app")
    create(api, "Deployment", ns, "web", {"main": scope.source("app:1")})
    config = scope.write_config("c.yaml", copyBackend="skopeo")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = run_controller(env, config, extra_env={"TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stderr
    assert images(read(api, "Deployment", ns, "web")) == {"main": f"{scope.owned('app')}:1"}
    assert "skopeo copied" in result.stderr  # the backend did use its cache directory
    assert sorted(p.name for p in tmp.iterdir()) == []
