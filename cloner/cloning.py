"""Ensuring owned copies for one reconcile cycle: cache, backoff, pauses, concurrency, stop.

Called by ``reconcile`` with the distinct source images a cycle needs. For
each it returns the reference workloads may be patched to, or why not:

- a source verified before is answered from memory (no registry call);
- a source backing off after a failure, or whose source or owned registry is
  paused after "too many requests", is not tried (``waiting``);
- otherwise the owned registry is asked for the owned name (no layers
  pulled) and the image is cloned only if it is missing.

Clones run on ``cloneConcurrency`` threads, at most one per source registry
at a time, so a slow or paused registry does not hold up the others. After
``stop()`` no new clone starts, and a clone still in flight is abandoned:
its result is not used to patch anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cloner.backoff import Backoff, BackoffPolicy, RegistryPauses
from cloner.errors import RegistryError
from cloner.reference import Reference

log = logging.getLogger(__name__)


class ImageRegistry(Protocol):
    """What cloning needs from registries (implemented by ``registry.DockerRegistry``)."""

    def manifest_digest(self, ref: Reference) -> str | None:
        """Digest of ``ref``'s manifest, None if absent; raises ``RegistryError``."""
        ...

    def clone(self, source: Reference, owned: Reference) -> str:
        """Copy ``source`` to ``owned``; returns the verified pushed digest."""
        ...


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The outcome for one distinct source image in a cycle.

    Attributes:
        source: the source reference.
        image: the reference to patch workloads to (None when not ready).
        cloned: True when this cycle pushed it (False: it was already there).
        reason: the failure reason (``RegistryError.reason``) of a failure in
            this cycle, None otherwise.
        message: what failed, or why the image waits.
        waiting: seconds until the next try when the image was not tried this
            cycle (backing off, registry paused, shutting down), else None.
        duration: seconds the clone took, when this cycle cloned it.
    """

    source: Reference
    image: str | None
    cloned: bool = False
    reason: str | None = None
    message: str | None = None
    waiting: float | None = None
    duration: float | None = None


def patched_image(source: Reference, owned: Reference, digest: str, pin: bool) -> str:
    """The reference a workload is patched to.

    A source pinned by digest stays pinned: ``owned@digest`` (and the tag too
    when the source had one). A tagged source points to ``owned:tag``, or to
    ``owned:tag@digest`` with ``pin`` (``pinDigest``), so that a later move of
    the owned tag cannot change what runs.
    """
    if source.digest is None:
        return str(owned.with_digest(digest)) if pin else str(owned)
    if source.tag is None:
        return str(owned.with_tag(None).with_digest(digest))
    return str(owned.with_digest(digest))


class ImageCloner:
    """Owned copies across cycles: what is verified, what backs off, what is paused.

    Args:
        registry: the registry side.
        pin_digest: ``pinDigest``.
        backoff: per-image retry timing.
        rate_limit_pause: seconds a registry is paused after a 429 without Retry-After.
        concurrency: clones at once (at most one per source registry).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        registry: ImageRegistry,
        pin_digest: bool = False,
        backoff: BackoffPolicy | None = None,
        rate_limit_pause: float = 300.0,
        concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._pin = pin_digest
        self._backoff = Backoff(backoff or BackoffPolicy())
        self._pauses = RegistryPauses()
        self._rate_limit_pause = rate_limit_pause
        self._concurrency = max(1, concurrency)
        self._clock = clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._registry_locks: dict[str, threading.Lock] = {}
        # canonical source -> reference to patch to, once verified in the owned registry
        self._verified: dict[str, str] = {}
        # owned repository -> the one source repository it holds copies of
        self._owned_sources: dict[str, str] = {}

    def stop(self) -> None:
        """No new clone starts; results still in flight are abandoned."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True after ``stop()``."""
        return self._stopping.is_set()

    def waiting_images(self) -> dict[str, dict[str, str]]:
        """Images backing off now: canonical source -> ``{"until": RFC 3339, "reason": ...}``.

        Served by the running controller (``/state/backoff``) so that ``plan``
        can show it.
        """
        now = self._clock()
        wall = time.time()
        return {
            key: {
                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall + until - now)),
                "reason": reason,
            }
            for key, (until, reason) in self._backoff.waiting_all(now).items()
        }

    def forget(self, source: Reference) -> None:
        """Drop a verified source, so the next cycle asks the owned registry again."""
        with self._lock:
            self._verified.pop(str(source), None)

    def ensure_all(self, pairs: Iterable[tuple[Reference, Reference]]) -> dict[str, ImageResult]:
        """Make sure every ``(source, owned)`` has an owned copy, as far as possible now.

        Returns:
            Canonical source -> ``ImageResult``. Never raises for an image.
        """
        results: dict[str, ImageResult] = {}
        todo: list[tuple[Reference, Reference]] = []
        for source, owned in pairs:
            key = str(source)
            if key in results or any(str(s) == key for s, _ in todo):
                continue
            early = self._precheck(source, owned)
            if early is not None:
                results[key] = early
            else:
                todo.append((source, owned))
        if not todo:
            return results
        workers = min(self._concurrency, len(todo))
        if workers == 1:
            for source, owned in todo:
                results[str(source)] = self._ensure(source, owned)
            return results
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clone") as pool:
            futures = {str(s): pool.submit(self._ensure, s, o) for s, o in todo}
            for key, future in futures.items():
                results[key] = future.result()
        return results

    def _precheck(self, source: Reference, owned: Reference) -> ImageResult | None:
        """A result without any registry call, or None when the image must be tried."""
        key = str(source)
        with self._lock:
            cached = self._verified.get(key)
            if cached is not None:
                return ImageResult(source, cached)
            claimed = self._owned_sources.setdefault(owned.name, source.name)
        if claimed != source.name:
            message = (
                f"owned name {owned.name} of {source} is already used by {claimed}; "
                "not cloned (change naming or flatSeparator)"
            )
            log.error(message)
            return ImageResult(source, None, reason="naming_collision", message=message)
        return self._waiting(source, owned)

    def _waiting(self, source: Reference, owned: Reference) -> ImageResult | None:
        now = self._clock()
        if self.stopping:
            return ImageResult(source, None, message="shutting down", waiting=0.0)
        backing_off = self._backoff.waiting(str(source), now)
        if backing_off is not None:
            until, reason = backing_off
            return ImageResult(
                source,
                None,
                message=f"backing off after {reason} "
                f"({self._backoff.failures(str(source))} failures)",
                waiting=until - now,
            )
        for registry in (source.registry, owned.registry):
            until = self._pauses.paused_until(registry, now)
            if until is not None:
                return ImageResult(
                    source,
                    None,
                    message=f"registry {registry} paused after too many requests",
                    waiting=until - now,
                )
        return None

    def _registry_lock(self, registry: str) -> threading.Lock:
        with self._lock:
            return self._registry_locks.setdefault(registry, threading.Lock())

    def _ensure(self, source: Reference, owned: Reference) -> ImageResult:
        key = str(source)
        with self._registry_lock(source.registry):
            # Another clone of this registry may have paused it meanwhile.
            waiting = self._waiting(source, owned)
            if waiting is not None:
                return waiting
            try:
                digest = self._registry.manifest_digest(owned)
                # The owned tag of a digest-only source is derived from that
                # digest, so its presence is proof enough. A source with a tag
                # and a digest reuses the owned tag only if it holds that very
                # manifest.
                reuse = digest is not None and (
                    source.digest is None or source.tag is None or source.digest == digest
                )
                cloned = False
                started = self._clock()
                if not reuse:
                    digest = self._registry.clone(source, owned)
                    cloned = True
            except RegistryError as exc:
                return self._failed(source, owned, exc)
            except Exception as exc:  # one image's surprise must not end the cycle
                log.exception("unexpected error while cloning %s", source)
                return self._failed(
                    source, owned, RegistryError("registry_error", f"clone {source}: {exc!r}")
                )
        if self.stopping:
            log.warning("abandoning %s: shutting down (nothing is patched for it)", source)
            return ImageResult(source, None, message="abandoned: shutting down", waiting=0.0)
        assert digest is not None
        if cloned:
            log.info("cloned %s to %s (%s)", source, owned, digest)
        image = patched_image(source, owned, digest, self._pin)
        with self._lock:
            self._verified[key] = image
        self._backoff.succeeded(key)
        duration = self._clock() - started if cloned else None
        return ImageResult(source, image, cloned=cloned, duration=duration)

    def _failed(self, source: Reference, owned: Reference, exc: RegistryError) -> ImageResult:
        now = self._clock()
        not_before = now + exc.retry_after if exc.retry_after is not None else None
        until = self._backoff.failed(str(source), exc.reason, now, not_before)
        if exc.reason == "rate_limited":
            registry = exc.registry or source.registry
            pause = exc.retry_after if exc.retry_after is not None else self._rate_limit_pause
            self._pauses.pause(registry, now + pause)
            log.warning("pausing registry %s for %.0fs: too many requests", registry, pause)
        log.error(
            "clone of %s to %s failed (%s), next try in %.0fs: %s",
            source,
            owned,
            exc.reason,
            until - now,
            exc,
        )
        return ImageResult(source, None, reason=exc.reason, message=str(exc), waiting=None)
