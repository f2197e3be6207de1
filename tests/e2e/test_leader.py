"""Leader election on a real kube-apiserver: one leader, takeover after death, release, RBAC.

Short durations (lease 3 s, renew deadline 2 s, retry 0.5 s) keep the test
fast; the production defaults are 15/10/2 s. Takeover times are printed
(``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from cloner.adapters.kube import load_api_client
from cloner.adapters.leader import LeaderElector
from cloner.config import LeaderElectionSettings
from devenv.harness import Environment
from devenv.waiting import wait_for

pytestmark = pytest.mark.e2e

LEASE_DURATION = 3.0
RENEW_DEADLINE = 2.0
RETRY_PERIOD = 0.5
#: Allowance for the read and update round trips on loopback, seconds. The
#: guarantee is ``LEASE_DURATION + RETRY_PERIOD`` after the holder's last
#: renewal plus these round trips: a candidate may see that renewal up to one
#: retry period late, then waits the lease duration from when it saw it. The
#: worst case (death right after a renewal the candidate just missed) is what
#: this test hits, since both candidates start, and so poll, in step.
ROUND_TRIPS = 0.1
CONTROLLER_NAMESPACE = "image-cloner"


def timing(lease: str) -> LeaderElectionSettings:
    """The Lease ``lease`` with this module's short timing."""
    return LeaderElectionSettings(
        lease_name=lease,
        lease_duration=LEASE_DURATION,
        renew_deadline=RENEW_DEADLINE,
        retry_period=RETRY_PERIOD,
    )


class Candidate:
    """A LeaderElector plus the times (monotonic) of its on_change calls."""

    def __init__(
        self, api: kubernetes.client.ApiClient, namespace: str, lease: str, identity: str
    ) -> None:
        self.changes: list[tuple[bool, float]] = []
        self.wall: list[float] = []  # time.time() of each change
        self.gained = threading.Event()
        self.elector = LeaderElector(
            api, timing(lease), namespace, identity=identity, on_change=self._changed
        )

    def _changed(self, leading: bool) -> None:
        self.changes.append((leading, time.monotonic()))
        self.wall.append(time.time())
        if leading:
            self.gained.set()

    def gained_at(self) -> float:
        return next(at for leading, at in self.changes if leading)


@contextmanager
def candidates(
    env: Environment, namespace: str, lease: str, *identities: str
) -> Iterator[list[Candidate]]:
    """Started candidates, each with its own API client; stopped (released) at the end."""
    clients = [env.api_client() for _ in identities]
    started = [
        Candidate(api, namespace, lease, identity)
        for api, identity in zip(clients, identities, strict=True)
    ]
    for candidate in started:
        candidate.elector.start()
    try:
        yield started
    finally:
        for candidate in started:
            candidate.elector.stop()
        for api in clients:
            api.close()


def read_lease(env: Environment, namespace: str, name: str) -> dict[str, Any]:
    with closing(env.api_client()) as api:
        response = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(
            name, namespace, _preload_content=False
        )
        return dict(json.loads(response.data))


def leaders(group: list[Candidate]) -> list[str]:
    return [c.elector.identity for c in group if c.elector.is_leader()]


def test_one_leader_and_takeover_within_the_lease_duration_when_it_dies(
    env: Environment, namespace: str
) -> None:
    with candidates(env, namespace, "image-cloner", "replica-a", "replica-b") as group:
        wait_for(lambda: len(leaders(group)) == 1, 5, "one leader", interval=0.01)
        # Exactly one leader, for several renewals.
        for _ in range(30):
            assert len(leaders(group)) == 1, leaders(group)
            time.sleep(0.05)
        leader = next(c for c in group if c.elector.is_leader())
        other = next(c for c in group if c is not leader)
        lease = read_lease(env, namespace, "image-cloner")
        assert lease["spec"]["holderIdentity"] == leader.elector.identity
        assert lease["spec"]["leaseDurationSeconds"] == 3
        assert lease["spec"]["renewTime"].endswith("Z")

        # Death: the thread stops, the Lease is left as it was.
        leader.elector.stop(release=False)
        died = time.monotonic()
        assert not leader.elector.is_leader()
        assert not other.elector.is_leader()
        last = read_lease(env, namespace, "image-cloner")["spec"]
        assert last["holderIdentity"] == leader.elector.identity
        last_renewal = datetime.fromisoformat(last["renewTime"]).timestamp()

        assert other.gained.wait(timeout=LEASE_DURATION + RETRY_PERIOD + 2)
        takeover = other.gained_at() - died
        since_renewal = other.wall[0] - last_renewal
        print(
            f"\ntakeover after the leader died: {takeover:.3f}s, "
            f"{since_renewal:.3f}s after its last renewTime "
            f"(lease {LEASE_DURATION}s, retry {RETRY_PERIOD}s)"
        )
        # Never before the claim can have run out, and within one retry after it did.
        assert takeover > LEASE_DURATION - RETRY_PERIOD - 0.1
        assert takeover <= LEASE_DURATION + RETRY_PERIOD + ROUND_TRIPS
        assert leaders(group) == [other.elector.identity]
        lease = read_lease(env, namespace, "image-cloner")
        assert lease["spec"]["holderIdentity"] == other.elector.identity
        assert lease["spec"]["leaseTransitions"] == 1
        assert [leading for leading, _ in leader.changes] == [True, False]
        assert [leading for leading, _ in other.changes] == [True]


