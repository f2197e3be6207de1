"""``requests`` sessions whose proxy for each URL is ``model.proxy``'s decision.

``requests`` reads ``HTTPS_PROXY`` and ``NO_PROXY`` itself, with a looser
rule than the one the rest of the controller applies (a plain suffix test;
``localhost`` proxied). Both sessions built on ``requests`` (the registry
client, ``distribution.DistributionClient``, and the Docker engine client,
``engine.DockerRegistry``) mix this in, so their proxy is the one
``ProxyConfig.proxy_for`` names, redirects included. Everything else the
environment gives a session (a CA bundle named by ``REQUESTS_CA_BUNDLE``,
``.netrc``) is kept. This module imports no client library.
"""

from __future__ import annotations

from typing import Any

from cloner.model.proxy import ProxyConfig


class ProxyDecided:
    """Mix into a ``requests.Session`` subclass (before it); set ``proxy_config`` first.

    Attributes:
        proxy_config: the settings that decide each URL's proxy.
    """

    proxy_config: ProxyConfig = ProxyConfig()

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        """``requests``' settings for ``url``, with the proxies decided by ``proxy_config``."""
        settings: dict[str, Any] = super().merge_environment_settings(  # type: ignore[misc]
            url, proxies, stream, verify, cert
        )
        settings["proxies"] = self.proxy_config.requests_proxies(_text(url))
        return settings

    def rebuild_proxies(self, prepared_request: Any, proxies: Any) -> dict[str, str]:
        """The proxies of a redirect's new URL (it may be another host).

        A proxy's credentials are sent by the adapter's pool to that proxy
        only (urllib3 ``ProxyManager``), never as a header of the request.
        """
        prepared_request.headers.pop("Proxy-Authorization", None)
        return self.proxy_config.requests_proxies(_text(prepared_request.url))


def _text(url: str | bytes | None) -> str:
    if isinstance(url, bytes):
        return url.decode("utf-8", "replace")
    return url or ""
