"""Revert plans: the workload and ServiceAccount patches, and the run against a stand-in API.

The patches are applied with a small RFC 6902 implementation below, so the
tests check what an API server would hold afterwards, not only the operations.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from cloner.errors import KubeError
from cloner.model.pullsecrets import ServiceAccount, service_account_patch
from cloner.model.reference import Policy, Target
from cloner.model.revert import (
    RevertPlan,
    owned_predicate,
    revert_patch,
    service_account_revert_patch,
)
from cloner.model.workloads import ADDED_PULL_SECRET, ORIGINAL_IMAGES, Workload, image_patch
from cloner.ops.revert import revert_all
from devenv.workloads import workload
from tests.unit.fakes import FakeKube, PatchFailed, apply_patch

POLICY = Policy(Target("owned.example.com", "mirror"), (Target("inhouse.example.com"),))
IS_OWNED = owned_predicate(POLICY)
OWNED = "owned.example.com/mirror/docker.io/library"
SECRET = "image-cloner-pull-secret"


def revert_patch_of(kind: str, obj: dict[str, Any], is_owned: Any) -> RevertPlan:
    """``revert_patch`` of the snapshot a list would give for ``obj``."""
    return revert_patch(Workload.from_api(kind, obj), is_owned)


def deployment(
    containers: dict[str, str],
    init: dict[str, str] | None = None,
    pull_secrets: list[str] | None = None,
    annotations: dict[str, str] | None = None,
    service_account: str | None = None,
    name: str = "web",
    kind: str = "Deployment",
) -> dict[str, Any]:
    pod: dict[str, Any] = {}
    if pull_secrets is not None:
        pod["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    if service_account:
        pod["serviceAccountName"] = service_account
    meta: dict[str, Any] = {"uid": f"u-{name}", "resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = annotations
    always = [{"name": n, "image": i, "imagePullPolicy": "Always"} for n, i in containers.items()]
    return workload(kind, name, always, init=init, namespace="shop", pod=pod, metadata=meta)


def patched(obj: dict[str, Any], new: dict[str, str], pull_secret: str | None = None) -> dict:
    """``obj`` after the controller's own patch switching containers to ``new`` images."""
    workload = Workload.from_api("Deployment", obj)
    changes = [(c, new[c.name]) for c in workload.containers if c.name in new]
    return apply_patch(obj, image_patch(workload, changes, pull_secret))


def without_empty_annotations(obj: dict[str, Any]) -> dict[str, Any]:
    """As the API server stores it: an empty annotation map is omitted."""
    obj = copy.deepcopy(obj)
    if obj["metadata"].get("annotations") == {}:
        del obj["metadata"]["annotations"]
    return obj


def test_round_trip_restores_init_containers_and_containers_exactly() -> None:
    before = deployment(
        {"app": "nginx:1.25", "side": "docker.io/library/busybox"},
        init={"setup": "alpine:3"},
    )
    after = patched(
        before,
        {
            "setup": f"{OWNED}/alpine:3",
            "app": f"{OWNED}/nginx:1.25@sha256:" + "a" * 64,
            "side": f"{OWNED}/busybox:latest",
        },
    )
    assert json.loads(after["metadata"]["annotations"][ORIGINAL_IMAGES]) == {
        "setup": "alpine:3",
        "app": "nginx:1.25",
        "side": "docker.io/library/busybox",
    }
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert plan.recorded and plan.restored == 3 and plan.left == 0 and plan.problem is None
    assert [(c.name, c.action) for c in plan.containers] == [
        ("setup", "restore"),
        ("app", "restore"),
        ("side", "restore"),
    ]
    assert plan.owned_after == ()
    assert without_empty_annotations(apply_patch(after, list(plan.operations))) == before


