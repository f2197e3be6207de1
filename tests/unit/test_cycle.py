"""One pass over the snapshots: what a cycle copies, who waits on what, what it tells whom."""

import json

from cloner.model.cycle import CycleIndex, PlanCache, index_cycle
from cloner.model.reference import Policy, Target
from cloner.model.workloads import ORIGINAL_IMAGES, Decision, NamespaceInfo, Workload
from devenv.workloads import workload as build

TARGET = Target("owned.example.com", "mirror")
POLICY = Policy(TARGET, exclude_images=("**/vendor/**",))
OWNED_NGINX = "owned.example.com/mirror/docker.io/library/nginx:1"


def workload(
    name: str, images: dict[str, str], annotations: dict[str, str] | None = None
) -> Workload:
    metadata = {"annotations": annotations or {}}
    obj = build("Deployment", name, images, namespace="shop", metadata=metadata)
    return Workload.from_api("Deployment", obj)


def test_one_pass_gives_copies_waiters_users_and_notes() -> None:
    web = workload("web", {"app": "nginx:1", "side": "redis:7"})
    api = workload("api", {"app": "docker.io/library/nginx:1", "bad": "Bad Image"})
    vendor = workload("vendor", {"app": "example.com/vendor/tool:2"})
    index = index_cycle([web, api, vendor], POLICY, {})

    assert [str(s) for s, _ in index.to_copy] == [
        "docker.io/library/nginx:1",
        "docker.io/library/redis:7",
        "docker.io/library/nginx:1",
    ]
    assert str(index.to_copy[0][1]) == OWNED_NGINX
    assert index.needed == {
        web.key: {"docker.io/library/nginx:1", "docker.io/library/redis:7"},
        api.key: {"docker.io/library/nginx:1"},
    }
    assert [w.name for w in index.awaiting_clone["docker.io/library/nginx:1"]] == ["web", "api"]
    assert [w.name for w in index.users["docker.io/library/redis:7"]] == ["web"]
    assert [(w.name, p.decision) for w, p in index.notes] == [
        ("api", Decision.INVALID),
        ("vendor", Decision.EXCLUDED),
    ]
    assert index.switched == [] and index.owned_sources == set()


def test_patched_workloads_are_traced_to_their_source_once() -> None:
    originals = json.dumps({"app": "nginx:1"})
    done = workload("done", {"app": OWNED_NGINX}, {ORIGINAL_IMAGES: originals})
    house = workload("house", {"app": "owned.example.com/mirror/team/tool:3"})
    index = index_cycle([done, house], POLICY, {})

    assert [(str(s), str(o)) for s, o in index.switched] == [
        ("docker.io/library/nginx:1", OWNED_NGINX)
    ]
    assert index.traced == {(done.key, "app")}
    # The Events about nginx reach the workload that was patched from it.
    assert [w.name for w in index.users["docker.io/library/nginx:1"]] == ["done"]
    # The traced container counts under its source; the other owned image counts itself.
    assert index.owned_sources == {"owned.example.com/mirror/team/tool:3"}
    assert index.pairs == index.to_copy + index.switched
    assert index.needed == {}


def test_opted_out_namespace_and_malformed_annotation() -> None:
    broken = workload("broken", {"app": OWNED_NGINX}, {ORIGINAL_IMAGES: "not json"})
    index = index_cycle(
        [broken, workload("quiet", {"app": "nginx:1"})],
        POLICY,
        {"shop": NamespaceInfo("shop", {"image-cloner.io/skip": "true"})},
    )
    assert index.to_copy == [] and index.switched == []
    assert [p.decision for _, p in index.notes] == [Decision.EXCLUDED, Decision.EXCLUDED]


# --- the plan cache (issue 31): the index is the same with it, and it keeps only what holds ---


def versioned(
    name: str,
    images: dict[str, str],
    version: str = "1",
    annotations: dict[str, str] | None = None,
    namespace: str = "shop",
) -> Workload:
    metadata = {"annotations": annotations or {}, "uid": f"uid-{name}", "resourceVersion": version}
    obj = build("Deployment", name, images, namespace=namespace, metadata=metadata)
    return Workload.from_api("Deployment", obj)


def same_index(a: CycleIndex, b: CycleIndex) -> bool:
    """Equal field for field (awaiting and users compared by workload key)."""

    def keys(table: dict[str, list[Workload]]) -> dict[str, list[str]]:
        return {k: [w.key for w in v] for k, v in table.items()}

    return (
        a.plans == b.plans
        and a.to_copy == b.to_copy
        and a.switched == b.switched
        and a.in_use == b.in_use
        and a.needed == b.needed
        and keys(a.awaiting_clone) == keys(b.awaiting_clone)
        and keys(a.users) == keys(b.users)
        and [(w.key, p) for w, p in a.notes] == [(w.key, p) for w, p in b.notes]
        and a.owned_sources == b.owned_sources
    )


