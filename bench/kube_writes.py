"""Controller CPU per API write: the generated client against ``KubeClient``'s raw path.

A cold cycle of 10,000 workloads is one JSON patch and one Event create per
workload, and on a 2-core machine the controller's CPU per request competes
with the API server and etcd (issue 11). This measures that CPU alone, so a
loaded machine changes the wall time but hardly the figure: on the real API
server of the end-to-end harness (``devenv/harness.py``), ``--writes``
Deployments in one namespace are patched (an annotation replaced, a real
write each) and as many Events created, from one thread, first through the
generated ``kubernetes`` methods as ``cloner/adapters/kube.py`` called them
before (``_preload_content=False``, the body read and the connection given
back), then through ``KubeClient.patch_workload`` and
``KubeClient.create_event`` on the client's urllib3 pool (``PoolTransport``,
the path before libcurl) and on libcurl (``CurlTransport``, the default);
``--rounds`` rounds in alternating order.

Figures per path and round: CPU seconds of the calling thread per write
(``time.thread_time``: the client's Python work, TLS included, the wait for
the API server excluded) and wall milliseconds per write. Printed as a table
(medians over the rounds) and written as JSON to ``--results-dir``.

    .venv/bin/python -m bench.kube_writes               # 2000 writes per path, 3 rounds
    .venv/bin/python -m bench.kube_writes --writes 200 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes

from cloner.adapters.kube import KubeClient, PoolTransport, read_body
from cloner.model.events import event_body
from cloner.model.workloads import Workload
from devenv.harness import Environment, ensure_components
from devenv.support import create_namespace
from devenv.workloads import workload

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-writes"


def deployment(name: str) -> dict[str, Any]:
    """A minimal Deployment (no controller runs: 0 replicas)."""
    return workload(
        "Deployment",
        name,
        {"c": "127.0.0.1:1/x:1"},
        labels={"app": name},
        spec={"replicas": 0},
        metadata={"annotations": {"bench/round": "0"}},
    )


def timed(count: int, write: Callable[[int], None]) -> dict[str, float]:
    """Run ``write(i)`` for ``i < count`` in this thread.

    Returns:
        ``cpu_ms`` (this thread's CPU per write, milliseconds) and
        ``wall_ms`` (elapsed per write, milliseconds).
    """
    cpu, wall = time.thread_time(), time.monotonic()
    for index in range(count):
        write(index)
    return {
        "cpu_ms": (time.thread_time() - cpu) * 1000 / count,
        "wall_ms": (time.monotonic() - wall) * 1000 / count,
    }


def run(writes: int, rounds: int) -> dict[str, Any]:
    """Start the harness, create the Deployments, measure both paths; return the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="ic-writes-", dir="/tmp"))
    env = Environment.start(workdir, kube_bin=ensure_components())
    try:
        create_namespace(env, NAMESPACE)
        api_client = env.api_client()
        apps = kubernetes.client.AppsV1Api(api_client)
        core = kubernetes.client.CoreV1Api(api_client)
        names = [f"w-{i}" for i in range(writes)]
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda n: apps.create_namespaced_deployment(NAMESPACE, deployment(n)), names
                )
            )
        kube = KubeClient(api_client)  # libcurl
        pooled = KubeClient(
            api_client, transport=PoolTransport(api_client.rest_client.pool_manager)
        )
        workloads = [Workload("Deployment", NAMESPACE, n, uid=f"u-{n}") for n in names]
        serial = iter(range(1, 10**9))

        def patch_body() -> list[dict[str, Any]]:
            path = "/metadata/annotations/bench~1round"
            return [{"op": "replace", "path": path, "value": str(next(serial))}]

        def event(index: int) -> dict[str, Any]:
            now = time.time()
            return event_body(workloads[index], "Normal", "Bench", "m", 1, now, now, "bench")

        paths: dict[str, Callable[[int], None]] = {
            "generated: patch": lambda i: read_body(
                apps.patch_namespaced_deployment(
                    names[i], NAMESPACE, patch_body(), _preload_content=False
                )
            ),
            "urllib3: patch": lambda i: pooled.patch_workload(workloads[i], patch_body()),
            "curl: patch": lambda i: kube.patch_workload(workloads[i], patch_body()),
            "generated: event": lambda i: json.loads(
                read_body(core.create_namespaced_event(NAMESPACE, event(i), _preload_content=False))
            ),
            "urllib3: event": lambda i: pooled.create_event(NAMESPACE, event(i)),
            "curl: event": lambda i: kube.create_event(NAMESPACE, event(i)),
        }
        order = list(paths)
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in order}
        timed(min(50, writes), paths["generated: patch"])  # warm the connection
        for round_ in range(rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                figures[name].append(timed(writes, paths[name]))
                print(f"  round {round_ + 1} {name:<18} {figures[name][-1]}", flush=True)
        return {
            "writes": writes,
            "rounds": rounds,
            "runs": figures,
            "median": {
                name: {
                    key: statistics.median(r[key] for r in runs) for key in ("cpu_ms", "wall_ms")
                }
                for name, runs in figures.items()
            },
        }
    finally:
        with contextlib.suppress(Exception):
            env.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table and write the JSON; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="writes per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating order")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.writes < 1 or args.rounds < 1:
        parser.error("--writes and --rounds must be at least 1")
    result = run(args.writes, args.rounds)
    print(f"\n{'path':<20} {'CPU ms/write':>13} {'wall ms/write':>14}")
    for name, figure in result["median"].items():
        print(f"{name:<20} {figure['cpu_ms']:>13.3f} {figure['wall_ms']:>14.3f}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results_dir / f"kube-writes-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
