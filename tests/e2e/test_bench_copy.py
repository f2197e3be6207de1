"""The copy benchmark runs end to end at a tiny size, prints its table and writes its JSON.

``python -m bench.copies --smoke`` starts its own real environment (etcd,
kube-apiserver, dockerd, two registries), copies a 4-image corpus with every
contender once and runs the warm cycle. Timings are not asserted (they mean
nothing at this size); what is asserted is that every run copied every image,
that the figures derived from the registries are there and plausible, and
that the timelines were written and drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

from devenv.support import run_python

CONTENDERS = (
    "controller-docker-c2",
    "controller-skopeo-c2",
    "skopeo-loop-2",
    "docker-loop",
)


def test_bench_copy_smoke_prints_its_table_and_writes_valid_json(tmp_path: Path) -> None:
    result = run_python(
        "-m", "bench.copies", "--smoke", "--results-dir", str(tmp_path), timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("contender "))
    rows = lines[header + 1 : header + 1 + len(CONTENDERS)]
    labels = (
        "controller docker c=2",
        "controller skopeo c=2",
        "skopeo loop x2",
        "docker pull/tag/push loop",
    )
    assert len(rows) == len(labels), result.stdout
    for row, label in zip(rows, labels, strict=True):
        assert row.startswith(label + " "), (row, result.stdout)
    assert all(row.rstrip().endswith("yes") for row in rows), result.stdout
    assert any(line.startswith("target: controller skopeo c=2") for line in lines)
    assert any(line.startswith("warm skopeo warm") for line in lines)

    written = list(tmp_path.glob("copy-*.json"))
    assert len(written) == 1, written
    report = json.loads(written[0].read_text())
    corpus = report["corpus"]["figures"]
    assert corpus["images"] == 4 and corpus["indexes"] == 1
    assert 0 < corpus["unique_bytes"] < corpus["whole_bytes"]
    assert set(report["summaries"]) == set(CONTENDERS)
    for key, summary in report["summaries"].items():
        assert summary["ok"], key
        assert summary["wall_median_s"] > 0, key
        # every contender pulled blobs from the public registry and pushed to the owned one
        assert summary["pulled_blob_bytes"] > 0, key
        assert summary["uploaded_bytes"] > 0, key
    for key in ("controller-docker-c2", "controller-skopeo-c2"):
        summary = report["summaries"][key]
        assert 0 < summary["first_patch_s"] <= summary["last_patch_s"], key
    # skopeo keeps every platform: it uploads at least the unique bytes of the corpus
    assert report["summaries"]["controller-skopeo-c2"]["uploaded_bytes"] >= corpus["unique_bytes"]
    (warm,) = report["warm"]
    assert warm["backend"] == "skopeo"
    assert warm["warm"]["ok"] and warm["warm"]["patched"] == 4
    assert warm["warm"]["requests"]["public"]["total"] == 0  # the durable state answered
    # Without the durable state: one HEAD per source, and the signatures and
    # referrers of each copied manifest are looked for again (docs/signatures.md:
    # 3 cosign tags and the fallback tag; the 4 sources are 3 images and an
    # index of 2 platforms, so 6 manifests).
    assert warm["no_state"]["requests"]["public"]["HEAD"] == 4 + 4 * 6
    assert [t["ratio"] > 0 for t in report["targets"]] == [True]
    # the timelines of the median runs: every contender copied all 4 images,
    # the controller patched all 4 Deployments, and the PNG is beside the JSON
    timelines = report["timelines"]
    assert set(timelines) == {"docker-copies", "docker-patches", "skopeo-copies", "skopeo-patches"}
    for name in ("docker-copies", "skopeo-copies"):
        assert [len(t) for t in timelines[name]["series"].values()] == [4, 4], name
    for name in ("docker-patches", "skopeo-patches"):
        (patched,) = timelines[name]["series"].values()
        assert len(patched) == 4 and all(t > 0 for t in patched), name
    png = written[0].with_suffix(".png")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), png
    assert f"plot: {png}" in result.stdout
