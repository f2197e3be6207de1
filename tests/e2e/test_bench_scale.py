"""``python -m bench.scale --smoke`` runs end to end on the real components, reporting each figure.

The benchmark starts its own Environment (etcd, kube-apiserver, dockerd,
registries on 127.0.0.1), so this test does not use the session's ``env``
fixture. Timings are not asserted (they mean nothing at 50 workloads on a
shared machine); what is asserted is what the run did: every workload
patched, every switch followed until the rollout the bench wrote for it
(no controller-manager runs: the bench's config sets ``rollout.canary``
off, and the bench writes each Deployment's status as rolled out), a
warm cycle with no switch pending that writes nothing and asks no
registry, the table printed with each row, the JSON and the PNG written.
"""

from __future__ import annotations

import json
from pathlib import Path

from devenv.support import run_python

#: figures the table must show (the targets of issue 11 among them)
FIGURES = (
    "wall time (process start to exit)",
    "after the cycle: Events and exit",
    "Events created (POST events)",
    "patches/s (patched / cycle)",
    "first patch after cycle start",
    "last patch after cycle start",
    "registry requests, public",
    "registry requests, public (source lookups)",
    "cycle duration, max",
    "writes (API server)",
    "registry requests",
    "CPU: controller per cycle",
    "CPU: kube-apiserver per cycle",
    "CPU: etcd per cycle",
    "RSS (VmRSS)",
    "peak RSS (VmHWM)",
    "RSS growth, first to last warm cycle",
    "statuses written as rolled out (bench)",
    "switches completed: cycle",
    "switches completed in that cycle",
    "switches pending (gauge)",
    "switches completed (counter)",
)


def test_scale_smoke_patches_everything_and_reports_each_figure(tmp_path: Path) -> None:
    result = run_python("-m", "bench.scale", "--smoke", "--results-dir", str(tmp_path), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("phase "))
    table = lines[header + 1 : next(i for i in range(header, len(lines)) if not lines[i].strip())]
    figures = {line[9:51].rstrip() for line in table}
    missing = [figure for figure in FIGURES if figure not in figures]
    assert not missing, result.stdout

    [path] = tmp_path.glob("scale-*.json")
    data = json.loads(path.read_text())
    assert (tmp_path / (path.stem + ".png")).stat().st_size > 10_000
    size = data["size"]
    cold, restart, warm = data["cold"], data["restart"], data["warm"]
    # Every workload switched, each one once, by a controller that exited 0.
    assert cold["returncode"] == 0 and cold["patched"] == size["workloads"]
    assert len(cold["patch_times"]) == size["workloads"]
    assert cold["api_failures"] == 0 and cold["api"]["errors"] == 0
    assert cold["api"]["writes_by"].get("PATCH deployments") == size["workloads"]
    # Each patched workload got its Patched Event before the process exited,
    # though the Events waited behind the patches.
    assert cold["api"]["writes_by"].get("POST events") == size["workloads"]
    # With owned copies present the cold cycle asks each registry, but copies nothing.
    assert cold["summary"]["cloned"] == 0
    assert cold["registry"]["public"]["HEAD"] >= size["images"]
    assert "PUT" not in cold["registry"]["owned"]
    # The restart, with the state kept: the fresh workloads patched, no source asked.
    assert restart["returncode"] == 0 and restart["patched"] == size["restart_workloads"]
    assert restart["registry"]["public"]["total"] == 0
    # Rollouts: the bench marked each switched Deployment rolled out; the
    # loop's first cycle completed every switch, and none was pending after.
    assert data["rollouts"]["written"] == size["workloads"]
    assert data["rollouts"]["missing"] == 0
    switches = warm["switches"]
    assert switches["completed_first"] == switches["completed"] == size["workloads"]
    assert len(switches["times"]) == size["workloads"]
    assert switches["pending_first"] == switches["pending"] == 0
    assert switches["events_drained"] and switches["events_written"] >= size["workloads"]
    assert switches["completed_measured"] == 0
    # Before that, every switch of the cold cycle was still pending after the
    # restart cycle (its own switches count too).
    assert restart["summary"]["switches_pending"] >= size["workloads"]
    # Warm: the loop's cycles patched nothing, wrote nothing, asked no registry.
    assert len(warm["summaries"]) == size["warm_cycles"]
    assert all(s["patched"] == 0 and s["secrets_written"] == 0 for s in warm["summaries"])
    assert all(s["switches_pending"] == 0 for s in warm["summaries"])
    assert warm["api"]["writes"] == 0 and warm["resource_versions_changed"] == 0
    assert warm["resource_versions_sampled"] == size["sample"]
    assert warm["registry"]["public"]["total"] == 0 and warm["registry"]["owned"]["total"] == 0
    assert warm["memory"]["VmRSS"] > 0 and warm["returncode"] == 0
    # The RSS after each measured cycle, and each component's CPU over them.
    assert len(warm["rss_per_cycle"]) == size["warm_cycles"]
    assert all(rss > 0 for rss in warm["rss_per_cycle"])
    assert {"controller", "kube-apiserver", "etcd"} <= set(warm["cpu"])
    # Each row of the JSON is in the printed table.
    assert {row["figure"] for row in data["rows"]} == figures
