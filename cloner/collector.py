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
