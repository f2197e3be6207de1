"""The controller's HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``, ``/state/backoff``.

Built by ``controller.py`` on ``metricsPort``. It serves what it is given
(the metrics exposition, the readiness check, the backoff state) and knows
nothing of Prometheus objects or of the cycle.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloner.config import MetricsSettings


class _Handler(BaseHTTPRequestHandler):
    """``/metrics``, ``/healthz`` and ``/readyz`` on the metrics port."""

    metrics: Callable[[], tuple[bytes, str]] = staticmethod(lambda: (b"", "text/plain"))
    ready: Callable[[], tuple[bool, str]] = staticmethod(lambda: (True, "ok"))
    backoff: Callable[[], Mapping[str, object]] = staticmethod(lambda: {})

    def log_message(self, *args: object) -> None:  # no access log on stderr
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = type(self).metrics()
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/state/backoff":
            body = json.dumps(type(self).backoff(), sort_keys=True).encode()
            self._send(200, body, "application/json")
        elif path == "/readyz":
            ok, reason = type(self).ready()
            self._send(200 if ok else 503, f"{reason}\n".encode(), "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")


def serve(
    settings: MetricsSettings,
    metrics: Callable[[], tuple[bytes, str]],
    ready: Callable[[], tuple[bool, str]] | None = None,
    backoff: Callable[[], Mapping[str, object]] | None = None,
) -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/healthz``, ``/readyz`` and ``/state/backoff`` in a thread.

    ``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200
    or 503 with a one-line reason from ``ready()`` (config loaded, API
    server reachable, leader or standby). ``/state/backoff`` is the JSON of
    ``backoff()``: the images backing off, for ``plan``. ``/metrics`` is
    ``metrics()``: the body and its content type (``cloner.metrics.exposition``).

    Args:
        settings: ``port`` and ``address`` to bind (``metricsPort``,
            ``metricsAddress``); the caller skips the call for port 0.
        metrics: returns the exposition body and its content type.
        ready: returns (ready, reason); default always ready.
        backoff: returns the backoff state as a JSON-able mapping.

    Returns:
        The server (``shutdown()`` stops it).

    Raises:
        OSError: the port cannot be bound.
    """
    handler = type("Handler", (_Handler,), {"metrics": staticmethod(metrics)})
    if ready is not None:
        handler.ready = staticmethod(ready)
    if backoff is not None:
        handler.backoff = staticmethod(backoff)
    server = ThreadingHTTPServer((settings.address, settings.port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
