"""Pull secret decisions: payload, managed or foreign, ServiceAccount and template patches."""

import base64
import json

from cloner.model.credentials import DockerConfig
from cloner.model.pullsecrets import (
    desired_secret,
    dockerconfigjson,
    secret_action,
    service_account_patch,
    updated_secret,
)
from cloner.model.workloads import Container, Workload, image_patch

CONFIG = DockerConfig.parse(
    json.dumps(
        {
            "auths": {
                "owned.example.com:5000": {"auth": base64.b64encode(b"cloner:pw").decode()},
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:other").decode()},
            }
        }
    )
)
OWNED = CONFIG.for_registry("owned.example.com:5000")
assert OWNED is not None


def test_payload_holds_only_the_owned_registry_entry() -> None:
    payload = json.loads(dockerconfigjson(OWNED))
    assert list(payload["auths"]) == ["owned.example.com:5000"]
    assert base64.b64decode(payload["auths"]["owned.example.com:5000"]["auth"]) == b"cloner:pw"
    assert b"hub:other" not in base64.b64decode(
        desired_secret("s", "ns", OWNED)["data"][".dockerconfigjson"]
    )


def test_desired_secret_shape() -> None:
    secret = desired_secret("image-cloner-pull-secret", "shop", OWNED)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "image-cloner"}
    assert secret["metadata"]["namespace"] == "shop"


def test_secret_actions() -> None:
    desired = desired_secret("s", "ns", OWNED)
    managed_current = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "5"}}
    managed_stale = {**managed_current, "data": {".dockerconfigjson": "e30="}}
    foreign = {"metadata": {"name": "s"}, "type": "Opaque", "data": {}}
    assert secret_action(None, desired) == "create"
    assert secret_action(managed_current, desired) == "none"
    assert secret_action(managed_stale, desired) == "update"
    assert secret_action(foreign, desired) == "foreign"


def test_update_keeps_metadata_and_resource_version() -> None:
    desired = desired_secret("s", "ns", OWNED)
    existing = {
        "metadata": {
            "name": "s",
            "namespace": "ns",
            "resourceVersion": "7",
            "labels": {"app.kubernetes.io/managed-by": "image-cloner", "team": "a"},
            "annotations": {"note": "x"},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "e30="},
    }
    body = updated_secret(existing, desired)
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["metadata"]["labels"]["team"] == "a"
    assert body["metadata"]["annotations"] == {"note": "x"}
    assert body["data"] == desired["data"]


def test_service_account_patch_appends_and_keeps_existing_entries() -> None:
    account = {"metadata": {"resourceVersion": "3"}, "imagePullSecrets": [{"name": "mine"}]}
    assert service_account_patch(account, "s") == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "3"},
        {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "s"}},
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {"image-cloner.io/added-pull-secret": "s"},
        },
    ]
    annotated = {
        "metadata": {"resourceVersion": "3", "annotations": {"team": "x"}},
        "imagePullSecrets": [],
    }
    assert service_account_patch(annotated, "s")[-1] == {
        "op": "add",
        "path": "/metadata/annotations/image-cloner.io~1added-pull-secret",
        "value": "s",
    }
    bare = {"metadata": {"resourceVersion": "4"}}
    assert service_account_patch(bare, "s")[1] == {
        "op": "add",
        "path": "/imagePullSecrets",
        "value": [{"name": "s"}],
    }
    listed = {"metadata": {}, "imagePullSecrets": [{"name": "s"}]}
    assert service_account_patch(listed, "s") == []


def _workload(pull_secrets: list[dict] | None) -> Workload:
    spec: dict = {"containers": [{"name": "a", "image": "nginx"}]}
    if pull_secrets is not None:
        spec["imagePullSecrets"] = pull_secrets
    return Workload.from_api(
        "Deployment",
        {
            "metadata": {"name": "w", "namespace": "n", "resourceVersion": "9"},
            "spec": {"template": {"spec": spec}},
        },
    )


def test_workload_mode_adds_secret_in_the_image_patch() -> None:
    container = Container("a", "nginx", "containers", 0)
    bare = _workload(None)
    ops = image_patch(bare, [(container, "o.example.com/x:1")], "s")
    assert ops[3:] == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "9"},
        {"op": "add", "path": "/spec/template/spec/imagePullSecrets", "value": [{"name": "s"}]},
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {
                "image-cloner.io/original-images": '{"a":"nginx"}',
                "image-cloner.io/added-pull-secret": "s",
            },
        },
    ]
    with_list = _workload([{"name": "mine"}])
    assert with_list.pull_secrets == ("mine",)
    ops = image_patch(with_list, [(container, "o.example.com/x:1")], "s")
    assert {
        "op": "add",
        "path": "/spec/template/spec/imagePullSecrets/-",
        "value": {"name": "s"},
    } in ops
    listed = _workload([{"name": "s"}])
    ops = image_patch(listed, [(container, "o.example.com/x:1")], "s")
    assert not [op for op in ops if "imagePullSecrets" in op["path"]]
    assert "added-pull-secret" not in json.dumps(ops)
    assert image_patch(bare, [], "s") == []
