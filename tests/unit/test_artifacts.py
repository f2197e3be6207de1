"""Signatures and referrers: the pure rules (model.artifacts) and the copier's decisions.

The copier (``ops.artifacts.ArtifactCopier``) runs here against a plain
in-memory registry that keeps manifests, tags and blobs per repository and
records every call, to check discovery, the merge of fallback indexes and the
order of writes. The real registries are in tests/e2e/test_signatures.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloner.errors import RegistryError
from cloner.model.artifacts import (
    ArtifactKind,
    ArtifactStatus,
    Found,
    SignatureMode,
    cosign_tag,
    fallback_tag,
    is_reserved_tag,
    manifest_blobs,
    merge_fallback_index,
    names_subject,
    referrer_descriptors,
    switch_allowed,
)
from cloner.model.identity import OCI_INDEX, OCI_MANIFEST, Descriptor
from cloner.model.reference import Reference, digest_tag, parse_reference
from cloner.model.state import Record
from cloner.ops.artifacts import ArtifactCopier
from cloner.ops.plan import build_plan
from tests.unit.fakes import FakeKube, workload

IMAGE = "sha256:" + "a" * 64
CHILD = "sha256:" + "b" * 64


def sha(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- names ------------------------------------------------------------------------------


def test_cosign_and_fallback_tags_name_the_digest() -> None:
    assert cosign_tag(IMAGE, ".sig") == "sha256-" + "a" * 64 + ".sig"
    assert cosign_tag(IMAGE, ".att").endswith(".att")
    assert fallback_tag(IMAGE) == "sha256-" + "a" * 64
    with pytest.raises(ValueError, match="suffix"):
        cosign_tag(IMAGE, ".sbomx")
    with pytest.raises(ValueError, match="digest"):
        fallback_tag("nodigest")


@pytest.mark.parametrize(
    ("tag", "reserved"),
    [
        ("sha256-" + "a" * 64, True),
        ("sha256-" + "a" * 64 + ".sig", True),
        ("sha512-" + "f" * 64 + ".sbom", True),
        (digest_tag(IMAGE), False),  # the owned tag of a digest-only source
        ("1.25", False),
        ("sha256-latest", False),
        ("v1-abc", True),  # hex after a dash is reserved whatever the prefix
        ("v1.2-abc", False),
    ],
)
def test_reserved_tags(tag: str, reserved: bool) -> None:
    assert is_reserved_tag(tag) is reserved


# --- referrers lists and fallback indexes -------------------------------------------------


def index(*entries: dict[str, Any]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}
    ).encode()


def entry(digest: str, artifact_type: str = "application/example") -> dict[str, Any]:
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": 10, "artifactType": artifact_type}


def referrer(digest: str, subject: str = IMAGE) -> Found:
    return Found(
        ArtifactKind.REFERRER, digest, OCI_MANIFEST, 10, subject, artifact_type="application/x"
    )


def test_referrer_descriptors_drop_malformed_entries_and_repeats() -> None:
    one, two = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    body = index(entry(one), {"digest": 5}, entry(one), "junk", entry(two))
    assert [e["digest"] for e in referrer_descriptors(body)] == [one, two]
    with pytest.raises(ValueError, match="manifests"):
        referrer_descriptors(b'{"schemaVersion": 2}')
    with pytest.raises(ValueError, match="JSON"):
        referrer_descriptors(b"<html>")


def test_merge_keeps_every_existing_entry_in_order_and_drops_duplicates() -> None:
    theirs, ours, new = ("sha256:" + c * 64 for c in "123")
    existing = [entry(theirs, "application/vnd.other"), entry(ours)]
    cosign_tagged = Found(ArtifactKind.SIGNATURE, "sha256:" + "4" * 64, OCI_MANIFEST, 9, IMAGE)

    body, added = merge_fallback_index(existing, [referrer(ours), referrer(new), cosign_tagged])

    merged = json.loads(body)
    assert merged["mediaType"] == OCI_INDEX and merged["schemaVersion"] == 2
    assert [m["digest"] for m in merged["manifests"]] == [theirs, ours, new]
    assert merged["manifests"][0]["artifactType"] == "application/vnd.other"  # kept as it was
    assert added == 1
    assert merge_fallback_index(referrer_descriptors(body), [referrer(new)])[1] == 0


def test_names_subject_is_what_makes_a_fallback_entry_a_referrer() -> None:
    artifact = json.dumps({"subject": {"digest": IMAGE, "mediaType": OCI_INDEX}}).encode()
    assert names_subject(artifact, IMAGE)
    assert not names_subject(artifact, CHILD)
    assert not names_subject(b'{"schemaVersion": 2}', IMAGE)  # a platform manifest
    assert not names_subject(b"not json", IMAGE)


def test_manifest_blobs_config_first_without_repeats() -> None:
    body = json.dumps(
        {
            "config": {"digest": "sha256:c", "size": 2},
            "layers": [{"digest": "sha256:l", "size": 5}, {"digest": "sha256:c", "size": 2}],
        }
    ).encode()
    assert manifest_blobs(body) == [("sha256:c", 2), ("sha256:l", 5)]
    with pytest.raises(ValueError, match="blob descriptor"):
        manifest_blobs(b'{"layers": [{"digest": "sha256:l"}]}')


# --- the require decision -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "keeps", "expected"),
    [
        (SignatureMode.COPY, ArtifactStatus(3, 0, "auth"), True, None),
        (SignatureMode.OFF, None, False, None),
        (SignatureMode.REQUIRE, None, True, "signatures_not_copied"),
        (SignatureMode.REQUIRE, ArtifactStatus(0, 0, ""), True, None),
        (SignatureMode.REQUIRE, ArtifactStatus(0, 0, ""), False, None),
        (SignatureMode.REQUIRE, ArtifactStatus(3, 3, ""), True, None),
        (SignatureMode.REQUIRE, ArtifactStatus(3, 2, ""), True, "signatures_not_copied"),
        (SignatureMode.REQUIRE, ArtifactStatus(3, 0, "auth"), True, "signatures_not_copied"),
        (SignatureMode.REQUIRE, ArtifactStatus(0, 0, "network"), True, "signatures_not_copied"),
        (SignatureMode.REQUIRE, ArtifactStatus(2, 0, ""), False, "signatures_lost"),
    ],
)
def test_switch_allowed(
    mode: SignatureMode, status: ArtifactStatus | None, keeps: bool, expected: str | None
) -> None:
    assert switch_allowed(mode, status, keeps) == expected
    if expected is not None:
        RegistryError(expected, "a known reason")  # raises for an unknown one


# --- the copier against an in-memory registry ---------------------------------------------


@dataclass
class Repo:
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Memory:
    """Registries in memory: ``host -> repository -> Repo``; ``api`` hosts list referrers."""

    api: set[str] = field(default_factory=set)
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    refuse_writes: bool = False

    def repo(self, ref: Reference) -> Repo:
        return self.repos.setdefault((ref.registry, ref.repository), Repo())

    def push(
        self, ref: Reference, body: bytes, media_type: str = OCI_MANIFEST, tag: str = ""
    ) -> str:
        digest = sha(body)
        repo = self.repo(ref)
        repo.manifests[digest] = (media_type, body)
        if tag:
            repo.tags[tag] = digest
        data = json.loads(body)
        for blob in [*data.get("layers", []), data.get("config")]:
            if blob:
                repo.blobs[blob["digest"]] = b"x" * blob["size"]
        return digest

    def _digest(self, ref: Reference) -> str | None:
        repo = self.repo(ref)
        return ref.digest if ref.digest in repo.manifests else repo.tags.get(ref.tag or "")

    def head(self, ref: Reference) -> Descriptor | None:
        self.calls.append(("HEAD", str(ref)))
        digest = self._digest(ref)
        if digest is None:
            return None
        media_type, body = self.repo(ref).manifests[digest]
        return Descriptor(digest, media_type, len(body))

    def get(self, ref: Reference) -> tuple[Descriptor, bytes]:
        self.calls.append(("GET", str(ref)))
        digest = self._digest(ref)
        if digest is None:
            raise RegistryError("not_found", f"{ref}: manifest unknown")
        media_type, body = self.repo(ref).manifests[digest]
        return Descriptor(digest, media_type, len(body)), body

    def referrers(self, repository: Reference, digest: str) -> list[dict[str, Any]] | None:
        self.calls.append(("referrers", f"{repository.name}@{digest}"))
        if repository.registry not in self.api:
            return None
        out = []
        for d, (media_type, body) in self.repo(repository).manifests.items():
            if names_subject(body, digest):
                out.append({"mediaType": media_type, "digest": d, "size": len(body)})
        return out

    def copy_blob(self, source: Reference, target: Reference, digest: str, size: int) -> bool:
        self._write("blob", f"{target.name}@{digest}")
        if digest in self.repo(target).blobs:
            return False
        self.repo(target).blobs[digest] = self.repo(source).blobs[digest]
        return True

    def put_manifest(self, ref: Reference, media_type: str, body: bytes) -> str:
        self._write("PUT", str(ref))
        digest = sha(body)
        repo = self.repo(ref)
        repo.manifests[digest] = (media_type, body)
        if ref.digest is None:
            repo.tags[ref.tag or "latest"] = digest
        return digest

    def _write(self, what: str, where: str) -> None:
        self.calls.append((what, where))
        if self.refuse_writes:
            raise RegistryError("auth", f"{where}: 403 Forbidden")


SRC = parse_reference("src.example.com/team/app:1")
DST = parse_reference("owned.example.com/m/src.example.com/team/app:1")


def artifact_manifest(seed: str, subject: str | None = None, size: int = 3) -> bytes:
    data: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha(b"{}"),
            "size": 2,
        },
        "layers": [{"mediaType": "application/x", "digest": sha(seed.encode()), "size": size}],
    }
    if subject is not None:
        data["subject"] = {"mediaType": OCI_INDEX, "digest": subject, "size": 100}
        data["artifactType"] = "application/vnd.example+json"
    return json.dumps(data).encode()


def signed_source(memory: Memory) -> dict[str, str]:
    """``IMAGE`` in SRC with a .sig, an .sbom with its own .sig, and one referrer."""
    sig = memory.push(SRC, artifact_manifest("sig"), tag=cosign_tag(IMAGE, ".sig"))
    sbom = memory.push(SRC, artifact_manifest("sbom"), tag=cosign_tag(IMAGE, ".sbom"))
    sbom_sig = memory.push(SRC, artifact_manifest("sbom-sig"), tag=cosign_tag(sbom, ".sig"))
    ref = memory.push(SRC, artifact_manifest("bundle", IMAGE))
    return {"sig": sig, "sbom": sbom, "sbom_sig": sbom_sig, "referrer": ref}


def test_discovery_follows_cosign_tags_referrers_and_artifacts_of_artifacts() -> None:
    memory = Memory(api={SRC.registry})
    pushed = signed_source(memory)

    found = ArtifactCopier(memory).discover(SRC, [IMAGE])

    assert {(f.kind, f.digest, f.depth) for f in found} == {
        (ArtifactKind.SIGNATURE, pushed["sig"], 1),
        (ArtifactKind.SBOM, pushed["sbom"], 1),
        (ArtifactKind.REFERRER, pushed["referrer"], 1),
        (ArtifactKind.SIGNATURE, pushed["sbom_sig"], 2),
    }
    assert not [c for c in memory.calls if "tags/list" in c[1]]


def test_a_fallback_entry_that_does_not_name_the_subject_is_ignored() -> None:
    memory = Memory()  # no referrers API anywhere
    real = memory.push(SRC, artifact_manifest("real", IMAGE))
    stranger = memory.push(SRC, artifact_manifest("stranger", CHILD))
    memory.push(SRC, index(entry(real), entry(stranger)), OCI_INDEX, tag=fallback_tag(IMAGE))

    found = ArtifactCopier(memory).discover(SRC, [IMAGE])

    assert [f.digest for f in found] == [real]


def test_an_image_under_the_old_digest_tag_is_not_read_as_referrers() -> None:
    memory = Memory()
    platform = memory.push(SRC, artifact_manifest("platform"))
    image = memory.push(SRC, index(entry(platform)), OCI_INDEX)
    memory.repo(SRC).tags[fallback_tag(image)] = image  # a copy made before the rename

    assert ArtifactCopier(memory).discover(SRC, [image]) == []


def test_a_source_without_artifacts_costs_four_requests_per_manifest_and_one_probe() -> None:
    memory = Memory(api={SRC.registry})
    copier = ArtifactCopier(memory)
    copier.discover(SRC, [IMAGE, CHILD])
    assert len(memory.calls) == 8  # 3 HEAD + 1 referrers each
    memory.api.clear()
    other = Memory()
    ArtifactCopier(other).discover(SRC, [IMAGE, CHILD])
    # the first referrers GET finds no API; later manifests HEAD the fallback tag only
    assert [c[0] for c in other.calls].count("referrers") == 1
    assert len(other.calls) == 1 + 2 * 4


def test_copy_writes_blobs_manifests_fallback_index_then_tags_and_verifies() -> None:
    memory = Memory(api={SRC.registry})  # the owned registry has no referrers API
    pushed = signed_source(memory)
    kept = "sha256:" + "9" * 64  # a referrer another tool listed in the owned fallback index
    memory.push(DST, index(entry(kept)), OCI_INDEX, tag=fallback_tag(IMAGE))

    synced = ArtifactCopier(memory).sync(SRC, DST, [IMAGE])

    assert synced.status == ArtifactStatus(4, 4, "")
    assert synced.copied == {"signature": 2, "sbom": 1, "referrer": 1}
    writes = [c for c in memory.calls if c[0] in ("blob", "PUT")]
    kinds = ["tag" if ":" in w[1].rsplit("/", 1)[1] and "@" not in w[1] else w[0] for w in writes]
    first_tag = kinds.index("tag")
    assert "blob" not in kinds[first_tag:]  # tags come last
    fallback_put = [i for i, w in enumerate(writes) if w[1].endswith(":" + fallback_tag(IMAGE))]
    assert fallback_put and fallback_put[0] == first_tag  # the index first, then cosign tags
    listed = [
        e["digest"] for e in referrer_descriptors(memory.get(DST.with_tag(fallback_tag(IMAGE)))[1])
    ]
    assert listed == [kept, pushed["referrer"]]
    owned = memory.repo(DST)
    assert owned.tags[cosign_tag(IMAGE, ".sig")] == pushed["sig"]
    assert owned.tags[cosign_tag(pushed["sbom"], ".sig")] == pushed["sbom_sig"]

    # A second sync with what is known writes nothing.
    memory.calls.clear()
    again = ArtifactCopier(memory).sync(SRC, DST, [IMAGE], synced.known)
    assert again.status == ArtifactStatus(4, 4, "") and not again.copied
    assert not [c for c in memory.calls if c[0] in ("blob", "PUT")]


def test_a_moved_sig_tag_is_copied_again() -> None:
    memory = Memory(api={SRC.registry, DST.registry})
    signed_source(memory)
    first = ArtifactCopier(memory).sync(SRC, DST, [IMAGE])
    moved = memory.push(SRC, artifact_manifest("sig-2"), tag=cosign_tag(IMAGE, ".sig"))

    second = ArtifactCopier(memory).sync(SRC, DST, [IMAGE], first.known)

    assert second.copied == {"signature": 1}
    assert memory.repo(DST).tags[cosign_tag(IMAGE, ".sig")] == moved
    # With the API on the owned side no fallback tag is written.
    assert fallback_tag(IMAGE) not in memory.repo(DST).tags


def test_a_refused_write_is_a_status_not_an_exception() -> None:
    memory = Memory(api={SRC.registry})
    signed_source(memory)
    memory.refuse_writes = True

    synced = ArtifactCopier(memory).sync(SRC, DST, [IMAGE])

    assert synced.status == ArtifactStatus(4, 0, "auth")
    assert synced.known == ()


def test_plan_shows_the_artifacts_of_the_last_sync() -> None:
    from cloner.config import CopySettings, Settings

    settings = Settings(target="owned.example.com/m", copy=CopySettings(backend="skopeo"))
    kube = FakeKube([workload("Deployment", "a", "web", "src.example.com/team/app:1")])
    record = Record(
        str(SRC), IMAGE, str(DST), IMAGE, "x", (), "skopeo", 1.0, 1.0,
        artifacts_found=5, artifacts_owned=4, artifacts_synced=1.0,
    )  # fmt: skip

    class Absent:
        def head(self, ref: Reference) -> None:
            return None

    rows = build_plan(kube, Absent(), settings, records={str(SRC): record})

    assert rows[0].decision == "clone; artifacts 4/5 in the owned registry"
    assert (rows[0].artifacts, rows[0].artifacts_owned) == (5, 4)
