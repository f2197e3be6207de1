"""Registry TLS is verified unless a registry is listed in ``insecureRegistries``.

The e2e registries listen on 127.0.0.1 over plain HTTP, which the Docker
engine reaches without TLS verification (loopback is in its default
``InsecureRegistryCIDRs``). ``write_config`` lists ``127.0.0.1:*``; these
tests take that away and check that the controller then refuses the
registries before talking to them.
"""

from __future__ import annotations

from devenv.harness import Environment
from devenv.support import Scope, create, images, log_size, read, request_lines


def test_unlisted_loopback_registries_are_refused_then_listed_ones_work(
    scope: Scope, env: Environment
) -> None:
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("plain:1"), layers=2, seed=f"{ns}-plain")
    create(api, "Deployment", ns, "web", {"main": scope.source("plain:1")})
    unlisted = scope.write_config("unlisted.yaml", insecureRegistries=[])
    public_log, owned_log = log_size(env.public), log_size(env.owned)

    result = scope.run(unlisted)

    assert result.returncode == 1, result.stderr
    assert "insecure_registry" in result.stderr
    assert (
        f"{env.owned.host} is reached without TLS verification by the Docker engine"
        in result.stderr
    )
    # Refused before any request: neither registry heard from the engine.
    assert request_lines(env.public, public_log) == []
    assert request_lines(env.owned, owned_log) == []
    assert images(read(api, "Deployment", ns, "web")) == {"main": scope.source("plain:1")}
    assert env.owned.tags(scope.owned_repository("plain")) == []

    # Listing only the owned registry is not enough: the source is refused before the pull.
    owned_only = scope.write_config("owned-only.yaml", insecureRegistries=[env.owned.host])
    public_log = log_size(env.public)
    result = scope.run(owned_only)
    assert result.returncode == 1, result.stderr
    assert "insecure_registry" in result.stderr
    assert f"{env.public.host} is reached without TLS verification" in result.stderr
    assert request_lines(env.public, public_log) == []
    assert images(read(api, "Deployment", ns, "web")) == {"main": scope.source("plain:1")}
    assert env.owned.tags(scope.owned_repository("plain")) == []

    # With the default of write_config (127.0.0.1:*) the same workload is cloned and patched.
    result = scope.run()
    assert result.returncode == 0, result.stderr
    assert "insecure_registry" not in result.stderr
    assert images(read(api, "Deployment", ns, "web")) == {"main": f"{scope.owned('plain')}:1"}
    assert env.owned.tags(scope.owned_repository("plain")) == ["1"]
