"""``plan``'s owned column is the reference the next cycle writes, and ``plan --all``.

Issue 30, parts 2 and 3. For every row a plan shows, a cycle that follows
(``Reconciler.reconcile_once`` against the same in-memory stand-ins) writes
exactly that reference, for sources by tag, by digest and by tag and digest,
with ``pinDigest`` on and off, for both backends. Where the digest exists only
after the copy (the Docker engine's new digest, a tag pinned with
``pinDigest``), the plan says so with ``<digest after copy>`` and the cycle
writes a digest there. The same is proven on real components in
``tests/e2e/test_plan_references.py``.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from cloner.config import CopySettings, Settings
from cloner.model.reference import DIGEST_AFTER_COPY
from cloner.model.workloads import NamespaceScope
from cloner.ops.plan import DIGEST_CHANGES, PlanRow, build_plan, read_records
from tests.unit.fakes import FakeKube
from tests.unit.test_reconcile import OWNED, SETTINGS, FakeRegistry, make, workload

DIGEST = "sha256:" + "c" * 64
SOURCES = {
    "tag": "quay.io/x/app:1",
    "digest": f"quay.io/x/pinned@{DIGEST}",
    "both": f"quay.io/x/both:2@{DIGEST}",
}
NOW_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def settings(backend: str, pin: bool) -> Settings:
    return replace(SETTINGS, copy=CopySettings(backend=backend), pin_digest=pin)


def registry(backend: str) -> FakeRegistry:
    """The stand-in registries; copies keep digests (skopeo) or get new ones (docker)."""
    found = FakeRegistry()
    found.backend = backend
    return found


def written(kube: FakeKube, row: PlanRow) -> str:
    """The image the cycle left in the row's container."""
    return kube.image(f"{row.namespace}/{row.name}", row.container)


def assert_plan_was_written(kube: FakeKube, rows: list[PlanRow]) -> list[str]:
    """Every row's owned column is what the container holds now; returns the columns."""
    assert rows
    for row in rows:
        now = written(kube, row)
        assert row.owned is not None, row
        if DIGEST_AFTER_COPY in row.owned:
            before, after = row.owned.split(DIGEST_AFTER_COPY)
            assert after == ""
            assert now.startswith(before) and NOW_DIGEST.fullmatch(now[len(before) :]), (row, now)
        else:
            assert now == row.owned, row
    return [r.owned or "" for r in rows]


@pytest.mark.parametrize("pin", [False, True])
@pytest.mark.parametrize("backend", ["skopeo", "docker"])
def test_the_owned_column_is_what_the_following_cycle_writes(backend: str, pin: bool) -> None:
    config = settings(backend, pin)
    kube = FakeKube([workload("Deployment", "a", f"first-{k}", s) for k, s in SOURCES.items()])
    fakes = registry(backend)

    rows = build_plan(kube, fakes, config)
    shown = {r.name: r.owned for r in rows}
    summary = make(kube, fakes, config).reconcile_once()
    assert summary.ok and summary.cloned == 3

    assert_plan_was_written(kube, rows)
    after = f"@{DIGEST_AFTER_COPY}"
    repo = f"{OWNED}/m/quay.io/x"
    if backend == "skopeo":  # digests kept: known before the copy
        assert shown["first-digest"] == f"{repo}/pinned@{DIGEST}"
        assert shown["first-both"] == f"{repo}/both:2@{DIGEST}"
    else:
        assert shown["first-digest"] == f"{repo}/pinned{after}"
        assert shown["first-both"] == f"{repo}/both:2{after}"
    assert shown["first-tag"] == f"{repo}/app:1" + (after if pin else "")

    # Later workloads of the same sources: the copies exist, so the digest is
    # known, from the durable record or from the owned registry.
    for records in (read_records(kube, config), None):
        kube.objects += [
            workload("Deployment", "b", f"{k}-{records is None}", s) for k, s in SOURCES.items()
        ]
        later = build_plan(kube, fakes, config, records=records)
        later = [r for r in later if r.decision != "already owned"]
        assert len(later) == 3
        assert all(DIGEST_AFTER_COPY not in (r.owned or "") for r in later), later
        changes = "" if backend == "skopeo" else DIGEST_CHANGES
        assert {r.image: r.decision for r in later} == {
            SOURCES["tag"]: "patch (copy exists)",
            SOURCES["digest"]: "patch (copy exists)" + changes,
            SOURCES["both"]: "patch (copy exists)" + changes,
        }
        make(kube, fakes, config).reconcile_once()
        assert_plan_was_written(kube, later)