def test_operations_test_name_image_and_annotation_before_each_change() -> None:
    after = patched(
        deployment({"app": "nginx:1.25", "keep": "redis:7"}, init={"setup": "alpine:3"}),
        {"app": f"{OWNED}/nginx:1.25"},
    )
    annotation = after["metadata"]["annotations"][ORIGINAL_IMAGES]
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert list(plan.operations) == [
        {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "app"},
        {
            "op": "test",
            "path": "/spec/template/spec/containers/0/image",
            "value": f"{OWNED}/nginx:1.25",
        },
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:1.25"},
        {
            "op": "test",
            "path": "/metadata/annotations/image-cloner.io~1original-images",
            "value": annotation,
        },
        {"op": "remove", "path": "/metadata/annotations/image-cloner.io~1original-images"},
    ]
    assert plan.removed_annotations == (ORIGINAL_IMAGES,)


def test_init_container_index_is_its_own_list() -> None:
    after = patched(
        deployment({"app": "nginx:1.25"}, init={"a": "alpine:3", "b": "busybox:1"}),
        {"b": f"{OWNED}/busybox:1"},
    )
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert plan.operations[0] == {
        "op": "test",
        "path": "/spec/template/spec/initContainers/1/name",
        "value": "b",
    }
    assert plan.operations[2]["path"] == "/spec/template/spec/initContainers/1/image"


