"""Images sharing a base layer, copied several at once: the base is pulled and uploaded once.

Real registries, dockerd, skopeo and API server; ``controller.py --once``
with ``cloneConcurrency`` and ``registryConcurrency`` 3, so all three copies
could run at the same time. Three images share one 4 MiB base layer blob
(built through the registry API, so the bytes are identical) and have one
small layer each.

- skopeo: the first copies of a source registry ramp up (``cloning._Slots``),
  so the first copy uploads the base and the two after it mount it. Without
  the ramp all three start together and each pulls and uploads the base.
- Docker: the engine shares the download in flight between the pulls, and
  the pushes take turns on the shared layer (``engine.DockerRegistry``).

Counted in the registries' access logs: GETs of the base blob at the source,
completed blob uploads (``PUT .../blobs/uploads/...``) at the owned registry.
"""

from __future__ import annotations

import pytest

from devenv import images as img
from devenv.harness import Environment
from devenv.support import (
    Scope,
    blob_gets,
    blob_uploads,
    create,
    images,
    log_size,
    read,
)

NAMES = ("one", "two", "three")


@pytest.mark.parametrize("backend", ["skopeo", "docker"])
def test_copies_at_once_pull_and_upload_a_shared_base_layer_once(
    scope: Scope, env: Environment, backend: str
) -> None:
    ns = scope.namespace
    api = env.api_client()
    base = img.layer(f"{ns}-base", 4 * 1024 * 1024)
    base_digest = img.sha256_digest(base)
    for name in NAMES:
        img.build_image(env.public, f"{ns}/{name}", "1", layers=[base, img.layer(f"{ns}-{name}")])
        create(api, "Deployment", ns, name, {"main": scope.source(f"{name}:1")})
    config = scope.write_config(
        "c.yaml", copyBackend=backend, cloneConcurrency=3, registryConcurrency=3
    )
    public_offset, owned_offset = log_size(env.public), log_size(env.owned)
    result = scope.run(config)
    assert result.returncode == 0, result.stderr
    for name in NAMES:
        assert images(read(api, "Deployment", ns, name)) == {"main": f"{scope.owned(name)}:1"}

    base_gets = blob_gets(env.public, base_digest, public_offset)
    assert len(base_gets) == 1, "\n".join(base_gets)
    uploads = blob_uploads(env.owned, owned_offset)
    # The base once, and each image's own layer and config: 1 + 3 * 2 blobs.
    assert len(uploads) == 7, "\n".join(uploads)
    if backend == "skopeo":  # the bytes are the source's: the base is the same blob
        encoded = base_digest.replace(":", "%3A")  # the digest= query parameter
        assert sum(encoded in line for line in uploads) == 1, "\n".join(uploads)
