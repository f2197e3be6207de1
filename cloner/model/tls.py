"""Which registries a Docker engine reaches without TLS verification. Pure: no I/O.

Called by ``engine.DockerRegistry`` with the engine's registry configuration
(``GET /info`` -> ``RegistryConfig``) to refuse registries that are not listed
in ``insecureRegistries``. It must stay free of ``kubernetes`` and ``docker``,
and it makes no DNS lookups.

The engine's rule (moby ``registry/config.go``, ``isSecureIndex`` and
``isCIDRMatch``) for a registry ``host[:port]``:

1. if ``host[:port]`` is a key of ``IndexConfigs`` (``dockerd
   --insecure-registry=host:port`` entries and ``docker.io``), that entry's
   ``Secure`` flag decides;
2. otherwise the registry is insecure when an IP address of ``host`` lies in
   one of ``InsecureRegistryCIDRs`` (``--insecure-registry=CIDR`` entries and,
   by default, ``127.0.0.0/8``; newer engines add ``::1/128``); IPv4-mapped
   IPv6 addresses count as their IPv4 address;
3. otherwise it is secure: TLS is verified.

The engine resolves a hostname to find its addresses; this module does not:
it knows the addresses of IP literals and of ``localhost`` (``127.0.0.1`` and
``::1``, also for ``*.localhost`` names, which RFC 6761 reserves for
loopback). Any other hostname that is not a key of ``IndexConfigs`` is taken
as secure, so a name that resolves into an insecure CIDR (an ``/etc/hosts``
entry pointing at ``127.0.1.1``, a wildcard DNS name such as
``127.0.0.1.nip.io``) is not detected. The controller does not resolve names
itself because its resolver is not the engine's: it runs in another
container, possibly with other ``/etc/hosts`` entries and DNS settings, so an
answer it got could differ from the one the engine acts on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

DEFAULT_INDEX = "docker.io"
LEGACY_DEFAULT_INDEX = "index.docker.io"

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOOPBACK: tuple[_IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


def split_host_port(registry_host: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` the way Go's ``net.SplitHostPort`` reads a URL host.

    Args:
        registry_host: for example ``registry.example.com``, ``127.0.0.1:5000``,
            ``[::1]:5000`` or ``[::1]``.

    Returns:
        ``(host, port)``: the host without IPv6 brackets, and the port text
        (``None`` when there is none). A bare IPv6 address without brackets
        (more than one ``:``) is all host.
    """
    if registry_host.startswith("["):
        end = registry_host.find("]")
        if end != -1:
            host, rest = registry_host[1:end], registry_host[end + 1 :]
            return host, rest[1:] if rest.startswith(":") else None
    if registry_host.count(":") == 1:
        host, _, port = registry_host.partition(":")
        return host, port
    return registry_host, None


