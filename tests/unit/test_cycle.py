"""One pass over the snapshots: what a cycle copies, who waits on what, what it tells whom."""

import json

from cloner.model.cycle import index_cycle
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
