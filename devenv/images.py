"""Test images built through the registry HTTP API v2: single-platform images and indexes.

Used by the end-to-end tests that need multi-platform sources (OCI image
indexes and Docker manifest lists), which a single-platform Docker engine
cannot build. Blobs and manifests are pushed directly to a harness
``Registry`` (anonymous ``env.public`` or the htpasswd ``env.owned``), with
the requests the distribution spec (``spec.md``) defines:

- blob upload: ``POST /v2/<name>/blobs/uploads/`` -> 202 with ``Location``,
  then ``PUT <Location>&digest=<digest>`` with the bytes -> 201 (monolithic
  upload); ``HEAD /v2/<name>/blobs/<digest>`` first, 200 means it is there;
- manifest: ``PUT /v2/<name>/manifests/<reference>`` with ``Content-Type`` =
  the manifest's media type -> 201 with ``Docker-Content-Digest``, which is
  the sha256 of the bytes sent (a registry never re-serialises a manifest).

Manifests follow the OCI image spec (``manifest.md``, ``image-index.md``,
``config.md``) and Docker's Image Manifest V2, Schema 2 (``manifest-v2-2.md``).
Everything is deterministic: the same seed gives the same bytes, so the same
digests. Nothing here is imported by the controller.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from devenv.harness import MANIFEST_ACCEPT, Registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

Media = Literal["oci", "docker"]
# ("linux", "amd64") or ("linux", "arm", "v7"): os, architecture[, variant]
Platform = tuple[str, ...]

_TYPES: dict[str, dict[str, str]] = {
    "oci": {"index": OCI_INDEX, "manifest": OCI_MANIFEST, "config": OCI_CONFIG, "layer": OCI_LAYER},
    "docker": {
        "index": DOCKER_LIST,
        "manifest": DOCKER_MANIFEST,
        "config": DOCKER_CONFIG,
        "layer": DOCKER_LAYER,
    },
}
_TIMEOUT = 30.0  # seconds per HTTP request


class ImageBuildError(AssertionError):
    """The registry did not answer as the distribution spec says (status, digest)."""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data`` (the OCI descriptor digest form)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def platform_key(platform: Platform) -> str:
    """``os/arch[/variant]``, for example ``linux/amd64`` or ``linux/arm/v7``."""
    if len(platform) not in (2, 3):
        raise ValueError(f"platform must be (os, arch[, variant]): {platform!r}")
    return "/".join(platform)


def _media(media: str) -> dict[str, str]:
    try:
        return _TYPES[media]
    except KeyError:
        raise ValueError(f"media must be 'oci' or 'docker', not {media!r}") from None


def _open(
    registry: Registry,
    path: str,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """One request with the registry's credentials; (status, headers, body), no raise on 4xx."""
    request = registry._request(path, method=method, headers=headers)
    if data is not None:
        request.data = data
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            return int(response.status), response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers, exc.read()


