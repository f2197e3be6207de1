"""Which requests go through an HTTP proxy: one rule for every path to the network. Pure.

Corporate clusters reach the internet through a forward proxy named by the
environment variables ``HTTPS_PROXY`` and ``HTTP_PROXY``, with ``NO_PROXY``
listing what is reached directly (the API server, ``.svc``, the internal
registry). The controller talks to the network through four libraries that
read those variables each in its own way:

- the ``kubernetes`` client (urllib3), which before release 35 dropped
  ``NO_PROXY`` (kubernetes-client/python #2460);
- ``requests`` for registry questions, whose ``NO_PROXY`` match is a plain
  suffix test (``example.com`` also matches ``badexample.com``);
- libcurl for API writes, which reads only the lowercase ``http_proxy`` and
  ignores a port in a ``NO_PROXY`` entry;
- skopeo (Go, ``net/http.ProxyFromEnvironment``).

So the decision is made here, once, and each adapter is told the proxy to
use for each URL (or none): the kubernetes client and libcurl get the proxy
of the API server's address, ``requests`` the proxy of each URL it sends to,
and skopeo an environment written from this rule. The rule is Go's
(``golang.org/x/net/http/httpproxy``, ``Config.ProxyFunc``), the one skopeo
and the Docker engine apply themselves, so every path agrees:

- ``HTTPS_PROXY`` for ``https`` URLs, ``HTTP_PROXY`` for ``http`` URLs; the
  uppercase name wins over the lowercase one when both are set; a proxy
  without a scheme is ``http://``;
- ``localhost`` and loopback addresses are never proxied;
- ``NO_PROXY`` is a comma- or space-separated list of: ``*`` (nothing is
  proxied); an IP address; a CIDR block (``10.0.0.0/8``) that an IP-literal
  host lies in (names are not resolved); a domain, ``example.com``, that
  matches itself and every subdomain; ``.example.com`` or ``*.example.com``,
  subdomains only; and any of these with ``:port``, which then matches only
  that port (IPv6 with a port as ``[::1]:443``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: The two spellings of each variable, uppercase first (it wins when both are
#: set); ``child_environ`` writes both.
_NAMES = {
    "https": ("HTTPS_PROXY", "https_proxy"),
    "http": ("HTTP_PROXY", "http_proxy"),
    "no": ("NO_PROXY", "no_proxy"),
}

_DEFAULT_PORTS = {"http": 80, "https": 443}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class NoProxyEntry:
    """One parsed ``NO_PROXY`` entry.

    Attributes:
        text: the entry as written (for messages and child environments).
        network: the addresses it covers, for an IP or CIDR entry; else None.
        domain: the lowercase domain, without a leading ``.`` or ``*.``, for
            a name entry; else "".
        exact: for a name entry, whether the domain itself matches (``example.com``)
            or only its subdomains (``.example.com``).
        port: the port it is limited to, or None for any port.
        everything: the ``*`` entry.
    """

    text: str
    network: IPNetwork | None = None
    domain: str = ""
    exact: bool = True
    port: int | None = None
    everything: bool = False

    def matches(self, host: str, ip: IPAddress | None, port: int) -> bool:
        """True when a request to ``host`` (lowercase; ``ip`` if a literal) at ``port`` bypasses."""
        if self.everything:
            return True
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip in self.network
        if host == self.domain:
            return self.exact
        return host.endswith("." + self.domain)


def parse_no_proxy(value: str) -> tuple[NoProxyEntry, ...]:
    """Parse a ``NO_PROXY`` value; entries that cannot mean anything are dropped.

    Args:
        value: comma- or space-separated entries (see the module docstring).

    Returns:
        The entries in order. An empty value gives ``()``.
    """
    entries = []
    for raw in value.replace(" ", ",").split(","):
        text = raw.strip()
        if not text:
            continue
        entry = _parse_entry(text)
        if entry is not None:
            entries.append(entry)
    return tuple(entries)


def _parse_entry(text: str) -> NoProxyEntry | None:
    if text == "*":
        return NoProxyEntry(text, everything=True)
    lowered = text.lower()
    try:
        return NoProxyEntry(text, network=ipaddress.ip_network(lowered, strict=False))
    except ValueError:
        pass
    host, port = _split_port(lowered)
    try:
        return NoProxyEntry(text, network=ipaddress.ip_network(host.strip("[]")), port=port)
    except ValueError:
        pass
    exact = True
    if host.startswith("*."):
        host, exact = host[2:], False
    elif host.startswith("."):
        host, exact = host[1:], False
    if not host:
        return None
    return NoProxyEntry(text, domain=host, exact=exact, port=port)


def _split_port(text: str) -> tuple[str, int | None]:
    """``host:port`` -> (host, port); a bare IPv6 address keeps its colons."""
    head, sep, tail = text.rpartition(":")
    if not sep or not tail.isdigit() or (":" in head and not head.endswith("]")):
        return text, None
    return head, int(tail)


def _proxy_url(value: str) -> str:
    """A proxy as Go reads it: a value without a scheme is ``http://``."""
    value = value.strip()
    if value and "://" not in value:
        return f"http://{value}"
    return value


