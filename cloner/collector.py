"""Pausing the cyclic garbage collector around bulk work that makes no reference cycles.

Called by ``adapters.kube`` (decoding a list page) and ``ops.reconcile``
(listing and planning a cycle). What those create is freed by reference
counting alone: decoded JSON, workload snapshots and plans hold no reference
cycles. While they run, the collector would only walk the live objects again
and again: at 50,000 workloads, some 790 young and 6 full collections per
warm cycle, 38% of its CPU (``bench/scale.py``, issue 31). The pause is
shared by threads: the collector comes back on when the last pause ends, and
is left alone if it was off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
#: ``pauses``: blocks running now that paused the collector.
_state = {"pauses": 0}


@contextmanager
def paused() -> Iterator[None]:
    """Keep the cyclic collector off while the block runs.

    Pauses nest and add up across threads: the collector is enabled again
    when the last one ends, and only if a pause disabled it (a collector
    switched off by someone else stays off). Collections the block would
    have run are not lost: the next allocation after the pause counts them.
    """
    with _lock:
        pausing = _state["pauses"] > 0 or gc.isenabled()
        if pausing:
            _state["pauses"] += 1
            gc.disable()
    try:
        yield
    finally:
        if pausing:
            with _lock:
                _state["pauses"] -= 1
                if _state["pauses"] == 0:
                    gc.enable()


def _libc_trim() -> object | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _libc_trim()


def give_back() -> None:
    """Hand the C heap's free memory back to the system (glibc ``malloc_trim(0)``).

    Called after each cycle (``loop.run_cycle``). A cycle's list pages (a few
    MB each) and snapshots are freed when it ends, but glibc keeps the freed
    heap for reuse, so the process's RSS stayed at the high-water mark of
    its largest cycle (bench/scale.py at 50,000 workloads: the cycle that
    completed 50,000 switches). Nothing is freed that is in use; where the
    C library has no ``malloc_trim`` this does nothing.
    """
    if _TRIM is not None:
        _TRIM(0)  # type: ignore[operator]
