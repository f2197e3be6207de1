"""Workload snapshots, per-container plans and the JSON patch."""

import pytest

from cloner.model.reference import Policy, Target
from cloner.model.workloads import (
    NamespaceInfo,
    Workload,
    image_patch,
    plan_workload,
    skip_reason,
)
from devenv.workloads import workload

TARGET = Target("owned.example.com", "mirror")
POLICY = Policy(TARGET)


def deployment(containers: list[dict], init: list[dict] | None = None, **meta: object) -> dict:
    metadata = {"uid": "u1", "resourceVersion": "7", **meta}
    return workload("Deployment", "web", containers, init=init, namespace="shop", metadata=metadata)


def test_snapshot_collects_init_containers_and_containers_with_indexes() -> None:
    workload = Workload.from_api(
        "Deployment",
        deployment(
            [{"name": "app", "image": "nginx:1.25"}, {"name": "side", "image": "busybox"}],
            init=[{"name": "setup", "image": "alpine"}],
        ),
    )
    assert workload.key == "Deployment shop/web"
    assert [(c.name, c.list_name, c.index) for c in workload.containers] == [
        ("setup", "initContainers", 0),
        ("app", "containers", 0),
        ("side", "containers", 1),
    ]
    assert workload.service_account == "default"
    assert workload.resource_version == "7"


def test_snapshot_tolerates_missing_fields() -> None:
    workload = Workload.from_api("DaemonSet", {"metadata": {"name": "x"}})
    assert workload.containers == ()
    assert workload.namespace == ""


def test_plan_decides_clone_owned_and_invalid_per_container() -> None:
    workload = Workload.from_api(
        "Deployment",
        deployment(
            [
                {"name": "a", "image": "nginx:1.25"},
                {"name": "b", "image": "owned.example.com/mirror/docker.io/library/redis:7"},
                {"name": "c", "image": "Bad Image"},
                {"name": "d", "image": "quay.io/org/app@sha256:" + "a" * 64},
            ]
        ),
    )
    plans = plan_workload(workload, POLICY)
    assert [p.decision for p in plans] == ["clone", "owned", "invalid", "clone"]
    assert str(plans[0].owned) == "owned.example.com/mirror/docker.io/library/nginx:1.25"
    assert plans[2].reason
    assert str(plans[3].owned) == "owned.example.com/mirror/quay.io/org/app:sha256_" + "a" * 64


def test_plan_skips_image_under_target_registry_but_outside_prefix_is_cloned() -> None:
    workload = Workload.from_api(
        "Deployment", deployment([{"name": "a", "image": "owned.example.com/other/app:1"}])
    )
    (plan,) = plan_workload(workload, POLICY)
    assert plan.decision == "clone"
    assert str(plan.owned) == "owned.example.com/mirror/owned.example.com/other/app:1"


def test_patch_tests_name_and_old_image_before_replacing_and_records_originals() -> None:
    workload = Workload.from_api(
        "Deployment",
        deployment(
            [{"name": "side", "image": "busybox"}, {"name": "app", "image": "nginx:1.25"}],
            annotations={"team": "shop"},
        ),
    )
    container = workload.containers[1]
    patch = image_patch(workload, [(container, "owned.example.com/x:1.25")])
    assert patch == [
        {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "app"},
        {"op": "test", "path": "/spec/template/spec/containers/1/image", "value": "nginx:1.25"},
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/1/image",
            "value": "owned.example.com/x:1.25",
        },
        {
            "op": "add",
            "path": "/metadata/annotations/image-cloner.io~1original-images",
            "value": '{"app":"nginx:1.25"}',
        },
    ]


def test_patch_merges_originals_recorded_earlier_and_guards_them() -> None:
    earlier = '{"side":"busybox"}'
    workload = Workload.from_api(
        "Deployment",
        deployment(
            [
                {"name": "side", "image": "o.example.com/b:latest"},
                {"name": "app", "image": "nginx"},
            ],
            annotations={"image-cloner.io/original-images": earlier},
        ),
    )
    patch = image_patch(workload, [(workload.containers[1], "o.example.com/n:latest")])
    path = "/metadata/annotations/image-cloner.io~1original-images"
    assert patch[-2:] == [
        {"op": "test", "path": path, "value": earlier},
        {"op": "add", "path": path, "value": '{"app":"nginx","side":"busybox"}'},
    ]


def test_patch_without_annotations_guards_with_resource_version() -> None:
    workload = Workload.from_api("Deployment", deployment([{"name": "a", "image": "nginx"}]))
    patch = image_patch(workload, [(workload.containers[0], "o.example.com/n:latest")])
    assert patch[-2:] == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": {"image-cloner.io/original-images": '{"a":"nginx"}'},
        },
    ]


def test_patch_is_empty_when_nothing_changes() -> None:
    workload = Workload.from_api(
        "Deployment", deployment([{"name": "a", "image": "a.example.com/x:1"}])
    )
    assert image_patch(workload, [(workload.containers[0], "a.example.com/x:1")]) == []
    assert image_patch(workload, []) == []