def _without_userinfo(url: str) -> str:
    """A proxy URL with ``user:password@`` replaced by ``***@`` (never logged)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The proxy settings in force, and the decision for each URL.

    Attributes:
        https: the proxy for ``https`` URLs ("" for none).
        http: the proxy for ``http`` URLs ("" for none).
        no_proxy: the parsed ``NO_PROXY`` entries.
    """

    https: str = ""
    http: str = ""
    no_proxy: tuple[NoProxyEntry, ...] = field(default=())

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxyConfig:
        """The settings of an environment (``os.environ``); uppercase names win."""

        def read(kind: str) -> str:
            upper, lower = _NAMES[kind]
            return environ.get(upper) or environ.get(lower) or ""

        return cls(
            https=_proxy_url(read("https")),
            http=_proxy_url(read("http")),
            no_proxy=parse_no_proxy(read("no")),
        )

    @property
    def enabled(self) -> bool:
        """True when any proxy is set."""
        return bool(self.https or self.http)

    def proxy_for(self, url: str) -> str | None:
        """The proxy a request to ``url`` goes through, or None for a direct connection.

        Args:
            url: an ``http`` or ``https`` URL (others are never proxied).

        Returns:
            The proxy URL, for example ``http://proxy.corp:3128``.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = {"https": self.https, "http": self.http}.get(scheme, "")
        if not proxy or not parts.hostname:
            return None
        host = parts.hostname.lower()
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            return None
        try:
            ip: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if host == "localhost" or (ip is not None and ip.is_loopback):
            return None
        if any(entry.matches(host, ip, port) for entry in self.no_proxy):
            return None
        return proxy

    def describe(self) -> str:
        """One line for the log: the proxies without their credentials, and ``NO_PROXY``."""
        return (
            f"HTTPS_PROXY={_without_userinfo(self.https) or '-'} "
            f"HTTP_PROXY={_without_userinfo(self.http) or '-'} "
            f"NO_PROXY={','.join(entry.text for entry in self.no_proxy) or '-'}"
        )

    def requests_proxies(self, url: str) -> dict[str, str]:
        """The ``proxies`` mapping of ``requests`` for one URL: empty for a direct connection."""
        proxy = self.proxy_for(url)
        if proxy is None:
            return {}
        return {urlsplit(url).scheme.lower(): proxy}

    def child_environ(self) -> dict[str, str]:
        """The proxy variables of a child process that applies Go's rule (skopeo).

        Both spellings of each name get the same value, so the child reads
        what this process decided. Empty when no proxy is set.
        """
        if not self.enabled:
            return {}
        values = {
            "https": self.https,
            "http": self.http,
            "no": ",".join(entry.text for entry in self.no_proxy),
        }
        return {name: values[kind] for kind, names in _NAMES.items() for name in names}
