"""Prometheus metrics: every ``prometheus_client`` object lives here.

Called by ``loop`` (``record_cycle`` after each pass, ``record_cycle_error``
when a pass raised) and by ``controller.py`` (``serve``). Names follow the
Prometheus conventions with the ``image_cloner_`` prefix and base units
(seconds); ``prometheus_client`` appends ``_total`` to counters itself. The
metrics live in a registry of their own so tests can read them without the
process-wide default collectors.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from cloner import __version__
from cloner.errors import RegistryError
from cloner.model.workloads import KINDS
from cloner.ops.reconcile import Summary

REGISTRY = CollectorRegistry(auto_describe=True)

IMAGES_CLONED = Counter(
    "image_cloner_images_cloned",
    "Images copied into the owned registry (pull, tag, push, verified).",
    registry=REGISTRY,
)
CLONE_FAILURES = Counter(
    "image_cloner_clone_failures",
    "Images whose clone failed in a reconcile cycle, by reason (an unparseable "
    "reference counts once per container per cycle as invalid_reference).",
    ["reason"],
    registry=REGISTRY,
)
UNPATCHABLE_PUBLIC_IMAGES = Gauge(
    "image_cloner_unpatchable_public_images",
    "Containers of Jobs and bare Pods that use images outside the owned registry; "
    "their templates cannot be patched (counted every verifyInterval).",
    ["kind"],
    registry=REGISTRY,
)
OWNED_COPIES_REPLACED = Counter(
    "image_cloner_owned_copies_replaced",
    "Owned names found holding other content than their source and copied over "
    "before any workload was patched to them.",
    registry=REGISTRY,
)
SOURCES_MOVED = Counter(
    "image_cloner_sources_moved",
    "Tagged sources found naming other content than when last verified "
    "(refreshInterval); their owned tags were copied again.",
    registry=REGISTRY,
)
WORKLOADS_PATCHED = Counter(
    "image_cloner_workloads_patched",
    "Workloads patched to owned images, by kind.",
    ["kind"],
    registry=REGISTRY,
)
PATCH_FAILURES = Counter(
    "image_cloner_patch_failures",
    "Workload patches the API server refused (including concurrent edits).",
    registry=REGISTRY,
)
PULL_SECRETS_WRITTEN = Counter(
    "image_cloner_pull_secrets_written",
    "Managed pull Secrets written, by action (created, updated).",
    ["action"],
    registry=REGISTRY,
)
SERVICE_ACCOUNTS_PATCHED = Counter(
    "image_cloner_service_accounts_patched",
    "ServiceAccounts that got the pull Secret added to imagePullSecrets.",
    registry=REGISTRY,
)
NAMESPACE_FAILURES = Counter(
    "image_cloner_namespace_failures",
    "Namespaces whose workloads were not patched in a cycle because pull credentials "
    "could not be put in place, by reason (foreign_secret, serviceaccount_missing, "
    "api_error).",
    ["reason"],
    registry=REGISTRY,
)
IMAGES_WAITING = Gauge(
    "image_cloner_images_waiting",
    "Source images not tried in the last cycle: backing off after a failure, their "
    "registry paused after too many requests, or shutting down.",
    registry=REGISTRY,
)
GITOPS_HELD = Gauge(
    "image_cloner_gitops_workloads",
    "Workloads held back in the last cycle because Argo CD, Flux or another controller "
    "would undo the patch (gitops: report).",
    registry=REGISTRY,
)
FIGHTS = Gauge(
    "image_cloner_fighting_workloads",
    "Workloads no longer patched because their images keep being set back.",
    registry=REGISTRY,
)
IMAGES_HEALED = Counter(
    "image_cloner_images_healed",
    "Owned copies found missing by verification and cloned again.",
    registry=REGISTRY,
)
PATCH_CONFLICTS = Counter(
    "image_cloner_patch_conflicts",
    "Patches refused because the workload changed since it was read (each retried "
    "once with the workload read again).",
    registry=REGISTRY,
)
CLONE_DURATION = Histogram(
    "image_cloner_clone_duration_seconds",
    "Duration of one successful clone (pull, tag, push, verify) in seconds.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
PUSHED_BYTES = Counter(
    "image_cloner_pushed_bytes",
    "Bytes of image layers pushed to the owned registry (layers it already had excluded).",
    registry=REGISTRY,
)
IMAGES = Gauge(
    "image_cloner_images",
    "Distinct source images in scope in the last cycle, by state: owned (copy verified "
    "in the owned registry), pending (to be cloned, or failed this cycle), backing_off "
    "(waiting for the next try).",
    ["state"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "image_cloner_api_requests",
    "Kubernetes API requests by outcome (success, or the HTTP status class such as "
    "4xx/5xx, or unreachable).",
    ["outcome"],
    registry=REGISTRY,
)
REGISTRY_REQUESTS = Counter(
    "image_cloner_registry_requests",
    "Registry operations through the Docker engine by operation (inspect, pull, push) "
    "and outcome (success or the failure reason).",
    ["operation", "outcome"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "image_cloner_leader",
    "1 while this replica holds the leader Lease (or leader election is off), else 0.",
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "image_cloner_build_info",
    "Always 1; labels carry the version of image-cloner and of Python.",
    ["version", "python_version"],
    registry=REGISTRY,
)
VERSION = __version__
BUILD_INFO.labels(version=VERSION, python_version=platform.python_version()).set(1)
CYCLES = Counter(
    "image_cloner_reconcile_cycles",
    "Reconcile cycles run, by result (ok, failed: something failed, error: the cycle raised).",
    ["result"],
    registry=REGISTRY,
)
CYCLE_DURATION = Histogram(
    "image_cloner_reconcile_duration_seconds",
    "Duration of one reconcile cycle in seconds.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
WORKLOADS_SEEN = Gauge(
    "image_cloner_workloads",
    "Workloads in scope in the last reconcile cycle, by kind.",
    ["kind"],
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "image_cloner_last_successful_reconcile_timestamp_seconds",
    "Unix time at which the last cycle with no failure ended.",
    registry=REGISTRY,
)

# Label values known up front appear (at zero) before the first failure, so
# dashboards and alerts see the series exist.
for _reason in RegistryError.REASONS:
    CLONE_FAILURES.labels(reason=_reason)
for _kind in KINDS:
    WORKLOADS_PATCHED.labels(kind=_kind)
for _state in ("owned", "pending", "backing_off"):
    IMAGES.labels(state=_state)
for _action in ("created", "updated"):
    PULL_SECRETS_WRITTEN.labels(action=_action)
for _reason in ("foreign_secret", "serviceaccount_missing", "api_error", "credentials_unavailable"):
    NAMESPACE_FAILURES.labels(reason=_reason)
for _result in ("ok", "failed", "error"):
    CYCLES.labels(result=_result)


def record_cycle(summary: Summary) -> None:
    """Update every metric from the Summary of one pass (the one update site)."""
    IMAGES_CLONED.inc(summary.cloned)
    for reason, count in summary.clone_failures.items():
        CLONE_FAILURES.labels(reason=reason).inc(count)
    for kind, count in summary.patched.items():
        WORKLOADS_PATCHED.labels(kind=kind).inc(count)
    PATCH_FAILURES.inc(len(summary.patch_failures))
    for action, count in summary.provisioning.secrets.items():
        PULL_SECRETS_WRITTEN.labels(action=action).inc(count)
    SERVICE_ACCOUNTS_PATCHED.inc(summary.provisioning.service_accounts_patched)
    for _namespace, reason, _message in summary.provisioning.failures:
        NAMESPACE_FAILURES.labels(reason=reason).inc()
    for kind in KINDS:
        WORKLOADS_SEEN.labels(kind=kind).set(summary.workloads.get(kind, 0))
    for result in summary.images.values():
        if result.cloned and result.duration is not None:
            CLONE_DURATION.observe(result.duration)
    IMAGES_WAITING.set(summary.waiting)
    IMAGES.labels(state="owned").set(summary.owned_images)
    IMAGES.labels(state="backing_off").set(summary.waiting)
    IMAGES.labels(state="pending").set(
        sum(1 for r in summary.images.values() if r.image is None and r.waiting is None)
    )
    GITOPS_HELD.set(len(summary.gitops))
    FIGHTS.set(len(summary.fights))
    IMAGES_HEALED.inc(summary.healed)
    OWNED_COPIES_REPLACED.inc(summary.replaced)
    if summary.unpatchable is not None:
        for kind, count in summary.unpatchable.items():
            UNPATCHABLE_PUBLIC_IMAGES.labels(kind=kind).set(count)
    SOURCES_MOVED.inc(summary.moved)
    PATCH_CONFLICTS.inc(summary.conflicts_retried)
    CYCLE_DURATION.observe(summary.duration)
    CYCLES.labels(result="ok" if summary.ok else "failed").inc()
    if summary.ok:
        LAST_SUCCESS.set(summary.started + summary.duration)


_seen_requests: dict[tuple[str, ...], int] = {}


def record_adapters(
    api: Mapping[str, int], registry: Mapping[tuple[str, str], int], pushed_bytes: int
) -> None:
    """Bring the request and byte counters up to the adapters' running totals.

    Args:
        api: Kubernetes API requests so far, outcome -> count (``KubeClient.requests``).
        registry: registry operations so far, (operation, outcome) -> count
            (``DockerRegistry.requests``).
        pushed_bytes: layer bytes pushed so far (``DockerRegistry.pushed_bytes``).
    """
    PUSHED_BYTES.inc(pushed_bytes - _seen_requests.get(("bytes",), 0))
    _seen_requests[("bytes",)] = pushed_bytes
    for outcome, total in api.items():
        key = ("api", outcome)
        API_REQUESTS.labels(outcome=outcome).inc(total - _seen_requests.get(key, 0))
        _seen_requests[key] = total
    for (operation, outcome), total in registry.items():
        key = ("registry", operation, outcome)
        REGISTRY_REQUESTS.labels(operation=operation, outcome=outcome).inc(
            total - _seen_requests.get(key, 0)
        )
        _seen_requests[key] = total


def set_leader(leading: bool) -> None:
    """Whether this replica acts (holds the Lease, or leader election is off)."""
    LEADER.set(1 if leading else 0)


def record_cycle_error(duration: float) -> None:
    """Count a cycle that raised instead of returning a Summary.

    Args:
        duration: seconds the cycle ran before it raised.
    """
    CYCLE_DURATION.observe(duration)
    CYCLES.labels(result="error").inc()


class _Handler(BaseHTTPRequestHandler):
    """``/metrics``, ``/healthz`` and ``/readyz`` on the metrics port."""

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
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
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
    port: int,
    address: str = "0.0.0.0",
    ready: Callable[[], tuple[bool, str]] | None = None,
    backoff: Callable[[], Mapping[str, object]] | None = None,
) -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/healthz``, ``/readyz`` and ``/state/backoff`` in a thread.

    ``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200
    or 503 with a one-line reason from ``ready()`` (config loaded, API
    server reachable, leader or standby). ``/state/backoff`` is the JSON of
    ``backoff()``: the images backing off, for ``plan``.

    Returns:
        The server (``shutdown()`` stops it).

    Raises:
        OSError: the port cannot be bound.
    """
    handler = type("Handler", (_Handler,), {})
    if ready is not None:
        handler.ready = staticmethod(ready)
    if backoff is not None:
        handler.backoff = staticmethod(backoff)
    server = ThreadingHTTPServer((address, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
