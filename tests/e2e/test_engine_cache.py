"""The Docker engine keeps layers within engineCacheBytes: a shared base layer is pulled once.

Real dockerd and registries. Three images share one base layer blob (built
through the registry API, so the bytes are identical). With the default
budget the engine pulls the base blob once for all three; with
``engineCacheBytes: 0`` every image is removed after its push, so each copy
(one at a time here) pulls it again. The public registry's access log counts the blob GETs.
"""

from __future__ import annotations

import pytest

from devenv import images as img
from devenv.harness import Environment
from devenv.support import Scope, blob_gets, create, images, log_size, read


@pytest.mark.parametrize(("budget", "base_pulls"), [(None, 1), (0, 3)])
def test_shared_base_layer_is_pulled_once_while_it_fits_the_cache(
    scope: Scope, env: Environment, budget: int | None, base_pulls: int
) -> None:
    ns = scope.namespace
    api = env.api_client()
    base = img.layer(f"{ns}-base", 64 * 1024)
    base_digest = img.sha256_digest(base)
    for name in ("one", "two", "three"):
        img.build_image(env.public, f"{ns}/{name}", "1", layers=[base, img.layer(f"{ns}-{name}")])
        create(api, "Deployment", ns, name, {"main": scope.source(f"{name}:1")})
    # One clone at a time: concurrent pulls share a layer download in flight
    # anyway, so only sequential copies show what the cache keeps.
    extra: dict[str, int] = {"cloneConcurrency": 1}
    if budget is not None:
        extra["engineCacheBytes"] = budget
    config = scope.write_config("c.yaml", **extra)
    offset = log_size(env.public)
    result = scope.run(config)
    assert result.returncode == 0, result.stderr
    for name in ("one", "two", "three"):
        assert images(read(api, "Deployment", ns, name)) == {"main": f"{scope.owned(name)}:1"}
    base_gets = blob_gets(env.public, base_digest, offset)
    assert len(base_gets) == base_pulls, base_gets
