"""The reconcile loop: ``schedule`` drives passes until SIGTERM.

Called by ``controller.py``. ``schedule`` does not catch job exceptions
(dbader/schedule ``docs/exception-handling.rst``), so every tick is wrapped:
an unexpected error is logged with its traceback and counted, and the loop
keeps running. Metrics are updated here, from the pass's ``Summary``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import schedule

from cloner import metrics
from cloner.reconcile import Summary

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
    return summary


class Loop:
    """Run a pass every ``interval`` seconds until stopped.

    Args:
        reconcile: the pass to run.
        interval: seconds between the starts of two passes (a pass that
            overruns delays the next; passes never overlap).
        before_cycle: called before each pass (for example to reload credentials);
            its exceptions are logged and do not stop the pass.
    """

    def __init__(
        self,
        reconcile: Callable[[], Summary],
        interval: float,
        before_cycle: Callable[[], None] | None = None,
    ) -> None:
        self._reconcile = reconcile
        self._interval = interval
        self._before_cycle = before_cycle
        self._stop = threading.Event()
        self._scheduler = schedule.Scheduler()
        self.cycles = 0

    def stop(self, *_: object) -> None:
        """Ask the loop to end after the current pass (safe from a signal handler)."""
        self._stop.set()

    def tick(self) -> Summary | None:
        """One scheduled pass (also used directly by ``--once``)."""
        if self._before_cycle is not None:
            try:
                self._before_cycle()
            except Exception:
                log.exception("preparing the cycle failed; running it with the previous state")
        self.cycles += 1
        return run_cycle(self._reconcile)

    def run(self, install_signals: bool = True) -> None:
        """Run passes until ``stop`` is called or SIGTERM/SIGINT arrives.

        The first pass starts at once. Returns after the pass in flight ends.
        """
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self._scheduler.every(self._interval).seconds.do(self.tick)
        self.tick()
        while not self._stop.is_set():
            self._scheduler.run_pending()
            idle = self._scheduler.idle_seconds
            self._stop.wait(timeout=max(0.05, min(1.0, idle if idle is not None else 1.0)))
        self._scheduler.clear()
        log.info("stopped after %d cycles", self.cycles)
