"""``requests`` sessions take their proxy from ``model.proxy``, never from the environment."""

from __future__ import annotations

import pytest
import requests

from cloner.adapters.distribution import _ProxiedSession
from cloner.model.proxy import ProxyConfig

PROXY = "http://proxy.corp:3128"


def test_the_session_uses_the_decision_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests alone would proxy badexample.com (a suffix of "example.com") and localhost.
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:1")
    monkeypatch.setenv("NO_PROXY", "example.com")
    session = _ProxiedSession(
        ProxyConfig.from_environ({"HTTPS_PROXY": PROXY, "NO_PROXY": "example.com"})
    )
    settings = session.merge_environment_settings(
        "https://badexample.com/v2/", {}, None, True, None
    )
    assert settings["proxies"] == {"https": PROXY}
    settings = session.merge_environment_settings(
        "https://registry.example.com/v2/", {}, None, True, None
    )
    assert settings["proxies"] == {}
    settings = session.merge_environment_settings(
        "https://localhost:5000/v2/", {}, None, True, None
    )
    assert settings["proxies"] == {}


def test_a_redirect_is_decided_again_and_drops_proxy_credentials() -> None:
    session = _ProxiedSession(
        ProxyConfig.from_environ({"HTTPS_PROXY": PROXY, "NO_PROXY": "storage.corp"})
    )
    redirected = requests.Request("GET", "https://storage.corp/blob").prepare()
    redirected.headers["Proxy-Authorization"] = "Basic eDp5"
    assert session.rebuild_proxies(redirected, {"https": PROXY}) == {}
    assert "Proxy-Authorization" not in redirected.headers
    elsewhere = requests.Request("GET", "https://cdn.example/blob").prepare()
    assert session.rebuild_proxies(elsewhere, {}) == {"https": PROXY}
