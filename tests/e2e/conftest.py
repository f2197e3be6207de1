"""Pytest fixtures for the end-to-end tests: one real :class:`Environment` per session."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.cluster import Cluster
from devenv.harness import Environment, ensure_components
from devenv.support import Scope, create_namespace, install_controller_rbac, write_config


@pytest.fixture(scope="session")
def env(request: pytest.FixtureRequest) -> Iterator[Environment]:
    """Start etcd, kube-apiserver, dockerd and both registries once for the session.

    Missing components are installed/built first (``hack/install-deps.sh``,
    ``hack/build-kube.sh``). The work dir (logs, data) is removed at the end
    unless a test failed or ``IC_KEEP_WORKDIR=1``.
    """
    kube_bin = ensure_components()
    workdir = Path(tempfile.mkdtemp(prefix="ic-", dir="/tmp"))
    started = time.monotonic()
    environment = Environment.start(workdir, kube_bin=kube_bin)
    elapsed = time.monotonic() - started
    print(f"\ne2e environment started in {elapsed:.1f}s in {workdir}")
    try:
        yield environment
    finally:
        environment.stop()
        keep = os.environ.get("IC_KEEP_WORKDIR") == "1" or request.session.testsfailed
        if keep:
            print(f"\ne2e work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def namespace(env: Environment) -> str:
    """Create a fresh, uniquely named namespace for one test and return its name.

    Namespaces are not deleted: without kube-controller-manager their deletion
    never completes.
    """
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    create_namespace(env, name)
    return name


@pytest.fixture(scope="session")
def controller_kubeconfig(env: Environment) -> Path:
    """A kubeconfig with a token of the image-cloner ServiceAccount, bound by manifests/ RBAC.

    Every scenario that runs the controller through ``Scope.run`` runs with
    exactly the permissions the shipped ClusterRole grants.
    """
    return install_controller_rbac(env)


@pytest.fixture
def scope(env: Environment, namespace: str, tmp_path: Path, controller_kubeconfig: Path) -> Scope:
    """The test's namespace, owned path prefix, config file and controller identity."""
    target = f"{env.owned.host}/t-{namespace}"
    config = write_config(
        tmp_path / "config.yaml", env, target, namespaces={"include": [namespace]}
    )
    return Scope(env, namespace, target, config, controller_kubeconfig)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A real single-node cluster (devenv/cluster.py) on its own Environment, once per session.

    Its own etcd, API server (Node,RBAC), dockerd and registries, so the
    other tests' workloads never get pods. Binaries, the debootstrap base and
    the built images are cached between runs. Torn down at the end; the work
    dir is kept when a test failed or ``IC_KEEP_WORKDIR=1``.
    """
    kube_bin = ensure_components()
    workdir = Path(tempfile.mkdtemp(prefix="ic-c-", dir="/tmp"))
    started = time.monotonic()
    environment = Environment.start(workdir, kube_bin=kube_bin, node=True)
    try:
        node = Cluster.start(environment)
        print(f"\ncluster started in {time.monotonic() - started:.1f}s in {workdir}")
        try:
            yield node
        finally:
            node.stop()
    finally:
        environment.stop()
        keep = os.environ.get("IC_KEEP_WORKDIR") == "1" or request.session.testsfailed
        if keep:
            print(f"\ncluster work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