def test_namespace_scope_globs_exclude_wins() -> None:
    from cloner.model.workloads import NamespaceScope

    assert NamespaceScope((), ("kube-*",)).contains("shop")
    assert not NamespaceScope((), ("kube-*",)).contains("kube-system")
    assert NamespaceScope(("team-*",), ()).contains("team-a")
    assert not NamespaceScope(("team-*",), ()).contains("other")
    assert not NamespaceScope(("team-*",), ("team-x",)).contains("team-x")
    # Only exact names go to the API server's field selector, never a glob.
    scope = NamespaceScope((), ("kube-*", "image-cloner", "te?t", "[ab]x"))
    assert scope.exact_exclusions == ("image-cloner",)


def test_owned_registries_are_never_cloned() -> None:
    policy = Policy(TARGET, owned_registries=(Target("harbor.internal", "team"),))
    workload = Workload.from_api(
        "Deployment",
        deployment(
            [
                {"name": "a", "image": "harbor.internal/team/app:1"},
                {"name": "b", "image": "harbor.internal/other/app:1"},
            ]
        ),
    )
    assert [p.decision for p in plan_workload(workload, policy)] == ["owned", "clone"]


def test_image_include_and_exclude_globs_exclude_wins() -> None:
    policy = Policy(
        TARGET,
        include_images=("docker.io/library/*", "quay.io/**"),
        exclude_images=("*/library/busybox",),
    )
    workload = Workload.from_api(
        "Deployment",
        deployment(
            [
                {"name": "a", "image": "nginx:1.25"},
                {"name": "b", "image": "busybox:1.36"},
                {"name": "c", "image": "quay.io/org/team/app:2"},
                {"name": "d", "image": "ghcr.io/org/app:2"},
            ]
        ),
    )
    plans = plan_workload(workload, policy)
    assert [p.decision for p in plans] == ["clone", "excluded", "clone", "excluded"]
    assert plans[1].reason == "images.exclude '*/library/busybox'"
    assert plans[3].reason == "not in images.include"


def test_skip_label_or_annotation_on_workload_or_namespace_opts_out() -> None:
    labelled = Workload.from_api(
        "Deployment",
        deployment([{"name": "a", "image": "nginx"}], labels={"image-cloner.io/skip": "true"}),
    )
    annotated = Workload.from_api(
        "Deployment",
        deployment([{"name": "a", "image": "nginx"}], annotations={"image-cloner.io/skip": "True"}),
    )
    plain = Workload.from_api("Deployment", deployment([{"name": "a", "image": "BAD ref"}]))
    quiet_ns = NamespaceInfo("shop", labels={"image-cloner.io/skip": "true"})
    other_value = NamespaceInfo("shop", annotations={"image-cloner.io/skip": "yes"})
    assert skip_reason(labelled, None) == "image-cloner.io/skip label on the workload"
    assert skip_reason(annotated, None) == "image-cloner.io/skip annotation on the workload"
    assert skip_reason(plain, quiet_ns) == "image-cloner.io/skip label on namespace shop"
    assert skip_reason(plain, other_value) is None
    # An opted-out workload is left alone entirely, even its invalid references.
    (plan,) = plan_workload(plain, POLICY, quiet_ns)
    assert plan.decision == "excluded"


def test_namespace_info_from_api() -> None:
    info = NamespaceInfo.from_api({"metadata": {"name": "a", "labels": {"x": "1"}}})
    assert info == NamespaceInfo("a", {"x": "1"}, {})


def test_describe_is_the_one_wording_of_decisions() -> None:
    from cloner.model.workloads import describe

    plans = plan_workload(
        Workload.from_api(
            "Deployment",
            deployment(
                [
                    {"name": "a", "image": "nginx:1"},
                    {"name": "b", "image": "owned.example.com/mirror/docker.io/library/redis:7"},
                    {"name": "c", "image": "nginx::1"},
                ]
            ),
        ),
        POLICY,
    )
    assert [describe(p) for p in plans] == [
        "clone to owned.example.com/mirror/docker.io/library/nginx:1",
        "already owned",
        "invalid reference: invalid tag ':1'",
    ]
    assert describe(plans[2], image=True) == "invalid reference 'nginx::1': invalid tag ':1'"


# --- the one kind table (issue 29 item 4) --------------------------------------------


def test_the_kind_table_answers_every_question_about_a_kind() -> None:
    from cloner.model.workloads import KINDS, UNPATCHABLE_KINDS, kind_info

    assert [str(k) for k in KINDS] == ["Deployment", "DaemonSet", "StatefulSet", "CronJob"]
    assert [str(k) for k in UNPATCHABLE_KINDS] == ["Job", "Pod"]
    assert kind_info("CronJob").pod_spec_pointer == "/spec/jobTemplate/spec/template/spec"
    assert kind_info("Deployment").path("a", "web") == "/apis/apps/v1/namespaces/a/deployments/web"
    assert kind_info("Pod").path("a", "p") == "/api/v1/namespaces/a/pods/p"
    assert kind_info("StatefulSet").snake == "stateful_set"


@pytest.mark.parametrize("kind", ["ReplicaSet", "deployment", ""])
def test_an_unknown_kind_is_an_error_not_a_deployment(kind: str) -> None:
    from cloner.model.workloads import pod_spec_of, pod_spec_pointer

    with pytest.raises(ValueError):
        pod_spec_pointer(kind)
    with pytest.raises(ValueError):
        pod_spec_of(kind, {"spec": {"template": {"spec": {}}}})
    with pytest.raises(ValueError):
        Workload(kind, "a", "web")  # type: ignore[arg-type]
