"""The loop's timing: ``pollInterval`` is start-to-start, passes never overlap.

A stand-in pass sleeps on purpose and records when it started and ended
(``time.monotonic``); the real ``Loop.run`` with its ``schedule`` job drives
it on a thread. Tolerances are wide (a loaded 2-core machine) but each check
separates start-to-start timing from the end-to-start timing ``schedule``
gives by itself (``interval`` plus the pass's duration).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from cloner.ops.loop import Loop, next_start
from cloner.ops.reconcile import Summary


class SlowPass:
    """A pass that sleeps ``durations[i]`` seconds in its i-th run, then stops the loop."""

    def __init__(self, durations: Sequence[float]) -> None:
        self.durations = list(durations)
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.running = 0
        self.most_at_once = 0
        self.loop: Loop | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Summary:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.starts.append(time.monotonic())
        time.sleep(self.durations[len(self.starts) - 1])
        self.ends.append(time.monotonic())
        with self._lock:
            self.running -= 1
        if len(self.starts) == len(self.durations):
            assert self.loop is not None
            self.loop.stop()
        return Summary()


def run_loop(interval: float, durations: Sequence[float]) -> tuple[SlowPass, float]:
    """Run a real Loop over a SlowPass until it has run ``len(durations)`` times.

    Returns:
        The pass (with its recorded times) and the monotonic time run() was called.
    """
    slow = SlowPass(durations)
    loop = Loop(slow, interval)
    slow.loop = loop
    began = time.monotonic()
    thread = threading.Thread(target=loop.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    thread.join(timeout=interval * len(durations) + sum(durations) + 30)
    assert not thread.is_alive(), "the loop did not stop"
    assert loop.cycles == len(durations)
    return slow, began


def gaps(starts: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


def test_next_start_is_start_plus_interval_whatever_the_pass_took() -> None:
    started = datetime(2024, 5, 1, 12, 0, 0)
    assert next_start(started, 60) == datetime(2024, 5, 1, 12, 1, 0)
    assert next_start(started, 0.5) == started + timedelta(milliseconds=500)


def test_passes_start_interval_apart_when_a_pass_is_shorter_than_the_interval() -> None:
    # schedule alone would start these 1.2 + 0.7 = 1.9 s apart.
    slow, began = run_loop(interval=1.2, durations=[0.7, 0.7, 0.7, 0.7])
    assert slow.starts[0] - began < 1.0, "the first pass starts at once"
    for gap in gaps(slow.starts):
        assert 1.1 <= gap <= 1.6, gaps(slow.starts)
    assert slow.most_at_once == 1


def test_an_overrunning_pass_is_followed_at_once_and_never_overlapped() -> None:
    # interval 0.5 s, passes of 1.0 s: each next pass starts as the previous ends.
    slow, _ = run_loop(interval=0.5, durations=[1.0, 1.0, 1.0])
    for end, start in zip(slow.ends, slow.starts[1:], strict=False):
        assert start >= end, "two passes ran at once"
        assert start - end < 0.3, (slow.starts, slow.ends)
    assert slow.most_at_once == 1


def test_after_an_overrun_the_timing_is_start_to_start_again_without_a_burst() -> None:
    # Pass 1 takes 2.2 s of a 1.0 s interval (two starts missed): pass 2 follows
    # at once, then passes 3 and 4 keep 1.0 s start-to-start (schedule alone:
    # 1.5 s); the missed starts are not made up in a burst.
    slow, _ = run_loop(interval=1.0, durations=[2.2, 0.5, 0.5, 0.5])
    first, *rest = gaps(slow.starts)
    assert 2.2 <= first <= 2.6, gaps(slow.starts)
    for gap in rest:
        assert 0.9 <= gap <= 1.4, gaps(slow.starts)
    assert slow.most_at_once == 1


def test_a_standby_that_wins_the_lease_reconciles_at_once_not_an_interval_later() -> None:
    leader = threading.Event()
    slow = SlowPass([0.0])
    loop = Loop(slow, 60.0, is_leader=leader.is_set)
    slow.loop = loop
    thread = threading.Thread(target=loop.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    time.sleep(1.5)  # the first scheduled pass came and was skipped: not leader
    assert slow.starts == []
    won = time.monotonic()
    leader.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "no pass after winning the Lease"
    assert slow.starts and slow.starts[0] - won < 3.0  # within a second or two, not 60 s
