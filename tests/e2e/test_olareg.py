"""olareg as the tests use it: referrers API on and off, uploads, mounts, request log.

Pins the olareg v0.2.1 behaviours devenv/olareg.py documents, so that a
version bump that changes one of them fails here first. Needs only Go (olareg
is built once per machine by hack/build-olareg.sh); a few seconds once built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devenv.olareg import LoggedRequest, Olareg, olareg_bin
from devenv.waiting import wait_for

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SIG_TYPE = "application/vnd.example.signature.v1+json"
TIMEOUT = 10


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(registry: Olareg, repo: str, data: bytes) -> str:
    """Push with POST then a monolithic PUT; return the digest."""
    digest = _digest(data)
    response = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    response = requests.put(
        location,
        params={"digest": digest},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def _put_manifest(registry: Olareg, repo: str, reference: str, body: bytes) -> requests.Response:
    response = requests.put(
        f"{registry.url}/v2/{repo}/manifests/{reference}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == _digest(body)
    return response


@dataclass
class Pushed:
    """An image ``lib/app:1`` and a signature-like artifact whose subject is it."""

    image: str
    image_size: int
    layer: str
    artifact: str
    artifact_response: requests.Response


def _push_image_and_artifact(registry: Olareg, repo: str = "lib/app") -> Pushed:
    empty = _push_blob(registry, repo, b"{}")
    layer_data = b"one tiny layer"
    layer = _push_blob(registry, repo, layer_data)
    image = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer,
                    "size": len(layer_data),
                }
            ],
        }
    ).encode()
    _put_manifest(registry, repo, "1", image)
    signature = b'{"critical": {}}'
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIG_TYPE,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [
                {
                    "mediaType": SIG_TYPE,
                    "digest": _push_blob(registry, repo, signature),
                    "size": len(signature),
                }
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": _digest(image), "size": len(image)},
            "annotations": {"org.example.signed-by": "test"},
        }
    ).encode()
    response = _put_manifest(registry, repo, _digest(artifact), artifact)
    return Pushed(_digest(image), len(image), layer, _digest(artifact), response)


@pytest.fixture(scope="module")
def binary() -> Path:
    """The olareg binary (built on first use on this machine)."""
    return olareg_bin()


@pytest.fixture
def registry(request: pytest.FixtureRequest, binary: Path, tmp_path: Path) -> Iterator[Olareg]:
    """A running olareg; ``indirect`` parameter: whether the referrers API is on."""
    api = bool(getattr(request, "param", True))
    with Olareg(tmp_path, referrers_api=api, binary=binary) as running:
        yield running


def test_referrers_api_lists_the_artifact(registry: Olareg) -> None:
    pushed = _push_image_and_artifact(registry)
    assert pushed.artifact_response.headers.get("OCI-Subject") == pushed.image

    url = f"{registry.url}/v2/lib/app/referrers/{pushed.image}"
    response = requests.get(url, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == OCI_INDEX
    index = response.json()
    assert index["mediaType"] == OCI_INDEX
    assert [entry["digest"] for entry in index["manifests"]] == [pushed.artifact]
    entry = index["manifests"][0]
    assert entry["artifactType"] == SIG_TYPE
    assert entry["annotations"] == {"org.example.signed-by": "test"}

    filtered = requests.get(url, params={"artifactType": "application/other"}, timeout=TIMEOUT)
    assert filtered.status_code == 200
    assert filtered.json()["manifests"] == []
    unknown = requests.get(
        f"{registry.url}/v2/lib/app/referrers/{_digest(b'no such manifest')}", timeout=TIMEOUT
    )
    assert unknown.status_code == 200
    assert unknown.json()["manifests"] == []


@pytest.mark.parametrize("registry", [False], indirect=True)
def test_referrers_api_off_answers_405(registry: Olareg) -> None:
    pushed = _push_image_and_artifact(registry)
    # The manifest with a subject is still stored, but not announced as a referrer.
    assert "OCI-Subject" not in pushed.artifact_response.headers
    stored = requests.get(
        f"{registry.url}/v2/lib/app/manifests/{pushed.artifact}",
        headers={"Accept": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    assert stored.status_code == 200
    assert stored.json()["subject"]["digest"] == pushed.image

    response = requests.get(f"{registry.url}/v2/lib/app/referrers/{pushed.image}", timeout=TIMEOUT)
    # olareg answers 405 UNSUPPORTED, not the spec's 404 for "no referrers API".
    assert response.status_code == 405
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
    # No fallback tag is made for the client: pushing sha256-<hex> is the client's job.
    tags = requests.get(f"{registry.url}/v2/lib/app/tags/list", timeout=TIMEOUT).json()["tags"]
    assert tags == ["1"]


def test_mount_single_post_and_request_log(registry: Olareg) -> None:
    pushed = _push_image_and_artifact(registry)
    mounted = requests.post(
        f"{registry.url}/v2/other/copy/blobs/uploads/",
        params={"mount": pushed.layer, "from": "lib/app"},
        timeout=TIMEOUT,
    )
    assert mounted.status_code == 201
    assert mounted.headers["Docker-Content-Digest"] == pushed.layer
    head = requests.head(f"{registry.url}/v2/other/copy/blobs/{pushed.layer}", timeout=TIMEOUT)
    assert head.status_code == 200
    # A blob the source repository lacks: an upload session instead (202).
    missing = requests.post(
        f"{registry.url}/v2/other/copy/blobs/uploads/",
        params={"mount": _digest(b"absent"), "from": "lib/app"},
        timeout=TIMEOUT,
    )
    assert missing.status_code == 202
    assert "/blobs/uploads/" in missing.headers["Location"]

    data = b"single post"
    single = requests.post(
        f"{registry.url}/v2/other/copy/blobs/uploads/",
        params={"digest": _digest(data)},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=TIMEOUT,
    )
    assert single.status_code == 201

    # The line is written just after the response: poll briefly.
    def single_post_logged() -> list[LoggedRequest]:
        logged = registry.request_log()
        return logged if any(e.method == "POST" and "digest=" in e.url for e in logged) else []

    logged = wait_for(single_post_logged, 5, "the single POST logged", interval=0.05)
    manifest_puts = [
        entry
        for entry in logged
        if entry.method == "PUT" and entry.path.startswith("/v2/lib/app/manifests/")
    ]
    assert [entry.status for entry in manifest_puts] == [201, 201]
    posts = [entry for entry in logged if entry.method == "POST"]
    # 3 uploads of _push_image_and_artifact, the mount, the failed mount, the single POST.
    assert [entry.status for entry in posts] == [202, 202, 202, 201, 202, 201]
    assert any(entry.path == "/v2/" and entry.status == 200 for entry in logged)


def test_restart_keeps_port_and_loses_content(binary: Path, tmp_path: Path) -> None:
    registry = Olareg(tmp_path, binary=binary, log_requests=False)
    with registry:
        host = registry.host
        digest = _push_blob(registry, "lib/app", b"gone after stop")
        with pytest.raises(ValueError, match="request logging"):
            registry.request_log()
    assert not registry.running
    with registry:
        assert registry.host == host
        head = requests.head(f"{registry.url}/v2/lib/app/blobs/{digest}", timeout=TIMEOUT)
        assert head.status_code == 404
