"""How an owned copy is compared with its source: one object per kind of copy backend.

Called by ``cloning.ImageCloner``, which keeps scheduling, the cache of
verified copies and backoff, and asks the check object of its backend every
question whose answer depends on what the backend keeps
(``CopyBackend.keeps_digests``):

- ``DigestCheck`` (skopeo: ``copy --all --preserve-digests`` keeps every
  digest and platform): an owned copy is the source's content when its
  manifest digest is the source's (OCI image-spec: content addressing); a
  source pinned by digest is also found by that digest in the owned
  repository; after a copy every platform manifest of the index must be
  served.
- ``ConfigCheck`` (Docker engine: pull, tag, push re-serialises the manifest,
  one platform): an owned copy is the source's content when its image config
  digest is that of the source's image for the engine's platform
  (``identity.same_content``); a multi-platform source is refused when the
  nodes run a platform the engine would drop (``multi_platform``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from cloner.errors import FailureReason, RegistryError
from cloner.model.identity import (
    DOCKER,
    Descriptor,
    Manifest,
    base_platform,
    child_for,
    engine_drops_platforms,
    parse_manifest,
    same_content,
)
from cloner.model.reference import Reference


class ManifestAPI(Protocol):
    """Manifest lookups in any registry (implemented by ``distribution.DistributionClient``)."""

    def head(self, ref: Reference) -> Descriptor | None:
        """The manifest's descriptor, None when absent; raises ``RegistryError``."""
        ...

    def get(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and bytes; raises ``RegistryError``."""
        ...


class Expected:
    """The source's content, fetched lazily and at most once per decision.

    For a digest-keeping copy, the index's children and platforms, read from
    the owned copy (a byte-for-byte copy: the same index, and the owned
    registry is not rate limited); for the Docker engine, the config digest of
    the source's image for the engine's platform: the engine's image ID after
    a pull, else read from the source (the index's matching child, or the
    manifest itself).

    Args:
        manifests: manifest lookups.
        source: the source reference.
        head: the source's descriptor, as just answered.
        engine_platform: returns the engine's ``os/arch`` (Docker engine only).
    """

    def __init__(
        self,
        manifests: ManifestAPI,
        source: Reference,
        head: Descriptor,
        engine_platform: Callable[[], str],
    ) -> None:
        self._manifests = manifests
        self._ref = source.with_tag(None).with_digest(head.digest)
        self.head = head
        self._engine_platform = engine_platform
        self._index: Manifest | None = None
        self._config: str | None = None

    def get(self, ref: Reference) -> Manifest:
        """The manifest ``ref`` names, parsed.

        Raises:
            RegistryError: it cannot be read or parsed (``registry_error``).
        """
        descriptor, body = self._manifests.get(ref)
        return parse(descriptor, body, ref)

    def _owned_index(self, owned: Reference) -> Manifest:
        if self._index is None:
            self._index = self.get(owned.with_tag(None).with_digest(self.head.digest))
        return self._index

    def children(self, owned: Reference) -> dict[str, str]:
        """Platform -> child digest of the index (read from the owned copy); {} for one image."""
        return dict(self._owned_index(owned).children) if self.head.is_index else {}

    def platforms(self, owned: Reference) -> tuple[str, ...]:
        """The index's platforms (read from the owned copy); () for one image."""
        return self._owned_index(owned).platforms if self.head.is_index else ()

    def engine_config(self, config_digest: str) -> None:
        """The config digest the engine verified while pulling the source (its image ID)."""
        self._config = config_digest

    def config(self) -> str:
        """The config digest a Docker engine copy must carry.

        Raises:
            RegistryError: ``not_found`` when the index has no image for the
                engine's platform; the errors of ``get``.
        """
        if self._config is None:
            manifest = self.get(self._ref)
            if manifest.is_index:
                platform = self._engine_platform()
                child = child_for(manifest, platform)
                if child is None:
                    raise RegistryError(
                        FailureReason.NOT_FOUND,
                        f"{self._ref}: the index has no {platform} image for the Docker engine",
                        self._ref.registry,
                    )
                manifest = self.get(self._ref.with_digest(child))
            assert manifest.config_digest is not None
            self._config = manifest.config_digest
        return self._config


class CopyCheck(Protocol):
    """What an owned copy must be to count as the source's content, per backend."""

    #: the backend's copies keep every digest (and so every signature)
    keeps_digests: bool

    def new_cycle(self) -> None:
        """Forget what is asked at most once per cycle (the nodes' platforms)."""
        ...

    def expected(self, source: Reference, head: Descriptor) -> Expected:
        """The lazy view of the source's content for one decision."""
        ...

    def ask_owned(self, source: Reference, owned: Reference) -> tuple[Reference, Descriptor | None]:
        """``(name looked up, its descriptor or None)`` in the owned registry."""
        ...

    def before_copy(self, source: Reference, head: Descriptor) -> None:
        """Refuse a source this backend must not copy (raises ``RegistryError``)."""
        ...

    def matches(self, expected: Expected, owned: Reference, owned_head: Descriptor) -> bool:
        """Whether the owned manifest is the source's content."""
        ...

    def check_copy(
        self, owned: Reference, pushed: str, head: Descriptor, expected: Expected
    ) -> None:
        """After a copy: the owned registry serves it and it is the source's (raises)."""
        ...

    def platforms(self, expected: Expected, owned: Reference) -> tuple[str, ...]:
        """The platforms the owned copy serves, as recorded; () when not kept."""
        ...


class _Base:
    """What both checks share: the manifest lookups and the engine's platform."""

    keeps_digests = False

    def __init__(self, manifests: ManifestAPI, engine_platform: Callable[[], str]) -> None:
        self._manifests = manifests
        self._engine_platform = engine_platform

    def new_cycle(self) -> None:
        """Nothing is kept per cycle."""

    def expected(self, source: Reference, head: Descriptor) -> Expected:
        """The lazy view of the source's content for one decision."""
        return Expected(self._manifests, source, head, self._engine_platform)

    def _served(self, owned: Reference, pushed: str) -> Descriptor:
        """The owned tag's descriptor, which must name ``pushed``.

        Raises:
            RegistryError: ``verify_failed``.
        """
        answered = self._manifests.head(owned)
        if answered is None or answered.digest != pushed:
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"verify {owned}: registry answers {answered.digest if answered else 'nothing'}, "
                f"pushed {pushed}",
                owned.registry,
            )
        return answered


