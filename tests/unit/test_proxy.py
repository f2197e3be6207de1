"""How the proxy environment is read and applied (``cloner.model.proxy``): Go's httpproxy rule."""

from __future__ import annotations

import pytest

from cloner.model.proxy import ProxyConfig, parse_no_proxy

PROXY = "http://proxy.corp:3128"


def config(no_proxy: str) -> ProxyConfig:
    return ProxyConfig.from_environ(
        {"HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY, "NO_PROXY": no_proxy}
    )


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        # CIDR blocks cover IP-literal hosts only; names are not resolved.
        ("10.0.0.0/8", "https://10.96.0.1:443/api", False),
        ("10.0.0.0/8", "https://11.0.0.1/api", True),
        ("10.0.0.0/8", "https://kubernetes.default.svc/api", True),
        ("fd00::/8", "https://[fd00::1]:6443/api", False),
        # A domain matches itself and its subdomains, never a longer name.
        ("svc", "https://kubernetes.default.svc/api", False),
        ("example.com", "https://example.com/v2/", False),
        ("example.com", "https://registry.example.com/v2/", False),
        ("example.com", "https://badexample.com/v2/", True),
        # A leading dot or "*." means subdomains only.
        (".svc", "https://kubernetes.default.svc/api", False),
        (".example.com", "https://example.com/v2/", True),
        ("*.example.com", "https://a.example.com/v2/", False),
        ("*.example.com", "https://example.com/v2/", True),
        # A port limits the entry to that port; the scheme's default counts.
        ("registry.corp:5000", "https://registry.corp:5000/v2/", False),
        ("registry.corp:5000", "https://registry.corp/v2/", True),
        ("registry.corp:443", "https://registry.corp/v2/", False),
        ("10.1.2.3:6443", "https://10.1.2.3:6443/api", False),
        ("10.1.2.3:6443", "https://10.1.2.3:443/api", True),
        ("[fd00::1]:6443", "https://[fd00::1]:6443/api", False),
        # Case, spaces and empty entries.
        (" Registry.CORP , ,", "https://registry.corp/v2/", False),
        ("a.corp b.corp", "https://b.corp/v2/", False),
        # Everything, and nothing.
        ("*", "https://docker.io/v2/", False),
        ("", "https://docker.io/v2/", True),
    ],
)
def test_no_proxy_entries(no_proxy: str, url: str, proxied: bool) -> None:
    assert (config(no_proxy).proxy_for(url) == PROXY) is proxied


def test_loopback_and_localhost_are_never_proxied() -> None:
    settings = config("")
    for url in (
        "http://127.0.0.1:5000/v2/",
        "https://127.0.0.2/v2/",
        "https://[::1]/",
        "http://localhost:2375/",
    ):
        assert settings.proxy_for(url) is None, url
    assert settings.proxy_for("https://registry.public.test:5000/v2/") == PROXY


def test_the_scheme_picks_the_proxy_and_uppercase_wins() -> None:
    settings = ProxyConfig.from_environ(
        {
            "HTTPS_PROXY": "https-proxy:3128",
            "https_proxy": "http://ignored:1",
            "http_proxy": "http://plain:8080",
        }
    )
    assert settings.https == "http://https-proxy:3128"  # no scheme: http://
    assert settings.proxy_for("https://quay.io/v2/") == "http://https-proxy:3128"
    assert settings.proxy_for("http://quay.io/v2/") == "http://plain:8080"
    assert settings.proxy_for("unix:///var/run/docker.sock") is None
    https_only = ProxyConfig.from_environ({"HTTPS_PROXY": PROXY})
    assert https_only.proxy_for("http://quay.io/v2/") is None  # no fallback to HTTPS_PROXY


def test_no_proxy_without_a_proxy_changes_nothing() -> None:
    settings = ProxyConfig.from_environ({"NO_PROXY": "*"})
    assert not settings.enabled
    assert settings.proxy_for("https://quay.io/v2/") is None
    assert settings.child_environ() == {}


def test_child_environ_writes_both_spellings_with_one_value() -> None:
    settings = ProxyConfig.from_environ(
        {"HTTPS_PROXY": PROXY, "no_proxy": "10.0.0.0/8, .svc,registry.corp:5000"}
    )
    env = settings.child_environ()
    assert env["HTTPS_PROXY"] == env["https_proxy"] == PROXY
    assert env["HTTP_PROXY"] == env["http_proxy"] == ""
    assert env["NO_PROXY"] == env["no_proxy"] == "10.0.0.0/8,.svc,registry.corp:5000"


def test_requests_proxies() -> None:
    settings = config("registry.corp")
    assert settings.requests_proxies("https://quay.io/v2/") == {"https": PROXY}
    assert settings.requests_proxies("http://quay.io/v2/") == {"http": PROXY}
    assert settings.requests_proxies("https://registry.corp/v2/") == {}


def test_parse_no_proxy_keeps_order_and_text() -> None:
    entries = parse_no_proxy("10.0.0.0/8,.svc,*,host:99")
    assert [e.text for e in entries] == ["10.0.0.0/8", ".svc", "*", "host:99"]
    assert entries[0].network is not None and entries[1].exact is False
    assert entries[2].everything and entries[3].port == 99


def test_describe_never_shows_proxy_credentials() -> None:
    settings = ProxyConfig.from_environ(
        {"HTTPS_PROXY": "http://alice:s3cret@proxy.corp:3128", "NO_PROXY": ".svc,10.0.0.0/8"}
    )
    line = settings.describe()
    assert "s3cret" not in line and "alice" not in line
    assert line == "HTTPS_PROXY=http://***@proxy.corp:3128 HTTP_PROXY=- NO_PROXY=.svc,10.0.0.0/8"
    assert settings.proxy_for("https://quay.io/") == "http://alice:s3cret@proxy.corp:3128"
