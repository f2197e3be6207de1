"""Ensuring owned copies for one reconcile cycle: identity, cache, backoff, pauses, stop.

Called by ``reconcile`` with the distinct source images a cycle needs. For
each it returns the reference workloads may be patched to, or why not:

- a source verified within ``refreshInterval`` (a source with a digest:
  ever) is answered from the record (``state.StateBook``, read and changed
  only through the ``ops.state.StateStore`` it shares with ``reconcile``),
  with no registry call;
- a source backing off after a failure, or whose source or owned registry is
  paused after "too many requests", is not tried (``retry_in``);
- otherwise the source is asked for its manifest digest (one HEAD) and the
  owned registry for the owned name, and ``identity.decide`` says what to do:
  reuse the owned copy when it is the source's content, copy when it is
  absent, copy over it when it holds other content (``replaced``), use the
  earlier verified copy when the source cannot be asked, and never use an
  owned name that was not verified. The copy is made from the digest just
  answered, and checked afterwards: the same digest and every platform
  (``skopeo``), or the same image config (``docker``).
- With the Docker engine backend, a multi-platform source is refused
  (``multi_platform``) when nodes run a platform the engine would drop.

Clones run on a pool that outlives a cycle: at most ``cloneConcurrency``
copies (pull and push, or ``skopeo copy``) at a time in total and at most
``registryConcurrency`` from one source registry, so a slow or paused
registry does not hold up the others. Only the copy holds a slot: the pool
has twice as many threads, so the next images' questions to the registries
and the last ones' checks run while copies go on; copies of one source
registry still start in the order their images were submitted, as a loop
would start them, and with ``skopeo`` the first copies of a source registry
ramp up from one at a time so that the base layers they upload can be
mounted by the copies after them (``_Slots``). ``submit`` returns at once
with a future per source; a source already in flight gets the same future,
so one source is never copied twice at once, and a cycle that stops waiting
leaves its clones running for the next cycle to collect. (Parallel pulls
of images that share a layer do not fetch it twice: the Docker engine shares
a layer download in flight between pulls, and keeps pulled layers within
``engineCacheBytes``.) The source is asked for nothing but its manifest
digest (a ``HEAD``, which Docker Hub does not count as a pull) and what the
copy itself fetches; checks read the owned registry. After ``stop()`` no
new clone starts, and a clone still in flight is abandoned: its result is
not used to patch anything.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

from cloner.config import BackoffSettings, CopySettings
from cloner.errors import FailureReason, RegistryError
from cloner.model.artifacts import SignatureMode
from cloner.model.backoff import Backoff, RegistryPauses
from cloner.model.identity import Action, Copied, Descriptor, decide
from cloner.model.reference import Reference, patched_image
from cloner.model.state import Failure, Record, StateBook
from cloner.ops.artifacts import ArtifactCopier, ArtifactSync, Synced
from cloner.ops.copycheck import CopyCheck, Expected, ManifestAPI, check_for
from cloner.ops.state import StateStore

log = logging.getLogger(__name__)


class CopyBackend(Protocol):
    """Copies an image (``engine.DockerRegistry`` or ``skopeo.SkopeoBackend``).

    ``keeps_digests``: True when its copies keep every manifest digest and
    every platform (skopeo), False when they are re-serialised for one
    platform (the Docker engine); it chooses the ``copycheck.CopyCheck``.
    """

    keeps_digests: bool

    def preflight(self, source: Reference, owned: Reference) -> None:
        """Refuse a pair this backend must not touch, before any registry request.

        Raises:
            RegistryError: for example ``insecure_registry``.
        """
        ...

    def clone(self, source: Reference, owned: Reference) -> Copied:
        """Copy ``source`` to ``owned``; returns the pushed digest (and config when known)."""
        ...

    def abandon(self) -> None:
        """Shutting down: end the copies in flight where the backend can, start no new one.

        Called once, on a thread of its own; a ``clone`` it ends raises
        ``RegistryError``. Never raises.
        """
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
        retry_in: seconds until the next try when the image was not tried this
            cycle (backing off, registry paused, shutting down), else None.
        duration: seconds the clone took, when this cycle cloned it.
        replaced: the digest of other content the owned name held and this
            cycle copied over (``OwnedCopyReplaced``), else None.
        moved: ``(before, now)`` source digests when a tagged source names
            other content than at its last verification (``SourceMoved``).
        platforms: the platforms the owned copy serves (() for one platform).
        artifacts: the sync of the source's signatures and referrers this
            cycle made (``SignaturesNotCopied``, ``SignaturesLost``), or None
            when it made none.
    """

    source: Reference
    image: str | None
    cloned: bool = False
    reason: str | None = None
    message: str | None = None
    retry_in: float | None = None
    duration: float | None = None
    replaced: str | None = None
    moved: tuple[str, str] | None = None
    platforms: tuple[str, ...] = ()
    artifacts: Synced | None = None


