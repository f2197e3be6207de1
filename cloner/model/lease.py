"""Leader election decisions on a coordination.k8s.io/v1 Lease. Pure: no I/O.

Called by ``leader`` (the adapter that reads and writes the Lease). It must
stay free of ``kubernetes``: every decision here is testable with plain data.

The rules are those of client-go's ``tools/leaderelection`` (``leaderelection.go``
``tryAcquireOrRenew`` and ``release``; ``resourcelock/leaselock.go``):

- a candidate may take the Lease when there is none (it creates it), when its
  ``holderIdentity`` is empty (released), when it already holds it (renewal),
  or when the record has not changed for ``leaseDurationSeconds`` *as observed
  locally*: the remote ``renewTime`` is never compared with the local clock, so
  clock skew between replicas does not matter, only their clock rates;
- renewing keeps ``acquireTime`` and ``leaseTransitions``; taking over sets a
  new ``acquireTime`` and adds one to ``leaseTransitions``;
- releasing writes an empty holder and ``leaseDurationSeconds: 1`` (client-go's
  ``ReleaseOnCancel``), so another replica takes over at its next attempt.

Times in a Lease are ``MicroTime``: RFC 3339 in UTC with exactly six fractional
digits (``2006-01-02T15:04:05.000000Z``, apimachinery ``RFC3339Micro``).
Durations here are seconds; ``observed_at``/``now`` arguments are readings of
one local monotonic clock (``time.monotonic()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: client-go's ``JitterFactor``: the renew deadline must exceed this many retry periods.
JITTER_FACTOR = 1.2

#: ``leaseDurationSeconds`` written when the Lease is released (client-go ``release``).
RELEASED_DURATION_SECONDS = 1


def micro_time(moment: datetime) -> str:
    """Format a moment as a Kubernetes ``MicroTime``.

    Args:
        moment: an aware datetime (any zone) or a naive one taken to be UTC.

    Returns:
        ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, for example
        ``2024-05-01T12:00:00.000000Z`` (always six fractional digits, which
        the API server's ``RFC3339Micro`` layout requires).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_duration_seconds(lease_duration: float) -> int:
    """The whole seconds written to ``leaseDurationSeconds`` for a lease duration.

    Rounded up, never down, so other replicas wait at least as long as the
    holder assumes they do.

    Args:
        lease_duration: seconds, at least 1.

    Returns:
        ``ceil(lease_duration)``.
    """
    return math.ceil(lease_duration)


def validate_timing(lease_duration: float, renew_deadline: float, retry_period: float) -> None:
    """Check the three durations the way client-go's ``NewLeaderElector`` does.

    Args:
        lease_duration: seconds a candidate waits, without seeing the record
            change, before it takes the Lease over.
        renew_deadline: seconds the holder keeps trying to renew before it
            stops acting as leader.
        retry_period: seconds between two attempts to acquire or renew.

    Raises:
        ValueError: ``lease_duration`` is below 1 s or not greater than
            ``renew_deadline``; ``renew_deadline`` is not greater than
            ``JITTER_FACTOR * retry_period``; ``retry_period`` is not positive.
            The message names the offending value.
    """
    if not lease_duration >= 1:
        raise ValueError(f"lease_duration must be at least 1 second, got {lease_duration}")
    if not retry_period > 0:
        raise ValueError(f"retry_period must be greater than zero, got {retry_period}")
    if not lease_duration > renew_deadline:
        raise ValueError(
            f"lease_duration ({lease_duration}) must be greater than "
            f"renew_deadline ({renew_deadline})"
        )
    if not renew_deadline > JITTER_FACTOR * retry_period:
        raise ValueError(
            f"renew_deadline ({renew_deadline}) must be greater than "
            f"{JITTER_FACTOR} * retry_period ({retry_period})"
        )


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The leader election fields of a Lease's ``spec``.

    Two records are equal exactly when the fields are, so comparing the record
    read now with the one read before tells whether the holder renewed
    (``renew_time`` changes on every renewal).

    Attributes:
        holder: ``holderIdentity``; ``""`` when nobody holds the Lease.
        duration_seconds: ``leaseDurationSeconds``, in whole seconds (0 if absent).
        acquire_time: ``acquireTime`` as the MicroTime string read or written, or None.
        renew_time: ``renewTime`` as the MicroTime string read or written, or None.
        transitions: ``leaseTransitions``, how often the holder changed (0 if absent).
    """

    holder: str
    duration_seconds: int
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> LeaseRecord:
        """The record of a Lease ``spec`` as the API server returns it (raw JSON).

        Args:
            spec: the ``spec`` mapping, camelCase keys; None or missing keys
                give the empty values (``""``, 0, None).

        Returns:
            The record.
        """
        spec = spec or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime") or None,
            renew_time=spec.get("renewTime") or None,
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        """The Lease ``spec`` fields of this record (camelCase, JSON-ready).

        Returns:
            ``{"holderIdentity": str, "leaseDurationSeconds": int,
            "leaseTransitions": int, "acquireTime": str, "renewTime": str}``;
            the two times are left out when None.
        """
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time is not None:
            spec["renewTime"] = self.renew_time
        return spec


def expires_at(record: LeaseRecord, observed_at: float) -> float:
    """When another holder's claim runs out, on the local monotonic clock.

    Args:
        record: the record last read.
        observed_at: monotonic seconds at which that record was first seen
            (the last time it was observed to change).

    Returns:
        ``observed_at + record.duration_seconds`` (seconds, monotonic).
    """
    return observed_at + record.duration_seconds


def may_acquire(record: LeaseRecord | None, identity: str, observed_at: float, now: float) -> bool:
    """Whether ``identity`` may write itself into the Lease now (acquire or renew).

    Args:
        record: the record read now; None when the Lease does not exist.
        identity: this candidate's ``holderIdentity``.
        observed_at: monotonic seconds at which ``record`` was first seen
            unchanged (ignored when there is no record or no holder).
        now: monotonic seconds now, on the same clock.

    Returns:
        True when there is no Lease, nobody holds it, ``identity`` holds it,
        or the record has not changed for ``duration_seconds`` (``now`` is at
        or after ``observed_at + duration_seconds``); False while another
        holder's claim is still fresh.
    """
    if record is None or not record.holder or record.holder == identity:
        return True
    return now >= expires_at(record, observed_at)


def acquired_record(
    old: LeaseRecord | None, identity: str, duration_seconds: int, now: str
) -> LeaseRecord:
    """The record to write when ``identity`` creates, takes over or renews the Lease.

    Args:
        old: the record read (None when the Lease is being created).
        identity: the new (or continuing) holder.
        duration_seconds: ``leaseDurationSeconds`` to announce, whole seconds.
        now: the current time as a MicroTime string (``micro_time``).

    Returns:
        A renewal (``old.holder == identity``) keeps ``acquire_time`` and
        ``transitions`` and sets ``renew_time`` to ``now``; a takeover sets
        both times to ``now`` and counts one more transition; a new Lease
        starts at 0 transitions.
    """
    if old is None:
        return LeaseRecord(identity, duration_seconds, now, now, 0)
    if old.holder == identity:
        return LeaseRecord(
            identity, duration_seconds, old.acquire_time or now, now, old.transitions
        )
    return LeaseRecord(identity, duration_seconds, now, now, old.transitions + 1)


def released_record(old: LeaseRecord, now: str) -> LeaseRecord:
    """The record that gives the Lease up (client-go ``release``).

    Args:
        old: the record this holder last wrote.
        now: the current time as a MicroTime string.

    Returns:
        Empty holder, ``leaseDurationSeconds`` 1, both times ``now``, the same
        transition count (the next holder adds one).
    """
    return LeaseRecord("", RELEASED_DURATION_SECONDS, now, now, old.transitions)
