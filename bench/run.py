"""Benchmarks of the pure hot path: parse references, snapshot and plan workloads.

Prints figures; asserts nothing. A reconcile pass over a large cluster spends
its non-I/O time here (every workload is read and planned every cycle), so
these numbers bound how often a big cluster can be polled.

    .venv/bin/python bench/run.py [--workloads N]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloner.reference import Target, parse_reference
from cloner.workloads import Workload, image_patch, plan_workload

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


def synthetic(count: int) -> list[dict]:
    items = []
    for i in range(count):
        containers = [{"name": f"c{j}", "image": IMAGES[(i + j) % len(IMAGES)]} for j in range(3)]
        items.append(
            {
                "metadata": {"name": f"w{i}", "namespace": f"ns{i % 200}", "uid": str(i)},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": containers,
                            "initContainers": [{"name": "init", "image": IMAGES[i % 3]}],
                        }
                    }
                },
            }
        )
    return items


def timed(label: str, count: int, unit: str, fn) -> None:
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    print(
        f"{label:<44} {count / elapsed:>12,.0f} {unit}/s  ({elapsed * 1000:,.1f} ms for {count:,})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workloads", type=int, default=20_000)
    args = parser.parse_args()
    target = Target("owned.example.com", "mirror")
    refs = IMAGES * 5_000
    uncached = parse_reference.__wrapped__
    timed("parse_reference (uncached)", len(refs), "refs", lambda: [uncached(r) for r in refs])
    timed("parse_reference (cached)", len(refs), "refs", lambda: [parse_reference(r) for r in refs])
    items = synthetic(args.workloads)
    workloads: list[Workload] = []
    timed(
        "Workload.from_api (4 containers each)",
        len(items),
        "workloads",
        lambda: workloads.extend(Workload.from_api("Deployment", o) for o in items),
    )
    plans = []
    timed(
        "plan_workload",
        len(workloads),
        "workloads",
        lambda: plans.extend(plan_workload(w, target) for w in workloads),
    )
    timed(
        "image_patch (all containers changed)",
        len(workloads),
        "workloads",
        lambda: [image_patch([(c, "x.example.com/y:1") for c in w.containers]) for w in workloads],
    )
    tracemalloc.start()
    snapshot = [Workload.from_api("Deployment", o) for o in items]
    planned = [plan_workload(w, target) for w in snapshot]
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"memory for {len(snapshot):,} snapshots + plans: {current / 2**20:,.1f} MiB "
        f"(peak {peak / 2**20:,.1f} MiB, {current / len(planned):,.0f} bytes per workload)"
    )


if __name__ == "__main__":
    main()
