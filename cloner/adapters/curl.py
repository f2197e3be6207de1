"""HTTP/1.1 requests to the API server through libcurl; the only module importing ``pycurl``.

Used by ``cloner.adapters.kube`` for the requests it sends past the generated
client (``KubeClient._send_json``: workload patches, Events, reads by
name). A cold cycle of 10,000 workloads is 10,000 patches and 10,000 Event
creates, and on a 2-core machine the controller's CPU per request is CPU the
API server does not get: urllib3 and ``http.client`` cost 0.81-0.90 ms of
controller CPU per patch, libcurl 0.25 ms, and 8 threads patched 533-553
Deployments/s against 411-451/s through urllib3 on the same API server
(``bench/kube_writes.py``). ``pycurl`` releases the GIL while a request is
in flight.

Each thread has its own easy handle, so its connection is kept alive between
requests as urllib3's pool keeps it. The handle is set up like the client's
urllib3 pool (``kubernetes.client.rest.RESTClientObject``): the CA file
(Mozilla's roots from ``certifi`` when the configuration names none), peer
and host name verification unless ``verify_ssl`` is off, the client
certificate and key files, and its proxy (``model.proxy``'s decision for
the API server, never libcurl's own reading of the environment); HTTP/1.1,
no redirects. ``cloner.adapters.kube.curl_settings`` decides when a
configuration needs the urllib3 path instead (proxy headers, a TLS server
name, ...). Request headers, the ``Authorization`` header included,
are passed per request and never logged; libcurl's error text names the
host and the failure, never a header.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import pycurl


class CurlError(OSError):
    """A transport failure: no connection, TLS refused, timed out, connection reset.

    ``code`` is libcurl's ``CURLcode`` (for example 7 "couldn't connect", 28
    "timeout", 60 "SSL certificate problem").
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (curl error {code})")
        self.code = code


class Answer(NamedTuple):
    """An HTTP answer.

    ``status``: the status code; ``reason``: its phrase ("" unless the status
    is outside 2xx); ``headers``: (name, value) pairs as sent (only when the
    status is outside 2xx, where ``Retry-After`` matters); ``data``: the body.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    data: bytes


@dataclass(frozen=True)
class CurlSettings:
    """How a handle reaches the API server.

    Args:
        ca_file: PEM file of the CAs that sign the API server's certificate.
        verify: verify the peer's certificate and host name.
        cert_file, key_file: the client certificate and key (PEM files), or None.
        connect_timeout: seconds to connect (TCP and TLS).
        timeout: seconds for a whole request, connecting included.
        proxy: the proxy to reach the API server through (``http://host:port``,
            credentials allowed), or "" for a direct connection. Decided by
            ``model.proxy`` for the API server's address; libcurl's own
            reading of ``http_proxy`` and ``NO_PROXY`` is never used.
    """

    ca_file: str
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    connect_timeout: float = 10.0
    timeout: float = 70.0
    proxy: str = ""


def parse_header_lines(lines: list[bytes]) -> tuple[str, list[tuple[str, str]]]:
    """The reason phrase and the header fields of the last answer in ``lines``.

    ``lines`` are the raw header lines libcurl passed on (status line, fields,
    blank line), possibly of more than one answer (an interim ``100
    Continue`` first); only the last answer's are returned (RFC 9112 section
    4 status line, section 5 field lines).

    Returns:
        (reason, [(name, value), ...]); ("", []) when there is no status line.
    """
    reason, fields = "", []
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            reason, fields = (parts[2] if len(parts) == 3 else ""), []
        elif ":" in line:
            name, value = line.split(":", 1)
            fields.append((name.strip(), value.strip()))
    return reason, fields


class CurlTransport:
    """Sends one request at a time per thread, each thread on its own kept-alive connection.

    Args:
        settings: TLS files, verification and timeouts.
    """

    def __init__(self, settings: CurlSettings) -> None:
        self.settings = settings
        self._local = threading.local()

    def _handle(self) -> pycurl.Curl:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = self._new_handle()
        return handle

    def _new_handle(self) -> pycurl.Curl:
        settings = self.settings
        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)  # timeouts without SIGALRM: threads
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        # Exactly the proxy decided for the API server ("" is none): libcurl
        # reads no proxy variable of the environment once PROXY is set.
        handle.setopt(pycurl.PROXY, settings.proxy)
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.CAINFO, settings.ca_file)
        handle.setopt(pycurl.SSL_VERIFYPEER, 1 if settings.verify else 0)
        handle.setopt(pycurl.SSL_VERIFYHOST, 2 if settings.verify else 0)
        if settings.cert_file:
            handle.setopt(pycurl.SSLCERT, settings.cert_file)
        if settings.key_file:
            handle.setopt(pycurl.SSLKEY, settings.key_file)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, int(settings.connect_timeout * 1000))
        handle.setopt(pycurl.TIMEOUT_MS, int(settings.timeout * 1000))
        return handle

    def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Answer:
        """Send one request and read its whole answer.

        Args:
            method: ``GET``, ``PATCH``, ``POST``, ``PUT``, ...
            url: absolute URL, already quoted, with its query if any.
            body: the request body, or None for none.
            headers: request header fields; ``Expect`` is sent empty, so a
                large body is not held back for a ``100 Continue``.

        Returns:
            The ``Answer``, whatever its status.

        Raises:
            CurlError: no answer (connection, TLS, timeout).
        """
        handle = self._handle()
        out = io.BytesIO()
        lines: list[bytes] = []
        if body is None:
            handle.setopt(pycurl.HTTPGET, 1)  # also drops the previous request's body
        else:
            handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.CUSTOMREQUEST, method)
        handle.setopt(pycurl.URL, url)
        handle.setopt(
            pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in headers.items()] + ["Expect:"]
        )
        handle.setopt(pycurl.WRITEDATA, out)
        handle.setopt(pycurl.HEADERFUNCTION, lines.append)
        try:
            handle.perform()
        except pycurl.error as exc:
            code = exc.args[0] if exc.args else 0
            message = exc.args[1] if len(exc.args) > 1 else ""
            raise CurlError(int(code), str(message) or "request failed") from None
        status = int(handle.getinfo(pycurl.RESPONSE_CODE))
        if 200 <= status <= 299:
            return Answer(status, "", [], out.getvalue())
        reason, fields = parse_header_lines(lines)
        return Answer(status, reason, fields, out.getvalue())