def push_blob(registry: Registry, repository: str, data: bytes) -> str:
    """Upload a blob unless the repository has it already.

    Args:
        registry: the harness registry (credentials are used when it has them).
        repository: path in the registry, for example ``e2e/app``.
        data: the blob's bytes.

    Returns:
        The blob's digest, ``sha256:<hex>``.

    Raises:
        ImageBuildError: an answer other than 202 to the POST or 201 to the PUT.
    """
    digest = sha256_digest(data)
    status, _, _ = _open(registry, f"/v2/{repository}/blobs/{digest}", method="HEAD")
    if status == 200:
        return digest
    status, headers, body = _open(
        registry, f"/v2/{repository}/blobs/uploads/", method="POST", data=b""
    )
    location = headers.get("Location")
    if status != 202 or not location:
        raise ImageBuildError(f"POST blob upload to {repository}: {status} {body[:300]!r}")
    if location.startswith("/"):
        location = registry.url + location
    separator = "&" if "?" in location else "?"
    status, _, body = _open(
        registry,
        f"{location}{separator}digest={digest}",
        method="PUT",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    if status != 201:
        raise ImageBuildError(f"PUT blob {digest} to {repository}: {status} {body[:300]!r}")
    return digest


def push_manifest(
    registry: Registry, repository: str, reference: str, body: bytes, media_type: str
) -> str:
    """Put a manifest or index under a tag or its digest.

    Args:
        registry: the harness registry.
        repository: path in the registry.
        reference: a tag, or the manifest's own digest.
        body: the manifest bytes, exactly as they are to be stored.
        media_type: sent as ``Content-Type``; one of the four manifest types.

    Returns:
        The ``Docker-Content-Digest`` the registry answers.

    Raises:
        ImageBuildError: not 201, or the digest is not the sha256 of ``body``.
    """
    status, headers, answer = _open(
        registry,
        f"/v2/{repository}/manifests/{reference}",
        method="PUT",
        data=body,
        headers={"Content-Type": media_type},
    )
    if status != 201:
        raise ImageBuildError(f"PUT manifest {repository}:{reference}: {status} {answer[:500]!r}")
    digest = headers.get("Docker-Content-Digest", "")
    if digest != sha256_digest(body):
        raise ImageBuildError(
            f"registry answered digest {digest!r} for {repository}:{reference}, "
            f"the bytes sent are {sha256_digest(body)}"
        )
    return digest


def _content(seed: str, size: int) -> bytes:
    """``size`` deterministic, incompressible bytes derived from ``seed``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}\0{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def layer(seed: str, size: int = 2048) -> bytes:
    """A layer: a gzip'd tar holding one regular file with content derived from ``seed``.

    Args:
        seed: different seeds give different files, so different digests.
        size: bytes of the file's content.

    Returns:
        The compressed layer (``tar+gzip``), byte-for-byte the same for the
        same arguments (fixed mtime, owner and gzip header).
    """
    name = "layer-" + hashlib.sha256(seed.encode()).hexdigest()[:12] + ".bin"
    return file_layer(name, _content(seed, size))


def file_layer(name: str, content: bytes, mode: int = 0o644, compresslevel: int = 6) -> bytes:
    """A gzip'd tar holding one regular file ``name`` (owned by root) with ``content``.

    Byte-for-byte the same for the same arguments: the file's mtime, the tar
    format and the gzip header (mtime 0) are fixed.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=compresslevel, mtime=0)


def diff_id(compressed: bytes) -> str:
    """The layer's DiffID: the sha256 of the uncompressed tar (OCI ``config.md``)."""
    return sha256_digest(gzip.decompress(compressed))


@dataclass(frozen=True, slots=True)
class Image:
    """A single-platform image as pushed.

    Attributes:
        repository: path in the registry.
        tag: the tag it was pushed under, or None (by digest only).
        digest: the manifest digest.
        config_digest: the config blob's digest (a Docker engine's image Id).
        media_type: the manifest's media type.
        platform: ``os/arch[/variant]``.
        size: bytes of the manifest.
        layers: the layer digests, base first.
    """

    repository: str
    tag: str | None
    digest: str
    config_digest: str
    media_type: str
    platform: str
    size: int
    layers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Index:
    """A multi-platform image (OCI image index or Docker manifest list) as pushed.

    Attributes:
        repository: path in the registry.
        tag: the tag the index was pushed under, or None (by digest only).
        digest: the index digest.
        media_type: the index media type.
        children: ``os/arch[/variant]`` -> the child ``Image`` (pushed by digest).
    """

    repository: str
    tag: str | None
    digest: str
    media_type: str
    children: Mapping[str, Image] = field(default_factory=dict)

    @property
    def manifests(self) -> dict[str, str]:
        """``os/arch[/variant]`` -> child manifest digest."""
        return {key: child.digest for key, child in self.children.items()}

    @property
    def configs(self) -> dict[str, str]:
        """``os/arch[/variant]`` -> child config digest."""
        return {key: child.config_digest for key, child in self.children.items()}


