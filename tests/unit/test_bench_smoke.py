"""Every benchmark entry point runs at a tiny size and prints its whole table.

Timings are not asserted (they mean nothing at this size); this only keeps
``make bench`` from breaking unseen when the hot-path signatures change.
"""

from __future__ import annotations

from bench import run
from devenv.support import run_python


def _rows() -> tuple[str, ...]:
    """``bench.run``'s ``ROWS``."""
    return run.ROWS


def test_bench_smoke_run_prints_every_row_of_its_table() -> None:
    result = run_python("-m", "bench.run", "--smoke", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["benchmark", "figure"], result.stdout
    labels = [line[:40].rstrip() for line in lines[1:]]
    assert labels == list(_rows()), result.stdout
    for line in lines[1:]:
        figure = line[40:63].split()
        assert figure and figure[0].replace(",", "").isdigit(), line


def test_bench_rejects_a_size_of_zero() -> None:
    result = run_python("-m", "bench.run", "--workloads", "0", timeout=60)
    assert result.returncode == 2
    assert "--workloads and --refs must be at least 1" in result.stderr
