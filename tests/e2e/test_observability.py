"""Issue 6 on real components: plan (no writes), metrics after a known cycle, health, JSON logs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import kubernetes.client

from devenv.harness import Environment
from devenv.support import (
    Scope,
    controller_loop,
    create,
    images,
    log_size,
    push_to_owned,
    read,
    request_lines,
    run_controller,
    scrape,
)
from devenv.waiting import wait_for


def writes(lines: list[str]) -> list[str]:
    return [line for line in lines if any(f'"{m} ' in line for m in ("PUT", "POST", "PATCH"))]


def test_plan_prints_exact_decisions_and_writes_nothing(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("new:1"), layers=1, seed=f"{ns}-new")
    env.build_image(scope.source("copied:1"), layers=1, seed=f"{ns}-copied")
    push_to_owned(env, scope.source("copied:1"), scope.owned("copied") + ":1")
    owned_already = f"{env.owned.host}/t-{ns}/in-house/app:2"
    create(
        api,
        "Deployment",
        ns,
        "web",
        {
            "new": scope.source("new:1"),
            "copied": scope.source("copied:1"),
            "house": owned_already,
            "skipped": scope.source("vendor/tool:1"),
            "broken": "nginx::1",
        },
    )
    create(api, "StatefulSet", ns, "db", {"main": scope.source("new:1")})
    config = scope.write_config("c.yaml", images={"exclude": ["**/vendor/**"]})
    versions = {
        (k, n): read(api, k, ns, n)["metadata"]["resourceVersion"]
        for k, n in (("Deployment", "web"), ("StatefulSet", "db"))
    }
    public_log, owned_log = log_size(env.public), log_size(env.owned)
    result = run_controller(
        env, config, "plan", "--output", "json", kubeconfig=scope.kubeconfig, once=False
    )
    assert result.returncode == 0, result.stderr
    rows = {(r["kind"], r["name"], r["container"]): r for r in json.loads(result.stdout)}
    decisions = {key: (row["decision"], row["owned"]) for key, row in rows.items()}
    assert decisions == {
        ("Deployment", "web", "new"): ("clone", f"{scope.owned('new')}:1"),
        ("Deployment", "web", "copied"): ("patch (copy exists)", f"{scope.owned('copied')}:1"),
        ("Deployment", "web", "house"): ("already owned", None),
        ("Deployment", "web", "skipped"): ("excluded by images.exclude '**/vendor/**'", None),
        ("Deployment", "web", "broken"): ("invalid reference: invalid tag ':1'", None),
        ("StatefulSet", "db", "main"): ("clone", f"{scope.owned('new')}:1"),
    }
    assert rows["Deployment", "web", "new"]["namespace"] == ns
    assert rows["Deployment", "web", "new"]["image"] == scope.source("new:1")
    # Nothing was written anywhere: no patch, no pull, no push.
    for (kind, name), version in versions.items():
        assert read(api, kind, ns, name)["metadata"]["resourceVersion"] == version
    assert writes(request_lines(env.owned, owned_log)) == []
    assert [x for x in request_lines(env.public, public_log) if "/blobs/" in x] == []
    assert env.owned.tags(scope.owned_repository("new")) == []

    table = run_controller(env, config, "plan", kubeconfig=scope.kubeconfig, once=False)
    assert table.returncode == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "NAMESPACE",
        "WORKLOAD",
        "CONTAINER",
        "IMAGE",
        "OWNED",
        "IMAGE",
        "DECISION",
    ]
    assert any("Deployment/web" in line and line.endswith("patch (copy exists)") for line in lines)
    assert len(lines) == 6


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_after_a_known_cycle_health_endpoints_and_json_logs(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("a:1"), layers=2, seed=f"{ns}-a")
    env.build_image(scope.source("b:1"), layers=3, seed=f"{ns}-b")
    create(api, "Deployment", ns, "web", {"a": scope.source("a:1"), "b": scope.source("b:1")})
    create(api, "DaemonSet", ns, "agent", {"a": scope.source("a:1")})
    create(api, "Deployment", ns, "ghost", {"g": scope.source("ghost:1")})
    config, port = scope.metrics_config("c.yaml", backoff={"initial": 60, "max": 60, "jitter": 0})
    with controller_loop(scope.kubeconfig, config, "--log-format", "json") as lines:
        wait_for(
            lambda: images(read(api, "DaemonSet", ns, "agent"))["a"] == f"{scope.owned('a')}:1",
            60,
            "patched",
        )
        wait_for(
            lambda: scrape(port)["image_cloner_reconcile_duration_seconds_count"] >= 2,
            30,
            "two cycles",
        )
        # On a loaded machine the ghost's failure can reach a cycle only after
        # it ended (clones outlive a cycle); the cycle after it sees it backing off.
        wait_for(
            lambda: scrape(port).get('image_cloner_images{state="backing_off"}') == 1,
            30,
            "the missing image backing off",
        )
        m = scrape(port)
        assert m["image_cloner_images_cloned_total"] == 2
        assert m["image_cloner_clone_duration_seconds_count"] == 2
        assert m['image_cloner_workloads_patched_total{kind="Deployment"}'] == 1
        assert m['image_cloner_workloads_patched_total{kind="DaemonSet"}'] == 1
        assert m['image_cloner_clone_failures_total{reason="not_found"}'] == 1
        assert m['image_cloner_images{state="owned"}'] == 2
        assert m['image_cloner_images{state="backing_off"}'] == 1
        assert m['image_cloner_registry_requests_total{operation="push",outcome="success"}'] == 2
        # The missing source is found missing by the controller's own HEAD and never pulled.
        assert m['image_cloner_registry_requests_total{operation="head",outcome="not_found"}'] >= 1
        assert 'image_cloner_registry_requests_total{operation="pull",outcome="not_found"}' not in m
        assert m['image_cloner_registry_requests_total{operation="pull",outcome="success"}'] == 2
        assert m["image_cloner_pushed_bytes_total"] > 0
        assert m['image_cloner_api_requests_total{outcome="success"}'] > 0
        assert m["image_cloner_leader"] == 1
        assert m["image_cloner_last_successful_reconcile_timestamp_seconds"] == 0  # ghost fails
        assert any(k.startswith("image_cloner_build_info{") for k in m)

        assert get(port, "/healthz")[0] == 200
        status, body = get(port, "/readyz")
        assert (status, body.strip()) == (
            200,
            "ok: config loaded, API server reachable, standalone",
        )
        with env.stopped("apiserver"):
            wait_for(lambda: get(port, "/readyz")[0] == 503, 15, "not ready without the API")
            assert get(port, "/readyz")[1].strip() == "API server unreachable"
            assert get(port, "/healthz")[0] == 200
        wait_for(lambda: get(port, "/readyz")[0] == 200, 30, "ready again")
    core = kubernetes.client.CoreV1Api(api)

    def reasons(name: str) -> dict[str, tuple[str, int]]:
        found = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
        return {e.reason: (e.type, e.count or 1) for e in found.items}

    assert reasons("agent") == {"Cloned": ("Normal", 1), "Patched": ("Normal", 1)}
    assert reasons("ghost") == {"CloneFailed": ("Warning", 1)}  # backoff: tried once
    records = [json.loads(line) for line in lines if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("patched DaemonSet") for r in records)


def test_plan_shows_the_running_controllers_backoff(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    create(api, "Deployment", ns, "ghost", {"g": scope.source("ghost:1")})
    config, port = scope.metrics_config("c.yaml", backoff={"initial": 120, "max": 120, "jitter": 0})

    def backing_off() -> bool:
        try:
            return scrape(port)["image_cloner_images_waiting"] == 1
        except OSError:  # not serving yet
            return False

    with controller_loop(scope.kubeconfig, config):
        wait_for(backing_off, 30, "backing off")
        # plan with the same config asks http://127.0.0.1:<metricsPort>, as it
        # would inside the controller's container
        result = run_controller(
            env, config, "plan", "--output", "json", kubeconfig=scope.kubeconfig, once=False
        )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["decision"].startswith("backing off until 20")
    assert row["decision"].endswith("(not_found)")
    assert row["owned"] == f"{scope.owned('ghost')}:1"
