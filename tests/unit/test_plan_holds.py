"""``plan`` shows the workloads and namespaces the rollout guard holds back, with the reason.

The holds are read from the state ConfigMaps the running controller writes
(``plan.read_holds``), through the same StateStore and StateBook.
"""

from __future__ import annotations

from cloner.config import Settings
from cloner.model.reference import Reference
from cloner.model.rollout import Hold, namespace_key
from cloner.model.state import StateBook
from cloner.ops.plan import build_plan, read_holds
from cloner.ops.state import StateStore
from tests.unit.fakes import FakeKube, workload
from tests.unit.test_reconcile import OWNED

SETTINGS = Settings(target=f"{OWNED}/m", controller_namespace="image-cloner")
NOW = 1_800_000_000.0


class Absent:
    """The owned registry holds no copy yet."""

    def head(self, ref: Reference) -> None:
        return None


def stored_holds(kube: FakeKube, holds: dict[str, Hold]) -> None:
    """Write holds into the state ConfigMaps as a running controller would."""
    store = StateStore(StateBook(SETTINGS.state.config_map), kube, "image-cloner")
    assert store.load()
    with store.locked() as book:
        for key, hold in holds.items():
            book.hold(key, hold)
    assert store.save()


def decisions(kube: FakeKube, now: float = NOW) -> dict[str, str]:
    rows = build_plan(kube, Absent(), SETTINGS, holds=read_holds(kube, SETTINGS), now=now)
    return {f"{r.namespace}/{r.name}": r.decision for r in rows}


def test_plan_shows_a_held_workload_and_a_held_namespace_with_the_reason() -> None:
    kube = FakeKube(
        [
            workload("Deployment", "a", "web", "nginx:1"),
            workload("Deployment", "a", "api", "redis:7"),
            workload("Deployment", "b", "db", "postgres:16"),
            workload("Deployment", "c", "free", "busybox:1"),
        ]
    )
    stored_holds(
        kube,
        {
            "Deployment a/web": Hold("owned_pull_failed", "401 Unauthorized", "x", NOW + 600),
            namespace_key("b"): Hold("admission_denied", "denied request", "x", NOW + 600),
        },
    )
    found = decisions(kube)
    assert found["a/web"].startswith("held after a failed switch (owned_pull_failed) until ")
    assert found["a/web"].endswith(": 401 Unauthorized")
    assert found["b/db"].startswith("held after a failed switch (admission_denied)")
    assert found["a/api"] == "clone"  # a workload hold is not its namespace's
    assert found["c/free"] == "clone"
    assert kube.calls == []  # plan writes nothing


def test_a_hold_past_its_end_is_not_shown() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1")])
    stored_holds(kube, {"Deployment a/web": Hold("owned_pull_failed", "401", "x", NOW + 10)})
    assert decisions(kube, now=NOW + 11)["a/web"] == "clone"


def test_without_a_controller_namespace_no_hold_is_read() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1")])
    assert read_holds(kube, Settings(target=f"{OWNED}/m")) == {}
