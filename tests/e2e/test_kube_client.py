"""``KubeClient``'s hot write path on the real API server, as the controller's ServiceAccount.

Workload patches ask for protobuf answers (cheaper for the API server to
encode; the body is not read), so the API server's errors come back in
protobuf too, and their message must still reach the logs. The requests go
through libcurl (``CurlTransport``) by default and through the client's
urllib3 pool (``PoolTransport``) when libcurl cannot reproduce the client's
settings; both must give the same outcomes.
"""

from __future__ import annotations

import time
from contextlib import closing

import certifi
import kubernetes
import pytest

from cloner.adapters.curl import CurlTransport
from cloner.adapters.kube import KubeClient, PoolTransport, load_api_client
from cloner.errors import KubeError
from cloner.model.events import event_body
from cloner.model.workloads import Workload
from devenv.harness import Environment
from devenv.support import Scope, create, images, read

IMAGE_PATH = "/spec/template/spec/containers/0/image"


def kube_for(api_client: kubernetes.client.ApiClient, transport: str) -> KubeClient:
    """The default client (libcurl) or one on the client's urllib3 pool."""
    if transport == "pool":
        return KubeClient(api_client, transport=PoolTransport(api_client.rest_client.pool_manager))
    kube = KubeClient(api_client)
    assert isinstance(kube.transport, CurlTransport)  # what the controller gets
    return kube


def web(admin: kubernetes.client.ApiClient, namespace: str) -> Workload:
    """Create Deployment ``web`` (one container, image ``127.0.0.1:1/web:1``); its snapshot."""
    create(admin, "Deployment", namespace, "web", {"main": "127.0.0.1:1/web:1"})
    return Workload.from_api("Deployment", read(admin, "Deployment", namespace, "web"))


@pytest.mark.parametrize("transport", ["curl", "pool"])
def test_a_patch_lands_and_a_refused_one_names_the_api_servers_reason(
    scope: Scope, env: Environment, transport: str
) -> None:
    namespace = scope.namespace
    with closing(env.api_client()) as admin:
        workload = web(admin, namespace)
        with closing(load_api_client(scope.kubeconfig)) as api_client:
            kube = kube_for(api_client, transport)
            kube.patch_workload(
                workload,
                [
                    {"op": "test", "path": IMAGE_PATH, "value": "127.0.0.1:1/web:1"},
                    {"op": "replace", "path": IMAGE_PATH, "value": "127.0.0.1:1/web:2"},
                ],
            )
            assert images(read(admin, "Deployment", namespace, "web")) == {
                "main": "127.0.0.1:1/web:2"
            }
            # The same patch again: its test fails (a concurrent change, as it were).
            with pytest.raises(KubeError) as refused:
                kube.patch_workload(
                    workload,
                    [
                        {"op": "test", "path": IMAGE_PATH, "value": "127.0.0.1:1/web:1"},
                        {"op": "replace", "path": IMAGE_PATH, "value": "127.0.0.1:1/web:3"},
                    ],
                )
            assert refused.value.status == 422 and refused.value.conflict
            assert str(refused.value).startswith(f"patch Deployment {namespace}/web: 422 ")
            assert "the server rejected our request" in str(refused.value), str(refused.value)
            # A workload that is not there: 404, with the API server's words.
            gone = Workload("Deployment", namespace, "absent", "u", "1", workload.containers)
            with pytest.raises(KubeError) as missing:
                kube.patch_workload(gone, [{"op": "test", "path": IMAGE_PATH, "value": "x"}])
            assert missing.value.status == 404
            assert 'deployments.apps "absent" not found' in str(missing.value), str(missing.value)
            # A read on the same connection after the writes: no body carried over.
            account = kube.get_service_account(namespace, "default")
            assert account is not None and account.name == "default"
            # The only Secret name the shipped RBAC lets it read; not created here.
            assert kube.get_secret(namespace, "image-cloner-pull-secret") is None
        assert images(read(admin, "Deployment", namespace, "web")) == {"main": "127.0.0.1:1/web:2"}


@pytest.mark.parametrize("transport", ["curl", "pool"])
def test_events_are_created_and_patched(scope: Scope, env: Environment, transport: str) -> None:
    namespace = scope.namespace
    with closing(env.api_client()) as admin:
        workload = web(admin, namespace)
        with closing(load_api_client(scope.kubeconfig)) as api_client:
            kube = kube_for(api_client, transport)
            now = time.time()
            body = event_body(workload, "Normal", "Patched", "first", 1, now, now, "image-cloner")
            name = kube.create_event(namespace, body)
            kube.patch_event(namespace, name, {"count": 2, "message": "second"})
        event = kubernetes.client.CoreV1Api(admin).read_namespaced_event(name, namespace)
        assert (event.reason, event.count, event.message) == ("Patched", 2, "second")
        assert event.involved_object.name == "web"


def test_a_client_certificate_authenticates_through_libcurl(scope: Scope, env: Environment) -> None:
    cert, key = env.make_client_cert(f"curl-{scope.namespace}", "curl-user", "system:masters")
    configuration = kubernetes.client.Configuration()
    configuration.host = env.api_client().configuration.host
    configuration.ssl_ca_cert = str(env.ca_file)
    configuration.cert_file, configuration.key_file = str(cert), str(key)
    with closing(env.api_client()) as admin:
        workload = web(admin, scope.namespace)
        with closing(kubernetes.client.ApiClient(configuration)) as api_client:
            kube = kube_for(api_client, "curl")
            kube.patch_workload(
                workload, [{"op": "replace", "path": IMAGE_PATH, "value": "127.0.0.1:1/web:2"}]
            )
        assert images(read(admin, "Deployment", scope.namespace, "web")) == {
            "main": "127.0.0.1:1/web:2"
        }


def test_an_unreachable_or_untrusted_api_server_is_an_error_without_the_token(
    env: Environment,
) -> None:
    workload = Workload("Deployment", "default", "web", "u", "1", ())
    host = env.api_client().configuration.host
    closed = kubernetes.client.Configuration()
    closed.host = "https://127.0.0.1:1"
    untrusted = kubernetes.client.Configuration()
    untrusted.host, untrusted.ssl_ca_cert = host, certifi.where()  # not the API server's CA
    for configuration, words in ((closed, "connect"), (untrusted, "certificate")):
        configuration.api_key = {"authorization": "s3cr3t-t0ken"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        with closing(kubernetes.client.ApiClient(configuration)) as api_client:
            kube = kube_for(api_client, "curl")
            with pytest.raises(KubeError) as failed:
                kube.patch_workload(workload, [])
        assert failed.value.status == 0
        assert "API server unreachable" in str(failed.value)
        assert words in str(failed.value).lower(), str(failed.value)
        assert "s3cr3t" not in str(failed.value)
        assert kube.requests["unreachable"] == 1
