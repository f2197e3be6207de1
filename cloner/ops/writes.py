"""The bounded pool that sends the controller's Kubernetes writes: patches first, Events after.

A patched workload gets a ``Patched`` Event, so a cold start over 10,000
workloads makes 20,000 writes, and the API server's time per write is what
bounds the cycle. Like client-go's event broadcaster, Events are best
effort and never hold up the work they describe: ``WritePool`` runs
``workers`` threads that always take a waiting patch (``submit``) before a
waiting Event (``defer``). Workloads are switched at the rate the API server
allows, and their Events follow as soon as no patch is waiting.

The deferred queue is bounded (``max_deferred``). Beyond it an Event is
dropped and counted, as client-go's broadcaster drops Events when its queue
of 1000 is full (``watch.DropIfChannelFull``); the default here holds the
Events of a cold start over 10,000 workloads several times over.
``close`` waits for every patch, and for the deferred Events up to a
deadline, so ``--once`` and a shutdown write what they can and say what
they could not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Deferred Events waiting at most; beyond that a new one is dropped.
MAX_DEFERRED = 50_000


class WritePool:
    """A fixed set of threads: every ``submit`` job runs before any ``defer`` job.

    Args:
        workers: threads (``patchConcurrency``, >= 1); started on first use.
        max_deferred: deferred jobs waiting at most (>= 1).
        name: thread name prefix.

    Raises:
        ValueError: ``workers`` or ``max_deferred`` below 1.
    """

    def __init__(self, workers: int, max_deferred: int = MAX_DEFERRED, name: str = "write") -> None:
        if workers < 1 or max_deferred < 1:
            raise ValueError(
                f"write pool: workers and max_deferred must be >= 1, "
                f"got {workers} and {max_deferred}"
            )
        self._workers = workers
        self._max_deferred = max_deferred
        self._name = name
        self._urgent: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._deferred: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._held = 0
        self._closed = False
        #: Deferred jobs dropped: the queue was full, or ``close`` ran out of time.
        self.dropped = 0
        #: Deferred jobs that ran (raised or not).
        self.deferred_done = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` before any deferred job; returns its Future.

        Raises:
            RuntimeError: the pool is closed.
        """
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("write pool is closed")
            self._start()
            self._urgent.append((future, lambda: fn(*args)))
            self._cond.notify()
        return future

    def defer(self, fn: Callable[[], None]) -> bool:
        """Queue a best-effort job to run when no submitted job waits.

        ``fn`` must not raise (an exception is logged and forgotten).

        Returns:
            False when it was dropped: the queue holds ``max_deferred`` jobs,
            or the pool is closed.
        """
        with self._cond:
            if self._closed or len(self._deferred) >= self._max_deferred:
                self._drop(1)
                return False
            self._start()
            self._deferred.append(fn)
            self._cond.notify()
        return True

    @contextmanager
    def hold(self) -> Iterator[None]:
        """While inside, deferred jobs wait even when no submitted job does.

        ``reconcile`` holds the Events while a cycle is still sending patches:
        between two images that become ready, the queue of patches runs dry
        for a moment, and Events sent then would take the API server's time
        from the patches that follow. Holds nest; ``close`` ends them.
        """
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Jobs queued or running now, of both kinds."""
        with self._cond:
            return len(self._urgent) + len(self._deferred) + self._busy

    def close(self, timeout: float | None = None) -> int:
        """Run what was submitted, the deferred jobs until ``timeout``; stop the threads.

        Args:
            timeout: seconds to wait for deferred jobs; None waits for all.
                Submitted jobs are always waited for.

        Returns:
            The deferred jobs dropped because the time ran out (logged).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._closed = True
            # Workers waiting for a hold to end take the deferred jobs now.
            self._cond.notify_all()
            while self._urgent or self._deferred or self._busy:
                if not self._urgent and deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.5))
                else:
                    self._cond.wait(0.5)
            abandoned = len(self._deferred)
            self._deferred.clear()
            self._drop(abandoned, at_close=True)
            self._cond.notify_all()
        stop_by = time.monotonic() + 2.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, stop_by - time.monotonic()))
        return abandoned

    def _drop(self, count: int, at_close: bool = False) -> None:
        """Count dropped deferred jobs; log the first drop of a burst (holds the lock)."""
        if not count:
            return
        if self.dropped == 0 or at_close:
            log.warning(
                "%d Kubernetes Events not written: %s",
                count,
                "out of time at shutdown"
                if at_close
                else f"more than {self._max_deferred} waiting (later drops are not logged)",
            )
        self.dropped += count

    def _start(self) -> None:
        """Start the threads on first use (holds the lock)."""
        while len(self._threads) < self._workers:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _next(self) -> tuple[Future[Any] | None, Callable[[], Any]] | None:
        """The next job, patches first; None when closed and empty (holds the lock)."""
        while True:
            if self._urgent:
                return self._urgent.popleft()
            if self._deferred and (not self._held or self._closed):
                return None, self._deferred.popleft()
            if self._closed:
                return None
            self._cond.wait()

    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._next()
                if job is None:
                    return
                self._busy += 1
            future, fn = job
            try:
                if future is None:
                    self._run_deferred(fn)
                elif future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller
                        future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _run_deferred(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.warning("a deferred write failed", exc_info=True)
        with self._cond:
            self.deferred_done += 1