def _config(platform: Platform, layers: Sequence[bytes], label: str) -> bytes:
    """The image config (OCI ``config.md``; Docker's image JSON has the same fields)."""
    os_name, architecture = platform[0], platform[1]
    document: dict[str, Any] = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": architecture,
        "os": os_name,
        "config": {"Labels": {"org.opencontainers.image.description": label}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id(data) for data in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "devenv/images.py"}]
        * len(layers),
    }
    if len(platform) == 3:
        document["variant"] = platform[2]
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(
    registry: Registry,
    repository: str,
    tag: str | None,
    *,
    platform: Platform = ("linux", "amd64"),
    media: Media = "oci",
    layers: Sequence[bytes],
    label: str = "",
) -> Image:
    """Push the config, the layers and the manifest of one single-platform image.

    Args:
        registry: the harness registry.
        repository: path in the registry, for example ``e2e/app``.
        tag: push the manifest under this tag; None pushes it by digest only.
        platform: ``(os, arch)`` or ``(os, arch, variant)``, written to the config.
        media: ``oci`` (OCI manifest and config) or ``docker`` (Docker v2
            schema 2 manifest and config).
        layers: compressed layers (``layer()``), base first; at least one.
        label: a description label in the config, so otherwise equal images
            can differ.

    Returns:
        The pushed ``Image``.

    Raises:
        ValueError: no layers, or an unknown media or platform shape.
        ImageBuildError: the registry refused a blob or the manifest.
    """
    if not layers:
        raise ValueError("an image needs at least one layer")
    types = _media(media)
    key = platform_key(platform)
    config = _config(platform, layers, label)
    config_digest = push_blob(registry, repository, config)
    layer_digests = tuple(push_blob(registry, repository, data) for data in layers)
    manifest = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": {"mediaType": types["config"], "digest": config_digest, "size": len(config)},
        "layers": [
            {"mediaType": types["layer"], "digest": digest, "size": len(data)}
            for digest, data in zip(layer_digests, layers, strict=True)
        ],
    }
    body = json.dumps(manifest, indent=3).encode()
    reference = tag or sha256_digest(body)
    digest = push_manifest(registry, repository, reference, body, types["manifest"])
    return Image(
        repository, tag, digest, config_digest, types["manifest"], key, len(body), layer_digests
    )


def build_index(
    registry: Registry,
    repository: str,
    tag: str | None,
    *,
    platforms: Sequence[Platform] = (("linux", "amd64"), ("linux", "arm64")),
    media: Media = "oci",
    shared_layers: int = 1,
    seed: str = "",
    layer_size: int = 2048,
) -> Index:
    """Push a multi-platform image: its children by digest, then the index.

    ``media="oci"`` gives an OCI image index (``image-index.md``) of OCI
    manifests; ``media="docker"`` a Docker manifest list of Docker v2
    manifests. Every child has the ``shared_layers`` base layers (the same
    blobs) and one layer of its own, so children differ and share blobs the
    way real multi-platform images do.

    Args:
        registry: the harness registry.
        repository: path in the registry.
        tag: push the index under this tag; None pushes it by digest only.
        platforms: the children's ``(os, arch[, variant])``, in index order.
        media: ``oci`` or ``docker``.
        shared_layers: how many base layers the children share (0 or more).
        seed: different seeds give different layers, so different digests.
        layer_size: bytes of content per layer file.

    Returns:
        The pushed ``Index`` with every child.

    Raises:
        ValueError: no platforms, a platform twice, negative ``shared_layers``.
        ImageBuildError: the registry refused a blob or a manifest.
    """
    if not platforms:
        raise ValueError("an index needs at least one platform")
    if shared_layers < 0:
        raise ValueError("shared_layers must be >= 0")
    keys = [platform_key(p) for p in platforms]
    if len(set(keys)) != len(keys):
        raise ValueError(f"platform listed twice: {keys}")
    types = _media(media)
    base = [layer(f"{seed}/shared/{i}", layer_size) for i in range(shared_layers)]
    children: dict[str, Image] = {}
    descriptors = []
    for platform, key in zip(platforms, keys, strict=True):
        own = layer(f"{seed}/{media}/{key}", layer_size)
        child = build_image(
            registry,
            repository,
            None,
            platform=platform,
            media=media,
            layers=[*base, own],
            label=f"seed={seed} {key}",
        )
        children[key] = child
        descriptor_platform = {"architecture": platform[1], "os": platform[0]}
        if len(platform) == 3:
            descriptor_platform["variant"] = platform[2]
        descriptors.append(
            {
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": child.size,
                "platform": descriptor_platform,
            }
        )
    document = {"schemaVersion": 2, "mediaType": types["index"], "manifests": descriptors}
    body = json.dumps(document, indent=3).encode()
    digest = push_manifest(registry, repository, tag or sha256_digest(body), body, types["index"])
    return Index(repository, tag, digest, types["index"], children)


