"""Behind a corporate proxy: the public registry only through it, the cluster never (issue 30).

The "public" registry listens on 127.0.0.2 and is named ``public.registry.test``,
a name only the forward proxy (``forward_proxy.ForwardProxy``) resolves, so
nothing reaches it except through the proxy; the proxy's upstream
connections leave from 127.0.0.3, so the registry's access log shows which
requests came through it. The controller runs as a real process with
``HTTPS_PROXY``/``HTTP_PROXY`` pointing at the proxy and ``NO_PROXY`` covering
the API server and the owned registry (both on 127.0.0.1), with each copy
backend: skopeo, which gets the proxy from the controller, and the Docker
engine, a second dockerd started with the proxy in its own environment, as the
docker-in-docker sidecar gets it from the chart's ``proxy`` values.

Asserted from the logs of the proxy and the registries: every request to the
public registry went through the proxy, none to the API server or the owned
registry did, and the workloads were patched. With the proxy stopped, the
public images back off with reason ``network``, the API server is still
reached, and no workload is touched.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from devenv import images
from devenv.forward_proxy import ForwardProxy
from devenv.harness import Environment, Process, Registry, free_port
from devenv.support import Scope, create, read, request_lines, run_controller
from devenv.support import images as images_of

pytestmark = pytest.mark.e2e

PUBLIC_NAME = "public.registry.test"
PROXY_SOURCE = "127.0.0.3"


@dataclass
class ProxiedWorld:
    """The registry behind the proxy, the proxy, and an engine that uses it."""

    registry: Registry
    proxy: ForwardProxy
    docker_host: str

    @property
    def public_host(self) -> str:
        """``public.registry.test:PORT``: how workloads name the registry."""
        return f"{PUBLIC_NAME}:{self.registry.host.rsplit(':', 1)[1]}"

    def environ(self) -> dict[str, str]:
        """The controller's proxy environment: the cluster and the owned registry direct."""
        return {
            "HTTPS_PROXY": self.proxy.url,
            "HTTP_PROXY": self.proxy.url,
            "NO_PROXY": "127.0.0.1,localhost",
        }


def _proxied_dockerd(workdir: Path, world_env: dict[str, str], public_host: str) -> Process:
    """A dockerd of its own whose environment names the proxy, as the dind sidecar's does."""
    sockets = Path(tempfile.mkdtemp(prefix="icpx-", dir="/tmp"))  # short: a unix socket path
    root = workdir / "docker-proxied"
    root.mkdir(exist_ok=True)
    daemon_json = root / "daemon.json"
    daemon_json.write_text("{}\n")
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **world_env}
    environ.update({name.lower(): value for name, value in world_env.items()})
    return Process(
        "dockerd-proxied",
        [
            "dockerd",
            f"--config-file={daemon_json}",
            f"--data-root={root / 'data'}",
            f"--exec-root={sockets / 'exec'}",
            f"--pidfile={sockets / 'dockerd.pid'}",
            "-H",
            f"unix://{sockets / 'docker.sock'}",
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            # A name, not a loopback address: the engine would take TLS for it.
            f"--insecure-registry={public_host}",
        ],
        workdir / "logs" / "dockerd-proxied.log",
        env=environ,
        stop_timeout=30,
    )


