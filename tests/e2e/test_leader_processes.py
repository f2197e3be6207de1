"""Two controllers with leader election: only the holder patches; kill it, the other leads."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import kubernetes.client

from devenv.harness import Environment
from devenv.support import Scope, create, images, read, start_controller
from devenv.waiting import seconds_until, wait_for


def identity(lines: list[str]) -> str:
    """The Lease holder identity a controller logged at start-up."""
    for line in lines:
        if "leader election: Lease" in line:
            return line.rsplit(" as ", 1)[1].strip()
    raise AssertionError("no leader election line in the output")


def start(scope: Scope, config: Path) -> tuple[subprocess.Popen[str], list[str]]:
    process, lines, _reader = start_controller(scope.kubeconfig, config)
    return process, lines


def test_only_the_leader_patches_and_a_standby_takes_over(scope: Scope, env: Environment) -> None:
    ns = scope.namespace
    api = env.api_client()
    lease_name = f"cloner-{ns}"
    config = scope.write_config(
        "c.yaml",
        controllerNamespace="image-cloner",
        leaderElection={
            "enabled": True,
            "leaseName": lease_name,
            "leaseDuration": 4,
            "renewDeadline": 3,
            "retryPeriod": 0.5,
        },
    )
    env.build_image(scope.source("one:1"), layers=1, seed=f"{ns}-one")
    env.build_image(scope.source("two:1"), layers=1, seed=f"{ns}-two")
    create(api, "Deployment", ns, "first", {"main": scope.source("one:1")})
    a, a_out = start(scope, config)
    time.sleep(1.5)  # a takes the Lease first
    b, b_out = start(scope, config)
    processes = [a, b]
    try:
        wait_for(
            lambda: (
                images(read(api, "Deployment", ns, "first"))["main"] == f"{scope.owned('one')}:1"
            ),
            30,
            "first patched",
        )
        time.sleep(2)
        leaders = [out for out in (a_out, b_out) if any("leading: reconciling" in x for x in out)]
        assert leaders == [a_out], (a_out[-5:], b_out[-5:])
        assert any("standing by" in line for line in b_out)
        assert not any("patched Deployment" in line for line in b_out)
        lease = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(
            lease_name, "image-cloner"
        )
        assert lease.spec.holder_identity == identity(a_out)

        a.send_signal(signal.SIGKILL)  # dies without releasing the Lease
        a.wait(timeout=10)
        killed = time.monotonic()
        create(api, "Deployment", ns, "second", {"main": scope.source("two:1")})
        took = seconds_until(
            lambda: (
                images(read(api, "Deployment", ns, "second"))["main"] == f"{scope.owned('two')}:1"
            ),
            30,
            "second patched by the standby",
        )
        print(f"\nstandby patched {took:.1f}s after the leader was killed (lease 4 s)")
        assert time.monotonic() - killed < 4 + 0.5 + 3  # lease + retry + one cycle
        assert any("leading: reconciling" in line for line in b_out)
        assert any("patched Deployment" in line and "second" in line for line in b_out)
        lease = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(
            lease_name, "image-cloner"
        )
        assert lease.spec.holder_identity == identity(b_out)
        b.send_signal(signal.SIGTERM)
        b.wait(timeout=20)
        assert b.returncode == 0
        released = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(
            lease_name, "image-cloner"
        )
        assert not released.spec.holder_identity  # released on shutdown
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
