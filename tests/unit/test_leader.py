"""Leader election: the pure Lease decisions (table-driven), and the elector on a fake API.

The same behaviour against a real kube-apiserver is in tests/e2e/test_leader.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from cloner.adapters.leader import LeaderElector, default_identity
from cloner.config import LeaderElectionSettings
from cloner.model.lease import (
    LeaseRecord,
    acquired_record,
    expires_at,
    lease_duration_seconds,
    may_acquire,
    micro_time,
    released_record,
    validate_timing,
)
from devenv.waiting import wait_for
from tests.unit.fakes import FakeKube

ME = "pod-a_1"
OTHER = "pod-b_2"
T0 = "2024-05-01T12:00:00.000000Z"
T1 = "2024-05-01T12:00:07.250000Z"


def held(holder: str, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, T0, T0, 3)


# may_acquire ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "observed_at", "now", "expected"),
    [
        # No Lease: create it.
        (None, 0.0, 0.0, True),
        # Released (empty holder): take it at once, however recently it changed.
        (held(""), 100.0, 100.0, True),
        (LeaseRecord("", 1), 100.0, 100.5, True),
        # Held by this identity: renew, even when it looks expired to others.
        (held(ME), 100.0, 100.0, True),
        (held(ME), 100.0, 500.0, True),
        # Held by another: only once unchanged for the whole duration, observed locally.
        (held(OTHER), 100.0, 100.0, False),
        (held(OTHER), 100.0, 114.999, False),
        (held(OTHER), 100.0, 115.0, True),
        (held(OTHER), 100.0, 200.0, True),
        (held(OTHER, duration=3), 10.0, 12.9, False),
        (held(OTHER, duration=3), 10.0, 13.0, True),
        # A holder announcing no duration is expired as soon as it is seen (client-go).
        (LeaseRecord(OTHER, 0), 10.0, 10.0, True),
    ],
)
def test_may_acquire(
    record: LeaseRecord | None, observed_at: float, now: float, expected: bool
) -> None:
    assert may_acquire(record, ME, observed_at, now) is expected


def test_remote_renew_time_is_never_compared_with_the_local_clock() -> None:
    # renewTime decades ago, but only just observed: still held.
    ancient = LeaseRecord(OTHER, 15, "1999-01-01T00:00:00.000000Z", "1999-01-01T00:00:00.000000Z")
    assert not may_acquire(ancient, ME, observed_at=50.0, now=51.0)
    # renewTime in the future, but unchanged for 15 s locally: expired.
    future = LeaseRecord(OTHER, 15, "2999-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z")
    assert may_acquire(future, ME, observed_at=50.0, now=65.0)


def test_expires_at_is_observation_plus_duration() -> None:
    assert expires_at(held(OTHER, duration=3), 10.5) == 13.5


# Records written ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        # New Lease: acquired now, no transition yet.
        (None, LeaseRecord(ME, 15, T1, T1, 0)),
        # Renewal: acquireTime and transitions kept, renewTime moves.
        (LeaseRecord(ME, 15, T0, T0, 3), LeaseRecord(ME, 15, T0, T1, 3)),
        # Renewal of a record without acquireTime: set it.
        (LeaseRecord(ME, 15, None, T0, 3), LeaseRecord(ME, 15, T1, T1, 3)),
        # Takeover from another holder, or of a released Lease: one more transition.
        (LeaseRecord(OTHER, 15, T0, T0, 3), LeaseRecord(ME, 15, T1, T1, 4)),
        (LeaseRecord("", 1, T0, T0, 4), LeaseRecord(ME, 15, T1, T1, 5)),
    ],
)
def test_acquired_record(old: LeaseRecord | None, expected: LeaseRecord) -> None:
    assert acquired_record(old, ME, 15, T1) == expected


def test_released_record_empties_the_holder_with_a_one_second_duration() -> None:
    assert released_record(LeaseRecord(ME, 15, T0, T0, 4), T1) == LeaseRecord("", 1, T1, T1, 4)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, LeaseRecord("", 0, None, None, 0)),
        ({}, LeaseRecord("", 0, None, None, 0)),
        ({"holderIdentity": ""}, LeaseRecord("", 0, None, None, 0)),
        (
            {
                "holderIdentity": ME,
                "leaseDurationSeconds": 15,
                "acquireTime": T0,
                "renewTime": T1,
                "leaseTransitions": 2,
                "strategy": "OldestEmulationVersion",
            },
            LeaseRecord(ME, 15, T0, T1, 2),
        ),
    ],
)
def test_record_from_spec(spec: dict[str, Any] | None, expected: LeaseRecord) -> None:
    assert LeaseRecord.from_spec(spec) == expected


def test_record_to_spec_round_trips_and_leaves_out_absent_times() -> None:
    record = LeaseRecord(ME, 15, T0, T1, 2)
    assert record.to_spec() == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "leaseTransitions": 2,
        "acquireTime": T0,
        "renewTime": T1,
    }
    assert LeaseRecord.from_spec(record.to_spec()) == record
    assert LeaseRecord("", 1).to_spec() == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "leaseTransitions": 0,
    }


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC), "2024-05-01T12:00:00.000000Z"),
        (datetime(2024, 5, 1, 12, 0, 0, 7, tzinfo=UTC), "2024-05-01T12:00:00.000007Z"),
        # Other zones are converted to UTC; naive datetimes are taken as UTC.
        (
            datetime(2024, 5, 1, 14, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T12:00:00.250000Z",
        ),
        (datetime(2024, 5, 1, 12, 0, 0), "2024-05-01T12:00:00.000000Z"),
    ],
)
def test_micro_time(moment: datetime, expected: str) -> None:
    assert micro_time(moment) == expected


@pytest.mark.parametrize(("seconds", "expected"), [(1, 1), (3.0, 3), (15, 15), (2.1, 3)])
def test_lease_duration_rounds_up(seconds: float, expected: int) -> None:
    assert lease_duration_seconds(seconds) == expected


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "problem"),
    [
        (15, 10, 2, None),
        (3, 2, 0.5, None),
        (0.5, 0.4, 0.1, "lease_duration must be at least 1"),
        (10, 10, 2, "greater than renew_deadline"),
        (10, 12, 2, "greater than renew_deadline"),
        (15, 2.4, 2, "1.2 \\* retry_period"),
        (15, 10, 0, "retry_period must be greater than zero"),
        (15, 10, -1, "retry_period must be greater than zero"),
    ],
)
def test_validate_timing(lease: float, renew: float, retry: float, problem: str | None) -> None:
    if problem is None:
        validate_timing(lease, renew, retry)
    else:
        with pytest.raises(ValueError, match=problem):
            validate_timing(lease, renew, retry)


def test_lease_module_imports_no_io_library() -> None:
    code = (
        "import sys\n"
        "import cloner.model.lease\n"
        "print(','.join(m for m in ('kubernetes', 'docker') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_default_identity_is_hostname_and_a_random_suffix() -> None:
    first, second = default_identity(), default_identity()
    assert first != second
    assert first.rsplit("_", 1)[0] == second.rsplit("_", 1)[0]


# The elector on an in-memory CoordinationV1Api --------------------------------------


def elector(fake: FakeKube, identity: str, changes: list[bool]) -> LeaderElector:
    instance = LeaderElector(
        None,  # type: ignore[arg-type]  # the API object is replaced below
        LeaderElectionSettings(lease_duration=3, renew_deadline=1, retry_period=0.2),
        "ns",
        identity=identity,
        on_change=changes.append,
    )
    instance._api = fake  # type: ignore[assignment]
    return instance


def test_elector_creates_renews_loses_after_the_deadline_and_recovers() -> None:
    fake, changes = FakeKube(), list[bool]()
    a = elector(fake, ME, changes)
    a.start()
    try:
        assert a.wait_until_leader(threading.Event())
        assert changes == [True]
        assert fake.lease is not None
        assert fake.lease["spec"]["holderIdentity"] == ME
        assert fake.lease["spec"]["leaseDurationSeconds"] == 3
        wait_for(lambda: len(fake.lease_writes) >= 3, 5.0, interval=0.02)  # renewals
        assert {w["spec"]["acquireTime"] for w in fake.lease_writes} == {
            fake.lease_writes[0]["spec"]["acquireTime"]
        }
        # The API server becomes unreachable: leader no longer after 1 s, reported once.
        fake.lease_failure = urllib3.exceptions.MaxRetryError(None, "/", "connection refused")  # type: ignore[arg-type]
        failed_at = time.monotonic()
        wait_for(lambda: not a.is_leader(), 5.0, interval=0.02)
        assert 0.6 < time.monotonic() - failed_at < 1.3
        wait_for(lambda: changes == [True, False], 5.0, interval=0.02)
        assert a._thread is not None and a._thread.is_alive()
        # Back again, still the holder in the Lease: leads again.
        fake.lease_failure = None
        wait_for(a.is_leader, 5.0, interval=0.02)
        assert changes == [True, False, True]
    finally:
        a.stop()
    assert fake.lease is not None
    assert fake.lease["spec"]["holderIdentity"] == ""
    assert fake.lease["spec"]["leaseDurationSeconds"] == 1
    assert changes == [True, False, True, False]
    assert not a.is_leader()


def test_elector_survives_api_errors_and_a_candidate_waits_for_expiry() -> None:
    fake, changes_a, changes_b = FakeKube(), list[bool](), list[bool]()
    a, b = elector(fake, ME, changes_a), elector(fake, OTHER, changes_b)
    a.start()
    assert a.wait_until_leader(threading.Event())
    b.start()
    try:
        time.sleep(0.5)
        assert not b.is_leader()
        a.stop(release=False)  # dies: the Lease still names it
        died = time.monotonic()
        assert b.wait_until_leader(threading.Event())
        assert 2.0 < time.monotonic() - died < 3.5
        assert fake.lease is not None
        assert fake.lease["spec"]["holderIdentity"] == OTHER
        assert fake.lease["spec"]["leaseTransitions"] == 1
        # A 500 and a forbidden do not end the thread.
        fake.lease_failure = ApiException(status=500, reason="Internal Server Error")
        time.sleep(0.5)
        fake.lease_failure = ApiException(status=403, reason="Forbidden")
        time.sleep(0.3)
        fake.lease_failure = None
        assert b._thread is not None and b._thread.is_alive()
        wait_for(b.is_leader, 5.0, interval=0.02)
    finally:
        b.stop()
    assert changes_a == [True, False]
    assert changes_b[0] is True and changes_b[-1] is False


def test_a_leader_that_sees_another_holder_stops_leading_at_once() -> None:
    fake, changes = FakeKube(), list[bool]()
    a = elector(fake, ME, changes)
    a.start()
    try:
        assert a.wait_until_leader(threading.Event())
        with fake.lock:
            assert fake.lease is not None
            fake.lease = json.loads(json.dumps(fake.lease))
            fake.lease["spec"]["holderIdentity"] = OTHER
            fake.lease["metadata"]["resourceVersion"] = "999"
        wait_for(lambda: not a.is_leader(), 0.6, interval=0.02)
        assert changes == [True, False]
    finally:
        a.stop()
    assert fake.lease is not None
    assert fake.lease["spec"]["holderIdentity"] == OTHER  # not released: not ours


def test_elector_rejects_inconsistent_durations() -> None:
    with pytest.raises(ValueError, match="renew_deadline"):
        election = LeaderElectionSettings(lease_duration=5, renew_deadline=5)
        LeaderElector(None, election, "ns")  # type: ignore[arg-type]


def test_wait_until_leader_returns_false_when_stopped() -> None:
    fake, changes = FakeKube(), list[bool]()
    fake.lease_failure = ApiException(status=403, reason="Forbidden")
    a = elector(fake, ME, changes)
    a.start()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert a.wait_until_leader(stop) is False
    a.stop()
    assert changes == []
    assert a.wait_until_leader(threading.Event()) is False
