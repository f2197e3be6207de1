"""Kubernetes Events on the workloads the controller acts on, aggregated like client-go.

``kubectl describe deployment web`` then tells what the controller did to it:

- ``Cloned`` (``CLONED``, Normal): an image the workload uses was copied;
- ``Patched`` (``PATCHED``, Normal): the workload was switched to owned copies;
- ``CloneFailed`` (``CLONE_FAILED``, Warning): an image it uses could not be
  cloned; the message names the reason (``auth``, ``not_found``, ``network``...);
- ``Reverted`` (``REVERTED``, Normal): ``controller.py revert`` restored it;
- ``OwnedCopyReplaced`` (``OWNED_COPY_REPLACED``, Warning): the owned name of
  an image it uses held other content, which was copied over before any patch;
- ``SourceMoved`` (``SOURCE_MOVED``, Normal): the tag of an image it uses now
  names other content upstream, and the owned tag was copied again;
- ``SwitchCompleted`` (``SWITCH_COMPLETED``, Normal): the rollout of a switch
  to owned copies completed;
- ``SwitchFailed`` (``SWITCH_FAILED``, Warning): the owned copies broke the
  rollout (a pull refused, admission denied); the message gives the cause
  and the kubelet's or API server's words;
- ``SwitchUndone`` (``SWITCH_UNDONE``, Normal): after that, the workload was
  patched back to its original references;
- ``SignaturesNotCopied`` (``SIGNATURES_NOT_COPIED``, Warning): the
  signatures, attestations, SBOMs or referrers of an image it uses could not
  be copied beside the owned copy (retried with backoff);
- ``SignaturesLost`` (``SIGNATURES_LOST``, Warning): an image it uses is
  signed, and the Docker backend's copy has new digests, so the signatures
  are not valid for it;
- ``SwitchSlow`` (``SWITCH_SLOW``, Warning): a rollout took longer than
  ``rollout.timeout`` for reasons that are not the owned copy's (reported,
  never undone).

Two parts, as in client-go's ``tools/record`` package; this module is the
pure one:

- ``EventAggregator`` is pure (no I/O, no clock of its own). It plays
  client-go's ``EventCorrelator``: the same event (same involved object, type,
  reason and message) seen again within ``window`` seconds of its previous
  occurrence becomes an update of the existing Event (``count`` and
  ``lastTimestamp``) instead of a new Event; and a token bucket per involved
  object (client-go's ``EventSourceObjectSpamFilter``: by default a burst of 25,
  then one event per 300 seconds) drops what exceeds it. A dropped occurrence
  still counts, so the next write carries the true ``count``.
- ``cloner.ops.events.EventRecorder`` does the I/O through the small
  ``EventAPI`` protocol (implemented by ``kube.KubeClient``). ``record`` never
  raises: an event is best effort, and a failure to write one is logged and
  forgotten.

Events are core/v1 ``Event`` objects (the API ``kubectl describe`` reads).
Messages are built by the caller from references and failure reasons, never
from credentials; as a second line of defence ``record`` masks URL user
information and ``Basic``/``Bearer`` tokens and truncates to 1024 characters.
Like ``workloads``, this module must not import ``kubernetes``.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cloner.model.workloads import Workload

log = logging.getLogger(__name__)

#: Event reasons (``Event.reason``, CamelCase like Kubernetes' own).
CLONED = "Cloned"
PATCHED = "Patched"
CLONE_FAILED = "CloneFailed"
REVERTED = "Reverted"
OWNED_COPY_REPLACED = "OwnedCopyReplaced"
SOURCE_MOVED = "SourceMoved"
SWITCH_FAILED = "SwitchFailed"
SWITCH_UNDONE = "SwitchUndone"
SWITCH_COMPLETED = "SwitchCompleted"
SWITCH_SLOW = "SwitchSlow"
SIGNATURES_NOT_COPIED = "SignaturesNotCopied"
SIGNATURES_LOST = "SignaturesLost"


class EventType(StrEnum):
    """``Event.type``: the two the core/v1 Event API defines."""

    NORMAL = "Normal"  #: something worked as intended
    WARNING = "Warning"  #: something failed or needs a person


NORMAL, WARNING = EventType.NORMAL, EventType.WARNING
TYPES = tuple(EventType)

#: ``source.component`` and ``reportingComponent`` of every Event.
COMPONENT = "image-cloner"

#: Longest message written, in characters; a longer one is cut and ends in ``...``.
MAX_MESSAGE = 1024
#: Longest ``reportingInstance`` the API server accepts, in characters.
MAX_INSTANCE = 128

#: Seconds after an occurrence within which the same event updates the
#: existing Event (client-go's aggregation interval).
DEFAULT_WINDOW = 600.0
#: Events per involved object allowed at once (client-go's ``defaultSpamBurst``).
DEFAULT_BURST = 25
#: Seconds per event refilled after the burst (client-go: ``defaultSpamQPS`` = 1/300).
DEFAULT_REFILL = 300.0
#: Series and buckets remembered at most, least recently used dropped first
#: (client-go's ``maxLruCacheEntries``).
MAX_ENTRIES = 4096


class EventAction(StrEnum):
    """What the recorder does with one observed event (``Occurrence.action``)."""

    CREATE = "create"  #: a new Event object
    UPDATE = "update"  #: the series' Event gets its count and last time patched
    DROP = "drop"  #: over the spam filter's budget: nothing is sent


CREATE, UPDATE, DROP = EventAction.CREATE, EventAction.UPDATE, EventAction.DROP


@dataclass(frozen=True, slots=True)
class EventKey:
    """What makes two events "the same" (client-go ``getEventKey``).

    Attributes:
        kind, namespace, name, uid: the involved object.
        type: ``Normal`` or ``Warning``.
        reason: for example ``CloneFailed``.
        message: the message as it will be written (already cleaned).
    """

    kind: str
    namespace: str
    name: str
    uid: str
    type: str
    reason: str
    message: str

    @property
    def involved_object(self) -> tuple[str, str, str, str]:
        """``(kind, namespace, name, uid)``: the key of the per-object rate limit."""
        return (self.kind, self.namespace, self.name, self.uid)

    @classmethod
    def of(cls, workload: Workload, type: str, reason: str, message: str) -> EventKey:
        """The key of an event about ``workload`` (``message`` as it will be written)."""
        return cls(
            workload.kind, workload.namespace, workload.name, workload.uid, type, reason, message
        )


@dataclass(frozen=True, slots=True)
class Occurrence:
    """What to do with one occurrence of an event (``EventAggregator.observe``).

    Attributes:
        action: ``create`` (a new Event), ``update`` (patch ``name``'s count and
            lastTimestamp) or ``drop`` (rate limited: write nothing).
        count: the occurrences of this event in its series so far, this one
            included: the ``count`` to write (also set for ``drop``).
        name: the existing Event to patch (``update`` only), else None.
        first: epoch seconds of the series' first occurrence (``firstTimestamp``).
    """

    action: EventAction
    count: int
    name: str | None
    first: float


@dataclass(slots=True)
class _Series:
    """Occurrences of one event key: the Event that shows them, once created."""

    first: float
    last: float
    count: int
    name: str | None = None


@dataclass(slots=True)
class _Bucket:
    """A token bucket: ``tokens`` as of ``stamp`` (epoch seconds)."""

    tokens: float
    stamp: float


class EventAggregator:
    """Decides, per occurrence, whether an event creates, updates or is dropped. Pure.

    Not thread-safe: ``EventRecorder`` serialises its calls.

    Args:
        window: seconds after an occurrence within which the same event
            (``EventKey``) updates the existing Event; later, a new Event
            starts a new series with count 1. Must be > 0.
        burst: events per involved object allowed in a row (>= 1).
        refill: seconds until one more event per involved object is allowed
            once the burst is spent (> 0).
        max_entries: series and buckets kept each; the least recently used
            are forgotten first (a forgotten bucket starts full again, a
            forgotten series makes the next occurrence a new Event).

    Raises:
        ValueError: a limit out of range.
    """

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        burst: int = DEFAULT_BURST,
        refill: float = DEFAULT_REFILL,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if window <= 0 or refill <= 0 or burst < 1 or max_entries < 1:
            raise ValueError(
                f"event aggregation: window and refill must be > 0, burst and max_entries "
                f">= 1; got window={window} burst={burst} refill={refill} "
                f"max_entries={max_entries}"
            )
        self._window = window
        self._burst = burst
        self._refill = refill
        self._max = max_entries
        self._series: OrderedDict[EventKey, _Series] = OrderedDict()
        self._buckets: OrderedDict[tuple[str, str, str, str], _Bucket] = OrderedDict()

    def observe(self, key: EventKey, now: float) -> Occurrence:
        """Count one occurrence of ``key`` and say what to write.

        Args:
            key: the event.
            now: epoch seconds of this occurrence.

        Returns:
            ``create`` when the event has no live Event yet (first occurrence,
            its window expired, or its Event was never created), ``update``
            with the Event's name otherwise, ``drop`` when the involved
            object's token bucket is empty. ``count`` is cumulative over the
            series, dropped occurrences included.
        """
        series = self._series.get(key)
        if series is None or now - series.last > self._window:
            series = _Series(first=now, last=now, count=1)
        else:
            series.count += 1
            series.last = now
        self._remember(self._series, key, series)
        if not self._take_token(key.involved_object, now):
            return Occurrence(DROP, series.count, None, series.first)
        if series.name is None:
            return Occurrence(CREATE, series.count, None, series.first)
        return Occurrence(UPDATE, series.count, series.name, series.first)

    def created(self, key: EventKey, name: str) -> None:
        """Note the name the API server gave the Event of ``key``'s series.

        Later occurrences within the window become updates of that Event.
        Nothing happens when the series is no longer remembered.

        Args:
            key: the event that was created.
            name: the created Event's ``metadata.name``.
        """
        series = self._series.get(key)
        if series is not None:
            series.name = name

    def _take_token(self, obj: tuple[str, str, str, str], now: float) -> bool:
        """Spend one token of ``obj``'s bucket; False when it is empty."""
        bucket = self._buckets.get(obj)
        if bucket is None:
            bucket = _Bucket(float(self._burst), now)
        else:
            elapsed = max(0.0, now - bucket.stamp)  # a clock set back refills nothing
            bucket.tokens = min(float(self._burst), bucket.tokens + elapsed / self._refill)
            bucket.stamp = now
        self._remember(self._buckets, obj, bucket)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        """Store as most recently used; forget the least recently used beyond ``max_entries``."""
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._max:
            cache.popitem(last=False)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_AUTH_TOKEN = re.compile(r"\b(?P<scheme>Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def clean_message(message: str) -> str:
    """The message as written: credentials masked, at most ``MAX_MESSAGE`` characters.

    Args:
        message: the caller's message.

    Returns:
        ``message`` with URL user information (``https://user:pass@host`` ->
        ``https://***@host``) and ``Basic``/``Bearer`` tokens masked, cut to
        1024 characters (ending in ``...`` when cut).
    """
    message = _USERINFO.sub(r"\g<scheme>***@", message)
    message = _AUTH_TOKEN.sub(r"\g<scheme> ***", message)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return message


def rfc3339(epoch: float) -> str:
    """``2024-05-01T12:00:00Z`` for epoch seconds (UTC, whole seconds, as ``metav1.Time``)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    workload: Workload,
    type: str,
    reason: str,
    message: str,
    count: int,
    first: float,
    last: float,
    instance: str,
) -> dict[str, Any]:
    """A core/v1 Event about ``workload``, as JSON for the create call.

    Args:
        workload: the involved object (its ``uid`` is what ``kubectl describe``
            matches; left out when empty).
        type, reason, message: as written (``message`` already cleaned).
        count: occurrences in the series.
        first, last: epoch seconds of the first and latest occurrence.
        instance: ``reportingInstance`` (this process's host name).

    Returns:
        The Event, named by the API server (``generateName: <workload name>.``).
    """
    involved = {
        "apiVersion": "apps/v1",
        "kind": workload.kind,
        "namespace": workload.namespace,
        "name": workload.name,
        "uid": workload.uid,
        "resourceVersion": workload.resource_version,
    }
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{workload.name}.", "namespace": workload.namespace},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "reason": reason,
        "message": message,
        "type": type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": rfc3339(first),
        "lastTimestamp": rfc3339(last),
        "count": count,
    }


def cloned_message(source: str, owned: str) -> str:
    """``Cloned <source> to <owned>`` (``owned``: the reference workloads are patched to)."""
    return f"Cloned {source} to {owned}"


def patched_message(changes: Iterable[tuple[str, str, str]]) -> str:
    """``Patched container web: nginx:1.25 -> registry.example.com/...; container ...``.

    Args:
        changes: ``(container name, image before, image after)`` per changed container.
    """
    parts = [f"container {name}: {before} -> {after}" for name, before, after in changes]
    return "Patched " + "; ".join(parts) if parts else "Patched"


def clone_failed_message(source: str, reason: str, detail: str | None = None) -> str:
    """``Cannot clone <source> (<reason>): <detail>``.

    Args:
        source: the source reference.
        reason: ``RegistryError.reason`` (``auth``, ``not_found``, ``network``...).
        detail: what failed (``ImageResult.message``, which never holds
            credentials); left out when None or empty.
    """
    text = f"Cannot clone {source} ({reason})"
    return f"{text}: {detail}" if detail else text


def reverted_message(restored: Iterable[tuple[str, str]]) -> str:
    """``Reverted container web to nginx:1.25; ...``.

    Args:
        restored: ``(container name, original image)`` per restored container.
    """
    parts = [f"container {name} to {image}" for name, image in restored]
    return "Reverted " + "; ".join(parts) if parts else "Reverted"


def owned_copy_replaced_message(source: str, before: str, image: str) -> str:
    """``Owned name of <source> held <before>, not the source's content; copied over: <image>``."""
    return f"Owned name of {source} held {before}, not the source's content; copied over: {image}"


def source_moved_message(source: str, before: str, now: str) -> str:
    """``Source <source> moved from <before> to <now>; the owned tag was copied again``."""
    return f"Source {source} moved from {before} to {now}; the owned tag was copied again"


def signatures_not_copied_message(source: str, found: int, reason: str) -> str:
    """``Signatures and referrers of <source> (N found) not copied ... (<reason>)``."""
    count = f" ({found} found)" if found else ""
    return (
        f"Signatures and referrers of {source}{count} not copied to the owned registry "
        f"({reason}); retrying with backoff"
    )


def signatures_lost_message(source: str, found: int) -> str:
    """``<source> has <found> signatures or referrers; the Docker backend's copy ...``."""
    return (
        f"{source} has {found} signatures, attestations or referrers; the Docker backend's "
        "copy has new digests, so they are not valid for it (use copyBackend: skopeo)"
    )


def switch_failed_message(cause: str, detail: str) -> str:
    """``Switch to owned copies failed (<cause>): <kubelet's or API server's words>``."""
    return f"Switch to owned copies failed ({cause}): {detail}"


def switch_undone_message(restored: Iterable[tuple[str, str]], cause: str) -> str:
    """``Undid the switch (<cause>): container web back to nginx:1; ...``."""
    back = "; ".join(f"container {name} back to {original}" for name, original in restored)
    return (
        f"Undid the switch ({cause}): {back}; held back until the config, the "
        "credentials or the owned copy change"
    )


def switch_completed_message(owned: Iterable[tuple[str, str]]) -> str:
    """``Rolled out on owned copies: container web uses <owned>; ...``."""
    return "Rolled out on owned copies: " + "; ".join(
        f"container {name} uses {image}" for name, image in owned
    )


def switch_slow_message(seconds: float, detail: str) -> str:
    """``Rollout not complete <n>s after the switch (not undone: ...): <status>``."""
    return (
        f"Rollout not complete {seconds:.0f}s after the switch (not undone: no "
        f"owned-image failure seen): {detail}"
    )
