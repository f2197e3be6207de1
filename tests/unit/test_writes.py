"""The write pool: patches before Events, a bounded Event queue, and what close waits for."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cloner.model.events import NORMAL, PATCHED, EventAggregator
from cloner.ops.events import EventRecorder
from cloner.ops.writes import WritePool
from tests.unit.fakes import FakeKube
from tests.unit.test_events import WEB, Clock


def blocked_pool(workers: int, **kwargs: Any) -> tuple[WritePool, threading.Event]:
    """A pool whose every thread is held in a submitted job until the Event is set."""
    pool = WritePool(workers, **kwargs)
    gate = threading.Event()
    started = threading.Barrier(workers + 1)

    def hold() -> None:
        started.wait(5)
        gate.wait(5)

    for _ in range(workers):
        pool.submit(hold)
    started.wait(5)
    return pool, gate


def test_every_waiting_patch_runs_before_any_waiting_event() -> None:
    pool, gate = blocked_pool(2)
    order: list[str] = []
    lock = threading.Lock()

    def job(name: str) -> None:
        with lock:
            order.append(name)

    for i in range(3):
        assert pool.defer(lambda i=i: job(f"event-{i}"))
    patches = [pool.submit(job, f"patch-{i}") for i in range(3)]
    gate.set()
    for future in patches:
        future.result(timeout=5)
    assert pool.close(timeout=5) == 0
    assert sorted(order[:3]) == ["patch-0", "patch-1", "patch-2"]
    assert sorted(order[3:]) == ["event-0", "event-1", "event-2"]
    assert pool.deferred_done == 3


def test_a_submitted_job_hands_its_result_and_its_error_to_the_caller() -> None:
    pool = WritePool(2)

    def fail() -> None:
        raise RuntimeError("refused")

    assert pool.submit(lambda a, b: a + b, 2, 3).result(timeout=5) == 5
    with pytest.raises(RuntimeError, match="refused"):
        pool.submit(fail).result(timeout=5)
    pool.close()


def test_events_beyond_the_queue_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    pool, gate = blocked_pool(1, max_deferred=2)
    ran: list[int] = []
    accepted = [pool.defer(lambda i=i: ran.append(i)) for i in range(5)]
    assert accepted == [True, True, False, False, False]
    assert pool.dropped == 3
    # The first drop of a burst is logged once, not every drop.
    assert sum("Kubernetes Events not written" in r.message for r in caplog.records) == 1
    gate.set()
    assert pool.close(timeout=5) == 0
    assert ran == [0, 1]


def test_a_failing_event_job_does_not_stop_the_pool() -> None:
    pool = WritePool(1)
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("boom")

    pool.defer(broken)
    pool.defer(lambda: ran.append("after"))
    assert pool.submit(lambda: "patched").result(timeout=5) == "patched"
    pool.close(timeout=5)
    assert ran == ["after"]
    assert pool.deferred_done == 2


def test_close_waits_for_patches_but_gives_events_only_until_the_deadline() -> None:
    pool, gate = blocked_pool(1)
    patched = pool.submit(lambda: "done")
    for _ in range(3):
        pool.defer(lambda: time.sleep(0.4))
    threading.Timer(0.3, gate.set).start()
    started = time.monotonic()
    abandoned = pool.close(timeout=0.5)
    waited = time.monotonic() - started
    assert patched.result(timeout=0) == "done"
    # The patch ran after the gate opened (0.3 s); then one or two Events of
    # 0.4 s fit in the 0.5 s and the rest were abandoned.
    assert abandoned in (1, 2)
    assert pool.dropped == abandoned
    assert 0.4 < waited < 2.5
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(lambda: None)
    assert pool.defer(lambda: None) is False


def test_close_without_a_deadline_writes_every_event() -> None:
    pool, gate = blocked_pool(2)
    ran: list[int] = []
    for i in range(50):
        pool.defer(lambda i=i: ran.append(i))
    gate.set()
    assert pool.close() == 0
    assert sorted(ran) == list(range(50))
    assert pool.pending == 0


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="workers and max_deferred"):
        WritePool(0)
    with pytest.raises(ValueError, match="workers and max_deferred"):
        WritePool(1, max_deferred=0)


def test_a_deferred_recorder_returns_at_once_and_writes_with_the_time_of_the_occurrence() -> None:
    api, clock = FakeKube(), Clock()
    pool, gate = blocked_pool(1)
    rec = EventRecorder(api, EventAggregator(), instance="pod-1", clock=clock, dispatch=pool.defer)
    occurred = clock.now
    rec.record(WEB, NORMAL, PATCHED, "Patched container web: a -> b")
    assert api.event_calls == []  # nothing written while every thread is busy with a patch
    clock.now += 3600  # written much later: the Event still says when it happened
    gate.set()
    pool.close(timeout=5)
    ((_, event),) = api.events.items()
    assert event["reason"] == "Patched"
    assert event["firstTimestamp"] == event["lastTimestamp"]
    assert clock.now - occurred == 3600
    assert event["lastTimestamp"] == "2023-11-14T22:13:20Z"


def test_a_deferred_recorder_counts_what_the_pool_dropped() -> None:
    api = FakeKube()
    pool, gate = blocked_pool(1, max_deferred=1)
    rec = EventRecorder(api, instance="pod-1", clock=Clock(), dispatch=pool.defer)
    rec.record(WEB, NORMAL, PATCHED, "Patched container web: a -> b")
    rec.record(WEB, NORMAL, PATCHED, "Patched container web: b -> c")
    assert rec.dropped == 1
    gate.set()
    pool.close(timeout=5)
    assert [e["message"] for e in api.events.values()] == ["Patched container web: a -> b"]


def test_held_events_wait_even_when_no_patch_does() -> None:
    pool = WritePool(2)
    ran: list[str] = []
    with pool.hold():
        pool.defer(lambda: ran.append("event"))
        assert pool.submit(lambda: ran.append("patch")).result(timeout=5) is None
        time.sleep(0.2)  # idle threads, yet the Event waits for the hold to end
        assert ran == ["patch"]
    deadline = time.monotonic() + 5
    while ran != ["patch", "event"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["patch", "event"]
    pool.close()


def test_close_writes_held_events() -> None:
    pool = WritePool(1)
    ran: list[str] = []
    with pool.hold():
        pool.defer(lambda: ran.append("event"))
        time.sleep(0.2)  # the worker is up, waiting for the hold to end
        started = time.monotonic()
        assert pool.close(timeout=5) == 0
        assert time.monotonic() - started < 1  # close ends the hold at once
    assert ran == ["event"]
