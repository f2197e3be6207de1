"""Is an owned copy the source's content? Pure decisions, no I/O.

Called by ``cloning`` with what the registries answered (manifest digests,
media types, manifest bodies) and what was recorded earlier (``state.Record``).
Nothing here talks to a registry, reads a clock or logs; every rule is a plain
function so the decision table is unit-tested row by row.

The identity rule: a workload is patched only to content that its source
reference names at decision time.

- A registry-to-registry copy (``skopeo copy --all --preserve-digests``)
  keeps every manifest byte for byte, so the owned manifest digest equals the
  source's (OCI distribution-spec: the digest is the sha256 of the bytes).
- A Docker engine copy pulls one platform and re-serialises the manifest on
  push, so its manifest digest differs; it is the same image when its image
  config digest (the engine's image ID) equals that of the source's image for
  the engine's platform (OCI image-spec ``config.md``: the config, with its
  ``rootfs.diff_ids``, identifies the image's content).

Media types and platform selection follow the OCI image-spec (``manifest.md``,
``image-index.md``) and Docker's manifest list (schema 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})


class BackendName(StrEnum):
    """The copy backends (``copyBackend``)."""

    DOCKER = "docker"  #: pull, tag, push through the Docker engine
    SKOPEO = "skopeo"  #: registry to registry

    @property
    def keeps_digests(self) -> bool:
        """True when the backend's copies keep every manifest digest and platform.

        skopeo's ``copy --all --preserve-digests`` does; the Docker engine
        re-serialises the manifest for its own platform (see TESTBED, "What a
        Docker engine does to a multi-platform image").
        """
        return self is BackendName.SKOPEO


DOCKER = BackendName.DOCKER
SKOPEO = BackendName.SKOPEO
BACKENDS = tuple(BackendName)

#: Docker's ``Arch`` names (``docker version``) that differ from the OCI/Go names.
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armhf": "arm", "i386": "386"}


def platform_name(os: str, architecture: str, variant: str | None = None) -> str:
    """``os/architecture[/variant]`` with Go's architecture names (OCI image-index ``platform``).

    Args:
        os: for example ``linux``.
        architecture: for example ``amd64`` or ``x86_64`` (mapped to ``amd64``).
        variant: for example ``v8``; dropped for ``arm64/v8``, which is arm64's default.
    """
    arch = _ARCH_ALIASES.get(architecture, architecture)
    if variant and not (arch == "arm64" and variant == "v8"):
        return f"{os}/{arch}/{variant}"
    return f"{os}/{arch}"


def base_platform(platform: str) -> str:
    """``os/architecture`` of a platform name (the variant dropped)."""
    return "/".join(platform.split("/")[:2])


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a registry answers for a manifest (distribution-spec HEAD/GET).

    Attributes:
        digest: ``sha256:...`` (``Docker-Content-Digest``, or the sha256 of the body).
        media_type: the manifest's media type (``Content-Type``).
        size: bytes.
    """

    digest: str
    media_type: str
    size: int

    @property
    def is_index(self) -> bool:
        """True for an OCI image index or a Docker manifest list."""
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy backend reports.

    Attributes:
        digest: the manifest digest it pushed under the owned tag.
        config_digest: the image config digest of what it copied, when it
            knows it without asking the source again: the Docker engine's
            image ID, which the engine checked against the source manifest
            it pulled (OCI image-spec: content-addressable config). None for
            skopeo, whose copies are compared by manifest digest.
    """

    digest: str
    config_digest: str | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a manifest or index says about identity.

    Attributes:
        digest: ``sha256:...`` of the manifest bytes.
        media_type: the manifest's media type.
        children: for an index, platform name -> child manifest digest
            (entries with an ``unknown`` platform, such as attestations, are
            left out); empty for a single manifest.
        config_digest: for a single manifest, its image config's digest; None
            for an index.
    """

    digest: str
    media_type: str
    children: Mapping[str, str]
    config_digest: str | None

    @property
    def is_index(self) -> bool:
        """True for an OCI image index or a Docker manifest list."""
        return self.media_type in INDEX_TYPES

    @property
    def platforms(self) -> tuple[str, ...]:
        """The platforms of an index, sorted; () for a single manifest."""
        return tuple(sorted(self.children))


def parse_manifest(digest: str, media_type: str, body: bytes) -> Manifest:
    """Read a manifest or index body.

    Args:
        digest: the manifest's digest (the caller checked it against the bytes).
        media_type: the ``Content-Type`` the registry answered; when it is
            missing or generic the body's ``mediaType`` is used.
        body: the raw manifest bytes.

    Returns:
        The ``Manifest``.

    Raises:
        ValueError: not JSON, an unknown media type, or required fields missing.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest {digest} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"manifest {digest} is not a JSON object")
    kind = media_type if media_type in INDEX_TYPES | MANIFEST_TYPES else data.get("mediaType")
    if kind is None:  # OCI allows an absent mediaType: tell by the fields (image-spec)
        kind = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if kind in INDEX_TYPES:
        children: dict[str, str] = {}
        for entry in data.get("manifests") or []:
            platform = _platform_of(entry)
            if platform is not None and isinstance(entry.get("digest"), str):
                children.setdefault(platform, entry["digest"])
        return Manifest(digest, kind, children, None)
    if kind in MANIFEST_TYPES:
        config = data.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise ValueError(f"manifest {digest} has no config digest")
        return Manifest(digest, kind, {}, config["digest"])
    raise ValueError(f"manifest {digest} has an unsupported media type {kind!r}")


def _platform_of(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return None
    os, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os, str) or not isinstance(arch, str) or "unknown" in (os, arch):
        return None
    variant = platform.get("variant")
    return platform_name(os, arch, variant if isinstance(variant, str) else None)


def child_for(index: Manifest, platform: str) -> str | None:
    """The child digest an engine of ``platform`` pulls from ``index``, or None.

    An exact match wins; otherwise the first child with the same
    ``os/architecture`` (an engine without a variant takes any variant).
    """
    if platform in index.children:
        return index.children[platform]
    base = base_platform(platform)
    for name in sorted(index.children):
        if base_platform(name) == base:
            return index.children[name]
    return None


def engine_drops_platforms(
    source: Manifest, engine_platform: str, node_platforms: Iterable[str]
) -> str | None:
    """Why a Docker engine copy of ``source`` would break some nodes, or None when it would not.

    The engine copies only ``engine_platform`` of an index. That is enough
    only when every node of the cluster runs that platform; nodes of another
    platform would get an image they cannot run, where the source served
    them one.

    Args:
        source: the source manifest or index.
        engine_platform: ``os/arch`` of the Docker engine.
        node_platforms: ``os/arch`` of each node (``status.nodeInfo``); none
            known (no nodes) means no node can break.

    Returns:
        A message for the log and the Event, or None.
    """
    if not source.is_index:
        return None
    others = sorted({base_platform(p) for p in node_platforms} - {base_platform(engine_platform)})
    if not others:
        return None
    return (
        f"the source is a multi-platform index ({', '.join(source.platforms)}) and nodes run "
        f"{', '.join(others)}, but the Docker engine copies only {engine_platform}; "
        "use copyBackend: skopeo to copy every platform"
    )


def same_content(
    backend: str, source: Manifest, owned: Manifest, source_config: str | None
) -> bool:
    """True when the owned manifest is the source's content for this backend.

    Args:
        backend: ``skopeo`` (digests must be equal) or ``docker`` (image
            config digests must be equal).
        source: the source manifest or index.
        owned: the owned manifest.
        source_config: for ``docker``, the config digest of the source's
            image for the engine's platform (``source.config_digest`` for a
            single manifest, the chosen child's for an index).
    """
    if owned.digest == source.digest:
        return True
    if backend == SKOPEO:
        return False
    return source_config is not None and owned.config_digest == source_config


class Action(StrEnum):
    """What to do with one source image after asking the registries (``decide``)."""

    #: the owned name holds the source's content: use it, record it as verified
    REUSE = "reuse"
    #: the owned name is absent: copy
    COPY = "copy"
    #: the owned name holds other content: copy over it (``OwnedCopyReplaced``)
    REPLACE = "replace"
    #: the source cannot be asked; the copy verified earlier is still served: use it
    USE_RECORD = "use_record"
    #: the source cannot be asked and the owned name was never verified: do not use it
    WAIT_UNVERIFIED = "wait_unverified"
    #: the source cannot be asked and there is nothing usable: fail with the source's error
    FAIL = "fail"


def decide(
    *,
    source_known: bool,
    owned_digest: str | None,
    matches: bool,
    recorded_owned_digest: str | None,
) -> Action:
    """The identity decision for one source image (the table in the module docstring).

    Args:
        source_known: the source answered with its manifest digest now.
        owned_digest: the digest the owned registry serves under the owned
            name, None when absent.
        matches: ``same_content`` of the owned manifest and the source (only
            read when both are known).
        recorded_owned_digest: the owned digest of the record of an earlier
            verification of this source, None without a record.

    Returns:
        The ``Action``.
    """
    if not source_known:
        if recorded_owned_digest is not None and owned_digest == recorded_owned_digest:
            return Action.USE_RECORD
        if recorded_owned_digest is None and owned_digest is not None:
            return Action.WAIT_UNVERIFIED
        return Action.FAIL
    if owned_digest is None:
        return Action.COPY
    return Action.REUSE if matches else Action.REPLACE


def refresh_due(key: str, verified_at: float, now: float, interval: float, pinned: bool) -> bool:
    """True when a verified tagged source should be asked again (``refreshInterval``).

    A source with a digest names immutable content and is never refreshed;
    ``interval`` 0 means never. Each source gets a fixed spread of up to 20%
    of the interval, derived from its name, so that images verified together
    are not all asked in the same cycle.

    Args:
        key: the canonical source reference.
        verified_at, now: epoch seconds.
        interval: ``refreshInterval`` in seconds.
        pinned: the source has a digest.
    """
    if pinned or interval <= 0:
        return False
    return now - verified_at >= interval * (1.0 - 0.2 * spread(key))


def spread(key: str) -> float:
    """A stable fraction in [0, 1) derived from ``key`` (FNV-1a), for spreading work."""
    value = 0xCBF29CE484222325
    for byte in key.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value / 2**64