class ImageCloner:
    """Owned copies across cycles: what is verified, what backs off, what is paused.

    Args:
        manifests: manifest lookups in the source and owned registries.
        backend: the copy backend.
        copy: the copy group: ``backend`` (``docker`` or ``skopeo``: how an
            owned copy is compared with its source, ``identity.same_content``),
            ``concurrency`` (clones at once in total) and
            ``registry_concurrency`` (at once from one source registry).
        backoff: the backoff group: per-image retry timing and the seconds a
            registry is paused after a 429 without Retry-After.
        engine_platform: for ``docker``, returns the engine's ``os/arch``.
        node_platforms: returns the ``os/arch`` of the cluster's nodes (read
            at most once per ``ensure_all``); for ``docker`` only.
        pin_digest: ``pinDigest``.
        refresh_interval: ``refreshInterval`` in seconds (0: never).
        state: the durable state (verified copies, failures) and its lock,
            shared with ``reconcile``, which loads and saves it; a new one
            kept in memory only when None. Every read and change of its book
            is made inside ``state.locked()``.
        inputs: returns the fingerprint of the config and credentials in
            force; a permanent failure (``RegistryError.temporary`` False)
            waits the backoff cap unless it changes (``backoff.Backoff``).
        artifacts: copies the sources' signatures and referrers
            (``ops.artifacts``); None copies none.
        signatures: ``signatures``: ``copy``, ``require`` or ``off``
            (``model.artifacts.switch_allowed``). With the Docker backend,
            whose copies get new digests, artifacts are only looked for
            (``signatures_lost``).
        clock: monotonic seconds (injectable for tests).
        wall: epoch seconds (injectable for tests).
    """

    def __init__(
        self,
        manifests: ManifestAPI,
        backend: CopyBackend,
        *,
        copy: CopySettings,
        backoff: BackoffSettings,
        engine_platform: Callable[[], str] | None = None,
        node_platforms: Callable[[], Iterable[str]] | None = None,
        pin_digest: bool = False,
        refresh_interval: float = 21600.0,
        state: StateStore[StateBook] | None = None,
        inputs: Callable[[], str] = lambda: "",
        artifacts: ArtifactCopier | None = None,
        signatures: SignatureMode = SignatureMode.OFF,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._backend_name = copy.backend  # recorded with each copy; a record of another is redone
        self._check: CopyCheck = check_for(
            backend.keeps_digests,
            manifests,
            engine_platform or (lambda: "linux/amd64"),
            node_platforms or (lambda: ()),
        )
        self._concurrency = copy.concurrency
        self._refresh = refresh_interval
        #: the durable state (``ops.state.StateStore``); its book only inside ``locked()``
        self.state = state or StateStore(StateBook())
        self._clock = clock
        self._wall = wall
        self._stopping = threading.Event()
        self._stopped: Future[None] = Future()
        #: the retry gate: backoff and paused registries (``RetryGate``)
        self.gate = RetryGate(backoff, self.state, inputs, self._stopping.is_set, clock, wall)
        self._lock = threading.Lock()
        self._tickets = itertools.count()  # submission order, kept by the copy slots
        self._owned_locks: dict[str, threading.Lock] = {}
        self._inflight: dict[str, Future[ImageResult]] = {}
        self._pool: ThreadPoolExecutor | None = None
        # owned repository -> the one source repository it holds copies of
        self._owned_sources: dict[str, str] = {}
        self._artifacts: ArtifactSync | None = None
        if artifacts is not None and signatures is not SignatureMode.OFF:
            self._artifacts = ArtifactSync(
                artifacts,
                signatures,
                backend.keeps_digests,
                refresh_interval,
                Backoff(backoff.policy),
                clock,
                wall,
                inputs,
            )
        self._copier = ImageCopier(
            manifests,
            backend,
            self._check,
            self._backend_name,
            self.gate,
            _Slots(self._concurrency, ramp=backend.keeps_digests),
            copy.registry_concurrency,
            self.state,
            self._artifacts,
            pin_digest,
            wall,
        )
        self.gate.restore()

    def stop(self) -> None:
        """No new clone starts; results still in flight are abandoned.

        Safe in a signal handler: it sets a flag, and a thread of its own
        resolves ``stopped`` and asks the backend to ``abandon`` its copies
        (skopeo's processes are killed), so a copy stuck on a registry that
        stopped answering does not hold up the shutdown.
        """
        if self._stopping.is_set():
            return  # no lock here: the signal may interrupt a holder of it
        self._stopping.set()
        threading.Thread(target=self._abandon, name="abandon", daemon=True).start()

    def _abandon(self) -> None:
        try:
            self._stopped.set_result(None)
        except InvalidStateError:
            return  # a racing stop() got here first
        try:
            self._backend.abandon()
        except Exception:  # the shutdown goes on regardless
            log.exception("abandoning the copies in flight failed")

    @property
    def stopping(self) -> bool:
        """True after ``stop()``."""
        return self._stopping.is_set()

    @property
    def stopped(self) -> Future[None]:
        """Resolved soon after ``stop()``: wait on it beside clone futures to wake at a stop."""
        return self._stopped

    def in_flight(self) -> int:
        """How many clones are still running (submitted and not done)."""
        with self._lock:
            return sum(not future.done() for future in self._inflight.values())

    def forget(self, source: Reference) -> None:
        """Drop a verified source, so the next try asks the registries again."""
        with self.state.locked() as book:
            book.forget(str(source))

    def used(self, sources: Iterable[str]) -> None:
        """Note the canonical sources workloads use now (``state.StateBook.used``)."""
        with self.state.locked() as book:
            book.used(sources, self._wall())

    def submit(
        self, pairs: Iterable[tuple[Reference, Reference]]
    ) -> dict[str, Future[ImageResult]]:
        """Start what every ``(source, owned)`` needs; returns at once.

        Returns:
            Canonical source -> a future of its ``ImageResult``: already done
            when no registry call is needed (a fresh record, backing off,
            paused), the one in flight when the source is being copied (by
            this call or an earlier cycle's), else a new clone on the pool.
            Hand each future to ``collect`` once it is done.
        """
        self._check.new_cycle()
        futures: dict[str, Future[ImageResult]] = {}
        for source, owned in pairs:
            key = str(source)
            if key in futures:
                continue
            with self._lock:
                running = self._inflight.get(key)
            if running is not None:
                futures[key] = running
                continue
            early = self._precheck(source, owned)
            if early is not None:
                done: Future[ImageResult] = Future()
                done.set_result(early)
                futures[key] = done
                continue
            ticket = next(self._tickets)
            future = self._executor().submit(self._ensure, source, owned, ticket)
            with self._lock:
                self._inflight[key] = future
            futures[key] = future
        return futures

    def collect(self, key: str, future: Future[ImageResult]) -> ImageResult:
        """The result of a done future from ``submit``; the source is no longer in flight."""
        result = future.result()
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        return result

    def ensure_all(self, pairs: Iterable[tuple[Reference, Reference]]) -> dict[str, ImageResult]:
        """``submit`` and wait for every result.

        Returns:
            Canonical source -> ``ImageResult``. Never raises for an image.
        """
        return {key: self.collect(key, f) for key, f in self.submit(pairs).items()}

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                # Twice the copy slots: while copies run, the next images'
                # questions to the registries are already being answered.
                self._pool = ThreadPoolExecutor(
                    max_workers=2 * self._concurrency, thread_name_prefix="clone"
                )
            return self._pool

    def _precheck(self, source: Reference, owned: Reference) -> ImageResult | None:
        """A result without any registry call, or None when the image must be tried."""
        key = str(source)
        with self.state.locked() as book:
            record = book.records.get(key)
        fresh = record is not None and record.answers(
            str(owned), self._backend_name, self._wall(), self._refresh, source.digest is not None
        )
        if fresh:
            assert record is not None
            if self._artifacts is None or self._artifacts.answers_from_record(key, record):
                return ImageResult(source, record.image, platforms=record.platforms)
        with self._lock:
            claimed = self._owned_sources.setdefault(owned.name, source.name)
        if claimed != source.name:
            message = (
                f"owned name {owned.name} of {source} is already used by {claimed}; "
                "not cloned (change naming or flatSeparator)"
            )
            log.error(message)
            return ImageResult(source, None, reason=FailureReason.NAMING_COLLISION, message=message)
        return self.gate.not_now(source, owned)

    def _owned_lock(self, repository: str) -> threading.Lock:
        with self._lock:
            return self._owned_locks.setdefault(repository, threading.Lock())

    def _ensure(self, source: Reference, owned: Reference, ticket: int) -> ImageResult:
        if self.stopping:
            return ImageResult(source, None, message="shutting down", retry_in=0.0)
        # Another clone of this registry may have paused it meanwhile.
        waiting = self.gate.not_now(source, owned)
        if waiting is not None:
            return waiting
        started = self._clock()
        try:
            # One decision at a time per owned repository: sources that
            # differ only by tag or digest share it, and two copies into
            # one repository at once race in the registry. The second
            # then finds the first one's copy and reuses it. The place in
            # line comes after that lock: an image waiting for it must not
            # hold up later images, one of which may hold it.
            with self._owned_lock(owned.name), self._copier.turn(ticket, source.registry):
                result = self._copier.run(source, owned, ticket)
        except RegistryError as exc:
            return self.gate.failed(source, owned, exc)
        except Exception as exc:  # one image's surprise must not end the cycle
            log.exception("unexpected error while cloning %s", source)
            return self.gate.failed(
                source,
                owned,
                RegistryError(FailureReason.REGISTRY_ERROR, f"clone {source}: {exc!r}"),
            )
        if result.retry_in is not None:
            return result  # paused while it waited for a copy slot
        if self.stopping:
            log.warning("abandoning %s: shutting down (nothing is patched for it)", source)
            return ImageResult(source, None, message="abandoned: shutting down", retry_in=0.0)
        self.gate.succeeded(str(source))
        if result.cloned:
            return replace(result, duration=self._clock() - started)
        return result


@dataclass(eq=False)
class RetryGate:
    """Whether an image may be tried now: its backoff and the registries paused after a 429.

    The one owner of per-image retry timing (``model.backoff.Backoff``) and of
    registry pauses (``model.backoff.RegistryPauses``); failures are also
    kept in the durable state, so a restart waits as the last run would have.

    Args:
        backoff: the backoff group: per-image retry timing and the seconds a
            registry is paused after a 429 without Retry-After.
        state: the durable state (``StateBook.failures``).
        inputs: returns the fingerprint of the config and credentials in
            force; a permanent failure waits the backoff cap unless it changes.
        stopping: True once the controller is stopping.
        clock: monotonic seconds.
        wall: epoch seconds.
    """

    backoff: BackoffSettings
    state: StateStore[StateBook]
    inputs: Callable[[], str]
    stopping: Callable[[], bool]
    clock: Callable[[], float]
    wall: Callable[[], float]
    _backoff: Backoff = field(init=False)
    _pauses: RegistryPauses = field(init=False, default_factory=RegistryPauses)

    def __post_init__(self) -> None:
        self._backoff = Backoff(self.backoff.policy)

    def restore(self) -> None:
        """Carry the failures of the durable state (``state``) into the in-memory backoff."""
        now, wall = self.clock(), self.wall()
        with self.state.locked() as book:
            failures = list(book.failures.items())
        for key, failure in failures:
            self._backoff.restore(
                key, failure.failures, now + failure.until - wall, failure.reason, failure.inputs
            )

    def waiting(self) -> dict[str, dict[str, str]]:
        """Images backing off now: canonical source -> ``{"until": RFC 3339, "reason": ...}``.

        Served by the running controller (``/state/backoff``) so that ``plan``
        can show it.
        """
        now = self.clock()
        wall = self.wall()
        return {
            key: {
                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall + until - now)),
                "reason": reason,
            }
            for key, (until, reason) in self._backoff.backing_off_all(now, self.inputs()).items()
        }

    def not_now(self, source: Reference, owned: Reference) -> ImageResult | None:
        """A result that says why ``source`` is not tried now, or None when it may be.

        Not tried: while stopping, while it backs off, or while its source or
        owned registry is paused (``ImageResult.retry_in`` says for how long).
        """
        now = self.clock()
        if self.stopping():
            return ImageResult(source, None, message="shutting down", retry_in=0.0)
        backing_off = self._backoff.backing_off(str(source), now, self.inputs())
        if backing_off is not None:
            until, reason = backing_off
            return ImageResult(
                source,
                None,
                message=f"backing off after {reason} "
                f"({self._backoff.failures(str(source))} failures)",
                retry_in=until - now,
            )
        for registry in (source.registry, owned.registry):
            until = self._pauses.paused_until(registry, now)
            if until is not None:
                return ImageResult(
                    source,
                    None,
                    message=f"registry {registry} paused after too many requests",
                    retry_in=until - now,
                )
        return None

    def pause_if_limited(self, exc: RegistryError, default_registry: str) -> None:
        """Pause the registry of a 429 (``rate_limited``) for its Retry-After, or the default."""
        if exc.reason != FailureReason.RATE_LIMITED:
            return
        registry = exc.registry or default_registry
        pause = exc.retry_after if exc.retry_after is not None else self.backoff.rate_limit_pause
        if self._pauses.paused_until(registry, self.clock()) is None:
            log.warning("pausing registry %s for %.0fs: too many requests", registry, pause)
        self._pauses.pause(registry, self.clock() + pause)

    def succeeded(self, key: str) -> None:
        """Forget the failures of canonical source ``key``."""
        self._backoff.succeeded(key)
        with self.state.locked() as book:
            book.succeeded(key)

    def failed(self, source: Reference, owned: Reference, exc: RegistryError) -> ImageResult:
        """Back ``source`` off after ``exc`` (kept in the state too); the result says why."""
        now = self.clock()
        key = str(source)
        not_before = now + exc.retry_after if exc.retry_after is not None else None
        permanent = not exc.temporary
        inputs = self.inputs()
        until = self._backoff.failed(key, exc.reason, now, not_before, permanent, inputs)
        self.pause_if_limited(exc, source.registry)
        with self.state.locked() as book:
            book.failed(
                key,
                Failure(
                    self._backoff.failures(key),
                    self.wall() + until - now,
                    exc.reason,
                    inputs if permanent else None,
                ),
            )
        log.error(
            "clone of %s to %s failed (%s), next try in %.0fs%s: %s",
            source,
            owned,
            exc.reason,
            until - now,
            " or when the config or credentials change" if permanent else "",
            exc,
        )
        return ImageResult(source, None, reason=exc.reason, message=str(exc), retry_in=None)