def _known_addresses(host: str) -> tuple[_IPAddress, ...]:
    """The addresses of an IP literal or a ``localhost`` name; () for other names."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return _LOOPBACK
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    return (address,)


def _networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            continue  # the engine reports only CIDRs it parsed; anything else matches nothing
    return networks


def engine_skips_tls(
    registry_host: str,
    index_configs: Mapping[str, Mapping[str, Any]],
    insecure_cidrs: Sequence[str],
) -> bool:
    """Whether the engine reaches ``registry_host`` without TLS verification.

    Follows moby's ``isSecureIndex`` (module docstring), without DNS lookups.

    Args:
        registry_host: the registry as in an image reference, ``host[:port]``
            (IPv6 in brackets), for example ``127.0.0.1:5000``.
        index_configs: ``RegistryConfig["IndexConfigs"]`` of the engine's
            ``/info``: index name -> ``{"Name": ..., "Secure": bool, ...}``.
            An entry without ``Secure`` counts as insecure.
        insecure_cidrs: ``RegistryConfig["InsecureRegistryCIDRs"]``, for
            example ``["127.0.0.0/8", "::1/128"]``; entries that do not parse
            are ignored.

    Returns:
        True when the engine would skip TLS verification (or fall back to
        plain HTTP) for this registry; False when it verifies TLS, which
        includes every hostname that is neither listed in ``index_configs``
        nor ``localhost``.
    """
    name = DEFAULT_INDEX if registry_host == LEGACY_DEFAULT_INDEX else registry_host
    entry = index_configs.get(name)
    if entry is not None:
        return not bool(entry.get("Secure", False))
    host, _ = split_host_port(name)
    addresses = _known_addresses(host)
    networks = _networks(insecure_cidrs)
    return any(
        address.version == network.version and address in network
        for address in addresses
        for network in networks
    )


def _same_host(host: str, pattern: str) -> bool:
    if fnmatchcase(host.lower(), pattern.lower()):
        return True
    try:  # IP literals written differently: [::1] and [0:0::1]
        return ipaddress.ip_address(host) == ipaddress.ip_address(pattern)
    except ValueError:
        return False


def listed_insecure(registry_host: str, patterns: Sequence[str]) -> bool:
    """Whether ``registry_host`` matches one of the ``insecureRegistries`` patterns.

    A pattern is ``host[:port]`` (IPv6 in brackets) where ``host`` and ``port``
    are matched separately with ``fnmatch`` globs (``*``, ``?``, ``[...]``),
    the host case-insensitively. A pattern without a port matches the host
    only without a port; a port pattern that matches the empty string (``*``)
    also matches the host without a port.

    Args:
        registry_host: the registry as in an image reference, ``host[:port]``.
        patterns: for example ``["127.0.0.1:*", "registry.internal:5000",
            "[::1]:*", "*.lab.example.com"]``.

    Returns:
        True when a pattern matches, so the controller may use the registry
        although the engine reaches it without TLS verification.

    Examples:
        ``127.0.0.1:*`` matches ``127.0.0.1:5000`` and ``127.0.0.1``;
        ``registry.internal:5000`` matches only that host and port;
        ``registry.internal`` does not match ``registry.internal:5000``.
    """
    host, port = split_host_port(registry_host)
    for pattern in patterns:
        pattern_host, pattern_port = split_host_port(pattern.strip())
        if not _same_host(host, pattern_host):
            continue
        if pattern_port is None:
            if port is None:
                return True
        elif fnmatchcase(port or "", pattern_port):
            return True
    return False


def mirror_host(mirror: str) -> tuple[str, bool] | None:
    """The ``host[:port]`` of a registry mirror URL, and whether it is plain HTTP.

    Args:
        mirror: a mirror as the engine reports it, for example
            ``https://mirror.example.com/`` or ``http://10.0.0.5:5000``.

    Returns:
        ``(host[:port], plain_http)``; ``plain_http`` is True for an
        ``http://`` URL, which the engine uses without TLS whatever its
        ``IndexConfigs`` say. None when the text has no host.
    """
    text = mirror if "://" in mirror else f"https://{mirror}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2]
    return (host, parts.scheme.lower() == "http") if host else None


@dataclass(frozen=True, slots=True)
class EngineRegistryConfig:
    """The engine's registry settings that decide TLS verification.

    Attributes:
        index_configs: index name -> ``{"Name", "Secure", "Mirrors", ...}``.
        insecure_cidrs: the ``InsecureRegistryCIDRs``.
        mirrors: the engine's ``docker.io`` mirrors as ``(host[:port],
            plain_http)``; pulls from ``docker.io`` go to them first.
    """

    index_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    insecure_cidrs: tuple[str, ...] = ()
    mirrors: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def from_info(cls, registry_config: Mapping[str, Any]) -> EngineRegistryConfig:
        """Build it from ``APIClient.info()["RegistryConfig"]``.

        Args:
            registry_config: ``{"IndexConfigs": {...}, "InsecureRegistryCIDRs":
                [...], "Mirrors": [...]}``; missing or null keys count as empty.

        Returns:
            The configuration.

        Raises:
            ValueError: ``registry_config`` or ``IndexConfigs`` is not a mapping.
        """
        if not isinstance(registry_config, Mapping):
            raise ValueError(f"RegistryConfig is not a mapping: {registry_config!r}")
        index_configs = registry_config.get("IndexConfigs") or {}
        if not isinstance(index_configs, Mapping):
            raise ValueError(f"RegistryConfig.IndexConfigs is not a mapping: {index_configs!r}")
        indexes = {
            str(name): entry if isinstance(entry, Mapping) else {}
            for name, entry in index_configs.items()
        }
        mirror_urls = [
            *(registry_config.get("Mirrors") or ()),
            *(indexes.get(DEFAULT_INDEX, {}).get("Mirrors") or ()),
        ]
        mirrors: list[tuple[str, bool]] = []
        for url in mirror_urls:
            mirror = mirror_host(str(url))
            if mirror is not None and mirror not in mirrors:
                mirrors.append(mirror)
        return cls(
            indexes,
            tuple(str(c) for c in registry_config.get("InsecureRegistryCIDRs") or ()),
            tuple(mirrors),
        )

    def unverified_hosts(self, registry_host: str, pull: bool) -> tuple[str, ...]:
        """The hosts the engine talks to for ``registry_host`` without TLS verification.

        Args:
            registry_host: ``host[:port]`` of a reference.
            pull: True for a pull or a manifest inspection, which for
                ``docker.io`` go to the engine's mirrors first; False for a push.

        Returns:
            ``registry_host`` itself when the engine skips verification for
            it, then each ``docker.io`` mirror reached over plain HTTP or
            without verification (pulls only); empty when every host involved
            is verified.
        """
        hosts = []
        if engine_skips_tls(registry_host, self.index_configs, self.insecure_cidrs):
            hosts.append(registry_host)
        if pull and registry_host in (DEFAULT_INDEX, LEGACY_DEFAULT_INDEX):
            for host, plain_http in self.mirrors:
                if plain_http or engine_skips_tls(host, self.index_configs, self.insecure_cidrs):
                    hosts.append(host)
        return tuple(hosts)
