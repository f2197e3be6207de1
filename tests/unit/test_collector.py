"""collector: the collector's pause, and the freed C heap handed back after a cycle."""

from __future__ import annotations

import gc
import os

import pytest

from cloner import collector


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_pauses_nest_and_the_collector_comes_back() -> None:
    assert gc.isenabled()
    with collector.paused():
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.skipif(collector._TRIM is None, reason="no glibc malloc_trim here")
def test_freed_heap_memory_is_given_back() -> None:
    # 150,000 blocks of 1 KB: on the C heap (past pymalloc's 512 bytes, under mmap's 128 KB).
    blocks = [bytes(1000) + i.to_bytes(4, "big") for i in range(150_000)]
    held = rss_mib()
    del blocks[:-1]  # all but the last, so the heap's top is still in use
    freed = rss_mib()
    collector.give_back()
    given = rss_mib()
    assert freed - given > 100, (held, freed, given)  # the free alone kept it
    assert blocks
