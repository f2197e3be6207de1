"""Leader election on a coordination.k8s.io/v1 Lease: the adapter that talks to the API server.

Built by ``controller.py`` when more than one replica may run: only the
replica that holds the Lease should reconcile, and when it dies another one
takes over within the lease duration. Besides ``kube``, this is the only module
that imports ``kubernetes``; the decisions are the pure functions of
``lease``. Every ``ApiException`` and transport error is logged and counts as a
failed attempt; none leaves the election thread, which never dies of one.

The algorithm is client-go's ``tools/leaderelection`` with a ``LeaseLock``:
every ``retry_period`` seconds the elector reads the Lease and, if ``lease``
says it may, writes itself in as holder (a create when there is no Lease, else
a replace carrying the ``resourceVersion`` read, so of two replicas racing for
the same Lease one gets 409 Conflict and loses). A candidate only takes over a
held Lease after seeing its record unchanged for ``leaseDurationSeconds`` on
its own monotonic clock. A holder that has not renewed for ``renew_deadline``
seconds stops being leader at once, and it never claims more than that, which
is shorter than the lease duration the others wait. A candidate that sees a
claim run out sooner than its next retry tries again at that moment, so a dead
holder is replaced within ``lease_duration + retry_period`` seconds of its last
renewal (plus one round trip).

Usage::

    api_client = cloner.adapters.kube.load_api_client(kubeconfig)
    elector = LeaderElector(
        api_client, settings.leader_election, "image-cloner", on_change=callback
    )
    elector.start()
    if elector.wait_until_leader(stop_event):
        ...  # act while elector.is_leader()
    elector.stop()  # releases the Lease so another replica takes over at once
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

from cloner.adapters.kube import read_body, translate_error
from cloner.errors import KubeError
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

if TYPE_CHECKING:
    from cloner.config import LeaderElectionSettings

log = logging.getLogger(__name__)

_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


def default_identity() -> str:
    """A holder identity unique to this process.

    Returns:
        ``<hostname>_<12 hex digits>`` (the pod name in a cluster, plus a random
        suffix so that two electors never share an identity).
    """
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


class LeaderElector:
    """Acquires and renews one Lease in a background thread; tells whether this replica leads.

    Args:
        api_client: a configured client (``cloner.adapters.kube.load_api_client``).
        election: the ``leaderElection`` settings; ``enabled`` is the
            caller's business. Used: ``lease_name``, the name of the Lease
            (every replica must use the same one); ``lease_duration``, seconds
            a candidate waits, without seeing the Lease change, before taking
            it over (written rounded up to whole seconds as
            ``leaseDurationSeconds``); ``renew_deadline``, seconds the leader
            keeps trying to renew (after that long without a successful
            renewal it is no longer leader); ``retry_period``, seconds between
            two attempts to acquire or renew.
        namespace: namespace of the Lease (the controller's own namespace).
        identity: this replica's ``holderIdentity``; default ``default_identity()``.
        on_change: called with True when this replica becomes leader and with
            False when it stops being leader (renewal failed past the deadline,
            or ``stop``). Called from the election thread (from the caller's
            thread in ``stop``); it should return quickly, and an exception it
            raises is logged and ignored.

    Raises:
        ValueError: the durations are inconsistent (``lease.validate_timing``):
            ``lease_duration >= 1``, ``lease_duration > renew_deadline > 1.2 *
            retry_period > 0`` are required.

    Attributes:
        identity: the ``holderIdentity`` this elector writes.
        namespace: namespace of the Lease.
        name: name of the Lease.
    """

    _clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        election: LeaderElectionSettings,
        namespace: str,
        identity: str | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        validate_timing(election.lease_duration, election.renew_deadline, election.retry_period)
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = election.lease_name
        self.identity: str = identity or default_identity()
        self._duration_seconds = lease_duration_seconds(election.lease_duration)
        self._renew_deadline = election.renew_deadline
        self._retry_period = election.retry_period
        self._on_change = on_change
        # Shared with callers; guarded by _cond (an RLock underneath).
        self._cond = threading.Condition()
        self._leading = False
        self._renewed_at = 0.0  # monotonic start of the last successful acquire/renew
        self._stopped = False
        self._reported = False  # the last value passed to on_change
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        # Owned by the election thread (and by ``stop`` once it has ended).
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time _observed was first seen
        self._lease: dict[str, Any] | None = None  # last Lease object read or written
        self._reported_holder: str | None = None

    @property
    def _describe(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    # Public API ---------------------------------------------------------------

    def start(self) -> None:
        """Start the acquire/renew loop in a daemon thread and return at once.

        Raises:
            RuntimeError: ``start`` was already called (an elector runs once).
        """
        with self._cond:
            if self._thread is not None or self._stopped:
                raise RuntimeError(f"leader elector {self.identity} was already started")
            self._thread = threading.Thread(
                target=self._run, name=f"leader-election-{self.name}", daemon=True
            )
        log.info("leader election: %s is a candidate for %s", self.identity, self._describe)
        self._thread.start()

    def is_leader(self) -> bool:
        """Whether this replica holds the Lease now.

        Returns:
            True only while the elector runs, holds the Lease, and its last
            successful acquire or renew started less than ``renew_deadline``
            seconds ago. This is decided on the local clock at each call, so it
            turns False at the deadline even while a renewal request hangs.
        """
        with self._cond:
            return (
                self._leading
                and not self._stopped
                and self._clock() - self._renewed_at < self._renew_deadline
            )

    def wait_until_leader(self, stop: threading.Event) -> bool:
        """Block until this replica leads, ``stop`` is set or the elector is stopped.

        Args:
            stop: the caller's shutdown event (checked at least every 0.1 s).

        Returns:
            ``is_leader()`` when it returns: True when leading, False when it
            returned because of ``stop`` or ``LeaderElector.stop``.
        """
        with self._cond:
            while not self.is_leader() and not stop.is_set() and not self._stopped:
                self._cond.wait(timeout=0.1)
            return self.is_leader()

    def stop(self, release: bool = True) -> None:
        """Stop the election thread; optionally give the Lease up.

        ``is_leader()`` is False from the moment this is called. When this
        replica was leader, ``on_change(False)`` is called before the Lease is
        released. Safe to call more than once, and before ``start``.

        Args:
            release: when this replica holds the Lease, write an empty
                ``holderIdentity`` and ``leaseDurationSeconds: 1`` so another
                replica takes over at its next attempt (client-go
                ``ReleaseOnCancel``). The caller must have finished the work the
                Lease guards. With False the Lease is left as it is, as if the
                process had died: another replica takes over when it expires.
                A failed release is logged, not raised.
        """
        self._stop_event.set()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        thread = self._thread
        alive = False
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._renew_deadline + self._retry_period + 1.0)
            alive = thread.is_alive()
        with self._cond:
            self._leading = False
        self._report(False, "elector stopped")
        if not release:
            return
        if alive:
            log.warning(
                "leader election: thread of %s did not end in time; %s not released",
                self.identity,
                self._describe,
            )
            return
        if self._observed is not None and self._observed.holder == self.identity:
            self._release()

    # Election thread ------------------------------------------------------------

    def _run(self) -> None:
        """The acquire/renew loop; returns when the stop event is set. Never raises."""
        while not self._stop_event.is_set():
            started = self._clock()
            try:
                ok = self._try_acquire_or_renew()
            except KubeError as exc:
                self._log_failure(exc)
                ok = False
            except Exception:
                log.exception(
                    "leader election: %s: unexpected error on %s", self.identity, self._describe
                )
                ok = False
            self._settle(ok, started)
            delay = self._next_attempt(started) - self._clock()
            if delay > 0:
                self._stop_event.wait(delay)

    def _settle(self, ok: bool, started: float) -> None:
        """Record the outcome of one attempt; log and report a change of leadership.

        Args:
            ok: whether the Lease was created, taken over or renewed.
            started: monotonic seconds at which the attempt started.
        """
        now = self._clock()
        taken = self._observed is not None and self._observed.holder != self.identity
        with self._cond:
            was_leading = self._leading
            expired = was_leading and now - self._renewed_at >= self._renew_deadline
            lost = expired or (was_leading and not ok and taken)
            if lost:
                self._leading = False
            # After ``stop`` was called, a late success is not reported; ``stop`` releases it.
            gained = ok and not self._stop_event.is_set()
            if gained:
                self._renewed_at = started
                self._leading = True
            self._cond.notify_all()
        if lost:
            why = (
                f"not renewed for {self._renew_deadline:g}s"
                if expired
                else f"now held by {self._observed.holder if self._observed else '?'}"
            )
            self._report(False, why)
        if gained:
            self._report(True, "acquired")

    def _next_attempt(self, started: float) -> float:
        """Monotonic time of the next attempt: one retry period after this one started.

        A candidate that has seen another holder's claim run out before then
        tries at that moment instead.
        """
        next_at = started + self._retry_period
        record = self._observed
        with self._cond:
            leading = self._leading
        if not leading and record is not None and record.holder and record.holder != self.identity:
            expiry = expires_at(record, self._observed_at)
            if started < expiry < next_at:
                next_at = expiry
        return next_at

    def _try_acquire_or_renew(self) -> bool:
        """One attempt to create, take over or renew the Lease (client-go ``tryAcquireOrRenew``).

        Returns:
            True when this replica wrote itself into the Lease; False when
            another holder's claim is still fresh.

        Raises:
            KubeError: a call failed; 409 when another replica wrote first.
        """
        now = micro_time(datetime.now(UTC))
        lease = self._read()
        if lease is None:
            record = acquired_record(None, self.identity, self._duration_seconds, now)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": record.to_spec(),
            }
            created = self._call(
                "create",
                self._api.create_namespaced_lease,
                self.namespace,
                body,
            )
            self._observe(record, created)
            return True

        old = LeaseRecord.from_spec(lease.get("spec"))
        if old != self._observed:
            self._observe(old, lease)
        else:
            self._lease = lease
        if not may_acquire(old, self.identity, self._observed_at, self._clock()):
            log.debug(
                "leader election: %s is held by %s and has not expired",
                self._describe,
                old.holder,
            )
            return False
        record = acquired_record(old, self.identity, self._duration_seconds, now)
        self._write(lease, record)
        return True

    def _release(self) -> None:
        """Write the released record (empty holder) over the Lease this replica last wrote."""
        if self._lease is None or self._observed is None:
            return
        record = released_record(self._observed, micro_time(datetime.now(UTC)))
        try:
            self._write(self._lease, record)
        except KubeError as exc:
            log.warning(
                "leader election: %s could not release %s: %s", self.identity, self._describe, exc
            )
            return
        log.info("leader election: %s released %s", self.identity, self._describe)

    # Lease I/O ----------------------------------------------------------------

    def _observe(self, record: LeaseRecord, lease: dict[str, Any]) -> None:
        """Remember a record seen or written now, and the Lease object carrying it."""
        self._observed = record
        self._observed_at = self._clock()
        self._lease = lease
        if record.holder != self._reported_holder:
            self._reported_holder = record.holder
            if record.holder and record.holder != self.identity:
                log.info(
                    "leader election: %s is held by %s (%s is a candidate)",
                    self._describe,
                    record.holder,
                    self.identity,
                )

    def _write(self, lease: dict[str, Any], record: LeaseRecord) -> None:
        """Replace the Lease with ``record`` in its spec, conditional on the read resourceVersion.

        Other spec fields of the Lease are kept as read.

        Raises:
            KubeError: 409 when the Lease changed since it was read.
        """
        body = dict(lease)
        body["spec"] = {**(lease.get("spec") or {}), **record.to_spec()}
        updated = self._call(
            "update", self._api.replace_namespaced_lease, self.name, self.namespace, body
        )
        self._observe(record, updated)

    def _read(self) -> dict[str, Any] | None:
        """The Lease as raw JSON, or None when it does not exist.

        Raises:
            KubeError: the read failed for another reason than 404.
        """
        try:
            return self._call("get", self._api.read_namespaced_lease, self.name, self.namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def _call(self, verb: str, method: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """Call one CoordinationV1Api method; return the response body as JSON.

        The request timeout is the time left before the renew deadline while
        leading (so a hanging API server cannot keep a stale leader acting),
        else ``renew_deadline`` seconds.

        Raises:
            KubeError: the call failed (status 0 when there was no answer), or
                the renew deadline has already passed.
        """
        what = f"{verb} {self._describe}"
        timeout = self._renew_deadline
        with self._cond:
            if self._leading:
                timeout = self._renewed_at + self._renew_deadline - self._clock()
        if timeout <= 0:
            raise KubeError(0, f"{what}: renew deadline passed")
        try:
            response = method(*args, _preload_content=False, _request_timeout=timeout)
            return dict(json.loads(read_body(response)))
        except (ApiException, *_TRANSPORT_ERRORS, ValueError) as exc:
            raise translate_error(exc, what) from None

    # Reporting ----------------------------------------------------------------

    def _log_failure(self, exc: KubeError) -> None:
        """Log a failed attempt: a lost race at INFO, anything else as a warning."""
        if exc.status == 409:
            log.info(
                "leader election: %s: another replica wrote %s first", self.identity, self._describe
            )
        else:
            log.warning("leader election: %s: %s", self.identity, exc)

    def _report(self, leading: bool, why: str) -> None:
        """Log a change of leadership and call ``on_change(leading)``, once per change.

        Args:
            leading: the new state.
            why: the cause, for the log line.
        """
        with self._cond:
            if self._reported == leading:
                return
            self._reported = leading
        if leading:
            log.info("leader election: %s became leader of %s", self.identity, self._describe)
        else:
            log.info(
                "leader election: %s stopped leading %s: %s", self.identity, self._describe, why
            )
        if self._on_change is None:
            return
        try:
            self._on_change(leading)
        except Exception:
            log.exception("leader election: on_change(%s) raised", leading)
