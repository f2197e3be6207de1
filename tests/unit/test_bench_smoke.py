"""Every benchmark entry point runs at a tiny size and prints its whole table.

Timings are not asserted (they mean nothing at this size); this only keeps
``make bench`` from breaking unseen when the hot-path signatures change.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import run

ROOT = Path(__file__).resolve().parents[2]


def _rows() -> tuple[str, ...]:
    """``bench.run``'s ``ROWS``."""
    return run.ROWS


def test_bench_smoke_run_prints_every_row_of_its_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["benchmark", "figure"], result.stdout
    labels = [line[:40].rstrip() for line in lines[1:]]
    assert labels == list(_rows()), result.stdout
    for line in lines[1:]:
        figure = line[40:63].split()
        assert figure and figure[0].replace(",", "").isdigit(), line


def test_bench_rejects_a_size_of_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--workloads", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert "--workloads and --refs must be at least 1" in result.stderr
