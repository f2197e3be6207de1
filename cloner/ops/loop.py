"""The reconcile loop: ``schedule`` drives passes until SIGTERM.

Called by ``controller.py``. ``schedule`` does not catch job exceptions
(dbader/schedule ``docs/exception-handling.rst``), so every tick is wrapped:
an unexpected error is logged with its traceback and counted, and the loop
keeps running. Metrics are updated here, from the pass's ``Summary``.

``schedule`` computes a job's next run from the moment the job *returned*
(``Job.run`` calls ``_schedule_next_run`` after the job function; dbader/schedule
issue 307), so by itself it spaces passes ``interval`` plus the pass's duration
apart. ``pollInterval`` is documented as start-to-start, so ``Loop.run`` sets
the job's ``next_run`` back to the pass's start plus the interval after every
pass (``next_start``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import schedule

from cloner import collector, metrics
from cloner.ops.reconcile import Summary

log = logging.getLogger(__name__)


def run_cycle(reconcile: Callable[[], Summary]) -> Summary | None:
    """Run one pass, log its summary line and record its metrics.

    Args:
        reconcile: the pass (``Reconciler.reconcile_once``).

    Returns:
        The Summary, or None when the pass raised (the error is logged with
        its traceback and counted; it never propagates).
    """
    started = time.monotonic()
    try:
        summary = reconcile()
    except Exception:
        log.exception("reconcile cycle failed")
        metrics.record_cycle_error(time.monotonic() - started)
        return None
    log.info(summary.line())
    metrics.record_cycle(summary)
    collector.give_back()
    return summary


def next_start(started: datetime, interval: float) -> datetime:
    """When the pass after one that started at ``started`` is due (start-to-start).

    Args:
        started: the local wall-clock start of the pass (naive, as ``schedule``
            compares its ``next_run`` with ``datetime.now()``).
        interval: ``pollInterval``, seconds between the starts of two passes.

    Returns:
        ``started + interval``. When the pass overran, that moment is already
        past and the next pass starts as soon as this one ends; missed starts
        are not made up (one pass, not a burst), and passes never overlap
        because the loop runs them one at a time on one thread.
    """
    return started + timedelta(seconds=interval)


class Loop:
    """Run a pass every ``interval`` seconds until stopped.

    Args:
        reconcile: the pass to run.
        interval: seconds between the starts of two passes (a pass that
            overruns is followed at once by the next; passes never overlap).
        before_cycle: called before each pass (for example to reload credentials);
            its exceptions are logged and do not stop the pass.
        on_stop: called once when a stop is requested (for example
            ``Reconciler.stop``: no new clone, nothing patched for one in flight).
        shutdown_timeout: seconds after a stop request by which the process
            exits (status 0) even if a pass is still blocked in a pull or push;
            nothing is patched for such a clone, so this is safe. None: wait.
        is_leader: when given, a pass runs only while it returns True (the
            others stand by).
        after_cycle: called after each pass that ran (for example to copy the
            adapters' request counters into the metrics); exceptions are logged.
    """

    def __init__(
        self,
        reconcile: Callable[[], Summary],
        interval: float,
        before_cycle: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        shutdown_timeout: float | None = None,
        is_leader: Callable[[], bool] | None = None,
        after_cycle: Callable[[], None] | None = None,
    ) -> None:
        self._reconcile = reconcile
        self._interval = interval
        self._before_cycle = before_cycle
        self._on_stop = on_stop
        self._shutdown_timeout = shutdown_timeout
        self._is_leader = is_leader
        self._after_cycle = after_cycle
        self._stop = threading.Event()
        self._scheduler = schedule.Scheduler()
        self._was_leader: bool | None = None
        self._tick_started: datetime | None = None
        self.cycles = 0

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def stop(self, *_: object) -> None:
        """Ask the loop to end (safe from a signal handler); see ``shutdown_timeout``."""
        if self._stop.is_set():
            return
        self._stop.set()
        log.info("stopping: no new clones; the cycle in flight patches nothing more")
        if self._on_stop is not None:
            self._on_stop()
        if self._shutdown_timeout is not None:
            threading.Thread(target=self._deadline, name="shutdown", daemon=True).start()

    def _deadline(self) -> None:
        time.sleep(self._shutdown_timeout or 0)
        log.warning(
            "still busy %ss after the stop request; exiting (nothing was patched for the "
            "clone in flight)",
            self._shutdown_timeout,
        )
        logging.shutdown()
        os._exit(0)

    def tick(self) -> Summary | None:
        """One scheduled pass (also used directly by ``--once``)."""
        if self._stop.is_set():
            return None
        leading = self._is_leader() if self._is_leader is not None else True
        metrics.set_leader(leading)
        if leading != self._was_leader and self._is_leader is not None:
            log.info("%s", "leading: reconciling" if leading else "standing by (not leader)")
        self._was_leader = leading
        if not leading:
            return None
        if self._before_cycle is not None:
            try:
                self._before_cycle()
            except Exception:
                log.exception("preparing the cycle failed; running it with the previous state")
        self.cycles += 1
        summary = run_cycle(self._reconcile)
        if self._after_cycle is not None:
            try:
                self._after_cycle()
            except Exception:
                log.exception("after-cycle hook failed")
        return summary

    def _scheduled_tick(self) -> Summary | None:
        """The ``schedule`` job: note the start (for ``next_start``), then ``tick``."""
        self._tick_started = datetime.now()
        return self.tick()

    def run(self, install_signals: bool = True) -> None:
        """Run passes until ``stop`` is called or SIGTERM/SIGINT arrives.

        The first pass starts at once; each later one ``interval`` seconds after
        the start of the one before, or at once when that one took longer
        (``next_start``); a standby that becomes leader starts one within a
        second. Returns after the pass in flight ends.
        """
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        job = self._scheduler.every(self._interval).seconds.do(self._scheduled_tick)
        job.next_run = datetime.now()  # the first pass at once
        while not self._stop.is_set():
            self._scheduler.run_pending()
            if self._tick_started is not None:
                # schedule has just set next_run to end + interval; start-to-start instead.
                job.next_run = next_start(self._tick_started, self._interval)
                self._tick_started = None
            elif self._was_leader is False and self._is_leader is not None and self._is_leader():
                # A standby that has just won the Lease reconciles at once,
                # not a whole interval after its last (skipped) pass.
                job.next_run = datetime.now()
            idle = self._scheduler.idle_seconds
            timeout = min(1.0, idle) if idle is not None else 1.0
            if timeout > 0:
                self._stop.wait(timeout=timeout)
        self._scheduler.clear()
        log.info("stopped after %d cycles", self.cycles)
