"""Issue 4 on real components: pull secrets per namespace, attachment, rotation, foreign Secrets.

Every controller run here uses a token of the image-cloner ServiceAccount,
bound by manifests/rbac.yaml alone (the ``scope`` fixture).

Issue 28, read-only credentials for the nodes: the owned registry gets an
htpasswd account ``reader`` and a push account of the test's own, and is
reached through a loopback ``RegistryProxy`` that refuses every write of
``reader`` and records the user of each request; the controller pushes as the
push account (``dockerConfig``) and provisions ``reader``
(``pullSecret.dockerConfig``).
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import docker.errors
import kubernetes.client
import pytest

from cloner.adapters.kube import KubeClient, load_api_client
from cloner.config import PullSecretSettings
from cloner.model.credentials import DockerConfig
from cloner.ops.provisioning import ADMISSION_SETTLE, PullSecrets
from devenv.harness import Environment
from devenv.support import (
    WRITE_METHODS,
    RegistryProxy,
    Scope,
    controller_loop,
    create,
    create_namespace,
    images,
    read,
    scrape,
    secrets_holding,
    serving,
)
from devenv.waiting import seconds_until, wait_for
from devenv.workloads import workload

SECRET = "image-cloner-pull-secret"
READER = "reader"
GAUGE = "image_cloner_pull_secret_has_push_credentials"
NOT_SET_WARNING = "pullSecret.dockerConfig is not set"


def docker_config(env: Environment, password: str) -> str:
    """A docker config.json with the owned registry and a second, unrelated registry."""
    token = base64.b64encode(f"{env.owned.username}:{password}".encode()).decode()
    other = base64.b64encode(b"someone:else-entirely").decode()
    return json.dumps(
        {"auths": {env.owned.host: {"auth": token}, "other.example.com": {"auth": other}}}
    )


def secret_of(api: kubernetes.client.ApiClient, namespace: str) -> dict[str, Any] | None:
    core = kubernetes.client.CoreV1Api(api)
    try:
        return json.loads(
            core.read_namespaced_secret(SECRET, namespace, _preload_content=False).data
        )
    except kubernetes.client.ApiException as exc:
        assert exc.status == 404
        return None


def auths(secret: dict[str, Any]) -> dict[str, Any]:
    payload = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    return payload["auths"]


def pull_secrets_of_account(api: kubernetes.client.ApiClient, ns: str, name: str) -> list[str]:
    account = kubernetes.client.CoreV1Api(api).read_namespaced_service_account(name, ns)
    return [ref.name for ref in account.image_pull_secrets or []]


def pull_as_kubelet(
    env: Environment, secret: dict[str, Any], image: str, host: str | None = None
) -> None:
    """Pull ``image`` (``repo:tag``) with the credentials in the Secret, as kubelet would.

    ``host`` is the entry's key when the owned registry is reached through
    another host (a ``RegistryProxy``); the owned registry's by default.

    Raises:
        AssertionError: the registry refused the pull.
    """
    entry = auths(secret)[host or env.owned.host]
    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    repository, tag = image.rsplit(":", 1)
    with closing(env.docker_client()) as client:
        with suppress(docker.errors.ImageNotFound):
            client.api.remove_image(image)
        try:
            for line in client.api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config={"username": user, "password": password},
            ):
                if "error" in line:
                    raise AssertionError(f"pull of {image} refused: {line['error']}")
        except docker.errors.APIError as exc:
            raise AssertionError(f"pull of {image} refused: {exc.explanation}") from None
        client.api.remove_image(image)


def test_three_namespaces_get_the_secret_rotation_updates_all(
    scope: Scope, env: Environment, tmp_path: Path
) -> None:
    ns = scope.namespace
    api = env.api_client()
    core = kubernetes.client.CoreV1Api(api)
    ns_b, ns_c, unrelated = f"{ns}-b", f"{ns}-c", f"{ns}-d"
    for name in (ns_b, ns_c, unrelated):
        create_namespace(env, name)
    core.create_namespaced_service_account(ns_b, {"metadata": {"name": "runner"}})
    core.patch_namespaced_service_account(
        "default", ns_c, {"imagePullSecrets": [{"name": "existing"}]}
    )
    env.build_image(scope.source("svc:1"), layers=2, seed=f"{ns}-svc")
    create(api, "Deployment", ns, "a", {"main": scope.source("svc:1")})
    create(api, "StatefulSet", ns_b, "b", {"main": scope.source("svc:1")})
    apps = kubernetes.client.AppsV1Api(api)
    apps.patch_namespaced_stateful_set(
        "b", ns_b, {"spec": {"template": {"spec": {"serviceAccountName": "runner"}}}}
    )
    create(api, "DaemonSet", ns_c, "c", {"main": scope.source("svc:1")})
    create(api, "Deployment", unrelated, "d", {"main": f"{env.owned.host}/in-house/app:1"})

    credentials = tmp_path / "config.json"
    credentials.write_text(docker_config(env, env.owned.password or ""))
    config = scope.write_config(
        "c.yaml", namespaces={"include": [f"{ns}*"]}, dockerConfig=str(credentials)
    )
    with controller_loop(scope.kubeconfig, config) as lines:  # exits 0 on SIGTERM
        owned_image = f"{scope.owned('svc')}:1"
        workloads = [("Deployment", ns, "a"), ("StatefulSet", ns_b, "b"), ("DaemonSet", ns_c, "c")]
        wait_for(
            lambda: all(images(read(api, *w))["main"] == owned_image for w in workloads),
            60,
            "patched",
        )
        old_password = env.owned.password or ""
        for namespace in (ns, ns_b, ns_c):
            secret = secret_of(api, namespace)
            assert secret is not None, namespace
            assert secret["type"] == "kubernetes.io/dockerconfigjson"
            assert secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "image-cloner"}
            entries = auths(secret)
            assert list(entries) == [env.owned.host]  # the other registry is not copied
            assert base64.b64decode(entries[env.owned.host]["auth"]).decode() == (
                f"{env.owned.username}:{old_password}"
            )
        assert secret_of(api, unrelated) is None
        assert pull_secrets_of_account(api, ns, "default") == [SECRET]
        assert pull_secrets_of_account(api, ns_b, "runner") == [SECRET]
        assert pull_secrets_of_account(api, ns_b, "default") == []
        assert pull_secrets_of_account(api, ns_c, "default") == ["existing", SECRET]
        assert pull_secrets_of_account(api, unrelated, "default") == []

        # The Secret's credentials really pull the owned copy.
        first = secret_of(api, ns)
        assert first is not None
        pull_as_kubelet(env, first, owned_image)

        # A malformed new file: reported, the last good credentials stay.
        versions = {n: secret_of(api, n)["metadata"]["resourceVersion"] for n in (ns, ns_b, ns_c)}
        credentials.write_text('{"auths": ')
        time.sleep(3)
        for namespace, version in versions.items():
            assert secret_of(api, namespace)["metadata"]["resourceVersion"] == version

        # Rotate the owned registry's password and the docker config.json.
        new_password = secrets.token_urlsafe(12)
        env.owned.set_password(new_password)
        credentials.write_text(docker_config(env, new_password))
        expected = f"{env.owned.username}:{new_password}"

        def rotated() -> bool:
            for namespace in (ns, ns_b, ns_c):
                entry = auths(secret_of(api, namespace) or {})[env.owned.host]
                if base64.b64decode(entry["auth"]).decode() != expected:
                    return False
            return True

        took = seconds_until(rotated, 10, "rotated in every namespace")
        print(f"\nmanaged secrets rotated {took:.1f}s after the config.json change")
        rotated_secret = secret_of(api, ns_c)
        assert rotated_secret is not None
        pull_as_kubelet(env, rotated_secret, owned_image)
        with pytest.raises(AssertionError, match="pull of"):
            pull_as_kubelet(env, first, owned_image)  # the old password no longer works
    output = "".join(lines)
    assert "keeping the previous registry credentials" in output
    assert "not valid JSON" in output
    for password in (old_password, new_password):
        assert password not in output


def test_unmanaged_secret_is_left_byte_for_byte(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": SECRET, "labels": {"team": "payments"}},
            "type": "Opaque",
            "data": {"token": base64.b64encode(b"theirs").decode()},
        },
    )
    before = secret_of(api, ns)
    env.build_image(scope.source("pay:1"), layers=1, seed=f"{ns}-pay")
    create(api, "Deployment", ns, "pay", {"main": scope.source("pay:1")})
    result = scope.run()
    assert result.returncode == 1
    assert f"not patching workloads in {ns}" in result.stderr
    assert "not managed by image-cloner" in result.stderr
    assert secret_of(api, ns) == before
    assert images(read(api, "Deployment", ns, "pay")) == {"main": scope.source("pay:1")}
    assert pull_secrets_of_account(api, ns, "default") == []


def test_workload_mode_adds_the_secret_in_the_same_patch(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("w:1"), layers=1, seed=f"{ns}-w")
    create(api, "Deployment", ns, "web", {"main": scope.source("w:1")})
    generation = read(api, "Deployment", ns, "web")["metadata"]["generation"]
    config = scope.write_config("w.yaml", pullSecret={"attach": "workload"})
    assert scope.run(config).returncode == 0
    web = read(api, "Deployment", ns, "web")
    assert web["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    assert images(web) == {"main": f"{scope.owned('w')}:1"}
    assert web["metadata"]["generation"] == generation + 1  # one rollout, not two
    assert secret_of(api, ns) is not None
    assert pull_secrets_of_account(api, ns, "default") == []


def test_provision_false_creates_no_secret(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("n:1"), layers=1, seed=f"{ns}-n")
    create(api, "Deployment", ns, "web", {"main": scope.source("n:1")})
    config = scope.write_config("n.yaml", pullSecret={"provision": False})
    assert scope.run(config).returncode == 0
    assert images(read(api, "Deployment", ns, "web")) == {"main": f"{scope.owned('n')}:1"}
    assert secret_of(api, ns) is None
    assert pull_secrets_of_account(api, ns, "default") == []


class _Creds:
    """The credentials in force, as ``credential_store.CredentialStore`` gives them."""

    def __init__(self, config: str) -> None:
        self.current = DockerConfig.parse(config)
        self.version = "1"


def test_pods_made_right_after_the_service_account_change_get_the_secret(
    scope: Scope, env: Environment
) -> None:
    """The ServiceAccount admission plugin reads an informer, not etcd.

    A pod admitted before it holds the patched ServiceAccount gets the old
    ``imagePullSecrets`` for good; so a namespace is ready only once the
    API server's cache confirmed the change, plus the settle. Pods are made
    here the moment readiness allows, as a ReplicaSet would after the patch.
    """
    namespaces = [f"{scope.namespace}-adm{i}" for i in range(8)]
    for name in namespaces:
        create_namespace(env, name)
    settings = PullSecretSettings()
    with (
        closing(load_api_client(scope.kubeconfig)) as api_client,
        closing(env.api_client()) as admin,
    ):
        kube = KubeClient(api_client)  # the controller's RBAC (manifests/base/rbac.yaml)
        secrets_ = PullSecrets(
            kube, _Creds(docker_config(env, env.owned.password or "")), env.owned.host, settings
        )
        secrets_.start_cycle()
        core = kubernetes.client.CoreV1Api(admin)
        waits = []
        for name in namespaces:
            assert secrets_.namespace_ready(name, "default")
            wait = secrets_.admission_wait(name, "default")
            waits.append(wait)
            time.sleep(wait)
            pod = core.create_namespaced_pod(
                name, workload("Pod", "first", {"c": f"{env.owned.host}/x:1"})
            )
            assert [s.name for s in pod.spec.image_pull_secrets or []] == [SECRET], name
        # Every ServiceAccount was changed now, so each had its settle to wait.
        assert all(0 < w <= ADMISSION_SETTLE for w in waits), waits
        # The first one's settle is long over, and its ServiceAccount lists
        # the Secret already: ready again with no change, so no wait.
        secrets_.start_cycle()
        assert secrets_.namespace_ready(namespaces[0], "default")
        assert secrets_.admission_wait(namespaces[0], "default") == 0.0
        assert kube.service_account_at_least(namespaces[0], "absent", "1") is None


def test_the_service_account_reads_and_updates_only_the_managed_secret(
    scope: Scope, env: Environment
) -> None:
    # Least privilege (issue 28): get and update are limited to the managed
    # Secret's name, so a known name (argocd-secret, a cloud token) cannot be
    # read or overwritten; create cannot be limited by name in Kubernetes. The
    # rotation test above shows provisioning and rotation still work with it.
    def can_i(*args: str) -> str:
        result = subprocess.run(
            [
                str(env.kubectl),
                f"--kubeconfig={scope.kubeconfig}",
                "auth",
                "can-i",
                *args,
                "-n",
                scope.namespace,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,  # "no" exits 1
        )
        return result.stdout.strip()

    assert can_i("get", f"secret/{SECRET}") == "yes"
    assert can_i("update", f"secret/{SECRET}") == "yes"
    assert can_i("create", "secrets") == "yes"
    for verb in ("get", "update", "delete", "patch"):
        assert can_i(verb, "secret/argocd-secret") == "no", verb
    assert can_i("list", "secrets") == "no"
    assert can_i("watch", "secrets") == "no"


# --- issue 28: read-only credentials for the nodes -----------------------------------


def auth_config(host: str, user: str, password: str) -> str:
    """A docker config.json with one ``auths`` entry."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": token}}})