def test_a_fresh_record_answers_as_it_was_written_when_pin_digest_changed() -> None:
    """The cycle patches to the recorded reference until the refresh; so does plan."""
    kube = FakeKube([workload("Deployment", "a", "web", SOURCES["tag"])])
    fakes = registry("skopeo")
    make(kube, fakes, settings("skopeo", False)).reconcile_once()
    kube.objects.append(workload("Deployment", "b", "web", SOURCES["tag"]))
    pinned = settings("skopeo", True)
    records = read_records(kube, pinned)
    (row,) = [r for r in build_plan(kube, fakes, pinned, records=records) if r.namespace == "b"]
    assert row.owned == f"{OWNED}/m/quay.io/x/app:1"  # as recorded, not pinned yet
    make(kube, fakes, pinned).reconcile_once()
    assert_plan_was_written(kube, [row])


# --- plan --all: the workloads of namespaces out of scope ---------------------------------


@pytest.mark.parametrize(
    ("scope", "namespace", "reason"),
    [
        (NamespaceScope((), ("kube-system",)), "kube-system", "namespaces.exclude (kube-system)"),
        (
            NamespaceScope((), ("kube-*",)),
            "kube-node-lease",
            "namespaces.exclude 'kube-*' (kube-node-lease)",
        ),
        (
            NamespaceScope((), (), "image-cloner"),
            "image-cloner",
            "controllerNamespace (image-cloner)",
        ),
        (
            NamespaceScope((), ("image-cloner",), "image-cloner"),
            "image-cloner",
            "namespaces.exclude (image-cloner)",
        ),
        (NamespaceScope(("team-*",), ()), "other", "namespaces.include (other)"),
        (NamespaceScope(("team-*",), ("team-x",)), "team-x", "namespaces.exclude (team-x)"),
        (NamespaceScope(("team-*",), ("kube-*",), "ops"), "team-a", None),
        (NamespaceScope(), "anything", None),
    ],
)
def test_namespace_scope_names_the_rule_that_leaves_a_namespace_out(
    scope: NamespaceScope, namespace: str, reason: str | None
) -> None:
    assert scope.exclusion(namespace) == reason
    assert scope.contains(namespace) is (reason is None)


def test_the_controllers_namespace_is_left_out_of_list_calls() -> None:
    assert NamespaceScope((), ("kube-*", "a"), "image-cloner").exact_exclusions == (
        "a",
        "image-cloner",
    )
    assert NamespaceScope((), ("image-cloner",), "image-cloner").exact_exclusions == (
        "image-cloner",
    )


def test_plan_all_lists_excluded_namespaces_with_the_rule_and_the_default_does_not() -> None:
    config = replace(SETTINGS, exclude_namespaces=("kube-system", "kube-*"))
    kube = FakeKube(
        [
            workload("Deployment", "shop", "web", "nginx:1"),
            workload(
                "DaemonSet", "kube-system", "calico-node", "quay.io/calico/node:v3", "busybox"
            ),
            workload(
                "StatefulSet", "kube-public", "descheduler", "registry.k8s.io/descheduler:v0.3"
            ),
            workload("Deployment", "image-cloner", "image-cloner", "ghcr.io/x/cloner:1"),
        ]
    )

    def decisions(out_of_scope: bool) -> dict[tuple[str, str, str], tuple[str, str | None]]:
        rows = build_plan(kube, FakeRegistry(), config, out_of_scope=out_of_scope)
        return {(r.namespace, r.name, r.container): (r.decision, r.owned) for r in rows}

    in_scope = {("shop", "web", "c0"): ("clone", f"{OWNED}/m/docker.io/library/nginx:1")}
    assert decisions(False) == in_scope
    system = ("excluded by namespaces.exclude (kube-system)", None)
    assert decisions(True) == {
        **in_scope,
        ("kube-system", "calico-node", "c0"): system,
        ("kube-system", "calico-node", "c1"): system,
        ("kube-public", "descheduler", "c0"): (
            "excluded by namespaces.exclude 'kube-*' (kube-public)",
            None,
        ),
        ("image-cloner", "image-cloner", "c0"): (
            "excluded by controllerNamespace (image-cloner)",
            None,
        ),
    }
    assert kube.calls == []  # plan writes nothing
