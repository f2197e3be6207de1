"""Retry timing: per-image exponential backoff with jitter, per-registry pauses. Pure.

Called by ``reconcile``. Nothing here sleeps or reads a clock: callers pass
``now`` (seconds, any monotonic origin) and, for jitter, a random source, so
the rules are unit-testable. A failed image is retried after
``initial * 2**(failures-1)`` seconds, capped at ``max``, spread by
``±jitter`` (as client-go's ``wait.Backoff`` and gRPC's connection backoff
do). A permanent failure (``RegistryError.temporary`` False: ``auth``,
``not_found``, ``insecure_registry``, ``naming_collision``,
``multi_platform``...) cannot heal by waiting, so it backs off to ``max`` at
once; it is tried again early only when the inputs it failed with (the
config and the registry credentials, as a fingerprint) change. A registry
that answered HTTP 429 is paused as a whole until its ``Retry-After`` (or a
default pause), so no image from it is tried meanwhile.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait after failures.

    Attributes:
        initial: seconds after the first failure.
        maximum: cap in seconds.
        jitter: fraction of each wait added or removed at random (0..1).
    """

    initial: float = 30.0
    maximum: float = 3600.0
    jitter: float = 0.2

    def delay(
        self, failures: int, rand: Callable[[], float] = random.random, permanent: bool = False
    ) -> float:
        """Seconds to wait after ``failures`` consecutive failures (>= 1).

        ``permanent``: the cap at once (spread by the jitter, never beyond the cap).
        """
        if permanent:
            base = self.maximum
        else:
            base = min(self.maximum, self.initial * 2 ** max(0, failures - 1))
        spread = base * self.jitter * (2 * rand() - 1)
        return max(0.0, min(self.maximum, base + spread))


@dataclass(slots=True)
class _Entry:
    failures: int
    until: float
    reason: str
    inputs: str | None = None  # the fingerprint a permanent failure happened with


@dataclass(slots=True)
class Backoff:
    """Per-key failure state (a key is a canonical source reference).

    Args:
        policy: the timing.
        rand: random source in [0, 1), for jitter.
    """

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    rand: Callable[[], float] = random.random
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def backing_off(self, key: str, now: float, inputs: str = "") -> tuple[float, str] | None:
        """``(until, reason)`` while ``key`` is backing off, else None.

        Args:
            key: the image.
            now: the current time.
            inputs: the fingerprint of the config and credentials in force; a
                permanent failure recorded under other inputs waits no longer.
        """
        entry = self._entries.get(key)
        if entry is None or entry.until <= now:
            return None
        if entry.inputs is not None and entry.inputs != inputs:
            return None
        return entry.until, entry.reason

    def failed(
        self,
        key: str,
        reason: str,
        now: float,
        not_before: float | None = None,
        permanent: bool = False,
        inputs: str = "",
    ) -> float:
        """Record a failure; returns the time (same origin as ``now``) of the next try.

        Args:
            key: the image.
            reason: the failure reason (shown while it waits).
            now: the current time.
            not_before: a time the next try must not precede (a Retry-After).
            permanent: waiting cannot heal it (``RegistryError.temporary`` is
                False): wait the cap, unless ``inputs`` change first.
            inputs: the fingerprint of the config and credentials in force.
        """
        previous = self._entries.get(key)
        failures = previous.failures + 1 if previous else 1
        until = now + self.policy.delay(failures, self.rand, permanent)
        if not_before is not None:
            until = max(until, not_before)
        self._entries[key] = _Entry(failures, until, reason, inputs if permanent else None)
        return until

    def restore(
        self, key: str, failures: int, until: float, reason: str, inputs: str | None = None
    ) -> None:
        """Set the state of ``key`` as read back after a restart (``until`` on this clock).

        ``inputs``: the fingerprint of a permanent failure, None for a temporary one.
        """
        self._entries[key] = _Entry(failures, until, reason, inputs)

    def succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        self._entries.pop(key, None)

    def failures(self, key: str) -> int:
        """Consecutive failures recorded for ``key``."""
        entry = self._entries.get(key)
        return entry.failures if entry else 0

    def backing_off_all(self, now: float, inputs: str = "") -> dict[str, tuple[float, str]]:
        """Every key waiting at ``now`` (see ``waiting``): key -> (until, reason)."""
        return {
            k: (e.until, e.reason)
            for k, e in self._entries.items()
            if e.until > now and (e.inputs is None or e.inputs == inputs)
        }


@dataclass(slots=True)
class RegistryPauses:
    """Registries paused after "too many requests", until a time."""

    _until: dict[str, float] = field(default_factory=dict)

    def pause(self, registry: str, until: float) -> None:
        """Pause ``registry`` until ``until`` (never shortens a pause)."""
        self._until[registry] = max(until, self._until.get(registry, 0.0))

    def paused_until(self, registry: str, now: float) -> float | None:
        """The end of the pause of ``registry``, or None when it is not paused."""
        until = self._until.get(registry)
        if until is None or until <= now:
            return None
        return until
