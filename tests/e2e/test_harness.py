"""Smoke tests of the end-to-end environment itself: real components, real answers."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import docker
import kubernetes.client
import kubernetes.config
import kubernetes.watch
import pytest
import yaml

from devenv.harness import Environment
from devenv.workloads import workload

pytestmark = pytest.mark.e2e


def _deployment(name: str, privileged: bool = False) -> dict[str, object]:
    container: dict[str, object] = {"name": "app", "image": "example.invalid/app:1"}
    if privileged:
        container["securityContext"] = {"privileged": True}
    labels = {"app": name}
    return workload(
        "Deployment",
        name,
        [container],
        labels=labels,
        spec={"replicas": 1},
        metadata={"labels": labels},
    )


def test_apiserver_answers_and_rbac_is_on(env: Environment, namespace: str) -> None:
    """Admin can list namespaces; anonymous and a plain ServiceAccount are refused."""
    with env.api_client() as api:
        names = [ns.metadata.name for ns in kubernetes.client.CoreV1Api(api).list_namespace().items]
        assert namespace in names
        version = kubernetes.client.VersionApi(api).get_code()
        # hack/build-kube.sh does not stamp gitVersion (it reports v0.0.0-master),
        # but major/minor come from component-base and are right.
        assert version.git_version == "v1.34.4"

    # Anonymous request: authenticated as system:anonymous, forbidden by RBAC.
    context = ssl.create_default_context(cafile=str(env.ca_file))
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(
            f"{env.apiserver_url}/api/v1/namespaces", context=context, timeout=10
        )
    assert anonymous.value.code in (401, 403)

    # A ServiceAccount with no bindings (token from the TokenRequest API).
    sa_kubeconfig = env.service_account_kubeconfig(namespace, "nobody")
    with contextlib.closing(kubernetes.config.new_client_from_config(str(sa_kubeconfig))) as api:
        core = kubernetes.client.CoreV1Api(api)
        with pytest.raises(kubernetes.client.ApiException) as denied:
            core.list_namespaced_secret(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body

    # The same ServiceAccount can do what a RoleBinding grants it.
    with env.api_client() as api:
        rbac = kubernetes.client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-secrets"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-secrets"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-secrets",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )
    with contextlib.closing(kubernetes.config.new_client_from_config(str(sa_kubeconfig))) as api:
        assert kubernetes.client.CoreV1Api(api).list_namespaced_secret(namespace).items == []


def test_deployment_create_list_patch(env: Environment, namespace: str) -> None:
    """A Deployment is stored in etcd, listed and patched (strategic merge and JSON patch)."""
    with env.api_client() as api:
        apps = kubernetes.client.AppsV1Api(api)
        apps.create_namespaced_deployment(namespace, _deployment("web"))
        listed = apps.list_namespaced_deployment(namespace)
        assert [d.metadata.name for d in listed.items] == ["web"]

        patch = {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "app", "image": "owned.example/app:1"}]}
                }
            }
        }
        patched = apps.patch_namespaced_deployment("web", namespace, patch)
        assert patched.spec.template.spec.containers[0].image == "owned.example/app:1"
        assert patched.metadata.generation == 2

        fetched = apps.read_namespaced_deployment("web", namespace)
        assert fetched.spec.template.spec.containers[0].image == "owned.example/app:1"

        # A watch sees the next change (exercises etcd watch through the apiserver).
        watch = kubernetes.watch.Watch()
        rv = fetched.metadata.resource_version
        apps.patch_namespaced_deployment(
            "web", namespace, {"metadata": {"labels": {"patched": "yes"}}}
        )
        events = watch.stream(
            apps.list_namespaced_deployment, namespace, resource_version=rv, timeout_seconds=10
        )
        for event in events:
            if (event["object"].metadata.labels or {}).get("patched") == "yes":
                assert event["type"] == "MODIFIED"
                watch.stop()
                break
        else:
            pytest.fail("watch did not deliver the patch")


def test_kubectl_server_dry_run_allows_privileged(
    env: Environment, namespace: str, tmp_path: Path
) -> None:
    """The built kubectl works and the apiserver accepts privileged containers."""
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(_deployment("dind", privileged=True)))
    result = env.run_kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(manifest))
    assert "created (server dry run)" in result.stdout
    whoami = env.run_kubectl("auth", "whoami", "-o", "json")
    assert "system:masters" in json.loads(whoami.stdout)["status"]["userInfo"]["groups"]


def test_build_image_pushes_to_public(env: Environment) -> None:
    """build_image pushes a multi-layer image; the public registry reports the same digest."""
    reference = f"{env.public.host}/library/smoke:v1"
    digest = env.build_image(reference, layers=3, seed="a")
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert env.public.manifest_digest("library/smoke", "v1") == digest
    assert env.public.manifest_digest("library/smoke", digest) == digest
    assert env.public.manifest_digest("library/smoke", "missing") is None
    assert "library/smoke" in env.public.catalog()
    assert env.public.tags("library/smoke") == ["v1"]
    assert env.public.tags("library/nothing-here") == []

    with contextlib.closing(env.docker_client()) as client:
        data = client.images.get_registry_data(reference)
        assert data.id == digest
    with contextlib.closing(env.docker_client()) as client:
        image = client.images.get(reference)
        assert len(image.attrs["RootFS"]["Layers"]) == 3

    other = env.build_image(f"{env.public.host}/library/smoke:v2", layers=3, seed="b")
    assert other != digest
    assert sorted(env.public.tags("library/smoke")) == ["v1", "v2"]


def test_owned_registry_requires_credentials(env: Environment) -> None:
    """Anonymous access to the owned registry is refused; docker_config's credentials work."""
    assert env.owned.status("/v2/") == 401
    assert env.owned.status("/v2/_catalog") == 401
    assert env.owned.status("/v2/", auth=True) == 200

    auths = json.loads(env.docker_config.read_text())["auths"]
    user, password = base64.b64decode(auths[env.owned.host]["auth"]).decode().split(":", 1)
    assert user == "cloner" and password == env.owned.password

    source = f"{env.public.host}/library/owned-src:v1"
    env.build_image(source, layers=2, seed="owned")
    target_repo = f"{env.owned.host}/mirror/owned-src"
    with contextlib.closing(env.docker_client()) as client:
        client.images.get(source).tag(target_repo, "v1")

        # Anonymous push is refused.
        refused = list(client.images.push(target_repo, tag="v1", stream=True, decode=True))
        assert any("error" in line for line in refused), refused

        # Wrong password: login fails.
        with pytest.raises(docker.errors.APIError):
            client.login(username=user, password="wrong", registry=env.owned.host, reauth=True)

        assert client.login(username=user, password=password, registry=env.owned.host, reauth=True)
        auth = {"username": user, "password": password}
        lines = list(
            client.images.push(target_repo, tag="v1", stream=True, decode=True, auth_config=auth)
        )
        assert not any("error" in line for line in lines), lines
        pushed = [line["aux"]["Digest"] for line in lines if "aux" in line]

    assert "mirror/owned-src" in env.owned.catalog()
    assert env.owned.manifest_digest("mirror/owned-src", "v1") == pushed[0]


