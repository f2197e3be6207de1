"""Which registries the engine reaches without TLS verification, and the refusal of them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.engine import DockerRegistry
from cloner.errors import RegistryError
from cloner.model.reference import parse_reference
from cloner.model.tls import (
    EngineRegistryConfig,
    engine_skips_tls,
    listed_insecure,
    mirror_host,
    split_host_port,
)

# What dockerd 20.10 reports with no --insecure-registry flag ...
DEFAULT_INDEXES = {"docker.io": {"Name": "docker.io", "Secure": True, "Official": True}}
DEFAULT_CIDRS = ["127.0.0.0/8"]
# ... and newer engines (loopback of both families).
NEWER_CIDRS = ["127.0.0.0/8", "::1/128"]
# dockerd --insecure-registry=registry.internal:5000 --insecure-registry=10.20.0.0/16
CONFIGURED_INDEXES = {
    **DEFAULT_INDEXES,
    "registry.internal:5000": {"Name": "registry.internal:5000", "Secure": False},
    "127.0.0.1:6000": {"Name": "127.0.0.1:6000", "Secure": True},  # hypothetical override
}
CONFIGURED_CIDRS = ["10.20.0.0/16", "127.0.0.0/8"]


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("registry.example.com", ("registry.example.com", None)),
        ("registry.example.com:5000", ("registry.example.com", "5000")),
        ("127.0.0.1:5000", ("127.0.0.1", "5000")),
        ("[::1]:5000", ("::1", "5000")),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("[fe80::1%25eth0]:5000", ("fe80::1%25eth0", "5000")),
    ],
)
def test_split_host_port(registry: str, expected: tuple[str, str | None]) -> None:
    assert split_host_port(registry) == expected


@pytest.mark.parametrize(
    ("registry", "indexes", "cidrs", "skips"),
    [
        # IP literals against the CIDRs, with and without a port
        ("127.0.0.1:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("127.0.0.1", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("127.8.9.10:443", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("128.0.0.1:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        ("10.20.3.4:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        ("10.20.3.4:5000", CONFIGURED_INDEXES, CONFIGURED_CIDRS, True),
        ("10.21.3.4:5000", CONFIGURED_INDEXES, CONFIGURED_CIDRS, False),
        # IPv6 literals in brackets; ::1 is insecure only where the engine lists ::1/128
        ("[::1]:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        ("[::1]:5000", DEFAULT_INDEXES, NEWER_CIDRS, True),
        ("[::1]", DEFAULT_INDEXES, NEWER_CIDRS, True),
        ("[0:0::1]:5000", DEFAULT_INDEXES, NEWER_CIDRS, True),
        ("[2001:db8::1]:5000", DEFAULT_INDEXES, NEWER_CIDRS, False),
        ("[2001:db8::1]:5000", DEFAULT_INDEXES, ["2001:db8::/32"], True),
        # an IPv4-mapped IPv6 address counts as its IPv4 address (moby: addr.Unmap())
        ("[::ffff:127.0.0.1]:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("[::ffff:10.0.0.1]:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        # localhost is loopback (both families), whatever the case; *.localhost too
        ("localhost:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("localhost", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("LocalHost:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("registry.localhost:5000", DEFAULT_INDEXES, DEFAULT_CIDRS, True),
        ("localhost:5000", DEFAULT_INDEXES, ["::1/128"], True),
        ("localhost:5000", DEFAULT_INDEXES, ["10.0.0.0/8"], False),
        ("localhost:5000", DEFAULT_INDEXES, [], False),
        # hostnames: only IndexConfigs decide (no DNS lookups)
        ("registry.example.com", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        ("docker.io", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        ("index.docker.io", DEFAULT_INDEXES, DEFAULT_CIDRS, False),
        ("registry.internal:5000", CONFIGURED_INDEXES, CONFIGURED_CIDRS, True),
        ("registry.internal:5001", CONFIGURED_INDEXES, CONFIGURED_CIDRS, False),
        ("registry.internal", CONFIGURED_INDEXES, CONFIGURED_CIDRS, False),
        # an IndexConfigs entry wins over the CIDRs, both ways
        ("127.0.0.1:6000", CONFIGURED_INDEXES, CONFIGURED_CIDRS, False),
        ("docker.io", {"docker.io": {"Name": "docker.io", "Secure": False}}, [], True),
        ("odd.example.com", {"odd.example.com": {"Name": "odd.example.com"}}, [], True),
        # unparseable CIDRs match nothing; no CIDRs at all means only IndexConfigs count
        ("127.0.0.1:5000", DEFAULT_INDEXES, ["not-a-cidr"], False),
        ("127.0.0.1:5000", {}, [], False),
        ("127.0.0.1:5000", {}, ["127.0.0.1/8"], True),  # host bits set: still the network
    ],
)
def test_engine_skips_tls(
    registry: str, indexes: Mapping[str, Mapping[str, Any]], cidrs: list[str], skips: bool
) -> None:
    assert engine_skips_tls(registry, indexes, cidrs) is skips


@pytest.mark.parametrize(
    ("registry", "patterns", "listed"),
    [
        ("127.0.0.1:5000", ["127.0.0.1:*"], True),
        ("127.0.0.1", ["127.0.0.1:*"], True),  # `*` also matches "no port"
        ("127.0.0.2:5000", ["127.0.0.1:*"], False),
        ("127.0.0.1:5000", ["127.0.0.1"], False),  # no port in the pattern: port-less only
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.0.0.1:5000", ["127.0.0.*:*"], True),
        ("127.0.0.1:5000", ["127.0.0.1:50??"], True),
        ("127.0.0.1:6000", ["127.0.0.1:50??"], False),
        ("127.0.0.1", ["127.0.0.1:5000"], False),
        ("registry.internal:5000", ["registry.internal:5000"], True),
        ("registry.internal:5001", ["registry.internal:5000"], False),
        ("registry.internal", ["registry.internal:5000"], False),
        ("Registry.Internal:5000", ["registry.internal:5000"], True),
        ("a.lab.example.com", ["*.lab.example.com"], True),
        ("a.lab.example.com:5000", ["*.lab.example.com"], False),
        ("a.lab.example.com:5000", ["*.lab.example.com:*"], True),
        ("reg7.internal:5000", ["reg[0-9].internal:5000"], True),
        ("[::1]:5000", ["[::1]:*"], True),
        ("[::1]:5000", ["[0:0::1]:5000"], True),
        ("[::1]", ["[::1]"], True),
        ("[::1]:5000", ["127.0.0.1:*"], False),
        ("localhost:5000", ["127.0.0.1:*"], False),  # names are not resolved
        ("localhost:5000", ["localhost:*"], True),
        ("127.0.0.1:5000", [], False),
        ("127.0.0.1:5000", ["registry.internal:5000", " 127.0.0.1:5000 "], True),
        ("anything.example.com:1", ["*:*"], True),
    ],
)
def test_listed_insecure(registry: str, patterns: list[str], listed: bool) -> None:
    assert listed_insecure(registry, patterns) is listed


@pytest.mark.parametrize(
    ("mirror", "expected"),
    [
        ("https://mirror.example.com/", ("mirror.example.com", False)),
        ("http://10.0.0.5:5000", ("10.0.0.5:5000", True)),
        ("HTTP://mirror.example.com", ("mirror.example.com", True)),
        ("mirror.example.com:5000", ("mirror.example.com:5000", False)),
        ("https://[::1]:5000/", ("[::1]:5000", False)),
        ("https://", None),
    ],
)
def test_mirror_host(mirror: str, expected: tuple[str, bool] | None) -> None:
    assert mirror_host(mirror) == expected


def test_engine_config_from_info_and_unverified_hosts() -> None:
    config = EngineRegistryConfig.from_info(
        {
            "IndexConfigs": {
                "docker.io": {
                    "Name": "docker.io",
                    "Secure": True,
                    "Mirrors": ["https://127.0.0.1:5555/", "https://mirror.example.com/"],
                },
                "registry.internal:5000": {"Name": "registry.internal:5000", "Secure": False},
            },
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "Mirrors": ["https://127.0.0.1:5555/", "http://plain.example.com/"],
        }
    )
    assert config.insecure_cidrs == ("127.0.0.0/8",)
    assert config.mirrors == (
        ("127.0.0.1:5555", False),
        ("plain.example.com", True),
        ("mirror.example.com", False),
    )
    # pulls from docker.io go through the mirrors: an insecure one or a plain-HTTP one counts
    assert config.unverified_hosts("docker.io", pull=True) == (
        "127.0.0.1:5555",
        "plain.example.com",
    )
    assert config.unverified_hosts("docker.io", pull=False) == ()
    assert config.unverified_hosts("quay.io", pull=True) == ()
    assert config.unverified_hosts("registry.internal:5000", pull=False) == (
        "registry.internal:5000",
    )
    assert config.unverified_hosts("127.0.0.1:5000", pull=True) == ("127.0.0.1:5000",)


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"IndexConfigs": None, "InsecureRegistryCIDRs": None, "Mirrors": None},
    ],
)
def test_engine_config_missing_keys_are_empty(raw: Mapping[str, Any]) -> None:
    config = EngineRegistryConfig.from_info(raw)
    assert config == EngineRegistryConfig({}, (), ())
    assert config.unverified_hosts("127.0.0.1:5000", pull=True) == ()


@pytest.mark.parametrize("raw", [[], {"IndexConfigs": ["docker.io"]}])
def test_engine_config_malformed_is_refused(raw: Any) -> None:
    with pytest.raises(ValueError, match="not a mapping"):
        EngineRegistryConfig.from_info(raw)


# DockerRegistry: refusal before any registry call ---------------------------------


class FakeEngine:
    """The parts of ``docker.APIClient`` the checks reach; records every call."""

    def __init__(self, registry_config: Mapping[str, Any] | None) -> None:
        self.registry_config = registry_config
        self.calls: list[str] = []

    def info(self) -> dict[str, Any]:
        self.calls.append("info")
        return {} if self.registry_config is None else {"RegistryConfig": self.registry_config}

    def inspect_distribution(self, image: str, auth_config: Any = None) -> dict[str, Any]:
        self.calls.append(f"inspect {image}")
        return {"Descriptor": {"digest": "sha256:" + "a" * 64}}

    def pull(self, repository: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(f"pull {repository}")
        return iter(())

    def tag(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("tag")

    def push(self, repository: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(f"push {repository}")
        return iter([{"aux": {"Digest": "sha256:" + "a" * 64}}])

    def remove_image(self, reference: str) -> None:
        self.calls.append("remove")

    def close(self) -> None:
        self.calls.append("close")


ENGINE_DEFAULT = {"IndexConfigs": DEFAULT_INDEXES, "InsecureRegistryCIDRs": DEFAULT_CIDRS}


def registry_with(
    engine: FakeEngine, tmp_path: Path, insecure_registries: tuple[str, ...] = ()
) -> DockerRegistry:
    registry = DockerRegistry(
        "unix:///nonexistent.sock",
        CredentialStore(tmp_path / "config.json"),
        insecure_registries=insecure_registries,
    )
    registry._client = engine  # type: ignore[assignment]
    return registry


def test_unlisted_loopback_registry_is_refused_before_any_registry_call(tmp_path: Path) -> None:
    engine = FakeEngine(ENGINE_DEFAULT)
    registry = registry_with(engine, tmp_path)
    with pytest.raises(RegistryError) as caught:
        registry.manifest_digest(parse_reference("127.0.0.1:5000/owned/app:1"))
    assert caught.value.reason == "insecure_registry"
    assert not caught.value.temporary
    assert caught.value.registry == "127.0.0.1:5000"
    assert str(caught.value) == (
        "127.0.0.1:5000 is reached without TLS verification by the Docker engine "
        "(insecure registry or loopback); list it in insecureRegistries to allow this"
    )
    with pytest.raises(RegistryError) as caught:
        registry.clone(
            parse_reference("127.0.0.1:5001/src/app:1"),
            parse_reference("registry.example.com/mirror/app:1"),
        )
    assert caught.value.reason == "insecure_registry"
    assert caught.value.registry == "127.0.0.1:5001"
    # the owned side is checked before the pull too
    with pytest.raises(RegistryError) as caught:
        registry.clone(
            parse_reference("quay.io/src/app:1"), parse_reference("127.0.0.1:5000/owned/app:1")
        )
    assert caught.value.registry == "127.0.0.1:5000"
    assert engine.calls == ["info"]  # read once, and nothing pulled, pushed or inspected


def test_listed_or_verified_registries_are_used(tmp_path: Path) -> None:
    engine = FakeEngine(ENGINE_DEFAULT)
    registry = registry_with(engine, tmp_path, ("127.0.0.1:*",))
    digest = registry.clone(
        parse_reference("127.0.0.1:5001/src/app:1"), parse_reference("127.0.0.1:5000/owned/app:1")
    ).digest
    assert digest == "sha256:" + "a" * 64
    assert registry.manifest_digest(parse_reference("quay.io/src/app:1")) == digest
    assert engine.calls[0] == "info" and engine.calls.count("info") == 1
    assert "pull 127.0.0.1:5001/src/app" in engine.calls
    assert "push 127.0.0.1:5000/owned/app" in engine.calls


def test_engine_config_is_read_again_after_a_reset(tmp_path: Path) -> None:
    engine = FakeEngine({"IndexConfigs": DEFAULT_INDEXES, "InsecureRegistryCIDRs": []})
    registry = registry_with(engine, tmp_path)
    ref = parse_reference("127.0.0.1:5000/owned/app:1")
    assert registry.manifest_digest(ref) is not None
    assert registry.manifest_digest(ref) is not None
    assert engine.calls.count("info") == 1
    registry._reset()  # what an engine or transport failure does
    restarted = FakeEngine(ENGINE_DEFAULT)
    registry._client = restarted  # type: ignore[assignment]
    with pytest.raises(RegistryError, match="without TLS verification"):
        registry.manifest_digest(ref)
    assert restarted.calls == ["info"]


def test_engine_without_registry_config_is_refused(tmp_path: Path) -> None:
    engine = FakeEngine(None)
    registry = registry_with(engine, tmp_path, ("*:*",))
    with pytest.raises(RegistryError) as caught:
        registry.manifest_digest(parse_reference("registry.example.com/owned/app:1"))
    assert caught.value.reason == "registry_error"
    assert "RegistryConfig" in str(caught.value)
    assert engine.calls == ["info"]


def test_insecure_docker_io_mirror_must_be_listed(tmp_path: Path) -> None:
    engine = FakeEngine({**ENGINE_DEFAULT, "Mirrors": ["http://127.0.0.1:5555/"]})
    source = parse_reference("nginx:1.25")
    owned = parse_reference("registry.example.com/mirror/nginx:1.25")
    with pytest.raises(RegistryError) as caught:
        registry_with(engine, tmp_path).clone(source, owned)
    assert caught.value.reason == "insecure_registry"
    assert str(caught.value).startswith("127.0.0.1:5555 (mirror of docker.io) is reached")
    assert registry_with(engine, tmp_path, ("127.0.0.1:5555",)).clone(source, owned)
