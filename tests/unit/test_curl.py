"""``CurlTransport`` (libcurl) and the choice between it and the client's urllib3 pool.

The requests go to a plain HTTP server on loopback that records what it
got, so what libcurl really puts on the wire is checked; the API server
itself is in tests/e2e/test_kube_client.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import certifi
import pytest
from kubernetes import client

from cloner.adapters.curl import CurlError, CurlSettings, CurlTransport, parse_header_lines
from cloner.adapters.kube import REQUEST_TIMEOUT, KubeClient, curl_settings
from cloner.errors import KubeError
from cloner.model.workloads import Workload


class Recorder(BaseHTTPRequestHandler):
    """Records method, path, headers and body; answers from ``answers`` in turn."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the API server
    seen: list[dict[str, Any]]
    answers: list[tuple[int, dict[str, str], bytes]]

    def log_message(self, *args: object) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": self.rfile.read(length) if length else b"",
                "peer_port": self.client_address[1],
            }
        )
        status, headers, body = type(self).answers.pop(0)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_POST = do_PUT = _any  # noqa: N815 (http.server names)


@pytest.fixture
def server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"seen": [], "answers": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def transport() -> CurlTransport:
    return CurlTransport(CurlSettings(ca_file=certifi.where(), connect_timeout=2, timeout=5))


def test_requests_on_one_thread_share_a_connection_and_carry_nothing_over(
    server: tuple[str, type[Recorder]],
) -> None:
    url, handler = server
    handler.answers = [(200, {}, b"patched"), (200, {}, b"read"), (201, {}, b"created")]
    curl = transport()
    first = curl.request("PATCH", f"{url}/a?x=1", b'[{"op":"test"}]', {"Content-Type": "j"})
    second = curl.request("GET", f"{url}/b", None, {"Accept": "application/json"})
    third = curl.request("POST", f"{url}/c", b"{}", {"Authorization": "Bearer t"})
    assert [a.data for a in (first, second, third)] == [b"patched", b"read", b"created"]
    assert [a.status for a in (first, second, third)] == [200, 200, 201]
    patch, get, post = handler.seen
    assert (patch["method"], patch["path"], patch["body"]) == (
        "PATCH",
        "/a?x=1",
        b'[{"op":"test"}]',
    )
    assert patch["headers"]["Content-Type"] == "j"
    assert (get["method"], get["body"]) == ("GET", b"")
    assert "Content-Length" not in get["headers"] and "Content-Type" not in get["headers"]
    assert (post["method"], post["body"]) == ("POST", b"{}")
    assert post["headers"]["Authorization"] == "Bearer t"
    assert all("Expect" not in seen["headers"] for seen in handler.seen)
    assert len({seen["peer_port"] for seen in handler.seen}) == 1  # kept alive


def test_threads_have_their_own_connections(server: tuple[str, type[Recorder]]) -> None:
    url, handler = server
    handler.answers = [(200, {}, b"")] * 8
    curl = transport()
    threads = [
        threading.Thread(target=lambda: [curl.request("GET", url, None, {}) for _ in range(2)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ports = [seen["peer_port"] for seen in handler.seen]
    assert len(ports) == 8 and len(set(ports)) == 4


def test_an_error_answer_keeps_its_reason_headers_and_body(
    server: tuple[str, type[Recorder]],
) -> None:
    url, handler = server
    handler.answers = [(429, {"Retry-After": "3"}, b'{"message":"slow down"}')]
    answer = transport().request("PATCH", url, b"[]", {})
    assert answer.status == 429
    assert answer.reason == "Too Many Requests"
    assert ("Retry-After", "3") in answer.headers
    assert answer.data == b'{"message":"slow down"}'


def test_a_429_through_curl_pauses_and_is_retried(server: tuple[str, type[Recorder]]) -> None:
    url, handler = server
    handler.answers = [(429, {"Retry-After": "0"}, b"{}"), (201, {}, b'{"metadata":{"name":"e"}}')]
    configuration = client.Configuration()
    configuration.host = url
    kube = KubeClient(client.ApiClient(configuration))
    assert isinstance(kube.transport, CurlTransport)
    assert kube.create_event("team-a", {"kind": "Event"}) == "e"
    assert [seen["path"] for seen in handler.seen] == ["/api/v1/namespaces/team-a/events"] * 2


def test_no_answer_is_a_curl_error_and_a_status_0_kube_error() -> None:
    with pytest.raises(CurlError) as caught:
        transport().request("GET", "http://127.0.0.1:1/", None, {})
    assert caught.value.code == 7  # CURLE_COULDNT_CONNECT
    assert isinstance(caught.value, OSError)
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:1"
    kube = KubeClient(client.ApiClient(configuration))
    with pytest.raises(KubeError) as failed:
        kube.patch_workload(Workload("Deployment", "a", "b", "u", "1", ()), [])
    assert failed.value.status == 0 and "unreachable" in str(failed.value)


def test_header_lines_of_the_last_answer_only() -> None:
    lines = [
        b"HTTP/1.1 100 Continue\r\n",
        b"\r\n",
        b"HTTP/1.1 409 Conflict\r\n",
        b"Content-Type: application/json\r\n",
        b"Retry-After:  2 \r\n",
        b"\r\n",
    ]
    assert parse_header_lines(lines) == (
        "Conflict",
        [("Content-Type", "application/json"), ("Retry-After", "2")],
    )
    assert parse_header_lines([b"HTTP/2 500\r\n"]) == ("", [])
    assert parse_header_lines([]) == ("", [])


def configuration(**values: Any) -> client.Configuration:
    configuration = client.Configuration()
    configuration.host = "https://10.0.0.1:443"
    for name, value in values.items():
        setattr(configuration, name, value)
    return configuration


def test_curl_gets_the_clients_tls_files_and_verification() -> None:
    settings = curl_settings(
        configuration(ssl_ca_cert="/ca.crt", cert_file="/c.crt", key_file="/c.key")
    )
    assert settings == CurlSettings(
        ca_file="/ca.crt",
        verify=True,
        cert_file="/c.crt",
        key_file="/c.key",
        connect_timeout=REQUEST_TIMEOUT[0],
        timeout=REQUEST_TIMEOUT[0] + REQUEST_TIMEOUT[1],
    )
    # No CA named: Mozilla's roots, as the client's urllib3 pool uses.
    default = curl_settings(configuration())
    assert default is not None and default.ca_file == certifi.where()
    unverified = curl_settings(configuration(verify_ssl=False))
    assert unverified is not None and not unverified.verify


def test_libcurl_is_given_the_proxy_decided_for_the_api_server() -> None:
    proxied = curl_settings(configuration(proxy="http://proxy:3128"))
    assert proxied is not None and proxied.proxy == "http://proxy:3128"
    direct = curl_settings(configuration())
    assert direct is not None and direct.proxy == ""


@pytest.mark.parametrize(
    "values",
    [
        {"proxy_headers": {"Proxy-Authorization": "Basic eDp5"}},
        {"tls_server_name": "kubernetes.default"},
        {"assert_hostname": "kubernetes"},
        {"retries": 3},
        {"host": "unix:///var/run/api.sock"},
    ],
)
def test_settings_libcurl_is_not_given_keep_the_clients_pool(values: dict[str, Any]) -> None:
    assert curl_settings(configuration(**values)) is None
    kube = KubeClient(client.ApiClient(configuration(**values)))
    assert not isinstance(kube.transport, CurlTransport)