def test_a_released_lease_is_taken_over_at_once(env: Environment, namespace: str) -> None:
    with candidates(env, namespace, "released", "replica-a", "replica-b") as group:
        wait_for(lambda: len(leaders(group)) == 1, 5, "one leader", interval=0.01)
        time.sleep(1.0)  # the other has observed the holder renew
        leader = next(c for c in group if c.elector.is_leader())
        other = next(c for c in group if c is not leader)

        leader.elector.stop(release=True)
        released = time.monotonic()
        assert not leader.elector.is_leader()
        assert other.gained.wait(timeout=LEASE_DURATION + RETRY_PERIOD + 2)
        takeover = other.gained_at() - released
        print(f"\ntakeover of a released lease: {takeover:.3f}s")
        assert takeover < 2.0
        assert takeover <= RETRY_PERIOD + 0.5
        assert leaders(group) == [other.elector.identity]
        lease = read_lease(env, namespace, "released")
        assert lease["spec"]["holderIdentity"] == other.elector.identity
        assert lease["spec"]["leaseTransitions"] == 1
        assert [leading for leading, _ in leader.changes] == [True, False]

    # Stopping the last holder leaves the Lease released.
    lease = read_lease(env, namespace, "released")
    assert lease["spec"].get("holderIdentity", "") == ""
    assert lease["spec"]["leaseDurationSeconds"] == 1


def test_service_account_may_hold_a_lease_in_its_namespace_only(
    env: Environment, namespace: str, controller_kubeconfig: Path
) -> None:
    """As the image-cloner ServiceAccount, bound by manifests/base RBAC alone."""
    name = f"rbac-{uuid.uuid4().hex[:8]}"
    with closing(load_api_client(controller_kubeconfig)) as api:
        own = LeaderElector(api, timing(name), CONTROLLER_NAMESPACE)
        foreign = LeaderElector(api, timing(name), namespace)
        own.start()
        foreign.start()
        try:
            assert own.wait_until_leader(_timeout_event(5))
            lease = read_lease(env, CONTROLLER_NAMESPACE, name)
            assert lease["spec"]["holderIdentity"] == own.identity  # created
            time.sleep(3 * RETRY_PERIOD)  # renewals (update) go through too
            assert own.is_leader()
            assert not foreign.is_leader()
            assert foreign._thread is not None and foreign._thread.is_alive()
        finally:
            own.stop()
            foreign.stop()
        lease = read_lease(env, CONTROLLER_NAMESPACE, name)
        assert lease["spec"].get("holderIdentity", "") == ""  # released: update allowed

        coordination = kubernetes.client.CoordinationV1Api(api)
        body = {"metadata": {"name": name}, "spec": {"holderIdentity": "x"}}
        for call in (
            lambda: coordination.read_namespaced_lease(name, namespace),
            lambda: coordination.create_namespaced_lease(namespace, body),
            # Only get, create and update, even in its own namespace.
            lambda: coordination.list_namespaced_lease(CONTROLLER_NAMESPACE),
            lambda: coordination.delete_namespaced_lease(name, CONTROLLER_NAMESPACE),
            lambda: coordination.patch_namespaced_lease(name, CONTROLLER_NAMESPACE, body),
        ):
            with pytest.raises(ApiException) as raised:
                call()
            assert raised.value.status == 403

    with closing(env.api_client()) as admin, pytest.raises(ApiException) as raised:
        kubernetes.client.CoordinationV1Api(admin).read_namespaced_lease(name, namespace)
    assert raised.value.status == 404


def _timeout_event(seconds: float) -> threading.Event:
    """An event that sets itself after ``seconds`` (a bound for ``wait_until_leader``)."""
    event = threading.Event()
    timer = threading.Timer(seconds, event.set)
    timer.daemon = True
    timer.start()
    return event
