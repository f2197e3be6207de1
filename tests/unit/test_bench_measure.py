"""bench/measure.py's reading of ``/proc/stat``: what ran here, and what the hypervisor took."""

from __future__ import annotations

from bench import measure

STAT = (
    "cpu  2283147 0 573139 3884828 48669 0 54350 38433 0 0\n"
    "cpu0 1141573 0 286569 1942414 24334 0 27175 19216 0 0\n"
)


def test_busy_leaves_out_idle_iowait_and_steal_which_is_given_apart() -> None:
    busy, steal = measure.machine_cpu(STAT, 100)
    assert busy == (2283147 + 573139 + 54350) / 100
    assert steal == 384.33


def test_a_kernel_without_the_steal_column_has_none() -> None:
    assert measure.machine_cpu("cpu  10 0 5 100 1 0 1\n", 100) == (0.16, 0.0)


def test_cpu_floor_counts_what_a_contender_must_cause_too() -> None:
    loop = {"cpu_machine_s": 19.0, "cpu_children_s": 1.5, "wall_median_s": 14.0}
    # docker: the engine, registries and kernel (19 - 1.5 CPU s) on 2 CPUs over 14 s
    assert measure.cpu_floor(loop, "docker", 2) == 17.5 / 2 / 14.0
    # skopeo: the skopeo processes are the backend's work too
    assert measure.cpu_floor(loop, "skopeo", 2) == 19.0 / 2 / 14.0
    assert measure.cpu_floor(loop, "docker", 0) is None
    assert measure.cpu_floor({**loop, "cpu_machine_s": None}, "docker", 2) is None
