"""Pull secret decisions: payload, managed or foreign, ServiceAccount and template patches."""

import base64
import json

import pytest

from cloner.model.credentials import Credential, DockerConfig, HelperRef
from cloner.model.pullsecrets import (
    CREDENTIALS_UNAVAILABLE,
    PULL_CREDENTIALS_MISSING,
    OwnedEntry,
    SecretInfo,
    ServiceAccount,
    carries_push_credentials,
    desired_secret,
    dockerconfigjson,
    pull_credential,
    secret_action,
    service_account_patch,
    updated_secret,
)
from cloner.model.workloads import Container, Workload, image_patch
from devenv.workloads import workload

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
    assert secret_action(SecretInfo.from_api(managed_current), desired) == "none"
    assert secret_action(SecretInfo.from_api(managed_stale), desired) == "update"
    assert secret_action(SecretInfo.from_api(foreign), desired) == "foreign"


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
    body = updated_secret(SecretInfo.from_api(existing), desired)
    assert body["metadata"]["resourceVersion"] == "7"
    assert body["metadata"]["labels"]["team"] == "a"
    assert body["metadata"]["annotations"] == {"note": "x"}
    assert body["data"] == desired["data"]


def test_service_account_patch_appends_and_keeps_existing_entries() -> None:
    account = {"metadata": {"resourceVersion": "3"}, "imagePullSecrets": [{"name": "mine"}]}
    assert service_account_patch(ServiceAccount.from_api(account), "s") == [
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
    assert service_account_patch(ServiceAccount.from_api(annotated), "s")[-1] == {
        "op": "add",
        "path": "/metadata/annotations/image-cloner.io~1added-pull-secret",
        "value": "s",
    }
    bare = {"metadata": {"resourceVersion": "4"}}
    assert service_account_patch(ServiceAccount.from_api(bare), "s")[1] == {
        "op": "add",
        "path": "/imagePullSecrets",
        "value": [{"name": "s"}],
    }
    listed = {"metadata": {}, "imagePullSecrets": [{"name": "s"}]}
    assert service_account_patch(ServiceAccount.from_api(listed), "s") == []


def _workload(pull_secrets: list[dict] | None) -> Workload:
    pod = {} if pull_secrets is None else {"imagePullSecrets": pull_secrets}
    obj = workload(
        "Deployment", "w", {"a": "nginx"}, namespace="n", pod=pod, metadata={"resourceVersion": "9"}
    )
    return Workload.from_api("Deployment", obj)


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


# --- which credential the Secret holds (issue 28) -----------------------------------

PUSH = Credential("owned.example.com:5000", "cloner", "push-pw")
READ = Credential("owned.example.com:5000", "reader", "read-pw")
HELPER = HelperRef("ecr-login", "owned.example.com:5000", "credHelpers")


def entry(credential: Credential | None, helper: HelperRef | None, source: str) -> OwnedEntry:
    return OwnedEntry(credential, helper, source)


@pytest.mark.parametrize(
    ("push", "pull", "credential", "reason"),
    [
        # pullSecret.dockerConfig unset: the push entry, as before issue 28.
        ((PUSH, None), None, PUSH, ""),
        ((None, HELPER), None, None, CREDENTIALS_UNAVAILABLE),
        ((None, None), None, None, ""),  # anonymous pulls: no Secret
        # Set: its entry, whatever the push file holds.
        ((PUSH, None), (READ, None), READ, ""),
        ((None, None), (READ, None), READ, ""),
        ((PUSH, None), (None, HELPER), None, CREDENTIALS_UNAVAILABLE),
        # No entry for the owned registry: never the push credentials.
        ((PUSH, None), (None, None), None, PULL_CREDENTIALS_MISSING),
        ((None, HELPER), (None, None), None, PULL_CREDENTIALS_MISSING),
        ((None, None), (None, None), None, ""),  # neither file has one: anonymous
    ],
)
def test_the_pull_credential_is_the_read_only_entry_when_configured(
    push: tuple[Credential | None, HelperRef | None],
    pull: tuple[Credential | None, HelperRef | None] | None,
    credential: Credential | None,
    reason: str,
) -> None:
    decided = pull_credential(
        "owned.example.com:5000",
        entry(*push, "/push/config.json"),
        None if pull is None else entry(*pull, "/pull/config.json"),
    )
    assert decided.credential == credential
    assert decided.reason == reason
    assert bool(decided.message) == bool(reason)
    assert "push-pw" not in decided.message and "read-pw" not in decided.message


def test_a_missing_read_only_entry_names_both_files() -> None:
    decided = pull_credential(
        "owned.example.com:5000",
        entry(PUSH, None, "/push/config.json"),
        entry(None, None, "/pull/config.json"),
    )
    assert decided.message == (
        "/pull/config.json (pullSecret.dockerConfig) has no entry for the owned registry "
        "owned.example.com:5000; the push credentials of /push/config.json are never put "
        "in pull secrets"
    )


@pytest.mark.parametrize(
    ("provision", "pull_docker_config", "expected"),
    [
        (True, None, True),
        (True, "/etc/image-cloner/pull-docker/config.json", False),
        (False, None, False),  # no Secret is made at all
        (False, "/etc/image-cloner/pull-docker/config.json", False),
    ],
)
def test_secrets_carry_push_credentials_only_without_a_pull_config(
    provision: bool, pull_docker_config: str | None, expected: bool
) -> None:
    assert carries_push_credentials(provision, pull_docker_config) is expected


def test_one_rule_for_every_image_pull_secrets_list() -> None:
    from cloner.model.workloads import pull_secret_ops

    path = "/spec/template/spec/imagePullSecrets"
    # absent field: created, guarded by the resourceVersion read
    assert pull_secret_ops(path, None, "s", resource_version="7") == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": path, "value": [{"name": "s"}]},
    ]
    assert pull_secret_ops(path, ("a",), "s") == [
        {"op": "add", "path": f"{path}/-", "value": {"name": "s"}}
    ]
    assert pull_secret_ops(path, ("a", "s"), "s") == []  # listed: nothing to do
    # removal: the last entry of that name, or the whole field it created
    assert pull_secret_ops(path, ("s", "a", "s"), "s", remove=True) == [
        {"op": "test", "path": f"{path}/2/name", "value": "s"},
        {"op": "remove", "path": f"{path}/2"},
    ]
    assert pull_secret_ops(path, ("s",), "s", remove=True) == [
        {"op": "test", "path": path, "value": [{"name": "s"}]},
        {"op": "remove", "path": path},
    ]
    assert pull_secret_ops(path, ("a",), "s", remove=True) == []