@dataclass(eq=False)
class ImageCopier:
    """One image: ask the source and the owned registry, then reuse, copy or refuse it.

    The decision is ``identity.decide``; what a copy must match is the
    backend's ``copycheck.CopyCheck``. What is verified is recorded in the
    durable state (``StateBook.verified``) and returned as an ``ImageResult``.

    Args:
        manifests: manifest lookups in the source and owned registries.
        backend: the copy backend.
        check: the backend's copy check.
        backend_name: ``copyBackend``, recorded with each copy.
        gate: the retry gate (a registry paused while a copy waited).
        copy_slots: the copy slots (``_Slots``) every copy takes a turn of.
        registry_concurrency: copies at once from one source registry.
        state: the durable state.
        artifacts: keeps signatures and referrers in sync, or None.
        pin_digest: ``pinDigest``.
        wall: epoch seconds.
    """

    manifests: ManifestAPI
    backend: CopyBackend
    check: CopyCheck
    backend_name: str
    gate: RetryGate
    copy_slots: _Slots
    registry_concurrency: int
    state: StateStore[StateBook]
    artifacts: ArtifactSync | None
    pin_digest: bool
    wall: Callable[[], float]
    _registry_slots: dict[str, threading.BoundedSemaphore] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def run(self, source: Reference, owned: Reference, ticket: int) -> ImageResult:
        """Ask the source and the owned registry, then reuse, copy or refuse (``decide``).

        Args:
            source, owned: the image and its owned name.
            ticket: the submission order, kept by the copy slots.

        Returns:
            The ``ImageResult`` of a verified copy (reused or made).

        Raises:
            RegistryError: the image cannot be used now (the caller backs it off).
        """
        self.backend.preflight(source, owned)
        with self.state.locked() as book:
            record = book.records.get(str(source))
        head, source_error = self._ask_source(source)
        looked_up, owned_head = self.check.ask_owned(source, owned)
        owned_digest = owned_head.digest if owned_head else None
        if head is None:
            assert source_error is not None
            return self._without_source(source, looked_up, owned_digest, record, source_error)
        moved = _moved(source, head, record)
        self.check.before_copy(source, head)
        expected = self.check.expected(source, head)
        matches = owned_head is not None and (
            self._recorded(record, head, owned_head)
            or self.check.matches(expected, looked_up, owned_head)
        )
        action = _decide(True, owned_digest, matches, record)
        if action is Action.REUSE and looked_up != owned and source.tag is None:
            # A digest-only source found by digest but not under its owned
            # tag: a copy made before the tag was renamed from the reserved
            # ``sha256-<hex>`` (``reference.digest_tag``). Copy it again: the
            # registry has every blob, so only the manifests are written, and
            # the copy is tagged where lifecycle rules look for tags.
            action = Action.COPY
        if action is Action.REUSE:
            assert owned_head is not None
            return self._verified(source, owned, head, owned_head.digest, expected, False, moved)
        replaced = None
        if action is Action.REPLACE and not (record and owned_digest == record.owned_digest):
            replaced = owned_digest  # not the copy we verified earlier
            log.warning(
                "owned name %s holds %s, which is not the content of %s (%s); copying over it",
                looked_up,
                owned_digest,
                source,
                head.digest,
            )
        if moved is not None:
            log.info("source %s moved from %s to %s; copying it again", source, *moved)
        result = self._copy(source, owned, head, expected, moved, ticket)
        return replace(result, replaced=replaced)

    def _recorded(self, record: Record | None, head: Descriptor, owned_head: Descriptor) -> bool:
        """True when the record verified exactly this pair of digests with this backend."""
        return (
            record is not None
            and record.source_digest == head.digest
            and record.owned_digest == owned_head.digest
            and record.backend == self.backend_name
        )

    def _ask_source(self, source: Reference) -> tuple[Descriptor | None, RegistryError | None]:
        """The source's descriptor (one HEAD), or None and why it cannot be used."""
        try:
            head = self.manifests.head(source)
            if head is None:
                raise RegistryError(
                    FailureReason.NOT_FOUND,
                    f"{source}: the source registry has no such manifest",
                    source.registry,
                )
            if source.digest is not None and head.digest != source.digest:
                raise RegistryError(
                    FailureReason.VERIFY_FAILED,
                    f"{source}: the source registry answers {head.digest} for it",
                    source.registry,
                )
        except RegistryError as exc:
            self.gate.pause_if_limited(exc, source.registry)
            return None, exc
        return head, None

    def _without_source(
        self,
        source: Reference,
        looked_up: Reference,
        owned_digest: str | None,
        record: Record | None,
        source_error: RegistryError,
    ) -> ImageResult:
        """The source cannot be asked: use the verified record, or refuse (raises)."""
        action = _decide(False, owned_digest, False, record)
        if action is Action.USE_RECORD:
            assert record is not None
            if self.artifacts is not None:
                self.artifacts.source_unreachable(str(source), record, source_error.reason)
            log.warning(
                "source %s cannot be asked (%s); using the owned copy verified at %s",
                source,
                source_error,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.verified)),
            )
            return ImageResult(source, record.image, platforms=record.platforms)
        if action is Action.WAIT_UNVERIFIED:
            raise RegistryError(
                FailureReason.SOURCE_UNVERIFIED,
                f"{source} cannot be asked ({source_error}); the owned name {looked_up} "
                "exists but was never verified against it, so it is not used",
                source.registry,
            )
        raise source_error

    def _copy(
        self,
        source: Reference,
        owned: Reference,
        head: Descriptor,
        expected: Expected,
        moved: tuple[str, str] | None,
        ticket: int,
    ) -> ImageResult:
        """Copy the digest the source just answered, then check and record the copy."""
        # Only the copy itself holds a slot: the questions before it and the
        # check after it are small requests, and a slot they held would sit
        # idle while they wait for an answer.
        with self.copy_slots.take(ticket, source.registry), self._registry_slot(source.registry):
            # A registry may have been paused while this copy waited.
            waiting = self.gate.not_now(source, owned)
            if waiting is not None:
                return waiting
            log.info("copying %s (%s) to %s", source, head.digest, owned)
            # Copy exactly what was decided on: the digest just answered, not
            # whatever the tag names by the time the copy starts.
            copied = self.backend.clone(source.with_tag(None).with_digest(head.digest), owned)
        pushed = copied.digest
        if copied.config_digest is not None:
            expected.engine_config(copied.config_digest)
        self.check.check_copy(owned, pushed, head, expected)
        log.info("cloned %s to %s (%s)", source, owned, pushed)
        return self._verified(source, owned, head, pushed, expected, True, moved)

    def _verified(
        self,
        source: Reference,
        owned: Reference,
        head: Descriptor,
        owned_digest: str,
        expected: Expected,
        cloned: bool,
        moved: tuple[str, str] | None,
    ) -> ImageResult:
        image = patched_image(source, owned, owned_digest, self.pin_digest)
        platforms = self.check.platforms(expected, owned)
        key = str(source)
        with self.state.locked() as book:
            previous = book.records.get(key)
        now = self.wall()
        record = Record(
            source=key,
            source_digest=head.digest,
            owned=str(owned),
            owned_digest=owned_digest,
            image=image,
            platforms=platforms,
            backend=self.backend_name,
            verified=now,
            used=previous.used if previous else now,
        )
        synced = None
        if self.artifacts is not None:
            record, synced = self.artifacts.verified(
                source,
                owned,
                head.digest,
                lambda: list(expected.children(owned).values()),
                record,
                previous,
                cloned,
            )
        with self.state.locked() as book:
            book.verified(record)
        held = self.artifacts.held(source, owned, record) if self.artifacts else None
        if held is not None:
            raise held
        return ImageResult(
            source, image, cloned=cloned, moved=moved, platforms=platforms, artifacts=synced
        )

    def turn(self, ticket: int, registry: str) -> AbstractContextManager[None]:
        """Wait for the turn of ``ticket`` among copies of ``registry`` (``_Slots.turn``)."""
        return self.copy_slots.turn(ticket, registry)

    def _registry_slot(self, registry: str) -> threading.BoundedSemaphore:
        with self._lock:
            slot = self._registry_slots.get(registry)
            if slot is None:
                slot = threading.BoundedSemaphore(self.registry_concurrency)
                self._registry_slots[registry] = slot
            return slot


