"""The durable state of 50,000 switched workloads, on the real API server, as the controller.

At this size 16 shards would each hold about 1.8 MB and the API server
refuses every write (``422 ... Too long: may not be more than 1048576
bytes``), so a restart forgot every pending switch (bench/scale.py, issue
31). The state now grows to more shards; this checks it against the real
API server's object limit and the shipped RBAC Role, which names each shard
the controller may read and update.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import kubernetes
import pytest

from cloner.adapters.kube import KubeClient, load_api_client
from cloner.model.state import MAX_SHARDS, SHARDS, StateBook, shard_names
from cloner.ops.state import StateStore
from devenv.cluster import CONTROLLER_NAMESPACE
from devenv.harness import Environment
from tests.unit.test_state_store import switch

PREFIX = "image-cloner-state"
SWITCHES = 50_000


def drop_state(env: Environment) -> None:
    """Delete every state ConfigMap (other tests' controllers read the same names)."""
    with closing(env.api_client()) as api:
        core = kubernetes.client.CoreV1Api(api)
        for name in shard_names(PREFIX, MAX_SHARDS):
            try:
                core.delete_namespaced_config_map(name, CONTROLLER_NAMESPACE)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def clean_state(env: Environment, controller_kubeconfig: Path) -> Iterator[Path]:
    drop_state(env)
    try:
        yield controller_kubeconfig
    finally:
        drop_state(env)


def test_fifty_thousand_pending_switches_survive_a_restart(
    env: Environment, clean_state: Path
) -> None:
    kube = KubeClient(load_api_client(clean_state))
    store = StateStore(StateBook(PREFIX), kube, CONTROLLER_NAMESPACE)
    assert store.load()
    with store.locked() as book:
        for i in range(SWITCHES):
            book.switch_started(switch(i))
    written = store.save()
    with store.locked() as book:
        shards = book.shards
    # Every shard was accepted (none refused as too long, none forbidden by RBAC).
    assert SHARDS < shards <= MAX_SHARDS
    assert sorted(written) == sorted(shard_names(PREFIX, shards))
    assert store.save() == []

    restarted = StateStore(
        StateBook(PREFIX), KubeClient(load_api_client(clean_state)), CONTROLLER_NAMESPACE
    )
    assert restarted.load()
    with restarted.locked() as book:
        assert book.shards == shards
        assert len(book.switches) == SWITCHES
        assert book.switches[switch(31_337).key] == switch(31_337)
        book.switch_ended(switch(31_337).key)
    assert len(restarted.save()) == 1  # one ended switch rewrites one shard
