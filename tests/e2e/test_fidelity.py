"""Copies faithful to their source, on real registries, a real API server and dockerd.

- skopeo backend: OCI indexes, Docker manifest lists and OCI single manifests,
  by tag, by digest and by tag+digest, keep their digests and every platform;
- Docker backend: a multi-platform source waits with ``multi_platform`` while
  nodes of another architecture exist (Node objects created through the API:
  this test bed has no kubelet), and is copied once every node is amd64;
- an owned name holding other content is copied over before any patch;
- the durable record: a restarted controller patches from it with no source
  request, keeps serving when the source is gone, and never uses an owned
  name it did not verify;
- tag refresh: a moved source tag is copied again, ``SourceMoved`` is
  recorded, and pinned workloads keep their pin.

Every scenario ends with the invariants of the project: every image that
points into the owned registry names content the owned registry serves, and
that content is what the source named.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from typing import Any

import kubernetes.client
import pytest

from cloner.model.reference import parse_reference
from devenv import images as img
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
)
from devenv.waiting import wait_for

KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def workloads(env: Environment, namespace: str) -> dict[str, dict[str, str]]:
    """``kind/name`` -> container -> image, for every workload of the namespace."""
    out = {}
    with closing(env.api_client()) as api:
        apps = kubernetes.client.AppsV1Api(api)
        for kind, call in (
            ("Deployment", apps.list_namespaced_deployment),
            ("DaemonSet", apps.list_namespaced_daemon_set),
            ("StatefulSet", apps.list_namespaced_stateful_set),
        ):
            response = call(namespace, _preload_content=False)
            for item in json.loads(response.data)["items"]:
                out[f"{kind}/{item['metadata']['name']}"] = images(item, kind)
    return out


def assert_owned_images_are_served(env: Environment, namespace: str) -> int:
    """Every image into the owned registry names a manifest it serves; returns how many."""
    count = 0
    for key, containers in workloads(env, namespace).items():
        for container, image in containers.items():
            ref = parse_reference(image)
            if ref.registry != env.owned.host:
                continue
            served = env.owned.manifest_digest(ref.repository, ref.digest or ref.tag_or_default)
            assert served is not None, f"{key} {container}: {image} is not served"
            if ref.digest is not None:
                assert served == ref.digest
            count += 1
    return count


def events(env: Environment, namespace: str, reason: str) -> list[str]:
    with closing(env.api_client()) as api:
        response = kubernetes.client.CoreV1Api(api).list_namespaced_event(
            namespace, _preload_content=False
        )
    return [e["message"] for e in json.loads(response.data)["items"] if e["reason"] == reason]


# --- skopeo: every platform, the same digests --------------------------------------


def test_skopeo_backend_keeps_digests_and_every_platform(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    built = {
        "oci": img.build_index(env.public, f"{ns}/oci", "1", media="oci", seed=f"{ns}-o"),
        "list": img.build_index(env.public, f"{ns}/list", "1", media="docker", seed=f"{ns}-l"),
    }
    single = img.build_image(
        env.public,
        f"{ns}/single",
        "1",
        media="oci",
        layers=[img.layer(f"{ns}-s0"), img.layer(f"{ns}-s1")],
    )
    digests = {"oci": built["oci"].digest, "list": built["list"].digest, "single": single.digest}
    for name, digest in digests.items():
        create(
            api,
            "Deployment",
            ns,
            name,
            {
                "tag": scope.source(f"{name}:1"),
                "digest": f"{scope.source(name)}@{digest}",
                "both": f"{scope.source(name)}:1@{digest}",
            },
        )
    result = scope.run(scope.write_config("skopeo.yaml", copyBackend="skopeo"))
    assert result.returncode == 0, result.stderr
    for name, digest in digests.items():
        owned = scope.owned(name)
        assert images(read(api, "Deployment", ns, name)) == {
            "tag": f"{owned}:1",
            "digest": f"{owned}@{digest}",  # a pin stays the source's digest
            "both": f"{owned}:1@{digest}",
        }
        repository = scope.owned_repository(name)
        assert env.owned.manifest_digest(repository, "1") == digest
        assert img.platforms_served(env.owned, repository, digest) == img.platforms_served(
            env.public, f"{ns}/{name}", digest
        )
    assert set(img.platforms_served(env.owned, scope.owned_repository("oci"), "1")) == {
        "linux/amd64",
        "linux/arm64",
    }
    assert assert_owned_images_are_served(env, ns) == 9


# --- Docker engine: never drops a platform a node needs -------------------------------


def _node(name: str, arch: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": arch}},
        "status": {
            "nodeInfo": {
                "architecture": arch,
                "operatingSystem": "linux",
                "bootID": "",
                "containerRuntimeVersion": "",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "kubeletVersion": "",
                "machineID": "",
                "osImage": "",
                "systemUUID": "",
            }
        },
    }


def test_docker_backend_waits_for_a_multi_platform_source_while_arm64_nodes_exist(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    index = img.build_index(env.public, f"{ns}/multi", "1", media="oci", seed=f"{ns}-m")
    create(api, "DaemonSet", ns, "agent", {"agent": scope.source("multi:1")})
    core = kubernetes.client.CoreV1Api(api)
    nodes = [f"{ns}-amd64", f"{ns}-arm64"]
    for name, arch in zip(nodes, ("amd64", "arm64"), strict=True):
        core.create_node(_node(name, arch))
        core.patch_node_status(name, {"status": _node(name, arch)["status"]})
    try:
        settings = scope.write_config("docker.yaml")
        refused = scope.run(settings)
        assert refused.returncode == 1
        assert "multi_platform" in refused.stderr and "copyBackend: skopeo" in refused.stderr
        assert images(read(api, "DaemonSet", ns, "agent")) == {"agent": scope.source("multi:1")}
        assert env.owned.tags(scope.owned_repository("multi")) == []
        assert any("copyBackend: skopeo" in m for m in events(env, ns, "CloneFailed"))

        core.delete_node(nodes[1])  # every node left is amd64, the engine's platform
        copied = scope.run(settings)
        assert copied.returncode == 0, copied.stderr
    finally:
        for name in nodes:
            try:
                core.delete_node(name)
            except kubernetes.client.ApiException as exc:
                assert exc.status == 404
    owned = scope.owned("multi")
    assert images(read(api, "DaemonSet", ns, "agent")) == {"agent": f"{owned}:1"}
    repository = scope.owned_repository("multi")
    served = img.platforms_served(env.owned, repository, "1")
    assert list(served) == ["linux/amd64"]
    # The same image as the source's amd64 child: the same config.
    _media_type, body = img.get_manifest(env.owned, repository, "1")
    assert json.loads(body)["config"]["digest"] == index.children["linux/amd64"].config_digest
    assert assert_owned_images_are_served(env, ns) == 1


# --- an owned name holding other content -----------------------------------------


@pytest.mark.parametrize("backend", ["docker", "skopeo"])
def test_owned_name_holding_other_content_is_replaced_before_any_patch(
    scope: Scope, env: Environment, backend: str
) -> None:
    ns = scope.namespace
    api = env.api_client()
    tagged = env.build_image(scope.source("tagged:1"), layers=2, seed=f"{ns}-t")
    pinned = env.build_image(scope.source("pinned:1"), layers=2, seed=f"{ns}-p")
    env.build_image(scope.source("impostor:1"), layers=2, seed=f"{ns}-i")
    impostors = {
        "tagged": push_to_owned(env, scope.source("impostor:1"), scope.owned("tagged:1")),
        "pinned": push_to_owned(
            env,
            scope.source("impostor:1"),
            f"{scope.owned('pinned')}:sha256_{pinned.split(':')[1]}",
        ),
    }
    create(
        api,
        "Deployment",
        ns,
        "web",
        {"tagged": scope.source("tagged:1"), "pinned": f"{scope.source('pinned')}@{pinned}"},
    )
    result = scope.run(scope.write_config(f"{backend}.yaml", copyBackend=backend))
    assert result.returncode == 0, result.stderr
    patched = images(read(api, "Deployment", ns, "web"))
    assert patched["tagged"] == f"{scope.owned('tagged')}:1"
    assert env.owned.manifest_digest(scope.owned_repository("tagged"), "1") == tagged
    assert patched["pinned"].startswith(f"{scope.owned('pinned')}@")
    for image in patched.values():
        for impostor in impostors.values():
            assert impostor not in image
    # the owned pin serves the source's image (docker-built: the same manifest)
    assert patched["pinned"].split("@")[1] == pinned
    replaced = events(env, ns, "OwnedCopyReplaced")
    assert any(impostors["tagged"] in m for m in replaced), replaced
    assert any(impostors["pinned"] in m for m in replaced), replaced
    assert assert_owned_images_are_served(env, ns) == 2


# --- the durable record ------------------------------------------------------------


def test_restart_uses_the_durable_record_and_never_an_unverified_owned_name(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("kept:1"), layers=2, seed=f"{ns}-k")
    env.build_image(scope.source("stranger:1"), layers=2, seed=f"{ns}-s")
    push_to_owned(env, scope.source("stranger:1"), scope.owned("stranger:1"))
    stateful = scope.write_config("state.yaml", controllerNamespace="image-cloner")
    create(api, "Deployment", ns, "first", {"main": scope.source("kept:1")})
    first = scope.run(stateful)
    assert first.returncode == 0, first.stderr
    assert images(read(api, "Deployment", ns, "first")) == {"main": f"{scope.owned('kept')}:1"}

    # A restarted controller: the new workload is patched from the record,
    # without a single request to the source.
    create(api, "Deployment", ns, "second", {"main": scope.source("kept:1")})
    offset = log_size(env.public)
    second = scope.run(stateful)
    assert second.returncode == 0, second.stderr
    assert images(read(api, "Deployment", ns, "second")) == {"main": f"{scope.owned('kept')}:1"}
    assert [line for line in request_lines(env.public, offset) if f"/v2/{ns}/" in line] == []

    # The source goes away (deleted upstream, offline): what was verified is still used.
    due = scope.write_config("due.yaml", controllerNamespace="image-cloner", refreshInterval=0.5)
    create(api, "Deployment", ns, "third", {"main": scope.source("kept:1")})
    create(api, "Deployment", ns, "fourth", {"main": scope.source("stranger:1")})
    time.sleep(1.0)  # the refresh is due: the source is asked, and does not answer
    with env.stopped("public"):
        third = scope.run(due)
    assert third.returncode == 1  # stranger waits
    assert "using the owned copy verified at" in third.stderr
    assert images(read(api, "Deployment", ns, "third")) == {"main": f"{scope.owned('kept')}:1"}
    # An owned name nobody verified is not used while the source cannot be asked.
    assert "source_unverified" in third.stderr
    assert images(read(api, "Deployment", ns, "fourth")) == {"main": scope.source("stranger:1")}
    assert assert_owned_images_are_served(env, ns) == 3


# --- tag refresh --------------------------------------------------------------------


def test_moved_source_tag_is_copied_again_and_pins_are_kept(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    layers = [img.layer(f"{ns}-base")]
    old = img.build_image(env.public, f"{ns}/moving", "1", layers=layers, label="old").digest
    create(api, "Deployment", ns, "pinned", {"main": scope.source("moving:1")})
    owned = scope.owned("moving")
    repository = scope.owned_repository("moving")
    refreshing = scope.write_config(
        "refresh.yaml",
        copyBackend="skopeo",
        pinDigest=True,
        refreshInterval=2,
        verifyInterval=0,
    )
    with controller_loop(scope.kubeconfig, refreshing) as output:
        wait_for(
            lambda: images(read(api, "Deployment", ns, "pinned"))["main"] == f"{owned}:1@{old}",
            60,
            "the first workload patched",
        )
        new = img.build_image(env.public, f"{ns}/moving", "1", layers=layers, label="new").digest
        assert new != old
        wait_for(
            lambda: env.owned.manifest_digest(repository, "1") == new,
            30,
            "the owned tag copied again after refreshInterval",
        )
        create(api, "Deployment", ns, "later", {"main": scope.source("moving:1")})
        wait_for(
            lambda: images(read(api, "Deployment", ns, "later"))["main"] == f"{owned}:1@{new}",
            30,
            "a new workload patched to the new content",
        )
    assert "moved from " + old in "".join(output)
    assert images(read(api, "Deployment", ns, "pinned")) == {"main": f"{owned}:1@{old}"}
    assert env.owned.manifest_digest(repository, old) == old  # nothing was deleted
    moved = events(env, ns, "SourceMoved")
    assert any(old in m and new in m for m in moved), moved
    assert assert_owned_images_are_served(env, ns) == 2
