"""Read-only pull credentials on a real node (issue 28): the kubelet pulls as ``reader``.

The owned registry of the session's cluster gets two htpasswd accounts of
this module's own: a push account and ``reader``. A loopback
:class:`~devenv.support.RegistryProxy` in front of it refuses every write
of ``reader`` and records the user of each request. The controller is
deployed by ``make deploy`` of an overlay of manifests/ with the component
manifests/read-only-pull/ (``docker-configuration`` holds the push account,
``docker-pull-configuration`` holds ``reader``) and its ``target`` on the
proxy's host, which containerd reaches over plain HTTP like the cluster's
registries (``Cluster.add_registry_host``). So every request for an owned
copy, the controller's pushes and the kubelet's pulls alike, goes through
the proxy with its user recorded.

Runs after tests/e2e/test_cluster.py (file order), whose namespaces keep
Secrets of the owned registry's own user; the controller here works only in
``ro-*`` and the assertions are about this module's accounts. A controller
left behind by a failed module is removed first; this one is undeployed at
the end.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devenv.cluster import CONTROLLER_NAMESPACE, Cluster, Deployment, make, write_overlay
from devenv.support import (
    WRITE_METHODS,
    RegistryProxy,
    scrape,
    secrets_holding,
    serving,
)
from devenv.waiting import wait_for
from tests.e2e.test_cluster import (
    apply,
    controller_gone,
    controller_ready,
    get_json,
    kubectl,
    rollout,
    sample_workloads,
    template_images,
    wait_controller_gone,
    wait_pods_running,
)
from tests.e2e.test_pull_secrets import READER, auths, secret_of

pytestmark = pytest.mark.e2e

NS_APPS = "ro-apps"
SECRET = "image-cloner-pull-secret"


@dataclass
class ReadOnly:
    """The deployed controller and the accounts and proxy it works with."""

    deployment: Deployment
    proxy: RegistryProxy
    pusher: str
    push_password: str
    read_password: str


@pytest.fixture(scope="module")
def read_only(cluster: Cluster) -> Iterator[ReadOnly]:
    """The accounts, the proxy, ``make deploy`` with manifests/read-only-pull/; then undeploy."""
    owned = cluster.env.owned
    pusher, push_password = "pusher-ro", secrets.token_urlsafe(12)
    read_password = secrets.token_urlsafe(12)
    owned.set_user(pusher, push_password)
    owned.set_user(READER, read_password)
    with serving(RegistryProxy(owned.host, read_only={READER})) as proxy:
        cluster.add_registry_host(proxy.host)
        deployment = write_overlay(
            cluster,
            cluster.env.workdir / "overlay-read-only-pull",
            config={"namespaces": {"include": ["ro-*"]}},
            owned_host=proxy.host,
            push_account=(pusher, push_password),
            pull_account=(READER, read_password),
        )
        if not controller_gone(cluster):
            make(cluster, "undeploy", deployment)  # left by a module that failed before its own
        wait_controller_gone(cluster)
        started = time.monotonic()
        result = make(cluster, "deploy", deployment)
        assert result.returncode == 0, result.stdout + result.stderr
        try:
            controller_ready(cluster, 2)
            print(
                f"\nmake deploy (read-only-pull) -> 2/2 Ready in {time.monotonic() - started:.1f}s"
            )
            yield ReadOnly(deployment, proxy, pusher, push_password, read_password)
        finally:
            undeploy = make(cluster, "undeploy", deployment)
            wait_controller_gone(cluster)
            kubectl(cluster, "delete", "namespace", NS_APPS, "--ignore-not-found", "--wait=true")
            assert undeploy.returncode == 0, undeploy.stdout + undeploy.stderr


def test_the_kubelet_pulls_the_owned_copy_as_reader_and_no_secret_holds_the_push_account(
    cluster: Cluster, read_only: ReadOnly
) -> None:
    env, proxy = cluster.env, read_only.proxy
    image = f"{env.public.host}/{NS_APPS}/web:1"
    cluster.build_runnable_image(image, seed=image)
    kubectl(cluster, "create", "namespace", NS_APPS)
    cluster.wait_namespace_ready(NS_APPS)
    public = {"web": image, "init": image, "db": image, "agent": image}
    (web,) = sample_workloads(NS_APPS, public, None, None)[:1]  # the Deployment
    # No pod before the switch, so the node has nothing of the image yet:
    # the kubelet fetches the owned copy's manifest, config and layers.
    web["spec"]["replicas"] = 0
    apply(cluster, [web])
    prefix = read_only.deployment.target + "/"
    wait_for(
        lambda: all(
            i.startswith(prefix) for i in template_images(cluster, NS_APPS, "deployment", "web")
        ),
        120,
        "the Deployment patched to the owned copy",
        interval=1.0,
    )
    kubectl(cluster, "-n", NS_APPS, "scale", "deployment/web", "--replicas=2")
    rollout(cluster, NS_APPS, "deployment", "web")
    wait_pods_running(cluster, NS_APPS, "web", prefix, 2, "the web pods Running on the owned copy")

    # The kubelet (containerd) fetched the owned manifest through the proxy
    # as reader, never as the push account.
    repository = f"/v2/{prefix.split('/', 1)[1]}{env.public.host.replace(':', '-')}/{NS_APPS}/web"
    kubelet = [r for r in proxy.requests if r.agent.startswith("containerd/")]
    manifests = [r for r in kubelet if r.path.startswith(f"{repository}/manifests/")]
    blobs = [r for r in kubelet if r.path.startswith(f"{repository}/blobs/")]
    assert {r.user for r in manifests if r.status == 200} == {READER}, proxy.log_lines()
    assert blobs and {(r.user, r.status) for r in blobs} == {(READER, 200)}, proxy.log_lines()
    assert read_only.pusher not in {r.user for r in kubelet}
    print(
        f"\nthrough the proxy: containerd {len(kubelet)} requests ({len(manifests)} manifest, "
        f"{len(blobs)} blob; users {sorted({r.user for r in kubelet})}), "
        f"{len([r for r in proxy.requests if r.method in WRITE_METHODS])} writes"
    )
    # Every write that reached the registry was the controller's, as the push account.
    writes = [r for r in proxy.requests if r.method in WRITE_METHODS]
    assert writes and {r.user for r in writes} == {read_only.pusher}, proxy.log_lines()

    # The managed Secret holds reader; no Secret of the cluster holds the push account.
    with env.api_client() as api:
        secret = secret_of(api, NS_APPS)
    assert secret is not None
    assert list(auths(secret)) == [proxy.host]
    assert secrets_holding(env, read_only.pusher, read_only.push_password) == []
    assert secrets_holding(env, read_only.read_password) == [f"{NS_APPS}/{SECRET}"]
    default = get_json(cluster, "-n", NS_APPS, "serviceaccount", "default")
    assert [s["name"] for s in default.get("imagePullSecrets", [])] == [SECRET]

    # The controller runs with pullSecret.dockerConfig: gauge 0, no Warning.
    assert (
        scrape(read_only.deployment.metrics_port)["image_cloner_pull_secret_has_push_credentials"]
        == 0.0
    )
    logs = kubectl(
        cluster, "-n", CONTROLLER_NAMESPACE, "logs", "deploy/image-cloner", "-c", "controller"
    ).stdout
    assert "pullSecret.dockerConfig is not set" not in logs
    for password in (read_only.push_password, read_only.read_password):
        assert password not in logs
