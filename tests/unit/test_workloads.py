"""Workload snapshots, per-container plans and the JSON patch."""

from cloner.reference import Target
from cloner.workloads import Container, Workload, image_patch, plan_workload

TARGET = Target("owned.example.com", "mirror")


def deployment(containers: list[dict], init: list[dict] | None = None, **meta: object) -> dict:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "u1",
            "resourceVersion": "7",
            **meta,
        },
        "spec": {"template": {"spec": {"containers": containers, "initContainers": init or []}}},
    }


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
    plans = plan_workload(workload, TARGET)
    assert [p.decision for p in plans] == ["clone", "owned", "invalid", "clone"]
    assert str(plans[0].owned) == "owned.example.com/mirror/docker.io/library/nginx:1.25"
    assert plans[2].problem
    assert str(plans[3].owned) == "owned.example.com/mirror/quay.io/org/app:sha256-" + "a" * 64


def test_plan_skips_image_under_target_registry_but_outside_prefix_is_cloned() -> None:
    workload = Workload.from_api(
        "Deployment", deployment([{"name": "a", "image": "owned.example.com/other/app:1"}])
    )
    (plan,) = plan_workload(workload, TARGET)
    assert plan.decision == "clone"
    assert str(plan.owned) == "owned.example.com/mirror/owned.example.com/other/app:1"


def test_patch_tests_name_and_old_image_before_replacing() -> None:
    container = Container("app", "nginx:1.25", "containers", 1)
    patch = image_patch([(container, "owned.example.com/x:1.25")])
    assert patch == [
        {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "app"},
        {"op": "test", "path": "/spec/template/spec/containers/1/image", "value": "nginx:1.25"},
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/1/image",
            "value": "owned.example.com/x:1.25",
        },
    ]


def test_patch_is_empty_when_nothing_changes() -> None:
    container = Container("app", "a.example.com/x:1", "initContainers", 0)
    assert image_patch([(container, "a.example.com/x:1")]) == []
    assert image_patch([]) == []


def test_namespace_scope_globs_exclude_wins() -> None:
    from cloner.workloads import namespace_in_scope

    assert namespace_in_scope("shop", (), ("kube-*",))
    assert not namespace_in_scope("kube-system", (), ("kube-*",))
    assert namespace_in_scope("team-a", ("team-*",), ())
    assert not namespace_in_scope("other", ("team-*",), ())
    assert not namespace_in_scope("team-x", ("team-*",), ("team-x",))
