"""The copy bench's pure parts: its targets, the curves it hands to bench/plot.py, and the PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import copies, plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _contender(key: str, kind: str, backend: str | None) -> copies.Contender:
    return copies.Contender(key, key.replace("-", " "), kind, backend, 2)


def test_curves_sorts_one_unnamed_curve_or_each_named_series() -> None:
    assert plot.curves({"t": [3, 1.5, 2]}) == {"": [1.5, 2.0, 3.0]}
    assert plot.curves({"series": {"a": [2, 1], "b": []}}) == {"a": [1.0, 2.0], "b": []}
    assert plot.curves({}) == {"": []}


def test_timelines_take_the_median_run_of_each_contender_grouped_by_backend() -> None:
    field = [
        _contender("controller-docker-c2", "controller", "docker"),
        _contender("controller-skopeo-c2", "controller", "skopeo"),
        _contender("skopeo-loop-2", "skopeo-loop", None),
        _contender("docker-loop", "docker-loop", None),
    ]

    def run(key: str, wall: float, copies_s: list[float], patches: list[float] | None = None):
        figures = {"contender": key, "wall_s": wall, "copy_times_s": copies_s}
        if patches is not None:
            figures["patch_times_s"] = patches
        return figures

    runs = [
        run("controller-docker-c2", 9.0, [1.0], [1.5]),
        run("controller-docker-c2", 11.0, [3.0], [3.5]),
        run("controller-docker-c2", 10.0, [2.0], [2.5]),  # the median of 9, 10, 11
        run("docker-loop", 13.0, [4.0, 13.0]),
        run("controller-skopeo-c2", 4.0, [0.9, 3.9], [1.0, 4.0]),
        run("skopeo-loop-2", 3.0, [0.2, 2.9]),
        run("skopeo-loop-2", 2.0, [0.1, 1.9]),  # two runs: the lower one is the median
    ]
    out = copies.timelines(runs, field)

    assert list(out) == ["docker-copies", "docker-patches", "skopeo-copies", "skopeo-patches"]
    assert out["docker-copies"]["series"] == {
        "controller docker c2": [2.0],
        "docker loop": [4.0, 13.0],
    }
    # the loops patch nothing: only the controller has a patch curve
    assert out["docker-patches"]["series"] == {"controller docker c2": [2.5]}
    assert out["skopeo-copies"]["series"] == {
        "controller skopeo c2": [0.9, 3.9],
        "skopeo loop 2": [0.1, 1.9],
    }
    assert out["skopeo-patches"]["series"] == {"controller skopeo c2": [1.0, 4.0]}


def test_timelines_of_one_backend_only_have_no_panels_for_the_other() -> None:
    field = [_contender("skopeo-loop-2", "skopeo-loop", None)]
    out = copies.timelines([{"contender": "skopeo-loop-2", "wall_s": 1.0}], field)
    assert out == {
        "skopeo-copies": {
            "label": "skopeo: images copied (median run of each contender)",
            "ylabel": "images copied",
            "xlabel": "seconds since the process (or the loop) started",
            "series": {"skopeo loop 2": []},
        }
    }


def test_plot_draws_series_side_by_side_into_a_png(tmp_path: Path) -> None:
    timelines = {
        "docker-copies": {"label": "copies", "series": {"a": [1.0, 2.0], "b": [0.5, 3.0]}},
        "empty": {"label": "nothing", "t": []},
    }
    out = plot.plot_timelines(timelines, tmp_path / "sub" / "t.png", title="t")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    # the IHDR chunk: width 900 px (9 in at 100 dpi), height grows with the panels
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (900, 720)


def test_plot_refuses_no_timelines(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no timelines"):
        plot.plot_timelines({}, tmp_path / "x.png")


def test_targets_compare_median_walls_and_give_the_cycle_alone_apart() -> None:
    summaries = {
        "controller-skopeo-c2": {"wall_median_s": 4.0, "cycle_s": 3.3, "cpu_machine_s": 6.0},
        "skopeo-loop-2": {"wall_median_s": 3.0, "cpu_machine_s": 5.0, "cpu_children_s": 1.5},
        "controller-docker-c2": {"wall_median_s": 9.0, "cycle_s": None},
        "docker-loop": {"wall_median_s": 15.0},
    }
    skopeo, docker = copies.all_targets(summaries, [2], cpus=2)

    assert skopeo["ratio"] == 4.0 / 3.0 and not skopeo["met"]  # the wall decides
    assert skopeo["cycle_ratio"] == 3.3 / 3.0
    assert skopeo["cpu_bound"] == 6.0 / 2 / 3.0
    assert docker["ratio"] == 0.6 and docker["met"]
    assert docker["cycle_ratio"] is None  # no summary line: no cycle figure
    # no loop of that parallelism: no row
    assert copies.all_targets(summaries, [4], cpus=2) == []
