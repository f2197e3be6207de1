"""``controller.py plan`` against the cycle that follows it, on the real API server and registries.

Issue 30, part 2: the owned column of ``plan --output json`` is, row for row,
the reference the next ``--once`` cycle writes into the workload: sources by
tag, by digest and by tag and digest, with ``pinDigest`` off and on, with the
skopeo backend (digests kept, so every reference is known before the copy)
and the Docker backend (the copy of an OCI image gets a new digest, which
``plan`` shows as ``<digest after copy>``). Once the copies are verified, a
new workload of the same sources is planned with the exact reference, from
the durable record, and the cycle writes exactly that.

Part 3: ``plan --all`` also lists the workloads of namespaces out of scope,
each container ``excluded by <rule> (<namespace>)``; the default output and
the cycle leave them out as before.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cloner.model.reference import DIGEST_AFTER_COPY
from devenv import images as img
from devenv.harness import Environment
from devenv.support import (
    Scope,
    create,
    create_namespace,
    images,
    read,
    run_controller,
)

pytestmark = pytest.mark.e2e

A_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def plan(scope: Scope, config: Path, *args: str) -> list[dict[str, Any]]:
    """The rows of ``controller.py plan --output json`` (as the controller's ServiceAccount)."""
    result = run_controller(
        scope.env,
        config,
        "plan",
        "--output",
        "json",
        *args,
        kubeconfig=scope.kubeconfig,
        once=False,
    )
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def assert_cycle_wrote_the_plan(env: Environment, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Every row's owned column is what its container holds now; returns container -> image.

    ``<digest after copy>`` must have become the digest of the copy, which
    the owned registry serves under that reference.
    """
    api = env.api_client()
    found = {}
    for row in rows:
        now = images(read(api, row["kind"], row["namespace"], row["name"]))[row["container"]]
        owned = row["owned"]
        assert owned is not None, row
        if owned.endswith("@" + DIGEST_AFTER_COPY):
            before = owned.removesuffix(DIGEST_AFTER_COPY)
            assert now.startswith(before), (row, now)
            digest = now.removeprefix(before)
            assert A_DIGEST.fullmatch(digest), (row, now)
            repository = before.split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]
            assert env.owned.manifest_digest(repository, digest) == digest
        else:
            assert DIGEST_AFTER_COPY not in owned
            assert now == owned, row
        found[row["container"]] = now
    return found


@pytest.mark.parametrize("pin", [False, True], ids=["tags", "pinDigest"])
@pytest.mark.parametrize("backend", ["skopeo", "docker"])
def test_plan_shows_the_reference_the_cycle_writes(
    scope: Scope, env: Environment, backend: str, pin: bool
) -> None:
    ns = scope.namespace
    api = env.api_client()
    built = {
        name: img.build_image(
            env.public, f"{ns}/{name}", "1", media="oci", layers=[img.layer(f"{ns}-{name}")]
        ).digest
        for name in ("tagged", "pinned", "both")
    }
    sources = {
        "tag": scope.source("tagged:1"),
        "digest": f"{scope.source('pinned')}@{built['pinned']}",
        "both": f"{scope.source('both')}:1@{built['both']}",
    }
    create(api, "Deployment", ns, "first", sources)
    config = scope.write_config(
        "c.yaml",
        copyBackend=backend,
        pinDigest=pin,
        controllerNamespace="image-cloner",  # the durable record, which plan reads
    )

    rows = plan(scope, config)
    shown = {r["container"]: r["owned"] for r in rows}
    after = "@" + DIGEST_AFTER_COPY
    if backend == "skopeo":
        expected = {
            "tag": f"{scope.owned('tagged')}:1" + (after if pin else ""),
            "digest": f"{scope.owned('pinned')}@{built['pinned']}",
            "both": f"{scope.owned('both')}:1@{built['both']}",
        }
    else:  # the engine's copy of an OCI image is a Docker manifest: a new digest
        expected = {
            "tag": f"{scope.owned('tagged')}:1" + (after if pin else ""),
            "digest": f"{scope.owned('pinned')}{after}",
            "both": f"{scope.owned('both')}:1{after}",
        }
    assert shown == expected
    assert {r["decision"] for r in rows} <= {
        "clone",
        "clone; new digest with the docker backend (copyBackend: skopeo keeps it)",
    }

    result = scope.run(config)
    assert result.returncode == 0, result.stderr
    first = assert_cycle_wrote_the_plan(env, rows)
    if backend == "docker":
        assert first["digest"].split("@")[1] != built["pinned"]

    # The copies are verified: a new workload of the same sources is planned
    # with the exact references (from the durable record) and patched to them.
    create(api, "Deployment", ns, "second", sources)
    later = [r for r in plan(scope, config) if r["name"] == "second"]
    assert len(later) == 3
    assert all(DIGEST_AFTER_COPY not in r["owned"] for r in later), later
    assert {r["container"]: r["owned"] for r in later} == first
    result = scope.run(config)
    assert result.returncode == 0, result.stderr
    assert assert_cycle_wrote_the_plan(env, later) == first


def test_plan_all_lists_the_workloads_of_excluded_namespaces_with_the_rule(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    by_name, by_glob = f"{ns}-x", f"{ns}-glob"
    for name in (by_name, by_glob):
        create_namespace(env, name)
    img.build_image(env.public, f"{ns}/app", "1", layers=[img.layer(f"{ns}-app")])
    create(api, "Deployment", ns, "web", {"main": scope.source("app:1")})
    create(api, "DaemonSet", by_name, "agent", {"a": scope.source("app:1"), "b": "busybox:1"})
    create(api, "Deployment", by_glob, "tool", {"main": scope.source("app:1")})
    config = scope.write_config(
        "c.yaml",
        namespaces={
            "include": [ns, f"{ns}-*"],  # an exclusion wins over an inclusion
            "exclude": ["kube-system", "kube-public", "kube-node-lease", by_name, f"{ns}-g*"],
        },
    )
    in_scope = [(r["namespace"], r["name"], r["decision"]) for r in plan(scope, config)]
    assert in_scope == [(ns, "web", "clone")]

    everything = plan(scope, config, "--all")
    mine = {
        (r["namespace"], r["name"], r["container"]): (r["image"], r["owned"], r["decision"])
        for r in everything
        if r["namespace"] in (ns, by_name, by_glob)
    }
    assert mine == {
        (ns, "web", "main"): (scope.source("app:1"), f"{scope.owned('app')}:1", "clone"),
        (by_name, "agent", "a"): (
            scope.source("app:1"),
            None,
            f"excluded by namespaces.exclude ({by_name})",
        ),
        (by_name, "agent", "b"): ("busybox:1", None, f"excluded by namespaces.exclude ({by_name})"),
        (by_glob, "tool", "main"): (
            scope.source("app:1"),
            None,
            f"excluded by namespaces.exclude '{ns}-g*' ({by_glob})",
        ),
    }
    # Every other namespace of the shared API server is out of scope too, and says why.
    others = [r for r in everything if r["namespace"] not in (ns, by_name, by_glob)]
    assert all(r["decision"].startswith("excluded by namespaces.") for r in others), others
    table = run_controller(
        env, config, "plan", "--all", kubeconfig=scope.kubeconfig, once=False
    ).stdout.splitlines()
    assert any(
        line.startswith(by_name) and line.endswith(f"excluded by namespaces.exclude ({by_name})")
        for line in table
    ), table

    result = scope.run(config)
    assert result.returncode == 0, result.stderr
    assert images(read(api, "Deployment", ns, "web")) == {"main": f"{scope.owned('app')}:1"}
    assert images(read(api, "DaemonSet", by_name, "agent"))["a"] == scope.source("app:1")
    assert images(read(api, "Deployment", by_glob, "tool")) == {"main": scope.source("app:1")}