@pytest.fixture(scope="module")
def world(env: Environment) -> Iterator[ProxiedWorld]:
    registry = Registry(
        "proxied",
        f"127.0.0.2:{free_port()}",
        None,
        None,
        env.workdir / "registry-proxied",
    )
    registry.start()
    proxy = ForwardProxy({PUBLIC_NAME: "127.0.0.2"}, source=PROXY_SOURCE)
    proxy.start()
    world = ProxiedWorld(registry, proxy, "")
    dockerd = _proxied_dockerd(env.workdir, world.environ(), world.public_host)
    dockerd.start()
    socket_path = dockerd.argv[dockerd.argv.index("-H") + 1]
    world.docker_host = socket_path

    def pong() -> bool:
        client = docker.APIClient(base_url=socket_path, version="auto", timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    try:
        dockerd.wait_until(pong, 60, "answering /_ping")
        yield world
    finally:
        dockerd.stop()
        shutil.rmtree(Path(socket_path.removeprefix("unix://")).parent, ignore_errors=True)
        proxy.stop()
        registry.stop()


@dataclass
class Setup:
    """One test's Deployment ``web`` of a new image behind the proxy, and its config."""

    api: Any
    source: str
    config: Path
    backend: str


@pytest.fixture(params=["skopeo", "docker"])
def setup(
    request: pytest.FixtureRequest,
    env: Environment,
    scope: Scope,
    world: ProxiedWorld,
) -> Iterator[Setup]:
    """The image is pushed straight to the registry (by its address); the
    Deployment names it by the name only the proxy resolves."""
    backend = request.param
    repository = f"{scope.namespace}/app-{uuid.uuid4().hex[:6]}"
    images.build_image(
        world.registry, repository, "1", layers=[images.layer(repository)], label=repository
    )
    source = f"{world.public_host}/{repository}:1"
    config = scope.write_config(
        f"config-{backend}.yaml",
        copyBackend=backend,
        dockerHost=world.docker_host,
        insecureRegistries=["127.0.0.1:*", f"{PUBLIC_NAME}:*"],
    )
    with closing(env.api_client()) as api:
        create(api, "Deployment", scope.namespace, "web", {"main": source})
        yield Setup(api, source, config, backend)


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_the_public_registry_is_reached_only_through_the_proxy(
    env: Environment, scope: Scope, world: ProxiedWorld, setup: Setup
) -> None:
    public_start = _log_size(world.registry.log_path)
    owned_start = _log_size(env.owned.log_path)
    seen_before = len(world.proxy.seen())
    result = run_controller(
        env, setup.config, kubeconfig=scope.kubeconfig, extra_env=world.environ()
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "proxy: HTTPS_PROXY=" in output  # the settings in force are logged
    # The workload now runs the owned copy.
    patched = images_of(read(setup.api, "Deployment", scope.namespace, "web"))["main"]
    assert patched != setup.source and patched.startswith(scope.target + "/"), output

    through_proxy = world.proxy.seen()[seen_before:]
    # Every request the proxy saw was for the public registry: none for the
    # API server or the owned registry (both in NO_PROXY, and loopback).
    assert through_proxy, output
    assert {r.target for r in through_proxy} == {world.public_host}, through_proxy
    # Every request the public registry answered came through the proxy.
    public = request_lines(world.registry, public_start)
    assert public, "the public registry saw no request"
    assert all(line.split()[0] == PROXY_SOURCE for line in public), public
    # Both the controller's own questions and the copy tool's pulls are among them.
    copier = {"skopeo": '"skopeo/', "docker": '"docker/'}[setup.backend]
    assert any('"python-requests/' in line for line in public), public
    assert any(copier in line and "/blobs/" in line for line in public), public
    # The owned registry saw the copy, and nothing of it came through the proxy.
    owned = request_lines(env.owned, owned_start)
    assert owned and not [line for line in owned if line.split()[0] == PROXY_SOURCE], owned


def test_with_the_proxy_stopped_the_public_images_back_off_as_network(
    env: Environment, scope: Scope, world: ProxiedWorld, setup: Setup
) -> None:
    before = read(setup.api, "Deployment", scope.namespace, "web")
    public_start = _log_size(world.registry.log_path)
    world.proxy.stop()
    try:
        result = run_controller(
            env, setup.config, kubeconfig=scope.kubeconfig, extra_env=world.environ()
        )
    finally:
        world.proxy.start()
    output = result.stdout + result.stderr
    # The cycle ran to its end: the API server was reached (workloads
    # listed, the summary written) and the image backs off as network.
    assert "reconcile: workloads=1 " in output, output
    assert "clone_failures=1 (network=1) patched=0" in output, output
    assert "list_failures=0" in output, output
    # No workload is touched, and nothing reached the public registry.
    after = read(setup.api, "Deployment", scope.namespace, "web")
    assert images_of(after) == {"main": setup.source}
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert request_lines(world.registry, public_start) == []


def test_the_proxy_helper_resolves_only_its_own_names() -> None:
    # The name the tests use is not known to this machine's resolver, so
    # nothing but the proxy can reach the registry behind it.
    resolved = subprocess.run(
        ["getent", "hosts", PUBLIC_NAME], capture_output=True, text=True, check=False
    )
    assert resolved.returncode != 0, resolved.stdout
