"""The scale bench's pure parts: the rollouts it writes, and what it reads from the logs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench import scale
from cloner.model.rollout import Progress, rollout_status


def _deployment(generation: int, replicas: int | None = 1) -> dict[str, object]:
    spec: dict[str, object] = {} if replicas is None else {"replicas": replicas}
    return {"metadata": {"name": "w-1", "generation": generation}, "spec": spec}


def test_the_status_the_bench_writes_completes_the_switch_by_rollout_status_rules() -> None:
    switched = _deployment(generation=2, replicas=3)
    assert rollout_status("Deployment", switched, 2).progress is Progress.WAITING
    patch = scale.rolled_out_status(switched)
    assert patch == {
        "status": {
            "observedGeneration": 2,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
        }
    }
    rolled_out = {**switched, **patch}
    assert rollout_status("Deployment", rolled_out, 2).progress is Progress.DONE
    # spec.replicas absent: the API server's default of 1.
    assert scale.rolled_out_status(_deployment(2, None))["status"]["replicas"] == 1


def test_patched_deployments_groups_deployment_keys_by_namespace() -> None:
    keys = ["Deployment scale-0/w-0", "Deployment scale-0/w-50", "Deployment scale-1/w-1"]
    keys += ["StatefulSet scale-0/db", "Deployment broken"]
    assert scale.patched_deployments(keys) == {
        "scale-0": {"w-0", "w-50"},
        "scale-1": {"w-1"},
    }


def test_completion_figures_time_the_guards_lines_from_the_cycles_state_read(
    tmp_path: Path,
) -> None:
    log = tmp_path / "controller-warm.log"
    log.write_text(
        "2026-01-02 03:04:05,000 INFO image_cloner: starting: target=x\n"
        "2026-01-02 03:04:05,500 INFO cloner.ops.reconcile: state: 10 verified copies and "
        "0 backing-off images read from image-cloner/image-cloner-state-*\n"
        "2026-01-02 03:04:06,000 INFO cloner.ops.guard: Deployment scale-0/w-0: "
        "rolled out on owned copies\n"
        "2026-01-02 03:04:06,250 INFO cloner.ops.guard: Deployment scale-0/r-0: "
        "no longer following its switch: the workload is gone\n"
        "2026-01-02 03:04:07,500 INFO cloner.ops.guard: Deployment scale-1/w-1: "
        "rolled out on owned copies\n"
        "2026-01-02 03:04:08,500 INFO cloner.ops.loop: reconcile: workloads=2 duration=0.50s\n"
    )
    summaries, _ = scale.parse_log(log.read_text())
    figures = scale.completion_figures(log, summaries[0])
    assert figures["completed"] == 2
    assert figures["times"] == [0.5, 2.0]
    assert figures["following"] == 2.0
    assert figures["cycle"] == 3.0


def test_event_writes_count_every_write_verb_on_events_only() -> None:
    before: Counter[tuple[str, str, str]] = Counter()
    after = Counter(
        {
            ("POST", "events", "201"): 7,
            ("PATCH", "events", "200"): 2,
            ("PATCH", "deployments", "200"): 5,
            ("LIST", "events", "200"): 3,
        }
    )
    delta = scale.api_delta(before, after)
    assert scale.event_writes(delta) == 9
    assert delta["writes"] == 14