class DigestCheck(_Base):
    """Copies that keep every digest and platform (``skopeo copy --all --preserve-digests``).

    Args:
        manifests: manifest lookups in the source and owned registries.
    """

    keeps_digests = True

    def __init__(self, manifests: ManifestAPI) -> None:
        super().__init__(manifests, lambda: "")

    def ask_owned(self, source: Reference, owned: Reference) -> tuple[Reference, Descriptor | None]:
        """The owned tag, or the source's digest in the owned repository when the tag differs.

        Workloads are patched to ``owned@digest``, whatever the owned tag
        holds now, so a copy found by digest is the one that counts.
        """
        owned_head = self._manifests.head(owned)
        if source.digest and (owned_head is None or owned_head.digest != source.digest):
            pinned = self._manifests.head(owned.with_digest(source.digest))
            if pinned is not None:
                return owned.with_digest(source.digest), pinned
        return owned, owned_head

    def before_copy(self, source: Reference, head: Descriptor) -> None:
        """Every platform is copied: nothing is refused."""

    def matches(self, expected: Expected, owned: Reference, owned_head: Descriptor) -> bool:
        """The same manifest digest (OCI image-spec: content addressing)."""
        return owned_head.digest == expected.head.digest

    def check_copy(
        self, owned: Reference, pushed: str, head: Descriptor, expected: Expected
    ) -> None:
        """The tag names ``pushed``, which is the source's digest, and every platform is served.

        Raises:
            RegistryError: ``verify_failed`` naming what differs.
        """
        self._served(owned, pushed)
        if pushed != head.digest:
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"verify {owned}: copied {pushed}, the source is {head.digest}",
                owned.registry,
            )
        for platform, child in expected.children(owned).items():
            if self._manifests.head(owned.with_digest(child)) is None:
                raise RegistryError(
                    FailureReason.VERIFY_FAILED,
                    f"verify {owned}: platform {platform} ({child}) is missing",
                    owned.registry,
                )

    def platforms(self, expected: Expected, owned: Reference) -> tuple[str, ...]:
        """The index's platforms, read from the owned copy."""
        return expected.platforms(owned)


