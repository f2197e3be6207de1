"""``KubeClient``'s hot write path on the real API server, as the controller's ServiceAccount.

Workload patches ask for protobuf answers (cheaper for the API server to
encode; the body is not read), so the API server's errors come back in
protobuf too, and their message must still reach the logs.
"""

from __future__ import annotations

from contextlib import closing

import pytest

from cloner.adapters.kube import KubeClient, load_api_client
from cloner.errors import KubeError
from cloner.model.workloads import Workload
from tests.e2e.harness import Environment
from tests.e2e.support import Scope, create, images, read

IMAGE_PATH = "/spec/template/spec/containers/0/image"


def test_a_patch_lands_and_a_refused_one_names_the_api_servers_reason(
    scope: Scope, env: Environment
) -> None:
    namespace = scope.namespace
    with closing(env.api_client()) as admin:
        create(admin, "Deployment", namespace, "web", {"main": "127.0.0.1:1/web:1"})
        workload = Workload.from_api("Deployment", read(admin, "Deployment", namespace, "web"))
        with closing(load_api_client(scope.kubeconfig)) as api_client:
            kube = KubeClient(api_client)
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
        assert images(read(admin, "Deployment", namespace, "web")) == {"main": "127.0.0.1:1/web:2"}
