"""Benchmarks of the pure hot path: parse references, snapshot and plan workloads.

Prints one table of figures; asserts nothing. A reconcile pass over a large
cluster spends its non-I/O time here (every workload is read and planned every
cycle), so these numbers bound how often a big cluster can be polled.

    .venv/bin/python -m bench.run [--workloads N] [--refs N]
    .venv/bin/python -m bench.run --smoke     # tiny sizes, for make test

``--smoke`` runs every benchmark at a tiny size (seconds are meaningless
then); ``tests/unit/test_bench_smoke.py`` runs it so the benchmark cannot
break unseen. Exit status 0 when every row was printed; an exception in the
benchmarked code ends it with a traceback and status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable

from cloner.model.reference import Policy, Target, parse_reference
from cloner.model.workloads import ContainerPlan, Workload, image_patch, plan_workload
from devenv.workloads import workload

IMAGES = [
    "nginx",
    "nginx:1.25",
    "docker.io/library/redis:7.2-alpine",
    "quay.io/prometheus/node-exporter:v1.8.0",
    "ghcr.io/org/team/service@sha256:" + "ab" * 32,
    "registry.k8s.io/pause:3.9",
    "localhost:5000/a/b:c",
    "owned.example.com/mirror/docker.io/library/busybox:1.36",
]

#: The rows every run prints, in order (the smoke test checks for each).
ROWS = (
    "parse_reference (uncached)",
    "parse_reference (cached)",
    "Workload.from_api (4 containers each)",
    "plan_workload (no image rules)",
    "plan_workload (include/exclude globs)",
    "image_patch (all containers changed)",
    "memory per workload (snapshot + plan)",
)

SMOKE_WORKLOADS = 50
SMOKE_REFS = 80


def synthetic(count: int) -> list[dict]:
    """``count`` Deployment objects as the API returns them (JSON dicts).

    Each has three containers and one init container, spread over 200
    namespaces, with images drawn from ``IMAGES``.
    """
    items = []
    for i in range(count):
        containers = [{"name": f"c{j}", "image": IMAGES[(i + j) % len(IMAGES)]} for j in range(3)]
        items.append(
            workload(
                "Deployment",
                f"w{i}",
                containers,
                init={"init": IMAGES[i % 3]},
                namespace=f"ns{i % 200}",
                metadata={"uid": str(i)},
            )
        )
    return items


def row(label: str, value: str, detail: str) -> None:
    """Print one table row: label, figure, what it was measured over."""
    print(f"{label:<40} {value:>22}  {detail}")


def timed(label: str, count: int, unit: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` once and print its rate (``count`` ``unit`` per second)."""
    started = time.perf_counter()
    fn()
    elapsed = max(time.perf_counter() - started, 1e-9)
    row(label, f"{count / elapsed:,.0f} {unit}/s", f"{elapsed * 1000:,.1f} ms for {count:,}")


def run(workload_count: int, ref_count: int) -> None:
    """Run every benchmark and print the table.

    Args:
        workload_count: synthetic Deployments to snapshot and plan (4
            containers each).
        ref_count: references to parse (drawn round-robin from ``IMAGES``).

    Raises:
        Whatever the benchmarked code raises (a broken hot path fails loudly).
    """
    target = Target("owned.example.com", "mirror")
    policy = Policy(target)
    globbed = Policy(
        target,
        owned_registries=(Target("localhost:5000"),),
        include_images=("docker.io/**", "quay.io/**", "ghcr.io/**", "registry.k8s.io/*"),
        exclude_images=("*/library/redis", "quay.io/prometheus/*:v0.*"),
    )
    refs = [IMAGES[i % len(IMAGES)] for i in range(ref_count)]
    print(f"{'benchmark':<40} {'figure':>22}  measured over")
    uncached = parse_reference.__wrapped__
    timed("parse_reference (uncached)", len(refs), "refs", lambda: [uncached(r) for r in refs])
    parse_reference.cache_clear()
    timed("parse_reference (cached)", len(refs), "refs", lambda: [parse_reference(r) for r in refs])
    items = synthetic(workload_count)
    workloads: list[Workload] = []
    timed(
        "Workload.from_api (4 containers each)",
        len(items),
        "workloads",
        lambda: workloads.extend(Workload.from_api("Deployment", o) for o in items),
    )
    plans: list[list[ContainerPlan]] = []
    timed(
        "plan_workload (no image rules)",
        len(workloads),
        "workloads",
        lambda: plans.extend(plan_workload(w, policy) for w in workloads),
    )
    timed(
        "plan_workload (include/exclude globs)",
        len(workloads),
        "workloads",
        lambda: [plan_workload(w, globbed) for w in workloads],
    )
    timed(
        "image_patch (all containers changed)",
        len(workloads),
        "workloads",
        lambda: [
            image_patch(w, [(c, "x.example.com/y:1") for c in w.containers]) for w in workloads
        ],
    )
    tracemalloc.start()
    snapshot = [Workload.from_api("Deployment", o) for o in items]
    planned = [plan_workload(w, policy) for w in snapshot]
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row(
        "memory per workload (snapshot + plan)",
        f"{current / max(len(planned), 1):,.0f} bytes",
        f"{current / 2**20:,.1f} MiB for {len(snapshot):,} (peak {peak / 2**20:,.1f} MiB)",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, return the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=20_000, help="synthetic Deployments")
    parser.add_argument("--refs", type=int, default=40_000, help="references to parse")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny sizes ({SMOKE_WORKLOADS} workloads, {SMOKE_REFS} refs) to check it runs",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.workloads, args.refs = SMOKE_WORKLOADS, SMOKE_REFS
    if args.workloads < 1 or args.refs < 1:
        parser.error("--workloads and --refs must be at least 1")
    run(args.workloads, args.refs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