def get_manifest(registry: Registry, repository: str, reference: str) -> tuple[str, bytes]:
    """``GET`` a manifest accepting all four types.

    Returns:
        ``(media type, body bytes)``; the media type is the ``Content-Type``
        the registry answers (the stored manifest's ``mediaType``).

    Raises:
        LookupError: the registry answered 404.
        ImageBuildError: any other status than 200.
    """
    status, headers, body = _open(
        registry,
        f"/v2/{repository}/manifests/{reference}",
        headers={"Accept": MANIFEST_ACCEPT},
    )
    if status == 404:
        raise LookupError(f"{registry.host}/{repository}:{reference}: manifest unknown")
    if status != 200:
        raise ImageBuildError(f"GET manifest {repository}:{reference}: {status} {body[:300]!r}")
    media_type = headers.get("Content-Type", "").split(";")[0].strip()
    return media_type, body


def get_blob(registry: Registry, repository: str, digest: str) -> bytes:
    """``GET`` a blob and check its digest.

    Raises:
        LookupError: 404. ImageBuildError: another status, or wrong content.
    """
    status, _, body = _open(registry, f"/v2/{repository}/blobs/{digest}")
    if status == 404:
        raise LookupError(f"{registry.host}/{repository}@{digest}: blob unknown")
    if status != 200 or sha256_digest(body) != digest:
        raise ImageBuildError(f"GET blob {repository}@{digest}: {status}, {len(body)} bytes")
    return body


def platforms_served(registry: Registry, repository: str, reference: str) -> dict[str, str]:
    """The platforms a registry serves under a tag or digest, each checked to exist.

    For an index, every child is fetched (``GET`` by digest, its bytes must
    hash to the digest) and so is every blob it names (config and layers), so
    a partial copy shows. For a single manifest its config is read for the
    platform.

    Args:
        registry: the harness registry.
        repository: path in the registry.
        reference: a tag or a digest.

    Returns:
        ``os/arch[/variant]`` -> manifest digest (the child's for an index,
        the manifest's own for a single image).

    Raises:
        LookupError: the manifest, a child or a blob is missing.
        ImageBuildError: an unexpected answer or media type.
    """
    media_type, body = get_manifest(registry, repository, reference)
    document = json.loads(body)
    if media_type in INDEX_TYPES:
        served: dict[str, str] = {}
        for descriptor in document.get("manifests") or []:
            platform = descriptor.get("platform") or {}
            parts = [platform.get("os", ""), platform.get("architecture", "")]
            if platform.get("variant"):
                parts.append(platform["variant"])
            child_type, child_body = get_manifest(registry, repository, descriptor["digest"])
            if sha256_digest(child_body) != descriptor["digest"]:
                raise ImageBuildError(f"child {descriptor['digest']} served different bytes")
            if child_type not in MANIFEST_TYPES:
                raise ImageBuildError(f"child {descriptor['digest']} has media type {child_type}")
            _check_blobs(registry, repository, json.loads(child_body))
            served["/".join(parts)] = descriptor["digest"]
        return served
    if media_type in MANIFEST_TYPES:
        config = json.loads(_check_blobs(registry, repository, document))
        parts = [config.get("os", ""), config.get("architecture", "")]
        if config.get("variant"):
            parts.append(config["variant"])
        return {"/".join(parts): sha256_digest(body)}
    raise ImageBuildError(f"{repository}:{reference}: unexpected media type {media_type!r}")


def _check_blobs(registry: Registry, repository: str, manifest: Mapping[str, Any]) -> bytes:
    """Fetch the config (returned) and ``HEAD`` every layer of a manifest."""
    config = get_blob(registry, repository, manifest["config"]["digest"])
    for descriptor in manifest.get("layers") or []:
        status, _, _ = _open(
            registry, f"/v2/{repository}/blobs/{descriptor['digest']}", method="HEAD"
        )
        if status != 200:
            raise LookupError(f"{repository}@{descriptor['digest']}: layer answers {status}")
    return config
