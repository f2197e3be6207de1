"""A corpus of images that share base layers the way real images do, for bench/copies.py.

Used only by the copy benchmark (``bench/copies.py``); nothing in ``cloner/``
imports it. :func:`corpus_spec` is pure: it lays out ``count`` images (20 by
default) in three groups, each group sharing one base layer set (a large
"debian"-like one, a small "alpine"-like one and a middle "distroless"-like
one), and gives every image one layer of its own. Every tenth image (1, 11,
...) is a multi-platform OCI image index (``linux/amd64`` and
``linux/arm64``, each platform with its own base layers, as real indexes
have); the others are single-platform OCI images for ``linux/amd64``, so a
Docker engine on amd64 can pull every image (an index has an amd64 child).

:func:`build_corpus` pushes the corpus into a harness ``Registry`` through the
registry HTTP API v2 (``devenv/images.py``): each distinct blob is uploaded
once and mounted into the other repositories that need it (distribution spec
``spec.md`` "Mounting a blob from another repository"), so building is fast
and the registry holds each blob once.

Sizes are bytes of layer *content*; the content is incompressible, so a
layer's compressed size is its content size plus about 1 KiB of tar and gzip
framing. At ``scale=1.0`` the 20 images have the figures of the corpus issue 11
was measured with: 54 unique blobs (the issue: 53), 222 MB unique (221 MB) and
911 MB if every image were copied whole (941 MB).
"""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from devenv import images as img
from devenv.harness import Registry

MIB = 1024 * 1024
AMD64 = "linux/amd64"
ARM64 = "linux/arm64"

#: Base layer sets: name -> content sizes at scale 1.0 (bytes), base first.
BASES: dict[str, tuple[int, ...]] = {
    "debian": (60 * MIB, 14 * MIB),
    "alpine": (6 * MIB, 2 * MIB),
    "distroless": (26 * MIB, 7 * MIB),
}
GROUPS = tuple(BASES)
INDEX_EVERY = 10  # image i is an index when i % INDEX_EVERY == 1
MIN_LAYER = 256  # bytes: the smallest layer content, whatever the scale


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer to build: content derived from ``seed``, ``size`` bytes of it."""

    seed: str
    size: int


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One image of the corpus.

    Attributes:
        name: repository name below the corpus prefix, e.g. ``app-03``.
        tag: the tag it is pushed under.
        group: the base layer set it shares (a key of ``BASES``).
        platforms: ``os/arch`` -> its layers, base first; one entry for a
            single-platform image, two for an index.
    """

    name: str
    tag: str
    group: str
    platforms: Mapping[str, tuple[LayerSpec, ...]]

    @property
    def is_index(self) -> bool:
        """True for a multi-platform image (pushed as an OCI image index)."""
        return len(self.platforms) > 1


def _scaled(size: int, scale: float) -> int:
    return max(MIN_LAYER, int(size * scale))


def corpus_spec(count: int = 20, scale: float = 1.0) -> list[ImageSpec]:
    """The corpus layout. Pure.

    Args:
        count: how many images (at least 1).
        scale: factor on every layer size (1.0: about 222 MB of unique blobs;
            ``1/128`` about 2 MB).

    Returns:
        ``count`` image specs; image ``i`` uses base set ``GROUPS[i % 3]``,
        has one own layer of 1-4 MiB (times ``scale``); it is an index when
        ``i % 10 == 1``.

    Raises:
        ValueError: ``count < 1`` or ``scale <= 0``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, not {scale}")
    specs = []
    for i in range(count):
        group = GROUPS[i % len(GROUPS)]
        platforms = (AMD64, ARM64) if i % INDEX_EVERY == 1 else (AMD64,)
        layers: dict[str, tuple[LayerSpec, ...]] = {}
        for platform in platforms:
            arch = platform.split("/")[1]
            base = tuple(
                LayerSpec(f"base/{group}/{arch}/{n}", _scaled(size, scale))
                for n, size in enumerate(BASES[group])
            )
            own = LayerSpec(f"own/{i}/{arch}/0", _scaled((1 + (i * 7) % 4) * MIB, scale))
            layers[platform] = (*base, own)
        specs.append(ImageSpec(f"app-{i:02d}", f"v{i % 3 + 1}", group, layers))
    return specs


def layer_bytes(spec: LayerSpec) -> bytes:
    """The compressed layer (tar+gzip of one file) for a spec; the same bytes for the same spec.

    The file's content is ``spec.size`` pseudo-random bytes seeded by
    ``spec.seed`` (incompressible, as compressed binaries are); tar header
    and gzip header are fixed (mtime 0), so the digest is reproducible.
    """
    content = random.Random(spec.seed).randbytes(spec.size)
    return img.file_layer(spec.seed.replace("/", "-") + ".bin", content, compresslevel=1)


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """One corpus image as pushed.

    Attributes:
        spec: what was built.
        repository: path in the registry, e.g. ``corpus/app-03``.
        reference: ``host:port/repository:tag``, what workloads use.
        digest: the manifest (or index) digest.
        blobs: digest -> size (bytes) of every blob of every platform
            (configs and layers).
        amd64_blobs: the same for the ``linux/amd64`` image only (what a
            Docker engine on amd64 pulls).
    """

    spec: ImageSpec
    repository: str
    reference: str
    digest: str
    blobs: Mapping[str, int]
    amd64_blobs: Mapping[str, int]


@dataclass
class Corpus:
    """The pushed corpus and its figures."""

    images: list[BuiltImage]
    blob_sizes: dict[str, int] = field(default_factory=dict)

    def figures(self) -> dict[str, int]:
        """Counts and byte totals of the corpus.

        Returns:
            ``images``, ``indexes``, ``unique_blobs``, ``unique_bytes`` (each
            distinct blob once), ``whole_bytes`` (every image copied whole,
            every platform: what copying without any layer sharing moves) and
            ``whole_bytes_amd64`` (the same, amd64 only: a Docker engine).
        """
        return {
            "images": len(self.images),
            "indexes": sum(1 for image in self.images if image.spec.is_index),
            "unique_blobs": len(self.blob_sizes),
            "unique_bytes": sum(self.blob_sizes.values()),
            "whole_bytes": sum(sum(i.blobs.values()) for i in self.images),
            "whole_bytes_amd64": sum(sum(i.amd64_blobs.values()) for i in self.images),
        }


def _mount(registry: Registry, repository: str, digest: str, source: str) -> bool:
    """Cross-repository mount of a blob; True when the registry answered 201 (mounted)."""
    query = urllib.parse.urlencode({"mount": digest, "from": source})
    status, headers, _ = img._open(
        registry, f"/v2/{repository}/blobs/uploads/?{query}", method="POST", data=b""
    )
    if status == 202 and headers.get("Location"):
        # Not mounted: the registry opened an upload session instead; cancel it.
        location = headers["Location"]
        img._open(registry, location, method="DELETE")
    return status == 201


class _BlobPusher:
    """Uploads each distinct blob once, then mounts it where else it is needed."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.home: dict[str, str] = {}  # digest -> the first repository holding it
        self.sizes: dict[str, int] = {}

    def ensure(self, repository: str, data: bytes) -> str:
        digest = img.sha256_digest(data)
        home = self.home.get(digest)
        if home is None or (
            home != repository and not _mount(self.registry, repository, digest, home)
        ):
            img.push_blob(self.registry, repository, data)
        self.home.setdefault(digest, repository)
        self.sizes[digest] = len(data)
        return digest


