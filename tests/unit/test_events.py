"""Events: the pure aggregator (create/update/drop) and the recorder against a fake API."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest

from cloner.errors import KubeError
from cloner.model import events
from cloner.model.events import (
    CLONE_FAILED,
    CLONED,
    CREATE,
    DROP,
    NORMAL,
    PATCHED,
    UPDATE,
    WARNING,
    EventAggregator,
    EventKey,
)
from cloner.model.workloads import Workload
from cloner.ops.events import EventRecorder, NullRecorder
from tests.unit.fakes import FakeKube

WEB = Workload("Deployment", "shop", "web", uid="uid-web", resource_version="7")
API = Workload("Deployment", "shop", "api", uid="uid-api", resource_version="3")
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def key(message: str = "Cannot clone nginx:1.25 (auth)", workload: Workload = WEB) -> EventKey:
    return EventKey.of(workload, WARNING, CLONE_FAILED, message)


# Aggregator ------------------------------------------------------------------


def test_same_event_within_the_window_creates_once_then_updates_with_counts() -> None:
    agg = EventAggregator(window=600)
    first = agg.observe(key(), T0)
    assert (first.action, first.count, first.name, first.first) == (CREATE, 1, None, T0)
    agg.created(key(), "web.abc")
    counts = []
    for i in range(1, 5):
        decision = agg.observe(key(), T0 + 60 * i)
        assert (decision.action, decision.name, decision.first) == (UPDATE, "web.abc", T0)
        counts.append(decision.count)
    assert counts == [2, 3, 4, 5]


def test_a_different_message_reason_type_or_object_is_a_new_event() -> None:
    agg = EventAggregator()
    agg.observe(key(), T0)
    agg.created(key(), "web.1")
    others = [
        key("Cannot clone nginx:1.25 (network)"),
        EventKey.of(WEB, NORMAL, CLONE_FAILED, key().message),
        EventKey.of(WEB, WARNING, PATCHED, key().message),
        key(workload=API),
        key(workload=Workload("Deployment", "shop", "web", uid="uid-recreated")),
    ]
    for other in others:
        decision = agg.observe(other, T0 + 1)
        assert (decision.action, decision.count) == (CREATE, 1), other
    assert agg.observe(key(), T0 + 2).action == UPDATE


def test_window_counts_from_the_latest_occurrence_and_expiry_starts_a_new_event() -> None:
    agg = EventAggregator(window=600)
    agg.observe(key(), T0)
    agg.created(key(), "web.1")
    assert agg.observe(key(), T0 + 500).count == 2  # within 600 s of T0
    assert agg.observe(key(), T0 + 1000).count == 3  # within 600 s of T0 + 500
    expired = agg.observe(key(), T0 + 1601)  # 601 s after the latest
    assert (expired.action, expired.count, expired.name, expired.first) == (
        CREATE,
        1,
        None,
        T0 + 1601,
    )


def test_an_event_that_was_never_created_is_created_again_with_its_count() -> None:
    agg = EventAggregator()
    assert agg.observe(key(), T0).action == CREATE  # the create failed: no created() call
    again = agg.observe(key(), T0 + 10)
    assert (again.action, again.count, again.first) == (CREATE, 2, T0)


def test_rate_limit_drops_after_the_burst_per_object_then_refills() -> None:
    agg = EventAggregator(burst=25, refill=300)
    for i in range(25):  # 25 distinct events about one object: the burst
        assert agg.observe(key(f"m{i}"), T0).action == CREATE
    dropped = agg.observe(key("m25"), T0)
    assert dropped.action == DROP
    assert agg.observe(key("m0"), T0 + 1).action == DROP  # updates are limited too
    # Another object has its own bucket.
    assert agg.observe(key("m0", workload=API), T0 + 1).action == CREATE
    # One token per 300 s: at T0 + 300 exactly one more event passes.
    assert agg.observe(key("m26"), T0 + 300).action == CREATE
    assert agg.observe(key("m27"), T0 + 301).action == DROP


def test_dropped_occurrences_still_count() -> None:
    agg = EventAggregator(burst=1, refill=300, window=3600)
    agg.observe(key(), T0)
    agg.created(key(), "web.1")
    assert agg.observe(key(), T0 + 10).action == DROP
    assert agg.observe(key(), T0 + 20).action == DROP
    decision = agg.observe(key(), T0 + 310)
    assert (decision.action, decision.count, decision.name) == (UPDATE, 4, "web.1")


def test_least_recently_used_entries_are_forgotten() -> None:
    agg = EventAggregator(max_entries=2)
    for message in ("a", "b"):
        agg.observe(key(message), T0)
        agg.created(key(message), f"web.{message}")
    agg.observe(key("a"), T0 + 1)  # a is now more recent than b
    agg.observe(key("c"), T0 + 2)  # forgets b
    assert agg.observe(key("a"), T0 + 3).action == UPDATE
    assert agg.observe(key("b"), T0 + 4).action == CREATE


@pytest.mark.parametrize(
    "kwargs", [{"window": 0}, {"burst": 0}, {"refill": -1}, {"max_entries": 0}]
)
def test_limits_out_of_range_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="event aggregation"):
        EventAggregator(**kwargs)  # type: ignore[arg-type]


# Messages --------------------------------------------------------------------


def test_messages_are_truncated_and_credentials_masked() -> None:
    assert len(events.clean_message("x" * 5000)) == 1024
    assert events.clean_message("x" * 5000).endswith("...")
    assert events.clean_message("x" * 1024) == "x" * 1024
    masked = events.clean_message(
        "pull https://bob:s3cret@registry.example.com/v2/ failed; Authorization: Bearer abc.def"
    )
    assert "s3cret" not in masked and "bob" not in masked and "abc.def" not in masked
    assert "https://***@registry.example.com/v2/" in masked


def test_message_builders() -> None:
    assert events.cloned_message("docker.io/library/nginx:1.25", "o/n:1.25") == (
        "Cloned docker.io/library/nginx:1.25 to o/n:1.25"
    )
    assert events.patched_message([("web", "nginx:1.25", "o/n:1.25"), ("side", "a", "b")]) == (
        "Patched container web: nginx:1.25 -> o/n:1.25; container side: a -> b"
    )
    assert events.clone_failed_message("nginx:1.25", "auth") == "Cannot clone nginx:1.25 (auth)"
    assert events.clone_failed_message("nginx:1.25", "network", "timed out") == (
        "Cannot clone nginx:1.25 (network): timed out"
    )
    assert events.reverted_message([("web", "nginx:1.25")]) == (
        "Reverted container web to nginx:1.25"
    )


# Recorder --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def recorder(api: FakeKube, clock: Clock | None = None, **kwargs: Any) -> EventRecorder:
    return EventRecorder(api, EventAggregator(**kwargs), instance="pod-1", clock=clock or Clock())


def test_recorder_writes_a_core_v1_event_about_the_workload() -> None:
    api = FakeKube()
    recorder(api).record(WEB, NORMAL, CLONED, "Cloned nginx:1.25 to o/n:1.25")
    ((_, event),) = api.events.items()
    assert event["metadata"]["generateName"] == "web."
    assert event["metadata"]["namespace"] == "shop"
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "namespace": "shop",
        "name": "web",
        "uid": "uid-web",
        "resourceVersion": "7",
    }
    assert (event["type"], event["reason"], event["message"]) == (
        "Normal",
        "Cloned",
        "Cloned nginx:1.25 to o/n:1.25",
    )
    assert event["source"] == {"component": "image-cloner"}
    assert (event["reportingComponent"], event["reportingInstance"]) == ("image-cloner", "pod-1")
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2023-11-14T22:13:20Z"
    assert event["count"] == 1


def test_recorder_patches_count_and_last_timestamp_of_a_repeated_event() -> None:
    api, clock = FakeKube(), Clock()
    rec = recorder(api, clock)
    for _ in range(5):
        rec.record(WEB, WARNING, CLONE_FAILED, "Cannot clone nginx:1.25 (auth)")
        clock.now += 61
    rec.record(WEB, NORMAL, PATCHED, "Patched container web: a -> b")
    assert [c[0] for c in api.event_calls] == [
        "create",
        "patch",
        "patch",
        "patch",
        "patch",
        "create",
    ]
    failed = next(e for e in api.events.values() if e["reason"] == CLONE_FAILED)
    assert failed["count"] == 5
    assert failed["firstTimestamp"] == "2023-11-14T22:13:20Z"
    assert failed["lastTimestamp"] == "2023-11-14T22:17:24Z"  # T0 + 4 * 61 s
    assert len(api.events) == 2


def test_recorder_creates_again_when_the_event_is_gone() -> None:
    api, clock = FakeKube(), Clock()
    rec = recorder(api, clock)
    rec.record(WEB, WARNING, CLONE_FAILED, "m")
    api.events.clear()  # expired (--event-ttl) or deleted
    clock.now += 10
    rec.record(WEB, WARNING, CLONE_FAILED, "m")
    assert [c[0] for c in api.event_calls] == ["create", "patch", "create"]
    ((_, event),) = api.events.items()
    assert (event["count"], event["firstTimestamp"]) == (2, "2023-11-14T22:13:20Z")
    clock.now += 10
    rec.record(WEB, WARNING, CLONE_FAILED, "m")  # the new Event is the one patched now
    assert next(iter(api.events.values()))["count"] == 3


def test_recorder_drops_rate_limited_events() -> None:
    api = FakeKube()
    rec = recorder(api, burst=2)
    for i in range(5):
        rec.record(WEB, NORMAL, CLONED, f"Cloned image{i}")
    assert len(api.event_calls) == 2


@pytest.mark.parametrize(
    "failure",
    [
        KubeError(403, "create event in shop: 403 forbidden"),
        KubeError(0, "create event in shop: API server unreachable"),
        RuntimeError("a bug in an adapter"),
    ],
)
def test_recorder_never_raises(failure: Exception, caplog: pytest.LogCaptureFixture) -> None:
    api = FakeKube()
    api.event_failure = failure
    rec = recorder(api)
    with caplog.at_level(logging.DEBUG, logger="cloner.model.events"):
        rec.record(WEB, WARNING, CLONE_FAILED, "m")
        rec.record(WEB, WARNING, CLONE_FAILED, "m")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "CloneFailed" in warnings[0].getMessage()
    if isinstance(failure, KubeError):  # the same failure again is logged at DEBUG only
        assert len(warnings) == 1
    api.event_failure = None
    rec.record(WEB, WARNING, CLONE_FAILED, "m")  # never created: created now, count 3
    ((_, event),) = api.events.items()
    assert event["count"] == 3


def test_recorder_refuses_an_unknown_type_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeKube()
    with caplog.at_level(logging.WARNING, logger="cloner.model.events"):
        recorder(api).record(WEB, "Error", CLONE_FAILED, "m")
    assert not api.event_calls
    assert "unknown type" in caplog.text


def test_recorder_truncates_and_masks_the_message() -> None:
    api = FakeKube()
    recorder(api).record(WEB, WARNING, CLONE_FAILED, "https://u:p@h/ " + "y" * 2000)
    ((_, event),) = api.events.items()
    assert len(event["message"]) == 1024
    assert event["message"].startswith("https://***@h/ ")


def test_a_workload_without_uid_or_resource_version_leaves_them_out() -> None:
    api = FakeKube()
    recorder(api).record(Workload("DaemonSet", "shop", "agent"), NORMAL, CLONED, "m")
    ((_, event),) = api.events.items()
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "namespace": "shop",
        "name": "agent",
    }


def test_default_instance_is_the_host_name_cut_to_128() -> None:
    api = FakeKube()
    EventRecorder(api, instance="h" * 300).record(WEB, NORMAL, CLONED, "m")
    ((_, event),) = api.events.items()
    assert event["reportingInstance"] == "h" * 128
    EventRecorder(api).record(API, NORMAL, CLONED, "m")
    assert all(e["reportingInstance"] for e in api.events.values())


def test_null_recorder_records_nothing() -> None:
    NullRecorder().record(WEB, NORMAL, CLONED, "m")


def test_events_module_imports_no_io_library() -> None:
    code = (
        "import sys, cloner.model.events\n"
        "print(','.join(m for m in ('kubernetes', 'docker') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
