"""The identity decisions: manifests, platforms, same content, the decision table, refresh."""

from __future__ import annotations

import json

import pytest

from cloner.model.identity import (
    DOCKER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SKOPEO,
    Action,
    Manifest,
    child_for,
    decide,
    engine_drops_platforms,
    parse_manifest,
    platform_name,
    refresh_due,
    same_content,
    spread,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def index_body(*platforms: tuple[str, str, str | None]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": "sha256:" + str(i) * 64,
                    "size": 1,
                    "platform": {"os": os, "architecture": arch}
                    | ({"variant": variant} if variant else {}),
                }
                for i, (os, arch, variant) in enumerate(platforms)
            ],
        }
    ).encode()


def test_index_children_by_platform_skip_attestations() -> None:
    body = index_body(
        ("linux", "amd64", None), ("linux", "arm64", "v8"), ("unknown", "unknown", None)
    )
    manifest = parse_manifest(A, OCI_INDEX, body)
    assert manifest.is_index
    assert manifest.platforms == ("linux/amd64", "linux/arm64")
    assert manifest.children["linux/arm64"] == "sha256:" + "1" * 64


def test_manifest_list_media_type_comes_from_the_body_when_the_header_is_generic() -> None:
    body = json.loads(index_body(("linux", "amd64", None)))
    body["mediaType"] = DOCKER_LIST
    manifest = parse_manifest(A, "application/json", json.dumps(body).encode())
    assert manifest.media_type == DOCKER_LIST and manifest.is_index


def test_single_manifest_gives_its_config_digest() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": B}})
    manifest = parse_manifest(A, DOCKER_MANIFEST, body.encode())
    assert not manifest.is_index and manifest.config_digest == B


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", json.dumps({"mediaType": "text/plain"}).encode(), b'{"config": {}}'],
)
def test_unreadable_manifests_raise_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_manifest(A, "", body)


@pytest.mark.parametrize(
    ("os", "arch", "variant", "name"),
    [
        ("linux", "x86_64", None, "linux/amd64"),
        ("linux", "aarch64", None, "linux/arm64"),
        ("linux", "arm64", "v8", "linux/arm64"),
        ("linux", "arm", "v7", "linux/arm/v7"),
    ],
)
def test_platform_names_use_go_architectures(
    os: str, arch: str, variant: str | None, name: str
) -> None:
    assert platform_name(os, arch, variant) == name


def test_engine_takes_exact_platform_then_any_variant() -> None:
    manifest = Manifest(A, OCI_INDEX, {"linux/arm/v7": B, "linux/amd64": C}, None)
    assert child_for(manifest, "linux/amd64") == C
    assert child_for(manifest, "linux/arm") == B
    assert child_for(manifest, "linux/s390x") is None


def test_engine_copy_is_refused_only_when_nodes_run_another_platform() -> None:
    index = Manifest(A, OCI_INDEX, {"linux/amd64": B, "linux/arm64": C}, None)
    single = Manifest(A, OCI_MANIFEST, {}, B)
    assert engine_drops_platforms(index, "linux/amd64", []) is None
    assert engine_drops_platforms(index, "linux/amd64", ["linux/amd64"] * 3) is None
    message = engine_drops_platforms(index, "linux/amd64", ["linux/amd64", "linux/arm64"])
    assert message is not None and "linux/arm64" in message and "copyBackend: skopeo" in message
    assert engine_drops_platforms(single, "linux/amd64", ["linux/arm64"]) is None


def test_same_content_by_digest_for_skopeo_and_by_config_for_docker() -> None:
    source = Manifest(A, OCI_MANIFEST, {}, C)
    copy = Manifest(B, DOCKER_MANIFEST, {}, C)
    other = Manifest(B, DOCKER_MANIFEST, {}, "sha256:" + "d" * 64)
    assert same_content(SKOPEO, source, Manifest(A, OCI_MANIFEST, {}, C), None)
    assert not same_content(SKOPEO, source, copy, C)
    assert same_content(DOCKER, source, copy, C)
    assert not same_content(DOCKER, source, other, C)
    assert not same_content(DOCKER, source, copy, None)


@pytest.mark.parametrize(
    ("source_known", "owned", "matches", "recorded", "action"),
    [
        # the source answered
        (True, None, False, None, Action.COPY),
        (True, A, True, None, Action.REUSE),
        (True, A, False, None, Action.REPLACE),  # an impostor under the owned name
        (True, A, True, A, Action.REUSE),
        (True, B, False, A, Action.REPLACE),  # moved tag, or the owned copy was overwritten
        (True, None, False, A, Action.COPY),
        # the source cannot be asked
        (False, A, False, A, Action.USE_RECORD),
        (False, B, False, A, Action.FAIL),  # the owned copy changed since it was verified
        (False, None, False, A, Action.FAIL),
        (False, A, False, None, Action.WAIT_UNVERIFIED),  # never verified: not used
        (False, None, False, None, Action.FAIL),
    ],
)
def test_decision_table(
    source_known: bool, owned: str | None, matches: bool, recorded: str | None, action: Action
) -> None:
    assert (
        decide(
            source_known=source_known,
            owned_digest=owned,
            matches=matches,
            recorded_owned_digest=recorded,
        )
        is action
    )


def test_refresh_is_due_after_the_spread_interval_and_never_for_digests() -> None:
    key = "docker.io/library/nginx:1.25"
    due_at = 1000 * (1 - 0.2 * spread(key))
    assert not refresh_due(key, 0.0, due_at - 1, 1000, pinned=False)
    assert refresh_due(key, 0.0, due_at + 1e-6, 1000, pinned=False)
    assert not refresh_due(key, 0.0, 10**9, 1000, pinned=True)
    assert not refresh_due(key, 0.0, 10**9, 0, pinned=False)


def test_spread_is_stable_and_spreads_many_sources() -> None:
    keys = [f"docker.io/library/app{i}:1" for i in range(500)]
    values = [spread(k) for k in keys]
    assert values == [spread(k) for k in keys]
    buckets = {int(v * 10) for v in values}
    assert buckets == set(range(10))  # 500 images are not asked in the same cycle
