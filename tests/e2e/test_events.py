"""Events on a real API server, written with the image-cloner ServiceAccount's token.

The recorder goes through ``kube.KubeClient`` authenticated as the
controller's ServiceAccount, bound by manifests/base/rbac.yaml alone, so the
shipped ClusterRole is proven to allow exactly what the recorder does (create,
then patch). What it wrote is read back with the admin client and with
``kubectl describe``, the way a user would see it.
"""

from __future__ import annotations

import json
from contextlib import closing
from typing import Any

import kubernetes.client
import pytest

from cloner.adapters.kube import KubeClient, load_api_client
from cloner.model.events import (
    CLONE_FAILED,
    NORMAL,
    PATCHED,
    WARNING,
    clone_failed_message,
    patched_message,
)
from cloner.model.workloads import Workload
from cloner.ops.events import EventRecorder
from devenv.harness import Environment
from devenv.support import Scope, create, read

pytestmark = pytest.mark.e2e


def events_of(env: Environment, namespace: str, name: str) -> list[dict[str, Any]]:
    """The core/v1 Events about ``name`` in ``namespace``, as JSON, read as admin."""
    with closing(env.api_client()) as api:
        response = kubernetes.client.CoreV1Api(api).list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.name={name}",
            _preload_content=False,
        )
        return list(json.loads(response.data)["items"])


def test_events_are_recorded_and_repeated_ones_aggregated(env: Environment, scope: Scope) -> None:
    namespace, name = scope.namespace, "web"
    source = scope.source("nginx:1.25")
    with closing(env.api_client()) as admin:
        create(admin, "Deployment", namespace, name, {"web": source})
        workload = Workload.from_api("Deployment", read(admin, "Deployment", namespace, name))
    assert workload.uid

    with closing(load_api_client(scope.kubeconfig)) as api_client:
        recorder = EventRecorder(KubeClient(api_client))
        recorder.record(
            workload,
            NORMAL,
            PATCHED,
            patched_message([("web", source, scope.owned("nginx:1.25"))]),
        )
        failed = clone_failed_message(source, "auth", "the registry refused the credentials")
        for _ in range(5):
            recorder.record(workload, WARNING, CLONE_FAILED, failed)

    found = events_of(env, namespace, name)
    assert len(found) == 2, [(e["reason"], e.get("count")) for e in found]
    by_reason = {e["reason"]: e for e in found}
    assert set(by_reason) == {PATCHED, CLONE_FAILED}
    failure = by_reason[CLONE_FAILED]
    assert (failure["type"], failure["count"], failure["message"]) == (WARNING, 5, failed)
    assert "(auth)" in failure["message"]
    patched = by_reason[PATCHED]
    assert (patched["type"], patched["count"]) == (NORMAL, 1)
    for event in found:
        involved = event["involvedObject"]
        assert (involved["kind"], involved["name"], involved["uid"]) == (
            "Deployment",
            name,
            workload.uid,
        )
        assert involved["apiVersion"] == "apps/v1"
        assert event["source"]["component"] == "image-cloner"
        assert event["reportingComponent"] == "image-cloner"
        assert event["metadata"]["name"].startswith(f"{name}.")

    described = env.run_kubectl("describe", "deployment", name, "-n", namespace).stdout
    assert PATCHED in described
    assert CLONE_FAILED in described
    assert "Warning" in described
