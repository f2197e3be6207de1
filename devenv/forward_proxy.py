"""A loopback forward proxy for the end-to-end tests: CONNECT tunnels and plain requests.

What a corporate proxy is to the controller: clients given ``HTTPS_PROXY``
send ``CONNECT host:port`` and then speak TLS (or anything) through the
tunnel; clients given ``HTTP_PROXY`` send each plain request in absolute
form (``GET http://host:port/path HTTP/1.1``). Both are logged
(``ProxyLog``) before they are forwarded.

The proxy resolves names itself from ``hosts`` (a name the test machine's
resolver does not know, such as ``public.registry.test``), so a client that
tries to reach such a name without the proxy cannot. Its connections to the
upstream leave from ``source`` (another loopback address), so a registry's
access log tells requests that came through the proxy from those that did
not. A plain request is forwarded with ``Connection: close`` and its
connection closed after the answer, so every plain request is logged.
Listens on 127.0.0.1 only; never reaches anything outside 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

_READ = 64 * 1024


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy saw: ``CONNECT`` (a tunnel) or a plain method, and its target."""

    method: str
    target: str  # host:port
    path: str  # "" for CONNECT
    client: str  # the client's address


class ForwardProxy:
    """A threaded forward proxy on ``127.0.0.1:port``; ``start``/``stop`` exactly its threads.

    Args:
        hosts: name -> loopback address the proxy resolves it to.
        source: the loopback address its upstream connections leave from.
    """

    def __init__(self, hosts: Mapping[str, str], source: str = "127.0.0.3") -> None:
        self.hosts = dict(hosts)
        self.source = source
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the value of ``HTTPS_PROXY`` and ``HTTP_PROXY``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (on the same port again after a ``stop``) and serve in a thread."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.port = server.getsockname()[1]
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop listening: new connections are refused (tunnels open now end with their peers)."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()

    def seen(self) -> list[ProxiedRequest]:
        """A copy of the requests so far."""
        with self._lock:
            return list(self.requests)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, address = server.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(conn, address[0]), daemon=True).start()

    def _serve(self, conn: socket.socket, client: str) -> None:
        with conn:
            head = _read_head(conn)
            if head is None:
                return
            request_line, header_lines, rest = head
            parts = request_line.split(" ")
            if len(parts) != 3:
                return
            method, target, version = parts
            if method == "CONNECT":
                self._record(ProxiedRequest(method, target, "", client))
                self._tunnel(conn, target)
                return
            url = urlsplit(target)
            hostport = url.netloc
            self._record(ProxiedRequest(method, hostport, url.path, client))
            self._forward(conn, method, url, version, header_lines, rest)

    def _record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _connect(self, hostport: str, default_port: int) -> socket.socket:
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
        host = host.strip("[]") or hostport
        address = self.hosts.get(host, host)
        if not ipaddress.ip_address(address).is_loopback:
            raise OSError(f"refusing to leave loopback: {hostport}")
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.bind((self.source, 0))
        upstream.connect((address, int(port or default_port)))
        return upstream

    def _tunnel(self, conn: socket.socket, target: str) -> None:
        try:
            upstream = self._connect(target, 443)
        except (OSError, ValueError):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _relay(conn, upstream)

    def _forward(
        self,
        conn: socket.socket,
        method: str,
        parts: SplitResult,
        version: str,
        header_lines: list[str],
        rest: bytes,
    ) -> None:
        try:
            upstream = self._connect(parts.netloc, 80)
        except (OSError, ValueError):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        kept = [
            line
            for line in header_lines
            if line.split(":", 1)[0].strip().lower()
            not in ("connection", "proxy-connection", "keep-alive", "proxy-authorization")
        ]
        head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        with upstream:
            upstream.sendall(head.encode("latin-1") + rest)
            length = _content_length(header_lines) - len(rest)
            while length > 0:
                chunk = conn.recv(min(_READ, length))
                if not chunk:
                    break
                upstream.sendall(chunk)
                length -= len(chunk)
            while chunk := upstream.recv(_READ):
                conn.sendall(chunk)


def _read_head(conn: socket.socket) -> tuple[str, list[str], bytes] | None:
    """The request line, the header lines and what was read past them; None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(_READ)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], lines[1:], rest


def _content_length(header_lines: list[str]) -> int:
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value.strip() or 0)
    return 0


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ, b)
    selector.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in selector.select(timeout=300):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = source.recv(_READ)
                except OSError:
                    return
                if not chunk:
                    return
                key.data.sendall(chunk)
    finally:
        selector.close()


@contextlib.contextmanager
def running(proxy: ForwardProxy) -> Iterator[ForwardProxy]:
    """Start ``proxy`` for a block and stop it after."""
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