def cached_cycle(
    cache: PlanCache,
    workloads: list[Workload],
    policy: Policy = POLICY,
    namespaces: dict[str, NamespaceInfo] | None = None,
    inputs: str = "settings:credentials",
) -> CycleIndex:
    """One cycle with ``cache``, checked against the same cycle planned from scratch."""
    namespaces = namespaces or {}
    index = index_cycle(workloads, policy, namespaces, cache=cache, inputs=inputs)
    assert same_index(index, index_cycle(workloads, policy, namespaces))
    return index


def test_an_unchanged_workload_is_not_planned_again() -> None:
    cache = PlanCache()
    cycle = [versioned("web", {"app": "nginx:1"}), versioned("api", {"app": "redis:7"})]
    cached_cycle(cache, cycle)
    assert cache.hits == 0 and set(cache.entries) == {"uid-web", "uid-api"}
    cached_cycle(
        cache, [versioned("web", {"app": "nginx:1"}), versioned("api", {"app": "redis:7"})]
    )
    assert cache.hits == 2


def test_a_changed_resource_version_is_planned_again() -> None:
    cache = PlanCache()
    cached_cycle(cache, [versioned("web", {"app": "nginx:1"})])
    # Someone changed the image: the API server gave the object a new resourceVersion.
    index = cached_cycle(cache, [versioned("web", {"app": "redis:7"}, version="2")])
    assert cache.hits == 0
    assert [str(s) for s, _ in index.to_copy] == ["docker.io/library/redis:7"]
    # A switch (the controller's own patch) is a new resourceVersion too.
    switched = versioned(
        "web",
        {"app": "owned.example.com/mirror/docker.io/library/redis:7"},
        version="3",
        annotations={ORIGINAL_IMAGES: json.dumps({"app": "redis:7"})},
    )
    index = cached_cycle(cache, [switched])
    assert cache.hits == 0 and index.to_copy == [] and len(index.switched) == 1


def test_a_changed_setting_credential_or_namespace_plans_every_workload_again() -> None:
    cache = PlanCache()
    cycle = [versioned("web", {"app": "nginx:1"}), versioned("tool", {"app": "quay.io/x/tool:2"})]
    cached_cycle(cache, cycle)
    # A setting: the reconciler's fingerprint changes, and the new policy is what plans.
    stricter = Policy(TARGET, exclude_images=("quay.io/**",))
    index = cached_cycle(cache, cycle, policy=stricter, inputs="settings2:credentials")
    assert cache.hits == 0
    assert [(w.name, p.decision) for w, p in index.notes] == [("tool", Decision.EXCLUDED)]
    cached_cycle(cache, cycle, policy=stricter, inputs="settings2:credentials")
    assert cache.hits == 2
    # The credentials (same settings): every workload is planned again.
    cached_cycle(cache, cycle, policy=stricter, inputs="settings2:credentials2")
    assert cache.hits == 0
    # The namespace's metadata (its opt-out) changed: its workloads are planned again.
    opted_out = {"shop": NamespaceInfo("shop", {"image-cloner.io/skip": "true"})}
    index = cached_cycle(
        cache, cycle, policy=stricter, namespaces=opted_out, inputs="settings2:credentials2"
    )
    assert cache.hits == 0 and index.to_copy == []


def test_a_deleted_workload_leaves_the_cache_and_the_index() -> None:
    cache = PlanCache()
    web, api = versioned("web", {"app": "nginx:1"}), versioned("api", {"app": "redis:7"})
    cached_cycle(cache, [web, api])
    index = cached_cycle(cache, [web])
    assert set(cache.entries) == {"uid-web"} and cache.hits == 1
    assert api.key not in index.plans
    assert "docker.io/library/redis:7" not in index.users
    # Recreated under the same name: a new uid, planned afresh.
    again = Workload.from_api(
        "Deployment",
        build(
            "Deployment",
            "api",
            {"app": "redis:7"},
            namespace="shop",
            metadata={"uid": "uid-api-2", "resourceVersion": "1"},
        ),
    )
    cached_cycle(cache, [web, again])
    assert cache.hits == 1 and set(cache.entries) == {"uid-web", "uid-api-2"}


def test_an_object_without_a_resource_version_is_planned_every_cycle() -> None:
    cache = PlanCache()
    bare = workload("web", {"app": "nginx:1"})
    cached_cycle(cache, [bare])
    cached_cycle(cache, [bare])
    assert cache.hits == 0 and cache.entries == {}