def test_owned_password_rotation(env: Environment) -> None:
    """set_password restarts the registry with the new password and rewrites docker_config."""
    old = env.owned.password
    assert old is not None
    env.owned.set_password("rotated-" + old[:8])
    try:
        assert env.owned.status("/v2/", auth=True) == 200
        request = urllib.request.Request(f"{env.owned.url}/v2/")
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"cloner:{old}".encode()).decode()
        )
        with pytest.raises(urllib.error.HTTPError) as old_refused:
            urllib.request.urlopen(request, timeout=10)
        assert old_refused.value.code == 401
        auths = json.loads(env.docker_config.read_text())["auths"]
        assert (
            base64.b64decode(auths[env.owned.host]["auth"]).decode()
            == f"cloner:{env.owned.password}"
        )
    finally:
        env.owned.set_password(old)
    assert env.owned.status("/v2/", auth=True) == 200


def test_registry_restart_keeps_storage(env: Environment) -> None:
    """stop_component/start_component restart a registry on the same port and storage."""
    digest = env.build_image(f"{env.public.host}/library/restart:v1", layers=1, seed="restart")
    env.stop_component("public")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{env.public.url}/v2/", timeout=5)
    env.start_component("public")
    assert env.public.manifest_digest("library/restart", "v1") == digest


def test_further_accounts_share_the_htpasswd_file_without_a_restart(env: Environment) -> None:
    """set_user adds an account beside the owned user; the registry re-reads the file."""
    starts = env.owned.log_path.read_text().count("=== start")
    password = secrets.token_urlsafe(12)
    env.owned.set_user("harness-extra", password)
    assert env.owned.status_as("/v2/", "harness-extra", password) == 200
    assert env.owned.status("/v2/", auth=True) == 200  # the owned user still works
    env.owned.set_user("harness-extra", password + "-rotated")
    assert env.owned.status_as("/v2/", "harness-extra", password) == 401
    assert env.owned.status_as("/v2/", "harness-extra", password + "-rotated") == 200
    assert env.owned.log_path.read_text().count("=== start") == starts  # never restarted
    assert password not in env.owned.htpasswd_path.read_text()  # bcrypt only
