"""In-memory registries for unit tests of the copy decisions (not for e2e tests).

``Registries`` holds manifests by repository, answers ``head``/``get`` like
the distribution API (``cloning.ManifestAPI``) and copies like a backend
(``cloning.CopyBackend``): ``skopeo`` copies the manifest bytes and every
child (same digests); ``docker`` writes a new single manifest with the
config of the engine platform's image (a new digest, the same config).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from cloner.errors import RegistryError
from cloner.model.identity import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Copied,
    Descriptor,
    child_for,
)
from cloner.model.reference import Reference


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repo:
    tags: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class Registries:
    """Every registry in one dict; ``down`` registries fail with their error."""

    def __init__(self, backend: str = "skopeo", engine_platform: str = "linux/amd64") -> None:
        self.backend = backend
        self.engine_platform = engine_platform
        self.repos: dict[str, Repo] = {}
        self.down: dict[str, RegistryError] = {}
        self.requests: Counter[str] = Counter()  # registry -> requests
        self.clones: list[tuple[str, str]] = []

    # building ---------------------------------------------------------------

    def put(self, name: str, tag: str | None, media: str, body: bytes) -> str:
        repo = self.repos.setdefault(name, Repo())
        digest = sha(body)
        repo.manifests[digest] = (media, body)
        if tag is not None:
            repo.tags[tag] = digest
        return digest

    def image(
        self,
        name: str,
        tag: str | None,
        seed: str,
        platform: str = "linux/amd64",
        layers: tuple[str, ...] = (),
    ) -> str:
        """A single-platform OCI image (``layers``: blob digests); returns its manifest digest."""
        os, arch = platform.split("/")[:2]
        config = sha(json.dumps({"seed": seed, "os": os, "architecture": arch}).encode())
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"digest": config},
                "layers": [{"digest": d} for d in layers],
            }
        ).encode()
        return self.put(name, tag, OCI_MANIFEST, body)

    def index(self, name: str, tag: str | None, seed: str, platforms: tuple[str, ...]) -> str:
        """An OCI index of one image per platform; returns the index digest."""
        entries = []
        for platform in platforms:
            os, arch = platform.split("/")[:2]
            child = self.image(name, None, seed + platform, platform)
            entries.append({"digest": child, "platform": {"os": os, "architecture": arch}})
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        ).encode()
        return self.put(name, tag, OCI_INDEX, body)

    def config_of(self, name: str, digest: str) -> str:
        _media, body = self.repos[name].manifests[digest]
        return str(json.loads(body)["config"]["digest"])

    # ManifestAPI ------------------------------------------------------------

    def _ask(self, ref: Reference) -> None:
        self.requests[ref.registry] += 1
        if ref.registry in self.down:
            raise self.down[ref.registry]

    def _find(self, ref: Reference) -> tuple[str, str, bytes] | None:
        repo = self.repos.get(ref.name)
        if repo is None:
            return None
        digest = ref.digest or repo.tags.get(ref.tag_or_default)
        if digest is None or digest not in repo.manifests:
            return None
        media, body = repo.manifests[digest]
        return digest, media, body

    def head(self, ref: Reference) -> Descriptor | None:
        self._ask(ref)
        found = self._find(ref)
        return Descriptor(found[0], found[1], len(found[2])) if found else None

    def get(self, ref: Reference) -> tuple[Descriptor, bytes]:
        self._ask(ref)
        found = self._find(ref)
        if found is None:
            raise RegistryError("not_found", f"{ref}: manifest unknown", ref.registry)
        return Descriptor(found[0], found[1], len(found[2])), found[2]

    # CopyBackend ------------------------------------------------------------

    def preflight(self, source: Reference, owned: Reference) -> None:
        """Nothing is refused up front."""

    def clone(self, source: Reference, owned: Reference) -> Copied:
        self._ask(source)
        self._ask(owned)
        found = self._find(source)
        if found is None:
            raise RegistryError("not_found", f"pull {source}: manifest unknown", source.registry)
        self.clones.append((str(source), str(owned)))
        digest, media, body = found
        if self.backend == "skopeo":
            if media == OCI_INDEX:
                for entry in json.loads(body)["manifests"]:
                    child_media, child_body = self.repos[source.name].manifests[entry["digest"]]
                    self.put(owned.name, None, child_media, child_body)
            repo = self.repos.setdefault(owned.name, Repo())
            repo.manifests[digest] = (media, body)  # byte for byte: the same digest
            if owned.tag is not None:
                repo.tags[owned.tag] = digest
            return Copied(digest)
        # docker: one platform, re-serialised with the same config
        if media == OCI_INDEX:
            from cloner.model.identity import parse_manifest

            child = child_for(parse_manifest(digest, media, body), self.engine_platform)
            assert child is not None
            digest = child
        config = self.config_of(source.name, digest)
        new = json.dumps(
            {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": config}},
            indent=3,
        ).encode()
        return Copied(self.put(owned.name, owned.tag, DOCKER_MANIFEST, new), config)