class ConfigCheck(_Base):
    """Copies through a Docker engine: one platform, a new manifest, the same image config.

    Args:
        manifests: manifest lookups in the source and owned registries.
        engine_platform: returns the engine's ``os/arch``.
        node_platforms: returns the ``os/arch`` of the cluster's nodes (asked
            at most once per cycle).
    """

    def __init__(
        self,
        manifests: ManifestAPI,
        engine_platform: Callable[[], str],
        node_platforms: Callable[[], Iterable[str]],
    ) -> None:
        super().__init__(manifests, engine_platform)
        self._node_platforms = node_platforms
        self._nodes: tuple[str, ...] | None = None
        self._lock = threading.Lock()

    def new_cycle(self) -> None:
        """The nodes are asked again in the next cycle."""
        with self._lock:
            self._nodes = None

    def ask_owned(self, source: Reference, owned: Reference) -> tuple[Reference, Descriptor | None]:
        """The owned tag: the engine's copy has its own digest."""
        return owned, self._manifests.head(owned)

    def before_copy(self, source: Reference, head: Descriptor) -> None:
        """Refuse an index when the engine would drop a platform the nodes run.

        Raises:
            RegistryError: ``multi_platform`` (final: use the skopeo backend).
        """
        if not head.is_index:
            return
        with self._lock:
            if self._nodes is None:
                self._nodes = tuple(self._node_platforms())
            nodes = self._nodes
        engine = self._engine_platform()
        if all(base_platform(n) == base_platform(engine) for n in nodes):
            return
        descriptor, body = self._manifests.get(source.with_tag(None).with_digest(head.digest))
        index = parse(descriptor, body, source)
        message = engine_drops_platforms(index, engine, nodes)
        if message is not None:
            raise RegistryError(
                FailureReason.MULTI_PLATFORM, f"{source}: {message}", source.registry
            )

    def matches(self, expected: Expected, owned: Reference, owned_head: Descriptor) -> bool:
        """``identity.same_content``: the owned image's config is the source's for the engine."""
        if owned_head.digest == expected.head.digest:
            return True
        if owned_head.is_index:
            return False
        owned_manifest = expected.get(owned.with_tag(None).with_digest(owned_head.digest))
        source = Manifest(expected.head.digest, expected.head.media_type, {}, None)
        return same_content(DOCKER, source, owned_manifest, expected.config())

    def check_copy(
        self, owned: Reference, pushed: str, head: Descriptor, expected: Expected
    ) -> None:
        """The tag names ``pushed``, whose image config is the source's.

        Raises:
            RegistryError: ``verify_failed`` naming what differs.
        """
        answered = self._served(owned, pushed)
        if not self.matches(expected, owned.with_digest(pushed), answered):
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"verify {owned}: its image config is not that of the source's "
                f"{self._engine_platform()} image",
                owned.registry,
            )

    def platforms(self, expected: Expected, owned: Reference) -> tuple[str, ...]:
        """One platform: none recorded."""
        return ()


def check_for(
    keeps_digests: bool,
    manifests: ManifestAPI,
    engine_platform: Callable[[], str],
    node_platforms: Callable[[], Iterable[str]],
) -> CopyCheck:
    """The check of a backend that keeps digests (``DigestCheck``) or does not (``ConfigCheck``)."""
    if keeps_digests:
        return DigestCheck(manifests)
    return ConfigCheck(manifests, engine_platform, node_platforms)


def parse(descriptor: Descriptor, body: bytes, ref: Reference) -> Manifest:
    """``identity.parse_manifest`` of an answer, as ``RegistryError`` when it is malformed.

    Raises:
        RegistryError: ``registry_error`` naming ``ref``.
    """
    try:
        return parse_manifest(descriptor.digest, descriptor.media_type, body)
    except ValueError as exc:
        raise RegistryError(FailureReason.REGISTRY_ERROR, f"{ref}: {exc}", ref.registry) from None
