"""Issue 3 on real components: invalid references, opt-outs, image globs, flat naming, pinDigest."""

from __future__ import annotations

import kubernetes.client

from devenv.harness import Environment
from devenv.support import (
    Scope,
    create,
    create_namespace,
    images,
    log_size,
    read,
    request_lines,
)


def test_invalid_references_opt_outs_and_image_globs(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    quiet_ns = f"{ns}-quiet"
    create_namespace(env, quiet_ns, labels={"image-cloner.io/skip": "true"})
    for name in ("good", "kept", "vendor"):
        env.build_image(scope.source(f"{name}:1"), layers=1, seed=f"{ns}-{name}")
    env.build_image(f"{env.public.host}/{ns}-vendor/tool:1", layers=1, seed=f"{ns}-vt")

    create(
        api,
        "Deployment",
        ns,
        "mixed",
        {"bad": "Registry.Example.com/UPPER/Case:1", "good": scope.source("good:1")},
        init={"worse": "nginx::1"},
    )
    optout = {"metadata": {"labels": {"image-cloner.io/skip": "true"}}}
    create(api, "Deployment", ns, "labelled", {"main": scope.source("kept:1")})
    kubernetes.client.AppsV1Api(api).patch_namespaced_deployment("labelled", ns, optout)
    create(api, "StatefulSet", quiet_ns, "db", {"main": scope.source("good:1")})
    create(
        api,
        "DaemonSet",
        ns,
        "agents",
        {
            "vendored": scope.source("vendor:1"),
            "other": f"{env.public.host}/{ns}-vendor/tool:1",
        },
    )
    config = scope.write_config(
        "sel.yaml",
        namespaces={"include": [f"{ns}*"]},
        images={
            "include": [f"{env.public.host}/{ns}*/**"],
            "exclude": [f"*/{ns}/vendor*"],
        },
    )
    owned_log = log_size(env.owned)
    result = scope.run(config)
    assert result.returncode == 1  # invalid references are failures
    assert "invalid reference 'Registry.Example.com/UPPER/Case:1'" in result.stderr
    assert "container bad of Deployment" in result.stderr
    assert "container worse of Deployment" in result.stderr

    # The good container next to the invalid ones is patched; the invalid stay.
    assert images(read(api, "Deployment", ns, "mixed")) == {
        "worse": "nginx::1",
        "bad": "Registry.Example.com/UPPER/Case:1",
        "good": f"{scope.owned('good')}:1",
    }
    # Opt-outs: label on the workload, label on the namespace.
    assert images(read(api, "Deployment", ns, "labelled")) == {"main": scope.source("kept:1")}
    assert images(read(api, "StatefulSet", quiet_ns, "db")) == {"main": scope.source("good:1")}
    # Globs: vendor excluded (exclude wins over include), the other included.
    agents = images(read(api, "DaemonSet", ns, "agents"))
    assert agents["vendored"] == scope.source("vendor:1")
    host = env.public.host.replace(":", "-")
    assert agents["other"] == f"{scope.target}/{host}/{ns}-vendor/tool:1"
    # Nothing was pushed for what was left alone.
    pushed = {
        line.split("/v2/")[1].split("/manifests/")[0]
        for line in request_lines(env.owned, owned_log)
        if '"PUT ' in line and "/manifests/" in line
    }
    assert pushed == {
        scope.owned_repository("good"),
        f"{scope.target.split('/', 1)[1]}/{host}/{ns}-vendor/tool",
    }

    metrics = scope.run(config)
    assert "clone_failures=2 (invalid_reference=2)" in metrics.stderr


def test_flat_naming_with_pin_digest(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("app:1.2"), layers=2, seed=f"{ns}-flat")
    create(api, "Deployment", ns, "web", {"app": scope.source("app:1.2")})
    target = f"{env.owned.host}/flat-{ns}"
    config = scope.write_config(
        "flat.yaml",
        target=target,
        naming="flat",
        flatSeparator="_",
        pinDigest=True,
    )
    result = scope.run(config)
    assert result.returncode == 0, result.stderr

    host = env.public.host.replace(":", "-")
    repository = f"flat-{ns}/{host}_{ns}_app"  # one path component under the prefix
    assert env.owned.tags(repository) == ["1.2"]
    digest = env.owned.manifest_digest(repository, "1.2")
    assert digest is not None
    patched = images(read(api, "Deployment", ns, "web"))["app"]
    assert patched == f"{env.owned.host}/{repository}:1.2@{digest}"
    # The pinned digest resolves to exactly that manifest.
    assert env.owned.manifest_digest(repository, digest) == digest