def build_corpus(registry: Registry, specs: list[ImageSpec], prefix: str = "corpus") -> Corpus:
    """Push every image of ``specs`` into ``registry`` under ``prefix/``.

    Args:
        registry: a harness registry (``env.public``).
        specs: from :func:`corpus_spec`.
        prefix: the first path component of every repository.

    Returns:
        The :class:`Corpus`, with every blob's size.

    Raises:
        devenv.images.ImageBuildError: the registry refused a blob or manifest.
    """
    pusher = _BlobPusher(registry)
    cache: dict[str, bytes] = {}
    built: list[BuiltImage] = []
    for spec in specs:
        repository = f"{prefix}/{spec.name}"
        children: dict[str, img.Image] = {}
        for platform, layer_specs in spec.platforms.items():
            layers = []
            for layer_spec in layer_specs:
                data = cache.get(layer_spec.seed)
                if data is None:
                    data = cache[layer_spec.seed] = layer_bytes(layer_spec)
                pusher.ensure(repository, data)
                layers.append(data)
            os_name, arch = platform.split("/")
            children[platform] = img.build_image(
                registry,
                repository,
                None if spec.is_index else spec.tag,
                platform=(os_name, arch),
                media="oci",
                layers=layers,
                label=f"bench {spec.name} {platform}",
            )
            child = children[platform]
            for digest in (child.config_digest, *child.layers):
                if digest not in pusher.sizes:  # the config, pushed by build_image
                    pusher.sizes[digest] = _blob_size(registry, repository, digest)
        if spec.is_index:
            digest = _push_index(registry, repository, spec.tag, children)
        else:
            digest = children[AMD64].digest
        blobs = {
            d: pusher.sizes[d] for c in children.values() for d in (c.config_digest, *c.layers)
        }
        amd64 = children[AMD64]
        built.append(
            BuiltImage(
                spec,
                repository,
                f"{registry.host}/{repository}:{spec.tag}",
                digest,
                blobs,
                {d: pusher.sizes[d] for d in (amd64.config_digest, *amd64.layers)},
            )
        )
    return Corpus(built, dict(pusher.sizes))


def _blob_size(registry: Registry, repository: str, digest: str) -> int:
    status, headers, _ = img._open(registry, f"/v2/{repository}/blobs/{digest}", method="HEAD")
    if status != 200:
        raise img.ImageBuildError(f"HEAD blob {repository}@{digest}: {status}")
    return int(headers.get("Content-Length", "0"))


def _push_index(
    registry: Registry, repository: str, tag: str, children: Mapping[str, img.Image]
) -> str:
    """Push an OCI image index of ``children`` (OCI image spec ``image-index.md``)."""
    manifests = []
    for platform, child in children.items():
        os_name, arch = platform.split("/")
        manifests.append(
            {
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": child.size,
                "platform": {"architecture": arch, "os": os_name},
            }
        )
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": img.OCI_INDEX, "manifests": manifests}, indent=3
    ).encode()
    return img.push_manifest(registry, repository, tag, body, img.OCI_INDEX)
