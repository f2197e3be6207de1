"""manifests/monitoring/ fits the controller it monitors.

The Grafana dashboard queries only metrics ``cloner.metrics.REGISTRY`` exports
and leaves none of them out, and the ServiceMonitor selects the Service of
manifests/base/ on a port it has. Plain file checks: no cluster, no kubectl.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cloner.metrics import REGISTRY

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
MONITORING = MANIFESTS / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
SERVICE = MANIFESTS / "base" / "service.yaml"

METRIC_NAME = re.compile(r"\bimage_cloner_[A-Za-z0-9_:]*")

# Series names prometheus_client writes for a family, by family type (the
# family name has no suffix; counters get _total, histograms _bucket/_sum/_count).
SERIES_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

# Metric families the dashboard may leave out, each with its reason. A family
# listed here may still be on the dashboard.
NOT_REQUIRED_ON_DASHBOARD: dict[str, str] = {
    # Constant 1 whose labels carry versions: nothing to graph (the dashboard
    # shows it in its "Build info" table all the same).
    "image_cloner_build_info": "constant 1, labels only",
}


def exported_families() -> dict[str, set[str]]:
    """Family name -> every series name it is exported under.

    Both the samples the registry holds now and the names derived from the
    family type: a labelled metric with no label values set has no samples yet.
    """
    families: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        names = {family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
        names.update(sample.name for sample in family.samples)
        families.setdefault(family.name, set()).update(names)
    return families


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in panels(dashboard()) if panel["type"] != "row"]


def metrics_by_panel() -> dict[str, set[str]]:
    """Panel title -> metric names in its target expressions."""
    used: dict[str, set[str]] = {}
    for panel in query_panels():
        for target in panel.get("targets", []):
            used.setdefault(panel["title"], set()).update(METRIC_NAME.findall(target["expr"]))
    return used


def used_metrics() -> set[str]:
    return set().union(*metrics_by_panel().values())


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def the_service() -> dict[str, Any]:
    services = [doc for doc in yaml_documents(SERVICE) if doc["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["image-cloner-metrics"]
    return services[0]


def the_servicemonitor() -> dict[str, Any]:
    (monitor,) = yaml_documents(MONITORING / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    return monitor


def test_dashboard_is_identified_and_uses_the_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "image-cloner"
    assert board["schemaVersion"] == 39
    assert board["id"] is None
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in query_panels():
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


def test_every_panel_has_queries_and_ids_are_unique() -> None:
    all_panels = list(panels(dashboard()))
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    for panel in query_panels():
        targets = panel["targets"]
        assert targets, panel["title"]
        assert all(target["expr"].strip() for target in targets), panel["title"]
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert METRIC_NAME.search(" ".join(t["expr"] for t in targets)), panel["title"]
        for target in targets:
            assert balanced(target["expr"]), f"{panel['title']}: {target['expr']}"


def balanced(expr: str) -> bool:
    """Brackets of a PromQL expression pair up (a cheap guard against hand edits)."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in expr:
        if char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return not stack


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_queries_only_metrics_the_controller_exports() -> None:
    exported = set().union(*exported_families().values())
    unknown = {
        title: sorted(names - exported)
        for title, names in metrics_by_panel().items()
        if names - exported
    }
    assert not unknown, f"panels query metrics cloner/metrics.py does not export: {unknown}"


def test_dashboard_leaves_no_exported_metric_family_out() -> None:
    families = exported_families()
    assert set(NOT_REQUIRED_ON_DASHBOARD) <= set(families), "stale NOT_REQUIRED_ON_DASHBOARD"
    used = used_metrics()
    missing = sorted(
        name
        for name, series in families.items()
        if not series & used and name not in NOT_REQUIRED_ON_DASHBOARD
    )
    assert not missing, f"metric families with no dashboard panel: {missing}"


def test_servicemonitor_selects_the_metrics_service_on_its_port() -> None:
    service = the_service()
    monitor = the_servicemonitor()
    namespace = service["metadata"]["namespace"]
    assert monitor["metadata"]["namespace"] == namespace
    assert namespace in monitor["spec"].get("namespaceSelector", {}).get("matchNames", [namespace])

    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}, "only matchLabels is checked here"
    labels = service["metadata"]["labels"]
    assert selector["matchLabels"].items() <= labels.items()
    assert selector["matchLabels"]["app.kubernetes.io/name"] == "image-cloner"

    port_names = {port["name"] for port in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert [endpoint["port"] for endpoint in endpoints] == ["metrics"]
    assert {endpoint["port"] for endpoint in endpoints} <= port_names
    (endpoint,) = endpoints
    assert endpoint["path"] == service["metadata"]["annotations"]["prometheus.io/path"]
    assert endpoint["interval"] == "30s"


def test_kustomization_wraps_the_dashboard_for_the_grafana_sidecar() -> None:
    (kustomization,) = yaml_documents(MONITORING / "kustomization.yaml")
    assert kustomization["namespace"] == "image-cloner"
    assert kustomization["resources"] == ["servicemonitor.yaml"]
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    (generator,) = kustomization["configMapGenerator"]
    sources = [entry.split("=", 1)[-1] for entry in generator["files"]]
    assert sources == ["dashboard.json"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    for name in (*kustomization["resources"], *sources):
        assert (MONITORING / name).is_file(), name


def kustomize_dirs(directory: Path) -> Iterator[Path]:
    """The directory and every kustomization directory it includes as a resource."""
    yield directory.resolve()
    (kustomization,) = yaml_documents(directory / "kustomization.yaml")
    for resource in kustomization.get("resources", []):
        if (directory / resource).is_dir():
            yield from kustomize_dirs(directory / resource)


def test_make_deploy_does_not_apply_monitoring() -> None:
    for entry in (MANIFESTS, MANIFESTS / "secret-credentials"):
        assert MONITORING.resolve() not in set(kustomize_dirs(entry)), entry