def test_template_without_pull_secrets_loses_the_whole_field() -> None:
    before = deployment({"app": "nginx:1.25"})
    after = patched(before, {"app": f"{OWNED}/nginx:1.25"}, pull_secret=SECRET)
    assert after["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    assert after["metadata"]["annotations"][ADDED_PULL_SECRET] == SECRET
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert plan.pull_secret_action == "remove"
    ops = list(plan.operations)
    assert {
        "op": "test",
        "path": "/spec/template/spec/imagePullSecrets",
        "value": [{"name": SECRET}],
    } in ops
    assert {"op": "remove", "path": "/spec/template/spec/imagePullSecrets"} in ops
    assert {
        "op": "test",
        "path": "/metadata/annotations/image-cloner.io~1added-pull-secret",
        "value": SECRET,
    } in ops
    reverted = without_empty_annotations(apply_patch(after, ops))
    assert reverted == before
    assert "imagePullSecrets" not in reverted["spec"]["template"]["spec"]


def test_template_with_its_own_pull_secrets_keeps_them() -> None:
    before = deployment({"app": "nginx:1.25"}, pull_secrets=["own", "other"])
    after = patched(before, {"app": f"{OWNED}/nginx:1.25"}, pull_secret=SECRET)
    assert after["spec"]["template"]["spec"]["imagePullSecrets"][-1] == {"name": SECRET}
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    ops = list(plan.operations)
    assert {
        "op": "test",
        "path": "/spec/template/spec/imagePullSecrets/2/name",
        "value": SECRET,
    } in ops
    assert {"op": "remove", "path": "/spec/template/spec/imagePullSecrets/2"} in ops
    assert without_empty_annotations(apply_patch(after, ops)) == before


def test_other_annotations_stay() -> None:
    before = deployment({"app": "nginx:1.25"}, annotations={"team": "shop"})
    after = patched(before, {"app": f"{OWNED}/nginx:1.25"}, pull_secret=SECRET)
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert apply_patch(after, list(plan.operations)) == before


def test_container_changed_by_a_user_is_left_alone_and_reported() -> None:
    after = patched(
        deployment({"app": "nginx:1.25", "side": "busybox:1"}),
        {"app": f"{OWNED}/nginx:1.25", "side": f"{OWNED}/busybox:1"},
    )
    after["spec"]["template"]["spec"]["containers"][1]["image"] = "busybox:2"  # the user
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert [(c.name, c.action) for c in plan.containers] == [
        ("app", "restore"),
        ("side", "changed"),
    ]
    assert plan.left == 1 and plan.restored == 1
    assert not any("containers/1" in op["path"] for op in plan.operations)
    result = apply_patch(after, list(plan.operations))
    assert [c["image"] for c in result["spec"]["template"]["spec"]["containers"]] == [
        "nginx:1.25",
        "busybox:2",
    ]
    assert ORIGINAL_IMAGES not in result["metadata"].get("annotations", {})
    lines = plan.lines()
    assert "restored Deployment shop/web container app: " in lines[0]
    assert lines[1].startswith("left Deployment shop/web container side: its image is busybox:2")
    assert "recorded original busybox:1" in lines[1]


def test_user_switch_to_another_owned_image_is_still_restored() -> None:
    # The rule is "still holds an owned image", as the controller would have set.
    after = patched(deployment({"app": "nginx:1.25"}), {"app": f"{OWNED}/nginx:1.25"})
    after["spec"]["template"]["spec"]["containers"][0]["image"] = "inhouse.example.com/nginx:2"
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert plan.containers[0].action == "restore"


def test_unchanged_and_missing_containers_only_lose_the_annotation() -> None:
    obj = deployment(
        {"app": "nginx:1.25"},
        annotations={ORIGINAL_IMAGES: json.dumps({"app": "nginx:1.25", "gone": "redis:7"})},
    )
    plan = revert_patch_of("Deployment", obj, IS_OWNED)
    assert [(c.name, c.action, c.current) for c in plan.containers] == [
        ("app", "unchanged", "nginx:1.25"),
        ("gone", "missing", None),
    ]
    assert plan.left == 0
    assert [op["op"] for op in plan.operations] == ["test", "remove"]
    assert plan.lines(dry_run=True)[-1] == (
        f"would remove Deployment shop/web annotations {ORIGINAL_IMAGES}"
    )


def test_pull_secret_stays_while_an_owned_image_remains() -> None:
    before = deployment({"app": "nginx:1.25", "house": "inhouse.example.com/tool:3"})
    after = patched(before, {"app": f"{OWNED}/nginx:1.25"}, pull_secret=SECRET)
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert plan.pull_secret_action == "kept"
    assert plan.owned_after == (("house", "inhouse.example.com/tool:3"),)
    assert plan.left == 1
    result = apply_patch(after, list(plan.operations))
    assert result["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": SECRET}]
    assert result["metadata"]["annotations"] == {ADDED_PULL_SECRET: SECRET}
    assert result["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert any("containers still on owned images: house" in line for line in plan.lines())


def test_pull_secret_removed_by_someone_only_loses_the_annotation() -> None:
    after = patched(deployment({"app": "nginx:1.25"}), {"app": f"{OWNED}/nginx:1.25"}, SECRET)
    after["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": "theirs"}]
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    assert plan.pull_secret_action == "absent"
    result = apply_patch(after, list(plan.operations))
    assert result["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "theirs"}]
    assert result["metadata"]["annotations"] == {}


def test_untouched_workload_has_no_plan() -> None:
    plan = revert_patch_of("StatefulSet", deployment({"app": f"{OWNED}/nginx:1"}), IS_OWNED)
    assert not plan.recorded and plan.operations == () and plan.lines() == []


@pytest.mark.parametrize("value", ["not json", "[1, 2]", '{"app": 3}', '{"app": ""}'])
def test_malformed_annotation_leaves_the_workload_alone(value: str) -> None:
    obj = deployment({"app": f"{OWNED}/nginx:1"}, annotations={ORIGINAL_IMAGES: value})
    plan = revert_patch_of("Deployment", obj, IS_OWNED)
    assert plan.operations == ()
    assert plan.problem is not None and plan.left == 1
    assert plan.lines()[0].startswith("left Deployment shop/web: annotation")


def test_a_concurrent_edit_makes_the_patch_fail() -> None:
    after = patched(deployment({"app": "nginx:1.25", "b": "redis:7"}), {"app": f"{OWNED}/nginx:1"})
    plan = revert_patch_of("Deployment", after, IS_OWNED)
    moved = copy.deepcopy(after)
    moved["spec"]["template"]["spec"]["containers"].reverse()  # reordered since the read
    with pytest.raises(PatchFailed):
        apply_patch(moved, list(plan.operations))
    retagged = copy.deepcopy(after)
    retagged["metadata"]["annotations"][ORIGINAL_IMAGES] = "{}"
    with pytest.raises(PatchFailed):
        apply_patch(retagged, list(plan.operations))


def test_owned_predicate() -> None:
    assert IS_OWNED(f"{OWNED}/nginx:1")
    assert IS_OWNED("inhouse.example.com/a/b:1")
    assert not IS_OWNED("owned.example.com/elsewhere/nginx:1")
    assert not IS_OWNED("nginx:1.25")
    assert not IS_OWNED("Not A Reference")


# ServiceAccounts ------------------------------------------------------------


def account(pull_secrets: list[str] | None, **annotations: str) -> dict[str, Any]:
    sa: dict[str, Any] = {
        "metadata": {"name": "runner", "namespace": "shop", "resourceVersion": "11"}
    }
    if annotations:
        sa["metadata"]["annotations"] = dict(annotations)
    if pull_secrets is not None:
        sa["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    return sa


def controller_attached(sa: dict[str, Any]) -> dict[str, Any]:
    result = apply_patch(sa, service_account_patch(ServiceAccount.from_api(sa), SECRET))
    result["metadata"]["resourceVersion"] = "12"
    return result


@pytest.mark.parametrize(
    ("before", "annotations"),
    [(None, {}), (["existing"], {}), (["a", "b"], {"owner": "team"})],
)
def test_service_account_round_trip(before: list[str] | None, annotations: dict) -> None:
    original = account(before, **annotations)
    attached = controller_attached(original)
    plan = service_account_revert_patch(ServiceAccount.from_api(attached))
    assert plan is not None and plan.action == "remove"
    assert plan.operations[0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": "12",
    }
    result = without_empty_annotations(apply_patch(attached, list(plan.operations)))
    result["metadata"]["resourceVersion"] = "11"
    assert result == original
    assert plan.lines() == [
        "removed ServiceAccount shop/runner imagePullSecrets entry image-cloner-pull-secret"
    ]


def test_service_account_in_use_is_kept() -> None:
    attached = controller_attached(account(None))
    plan = service_account_revert_patch(
        ServiceAccount.from_api(attached), ["Deployment shop/b", "Deployment shop/a"]
    )
    assert plan is not None and plan.action == "kept" and plan.operations == ()
    assert plan.lines() == [
        "left ServiceAccount shop/runner imagePullSecrets entry image-cloner-pull-secret: "
        "still used by Deployment shop/a, Deployment shop/b (owned images)"
    ]


def test_service_account_without_the_entry_loses_the_annotation() -> None:
    sa = account(["other"], **{ADDED_PULL_SECRET: SECRET})
    plan = service_account_revert_patch(ServiceAccount.from_api(sa))
    assert plan is not None and plan.action == "absent"
    result = apply_patch(sa, list(plan.operations))
    assert result["imagePullSecrets"] == [{"name": "other"}]
    assert result["metadata"]["annotations"] == {}


def test_service_account_not_annotated_has_no_plan() -> None:
    assert service_account_revert_patch(ServiceAccount.from_api(account([SECRET]))) is None


# The run, against an in-memory API ------------------------------------------


def scenario() -> tuple[FakeKube, dict[str, Any], dict[str, Any]]:
    web = deployment({"app": "nginx:1.25"}, service_account="runner")
    db = deployment({"db": "postgres:16"}, name="db", service_account="runner", kind="StatefulSet")
    runner = account(["existing"])
    api = FakeKube(
        [
            patched(web, {"app": f"{OWNED}/nginx:1.25"}),
            patched(db, {"db": f"{OWNED}/postgres:16"}),
        ],
        [controller_attached(runner), {"metadata": {"name": "default", "namespace": "shop"}}],
    )
    return api, web, runner


def test_revert_all_restores_workloads_then_the_service_account() -> None:
    api, web, runner = scenario()
    lines: list[str] = []
    report = revert_all(api, IS_OWNED, out=lines.append)
    assert report.ok and report.patched == 2 and report.containers == 2
    assert report.service_accounts == 1
    restored = without_empty_annotations(api.object("Deployment", "shop", "web"))
    # The revert is a write: the API server gave the object a new resourceVersion.
    version = restored["metadata"].pop("resourceVersion")
    expected = copy.deepcopy(web)
    assert int(version) > int(expected["metadata"].pop("resourceVersion"))
    assert restored == expected
    sa = without_empty_annotations(api.accounts[("shop", "runner")])
    assert sa["imagePullSecrets"] == runner["imagePullSecrets"]
    assert ("shop", "default") in api.gets
    assert "removed ServiceAccount shop/runner imagePullSecrets entry" in "\n".join(lines)
    assert lines[-2].startswith("note: Secret shop/image-cloner-pull-secret is left in place")
    assert lines[-1] == (
        "revert: workloads=2 patched=2 containers=2 serviceaccounts=1 left=0 failed=0"
    )


def test_dry_run_writes_nothing_and_says_would() -> None:
    api, _, _ = scenario()
    before = copy.deepcopy((api.objects, api.accounts))
    lines: list[str] = []
    report = revert_all(api, IS_OWNED, dry_run=True, out=lines.append)
    assert api.calls == [] and (api.objects, api.accounts) == before
    assert report.ok and report.patched == 2 and report.service_accounts == 1
    assert any(line.startswith("would restore Deployment shop/web container app") for line in lines)
    assert any(line.startswith("would remove ServiceAccount shop/runner") for line in lines)
    assert lines[-1].startswith("revert (dry run, nothing written): workloads=2 patched=2")


def test_a_failed_patch_is_reported_and_keeps_the_service_account() -> None:
    api, _, _ = scenario()
    api.fail_patch.add("db")
    lines: list[str] = []
    report = revert_all(api, IS_OWNED, out=lines.append)
    assert not report.ok and report.failed == 1 and report.patched == 1
    text = "\n".join(lines)
    assert "failed StatefulSet shop/db: patch StatefulSet shop/db: 422" in text
    assert "run revert again" in text
    assert "left ServiceAccount shop/runner imagePullSecrets entry" in text
    assert "still used by StatefulSet shop/db" in text
    assert api.calls == ["patch Deployment shop/web", "patch StatefulSet shop/db"]
    assert api.image("u-db", "db") == f"{OWNED}/postgres:16"  # the refused patch wrote nothing


def test_an_unpatched_workload_on_owned_images_keeps_the_service_account() -> None:
    api, _, _ = scenario()
    api.objects.append(
        deployment(
            {"tool": "inhouse.example.com/tool:3"},
            name="house",
            service_account="runner",
            kind="DaemonSet",
        )
    )
    report = revert_all(api, IS_OWNED, out=lambda _: None)
    assert report.patched == 2 and report.left == 1 and not report.ok
    assert (
        "image-cloner.io/added-pull-secret"
        in api.accounts[("shop", "runner")]["metadata"]["annotations"]
    )


def test_a_failed_list_writes_nothing() -> None:
    api, _, _ = scenario()

    def broken(kind: str, *args: Any) -> Iterator[Workload]:
        raise KubeError(403, "list statefulsets: 403 forbidden")

    api.list_workloads = broken  # type: ignore[method-assign]
    lines: list[str] = []
    report = revert_all(api, IS_OWNED, out=lines.append)
    assert report.failed == 1 and api.calls == []
    assert lines[0] == "failed: list statefulsets: 403 forbidden; nothing was changed"


def test_namespace_scope_reads_that_namespaces_default_account() -> None:
    api = FakeKube([])
    report = revert_all(api, IS_OWNED, namespace="empty", out=lambda _: None)
    assert report.ok and api.gets == [("empty", "default")]
