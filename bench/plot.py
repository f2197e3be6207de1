"""PNG timelines of benchmark results (matplotlib, no display needed).

A result JSON (``bench/results/*.json``) may hold a ``timelines`` object;
each entry is one curve of events over time::

    "timelines": {
      "cold": {"label": "cold cycle", "ylabel": "workloads patched", "t": [0.41, ...]},
      "restart": {"label": "...", "t": [...]}
    }

``ylabel`` (optional) names what is counted; ``t`` is the seconds since the
entry's zero (for the scale benchmark: the start of the reconcile cycle) at
which each event happened, in any order. An entry may hold ``series``
instead of ``t`` (``{"curve label": [seconds, ...], ...}``, the copy
benchmark's contenders side by side): one curve each in the same panel, with
a legend. ``xlabel`` (optional) says what the zero is.
``plot_timelines`` draws every entry as a cumulative step curve (events so
far against seconds), one panel per entry, so a change that slows the first
or the last event down shows as a curve moved to the right.

    .venv/bin/python -m bench.plot bench/results/scale-20260101T120000.json [--out PNG]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on the test bed

import matplotlib.pyplot as plt  # after the backend is chosen


def plot_timelines(
    timelines: Mapping[str, Mapping[str, Any]],
    out: Path,
    title: str = "",
    marks: Mapping[str, Sequence[tuple[float, str]]] | None = None,
) -> Path:
    """Draw each timeline as a cumulative step curve and write one PNG.

    Args:
        timelines: name -> ``{"label": str, "ylabel": str, "t": [seconds, ...]}``
            or with ``"series": {curve label: [seconds, ...]}`` instead of
            ``t`` (module docstring); an entry without events is drawn as an
            empty panel saying so.
        out: the PNG to write (its directory is created).
        title: the figure's title.
        marks: name -> ``[(seconds, text), ...]``: vertical lines drawn on that
            entry's panel, e.g. a target (``(30.0, "target 30 s")``).

    Returns:
        ``out``.

    Raises:
        ValueError: ``timelines`` is empty.
        OSError: the file cannot be written.
    """
    if not timelines:
        raise ValueError("no timelines to plot")
    names = list(timelines)
    figure, axes = plt.subplots(
        len(names), 1, figsize=(9, 3.6 * len(names)), squeeze=False, constrained_layout=True
    )
    for axis, name in zip(axes[:, 0], names, strict=True):
        _draw_panel(axis, timelines[name], name, (marks or {}).get(name, ()))
    if title:
        figure.suptitle(title, fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _draw_panel(
    axis: Any, entry: Mapping[str, Any], name: str, marks: Sequence[tuple[float, str]]
) -> None:
    """Draw one timeline entry (its curves, marks and summary) on ``axis``."""
    series = curves(entry)
    axis.set_title(str(entry.get("label") or name), fontsize=10)
    axis.set_xlabel(str(entry.get("xlabel") or "seconds since the cycle started"))
    axis.set_ylabel(str(entry.get("ylabel") or "events so far"))
    axis.grid(True, alpha=0.3)
    summary = ""
    right = 0.0
    drawn = False
    for label, times in series.items():
        if not times:
            continue
        drawn = True
        axis.step([0.0, *times], range(len(times) + 1), where="post", label=label or None)
        right = max(right, times[-1])
        if len(series) == 1:
            summary = f"first {times[0]:.2f} s, last {times[-1]:.2f} s, {len(times)} in all"
    if not drawn:
        axis.text(0.5, 0.5, "no events", ha="center", va="center", transform=axis.transAxes)
    right = right or 1.0
    for seconds, text in marks:
        if seconds <= 2 * right:  # on the scale of the curve: draw it
            axis.axvline(seconds, color="tab:red", linestyle="--", linewidth=1, label=text)
            right = max(right, seconds)
        else:
            summary += f"; {text}: off scale"
    axis.set_xlim(0.0, right * 1.03)
    if summary:
        axis.text(0.01, 0.92, summary, fontsize=9, transform=axis.transAxes)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="lower right", fontsize=8)


def curves(entry: Mapping[str, Any]) -> dict[str, list[float]]:
    """The sorted event times of each curve of a timeline entry (seconds).

    Args:
        entry: ``{"t": [...]}`` (one unnamed curve) or ``{"series": {label: [...]}}``.

    Returns:
        label -> ascending seconds; ``{"": [...]}`` for a ``t`` entry. Pure.
    """
    if "series" in entry:
        return {
            str(label): sorted(float(t) for t in times or [])
            for label, times in (entry["series"] or {}).items()
        }
    return {"": sorted(float(t) for t in entry.get("t") or [])}


def plot_result(path: Path, out: Path | None = None) -> Path:
    """Plot the ``timelines`` of a result JSON; the PNG goes next to it by default.

    Args:
        path: a result file with a ``timelines`` object (see the module docstring)
            and optionally ``marks`` and ``title``.
        out: the PNG; default ``path`` with the suffix ``.png``.

    Returns:
        The PNG written.

    Raises:
        ValueError: the file has no timelines. OSError, json.JSONDecodeError:
            unreadable file.
    """
    result = json.loads(path.read_text())
    marks = {
        name: [(float(seconds), str(text)) for seconds, text in entries]
        for name, entries in (result.get("marks") or {}).items()
    }
    return plot_timelines(
        result.get("timelines") or {},
        out or path.with_suffix(".png"),
        title=str(result.get("title") or path.stem),
        marks=marks,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.plot RESULT.json [--out PNG]``; prints the PNG path, exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a bench/results/*.json file")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: next to it)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(plot_result(args.result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
