"""A copy that takes long, end to end (both copy backends): the loop goes on, shutdown is prompt.

The slow source is the real public registry behind the tests' loopback proxy
(``support.RegistryProxy``), which holds every blob GET of one repository
until the test releases it: a registry that has stopped answering mid-copy,
or an image of gigabytes. The other image of that registry is answered at
once. The outcomes asserted are the state of the world: what the API server
holds, the requests the proxy saw, what the owned registry holds, and how
the controller process ended.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devenv import images as img
from devenv.harness import Environment
from devenv.support import (
    RegistryProxy,
    Scope,
    controller_loop,
    create,
    images,
    read,
    scrape,
    serving,
)
from devenv.waiting import wait_for

CYCLES = "image_cloner_reconcile_duration_seconds_count"


def blob_path(namespace: str, name: str) -> str:
    """The path prefix of a repository's blobs (distribution spec "Pulling blobs")."""
    return f"/v2/{namespace}/{name}/blobs/"


@pytest.mark.parametrize("backend", ["docker", "skopeo"])
def test_a_long_copy_goes_on_in_the_background_and_shutdown_abandons_it_at_once(
    scope: Scope, env: Environment, backend: str
) -> None:
    ns = scope.namespace
    api = env.api_client()
    # Built through the registry API, so the Docker engine has none of them
    # and must pull every blob.
    for name in ("fast", "slow", "stuck"):
        layers = [img.layer(f"{ns}-{name}-{index}") for index in range(2)]
        img.build_image(env.public, f"{ns}/{name}", "1", layers=layers, media="docker")
    slow_blobs, stuck_blobs = blob_path(ns, "slow"), blob_path(ns, "stuck")
    holding = {slow_blobs}
    proxy = RegistryProxy(
        env.public.host,
        hold=lambda method, path: method == "GET" and any(blobs in path for blobs in holding),
    )

    def source(name: str) -> str:
        return f"{proxy.host}/{ns}/{name}:1"

    def owned(name: str) -> str:
        return f"{scope.owned(name, proxy.host)}:1"

    def config(name: str, **extra: object) -> Path:
        return scope.write_config(name, copyBackend=backend, **extra)

    with serving(proxy):
        create(api, "Deployment", ns, "fast", {"main": source("fast")})
        create(api, "Deployment", ns, "both", {"a": source("fast"), "b": source("slow")})
        create(api, "Deployment", ns, "slow", {"main": source("slow")})
        loop, port = scope.metrics_config("c.yaml", copyBackend=backend, pollInterval=2)
        with controller_loop(scope.kubeconfig, loop) as output:
            # The image of the same registry that answers is copied and its
            # workload patched while the slow copy is held mid-way.
            wait_for(
                lambda: images(read(api, "Deployment", ns, "fast")) == {"main": owned("fast")},
                90,
                "fast patched",
            )
            wait_for(lambda: bool(proxy.held), 30, "a slow blob requested")
            assert images(read(api, "Deployment", ns, "both")) == {
                "a": source("fast"),
                "b": source("slow"),
            }
            assert images(read(api, "Deployment", ns, "slow")) == {"main": source("slow")}
            # Cycles go on meanwhile (pollInterval 2 s), and none starts a
            # second copy of the image in flight.
            cycles = scrape(port)[CYCLES]
            wait_for(lambda: scrape(port)[CYCLES] >= cycles + 3, 30, "three more cycles")
            held = list(proxy.held)
            assert len(held) == len(set(held)), held
            assert images(read(api, "Deployment", ns, "slow")) == {"main": source("slow")}
            # Released, the copy in flight finishes; a later cycle collects it
            # and patches both workloads that waited for it.
            proxy.release()
            for name, expected in (
                ("both", {"a": owned("fast"), "b": owned("slow")}),
                ("slow", {"main": owned("slow")}),
            ):
                wait_for(
                    lambda n=name, e=expected: images(read(api, "Deployment", ns, n)) == e,
                    90,
                    f"{name} patched",
                )
        log = "".join(output)
        assert "clones still in flight" in log, log
        # Each blob of the slow image was asked for once: one copy, however
        # many cycles ran while it was in flight.
        slow_gets = [r.path for r in proxy.requests if r.method == "GET" and slow_blobs in r.path]
        assert slow_gets and len(slow_gets) == len(set(slow_gets)), slow_gets
        assert env.owned.tags(scope.owned_repository("slow", proxy.host)) == ["1"]

        # Shutdown with a copy held mid-way, while the cycle waits for it
        # (pollInterval 30 s: up to 27 s): the process ends at once, well
        # within shutdownTimeout, and nothing is patched or written for it,
        # not even after the registry answers again.
        holding.add(stuck_blobs)
        proxy.hold_again()
        create(api, "Deployment", ns, "stuck", {"main": source("stuck")})
        stopping = config("s.yaml", pollInterval=30, shutdownTimeout=60)
        with controller_loop(scope.kubeconfig, stopping) as output:  # SIGTERM at the end
            wait_for(lambda: bool(proxy.held), 90, "a stuck blob requested")
            time.sleep(1)
            stopped = time.monotonic()
        # controller_loop asserted the exit status 0.
        took = time.monotonic() - stopped
        out = "".join(output)
        assert took < 10, f"exited {took:.1f}s after SIGTERM\n{out}"
        assert "stopped after" in out, out
        proxy.release()
        time.sleep(5)  # a copy that outlived the controller would finish now
        assert images(read(api, "Deployment", ns, "stuck")) == {"main": source("stuck")}
        assert env.owned.tags(scope.owned_repository("stuck", proxy.host)) == [], out
