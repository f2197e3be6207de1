"""The API server's proxy: ``model.proxy``'s decision, given to the client and to libcurl."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloner.adapters.kube import curl_settings, load_api_client
from cloner.model.proxy import ProxyConfig

PROXY = "http://proxy.corp:3128"


def kubeconfig(tmp_path: Path, server: str, proxy_url: str | None = None) -> Path:
    cluster: dict[str, str] = {"server": server, "insecure-skip-tls-verify": "true"}
    if proxy_url:
        cluster["proxy-url"] = proxy_url
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("server", "no_proxy", "expected"),
    [
        ("https://api.corp:6443", "", PROXY),
        ("https://api.corp:6443", ".corp", None),
        ("https://10.96.0.1:443", "10.0.0.0/8", None),
        ("https://api.corp:6443", "api.corp:443", PROXY),  # another port
        ("https://127.0.0.1:6443", "", None),  # loopback: never
    ],
)
def test_the_api_server_is_reached_as_no_proxy_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
    no_proxy: str,
    expected: str | None,
) -> None:
    # The client library must not read these itself: only the ProxyConfig given counts.
    monkeypatch.setenv("HTTPS_PROXY", "http://wrong:1")
    monkeypatch.setenv("NO_PROXY", "")
    proxy = ProxyConfig.from_environ({"HTTPS_PROXY": PROXY, "NO_PROXY": no_proxy})
    api = load_api_client(kubeconfig(tmp_path, server), proxy)
    assert (api.configuration.proxy or None) == expected
    assert not api.configuration.no_proxy
    settings = curl_settings(api.configuration)
    assert settings is not None and settings.proxy == (expected or "")


def test_a_kubeconfig_proxy_url_wins(tmp_path: Path) -> None:
    proxy = ProxyConfig.from_environ({"HTTPS_PROXY": PROXY, "NO_PROXY": "*"})
    api = load_api_client(kubeconfig(tmp_path, "https://api.corp", "http://own:8080"), proxy)
    assert api.configuration.proxy == "http://own:8080"


def test_without_proxy_settings_nothing_is_proxied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", PROXY)
    api = load_api_client(kubeconfig(tmp_path, "https://api.corp:6443"))
    assert not api.configuration.proxy