def status_as(host: str, method: str, path: str, user: str, password: str) -> int:
    """HTTP status of ``METHOD http://host/path`` with basic auth as ``user``."""
    request = urllib.request.Request(f"http://{host}{path}", method=method)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_read_only_credentials_reach_every_secret_and_the_push_account_none(
    scope: Scope, env: Environment, tmp_path: Path
) -> None:
    ns = scope.namespace
    ns_b, ns_c = f"{ns}-b", f"{ns}-c"
    for name in (ns_b, ns_c):
        create_namespace(env, name)
    api = env.api_client()
    pusher, push_password = f"pusher-{ns}", secrets.token_urlsafe(12)
    read_password = secrets.token_urlsafe(12)
    env.owned.set_user(pusher, push_password)
    env.owned.set_user(READER, read_password)
    with serving(RegistryProxy(env.owned.host, read_only={READER})) as proxy:
        target = f"{proxy.host}/t-{ns}"
        owned_image = f"{target}/{env.public.host.replace(':', '-')}/{ns}/ro:1"
        env.build_image(scope.source("ro:1"), layers=2, seed=f"{ns}-ro")
        create(api, "Deployment", ns, "a", {"main": scope.source("ro:1")})
        create(api, "StatefulSet", ns_b, "b", {"main": scope.source("ro:1")})
        push_config, pull_config = tmp_path / "push.json", tmp_path / "pull.json"
        push_config.write_text(auth_config(proxy.host, pusher, push_password))
        pull_config.write_text(auth_config(proxy.host, READER, read_password))
        config, port = scope.metrics_config(
            "c.yaml",
            target=target,
            namespaces={"include": [f"{ns}*"]},
            dockerConfig=str(push_config),
            pullSecret={"dockerConfig": str(pull_config)},
        )
        with controller_loop(scope.kubeconfig, config) as lines:
            workloads = [("Deployment", ns, "a"), ("StatefulSet", ns_b, "b")]
            wait_for(
                lambda: all(images(read(api, *w))["main"] == owned_image for w in workloads),
                60,
                "patched",
            )
            assert scrape(port)[GAUGE] == 0.0
            for namespace in (ns, ns_b):
                secret = secret_of(api, namespace)
                assert secret is not None, namespace
                entry = auths(secret)[proxy.host]
                assert base64.b64decode(entry["auth"]).decode() == f"{READER}:{read_password}"
            # The push account is in no Secret of the cluster; reader is in exactly those.
            assert secrets_holding(env, pusher, push_password) == []
            assert sorted(secrets_holding(env, read_password)) == sorted(
                f"{n}/{SECRET}" for n in (ns, ns_b)
            )
            # The Secret pulls the owned copy through the proxy, as reader;
            # the same credentials cannot push.
            first = secret_of(api, ns_b)
            assert first is not None
            before_pull = len(proxy.requests)
            pull_as_kubelet(env, first, owned_image, host=proxy.host)
            pulled = proxy.requests[before_pull:]
            assert {r.user for r in pulled if r.status == 200} == {READER}, proxy.log_lines()
            uploads = f"/v2/{target.split('/', 1)[1]}/extra/blobs/uploads/"
            assert status_as(proxy.host, "POST", uploads, READER, read_password) == 403
            assert status_as(proxy.host, "GET", "/v2/", READER, read_password) == 200
            writes = [r for r in proxy.requests if r.method in WRITE_METHODS]
            assert {r.user for r in writes if r.status < 400} == {pusher}, proxy.log_lines()
            assert {r.status for r in writes if r.user == READER} == {403}

            # Rotate reader's password: the registry's and the pull config.json.
            new_password = secrets.token_urlsafe(12)
            env.owned.set_user(READER, new_password)
            pull_config.write_text(auth_config(proxy.host, READER, new_password))

            def rotated() -> bool:
                return all(
                    base64.b64decode(auths(secret_of(api, n) or {})[proxy.host]["auth"]).decode()
                    == f"{READER}:{new_password}"
                    for n in (ns, ns_b)
                )

            took = seconds_until(rotated, 10, "reader's new password in every managed Secret")
            print(f"\nread-only credentials rotated {took:.1f}s after the pull config.json change")
            rotated_secret = secret_of(api, ns)
            assert rotated_secret is not None
            pull_as_kubelet(env, rotated_secret, owned_image, host=proxy.host)
            with pytest.raises(AssertionError, match="pull of"):
                pull_as_kubelet(env, first, owned_image, host=proxy.host)

            # A pull config without the owned entry: never the push account
            # instead; a new namespace is not patched and gets no Secret.
            pull_config.write_text(auth_config("other.example.com", READER, new_password))
            create(api, "Deployment", ns_c, "c", {"main": scope.source("ro:1")})
            wait_for(
                lambda: "(pullSecret.dockerConfig) has no entry" in "".join(lines),
                20,
                "the missing entry reported",
            )
            wait_for(lambda: f"not patching workloads in {ns_c}" in "".join(lines), 20, "held")
            assert images(read(api, "Deployment", ns_c, "c")) == {"main": scope.source("ro:1")}
            assert secret_of(api, ns_c) is None
            assert secrets_holding(env, pusher, push_password) == []
            namespace_failures = (
                'image_cloner_namespace_failures_total{reason="pull_credentials_missing"}'
            )
            assert scrape(port)[namespace_failures] >= 1
    output = "".join(lines)
    assert NOT_SET_WARNING not in output
    for password in (push_password, read_password, new_password):
        assert password not in output


def test_without_read_only_credentials_the_gauge_is_1_and_one_warning_says_so(
    scope: Scope, env: Environment
) -> None:
    config, port = scope.metrics_config("c.yaml")
    with controller_loop(scope.kubeconfig, config) as lines:
        wait_for(lambda: _cycles(port) >= 3, 30, "three cycles")
        assert scrape(port)[GAUGE] == 1.0
    warnings = [line for line in lines if NOT_SET_WARNING in line]
    assert len(warnings) == 1, warnings
    assert " WARNING " in warnings[0] and str(env.docker_config) in warnings[0]


def _cycles(port: int) -> float:
    """Reconcile cycles the controller on ``port`` has run (0 before it serves metrics)."""
    try:
        samples = scrape(port)
    except OSError:  # not listening yet
        return 0
    return sum(v for k, v in samples.items() if k.startswith("image_cloner_reconcile_cycles_total"))
