"""Kubernetes Events on the workloads the controller acts on: the writer. OPERATION.

``EventRecorder`` does the I/O of ``cloner.model.events`` (reasons, messages,
and the pure ``EventAggregator`` that plays client-go's ``EventCorrelator``)
through the small ``EventAPI`` protocol (implemented by ``kube.KubeClient``).
``record`` never raises: an event is best effort, and a failure to write one
is logged and forgotten. Events are core/v1 ``Event`` objects (the API
``kubectl describe`` reads).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from cloner.errors import KubeError
from cloner.model.events import (
    COMPONENT,
    DROP,
    MAX_INSTANCE,
    TYPES,
    UPDATE,
    EventAggregator,
    EventKey,
    clean_message,
    event_body,
    rfc3339,
)
from cloner.model.workloads import JsonPatch, Workload

log = logging.getLogger(__name__)


class EventAPI(Protocol):
    """The Event calls ``EventRecorder`` makes (implemented by ``kube.KubeClient``)."""

    def create_event(self, namespace: str, body: dict[str, Any]) -> str:
        """Create a core/v1 Event; return its ``metadata.name``. Raises ``KubeError``."""
        ...

    def patch_event(self, namespace: str, name: str, patch: JsonPatch | dict[str, Any]) -> None:
        """Patch an Event (a dict: strategic merge; a list: JSON patch). Raises ``KubeError``."""
        ...


class EventRecorder:
    """Writes aggregated, rate-limited Events about workloads; never raises.

    One instance per process, shared by every caller (the aggregation state
    lives in it). Its state is guarded by a lock, the API calls are made
    outside it, so the patch pool writes Events of different workloads in
    parallel; the same event recorded from two threads at the same instant
    may then create two Events (the workload is patched once per cycle, so
    this does not happen in a cycle). Each ``record`` makes at most two API
    calls (a patch, then a create when the Event has gone).

    Args:
        api: the Event calls (``kube.KubeClient``).
        aggregator: the aggregation and rate-limit state; a default
            ``EventAggregator()`` (600 s window, burst 25, one per 300 s).
        instance: ``reportingInstance``; defaults to the host name (the pod
            name in a cluster), cut to 128 characters.
        clock: wall-clock epoch seconds (injectable for tests); used for the
            timestamps and the aggregation window.
        dispatch: where the API calls run. None: in the caller's thread,
            before ``record`` returns. Else a function that queues a job
            and returns False when it dropped it (``writes.WritePool.defer``):
            ``record`` then returns at once, the Event is written later
            with the time of the occurrence, and a dropped one is counted
            in ``dropped``.
    """

    def __init__(
        self,
        api: EventAPI,
        aggregator: EventAggregator | None = None,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
        dispatch: Callable[[Callable[[], None]], bool] | None = None,
    ) -> None:
        self._api = api
        self._dispatch = dispatch
        #: Occurrences not written because ``dispatch`` dropped them.
        self.dropped = 0
        self._aggregator = aggregator or EventAggregator()
        self._instance = (instance or socket.gethostname() or COMPONENT)[:MAX_INSTANCE]
        self._clock = clock
        self._lock = threading.Lock()
        # HTTP statuses of failures logged at WARNING since the last success.
        self._warned: set[int] = set()

    def record(self, workload: Workload, type: str, reason: str, message: str) -> None:
        """Record one occurrence of an event about ``workload``; best effort, never raises.

        Args:
            workload: the snapshot acted on (``kind``, ``namespace``, ``name``
                and ``uid`` identify it; without a ``uid`` the Event is written
                but ``kubectl describe`` does not show it).
            type: ``Normal`` or ``Warning`` (``NORMAL``, ``WARNING``).
            reason: ``CLONED``, ``PATCHED``, ``CLONE_FAILED`` or ``REVERTED``
                (any CamelCase word is accepted).
            message: what happened, from references and reasons only; masked
                and truncated by ``clean_message``.

        Returns:
            None. An unknown type is logged and nothing is written; a rate
            limited event is dropped (DEBUG); a failed API call is logged at
            WARNING the first time per HTTP status (0: unreachable) since the
            last successful write, at DEBUG after that, so a missing RBAC rule
            or an unreachable API server does not flood the log.
        """
        try:
            if type not in TYPES:
                log.warning(
                    "not recording event %s on %s: unknown type %r", reason, workload.key, type
                )
                return
            message, now = clean_message(message), self._clock()
            if self._dispatch is None:
                self._record(workload, type, reason, message, now)
            elif not self._dispatch(lambda: self._write(workload, type, reason, message, now)):
                with self._lock:
                    self.dropped += 1
        except Exception:  # an event must never break the caller
            log.warning("recording event %s on %s failed", reason, workload.key, exc_info=True)

    def _write(self, workload: Workload, type: str, reason: str, message: str, now: float) -> None:
        """A deferred ``_record``: never raises."""
        try:
            self._record(workload, type, reason, message, now)
        except Exception:
            log.warning("recording event %s on %s failed", reason, workload.key, exc_info=True)

    def _record(self, workload: Workload, type: str, reason: str, message: str, now: float) -> None:
        key = EventKey.of(workload, type, reason, message)
        # The lock guards the aggregator's state, not the API calls, so
        # Events of different workloads are written in parallel.
        with self._lock:
            decision = self._aggregator.observe(key, now)
        if decision.action == DROP:
            log.debug(
                "event %s on %s rate limited (count %d)", reason, workload.key, decision.count
            )
            return
        try:
            if decision.action == UPDATE and decision.name is not None:
                try:
                    self._api.patch_event(
                        workload.namespace,
                        decision.name,
                        {"count": decision.count, "lastTimestamp": rfc3339(now)},
                    )
                    self._warned.clear()
                    return
                except KubeError as exc:
                    if exc.status != 404:
                        raise
                    # The Event expired (the API server's --event-ttl) or was
                    # deleted: create it again with the series so far.
            body = event_body(
                workload, type, reason, message, decision.count, decision.first, now, self._instance
            )
            name = self._api.create_event(workload.namespace, body)
            with self._lock:
                self._aggregator.created(key, name)
            self._warned.clear()
        except KubeError as exc:
            level = logging.DEBUG if exc.status in self._warned else logging.WARNING
            self._warned.add(exc.status)
            log.log(level, "recording event %s on %s failed: %s", reason, workload.key, exc)


class NullRecorder:
    """An ``EventRecorder`` stand-in that records nothing (events disabled, unit tests)."""

    def record(self, workload: Workload, type: str, reason: str, message: str) -> None:
        """Do nothing; same signature as ``EventRecorder.record``."""


# Messages -------------------------------------------------------------------
# Built from references and reasons only; identical inputs give identical
# messages, so repeated occurrences aggregate into one Event.