#: Seconds after which the ramp lets one more copy of a registry start even
#: when no copy of it has ended (``_Slots``).
RAMP_STEP = 5.0


class _Slots:
    """``count`` slots handed out in ticket order, per source registry, with a ramp.

    Images of one source registry are copied in the order they were
    submitted, as a loop would copy them, even though their questions to the
    registries, which come first, finish in any order: an image holds its
    place in line (``turn``) while it is asked about, and a later image of
    the same registry waits for it to take a slot or to leave the line
    (nothing to copy, or an error). That order matters: images listed one
    after another rarely share a base layer, and two copies of one base
    layer at the same time would each upload it (the second cannot mount a
    blob the first has not finished writing). Registries do not wait for
    each other: their images rarely share a layer (a mount needs both in one
    registry anyway), and one slow to answer must not hold up the rest.

    With ``ramp`` (the skopeo backend), a source registry's copies also ramp
    up: the first copy from it runs alone, and each copy that ends lets one
    more run at once, as does each ``ramp_step`` seconds since the first copy
    started, so that one long copy (an image of gigabytes) holds the others
    back for seconds, not for as long as it takes (``count`` and
    ``registryConcurrency`` still bound them). Nothing tells which images
    share layers before they are copied (that would take a manifest ``GET``
    per image at the source, which Docker Hub counts as a pull), but the first
    copies of a cold start are the ones that upload the common base layers;
    the ramp lets them land before the crowd starts, so later copies mount
    them instead of uploading them again at the same time. On the copy bench's
    corpus at 4 at once, that took the upload from 300 MB to the 222 MB that
    are unique. It costs a cold start part of the first copies' time at less
    than full parallelism, once per process: after ``count`` copies from a
    registry have ended, or ``count - 1`` steps have passed, its copies run
    fully in parallel. ``clock`` gives monotonic seconds.

    The Docker backend has no ramp: the engine shares a layer download in
    flight between pulls and tells the layers before a push, whose turns
    (``engine.DockerRegistry``) do this job knowing them.
    """

    def __init__(
        self,
        count: int,
        *,
        ramp: bool = False,
        ramp_step: float = RAMP_STEP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = count
        self._lines: dict[str, list[int]] = {}  # source registry -> a heap of tickets
        self._changed = threading.Condition()
        self._ramp = ramp
        self._ramp_step = ramp_step
        self._clock = clock
        self._running: dict[str, int] = {}  # source registry -> copies holding a slot
        self._ended: dict[str, int] = {}  # source registry -> copies that have ended
        self._first: dict[str, float] = {}  # source registry -> when its first copy started

    @contextmanager
    def turn(self, ticket: int, registry: str) -> Iterator[None]:
        """Hold ``ticket``'s place in ``registry``'s line inside (until it takes a slot)."""
        with self._changed:
            heapq.heappush(self._lines.setdefault(registry, []), ticket)
        try:
            yield
        finally:
            with self._changed:
                line = self._lines.get(registry, [])
                if ticket in line:  # it left without a copy
                    line.remove(ticket)
                    heapq.heapify(line)
                    self._changed.notify_all()
                if not line:
                    self._lines.pop(registry, None)

    @contextmanager
    def take(self, ticket: int, registry: str) -> Iterator[None]:
        """Wait until a slot is free and ``ticket`` is first in its line; hold the slot inside.

        With the ramp, also until fewer copies of ``registry`` run than have
        ended, plus one. A ticket not in line (no ``turn``) joins it here.
        """
        with self._changed:
            line = self._lines.setdefault(registry, [])
            if ticket not in line:
                heapq.heappush(line, ticket)
            while True:
                ramp_wait = self._ramp_wait(registry)
                if self._free and line[0] == ticket and ramp_wait == 0.0:
                    break
                # only the ramp's next step can come without a notify
                self._changed.wait(None if ramp_wait in (0.0, None) else ramp_wait)
            heapq.heappop(line)
            self._free -= 1
            self._running[registry] = self._running.get(registry, 0) + 1
            self._first.setdefault(registry, self._clock())
            self._changed.notify_all()  # the next ticket may take another free slot
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._running[registry] -= 1
                self._ended[registry] = self._ended.get(registry, 0) + 1
                self._changed.notify_all()

    def _ramp_wait(self, registry: str) -> float | None:
        """Seconds until the ramp lets one more copy of ``registry`` start (call with the lock).

        0.0 when one may start now; None when only a copy that ends can
        allow it (no step is left to wait for, or none has started).
        """
        if not self._ramp:
            return 0.0
        running = self._running.get(registry, 0)
        allowed = self._ended.get(registry, 0) + 1
        first = self._first.get(registry)
        if first is not None and self._ramp_step > 0:
            elapsed = self._clock() - first
            steps = int(elapsed // self._ramp_step)
            allowed += steps
            if running >= allowed:
                return (steps + 1) * self._ramp_step - elapsed
        return 0.0 if running < allowed else None


def _moved(source: Reference, head: Descriptor, record: Record | None) -> tuple[str, str] | None:
    """``(before, now)`` when a tagged source names other content than at its record."""
    if record is None or source.digest is not None or record.source_digest == head.digest:
        return None
    return (record.source_digest, head.digest)


def _decide(
    source_known: bool, owned_digest: str | None, matches: bool, record: Record | None
) -> Action:
    """``identity.decide`` with the owned digest of the record, if there is one."""
    return decide(
        source_known=source_known,
        owned_digest=owned_digest,
        matches=matches,
        recorded_owned_digest=record.owned_digest if record else None,
    )
