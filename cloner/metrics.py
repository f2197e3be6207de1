"""Prometheus metrics: every ``prometheus_client`` object lives here.

Called by ``loop`` (``record_cycle`` after each pass, ``record_cycle_error``
when a pass raised) and by ``controller.py`` (``serve``). Names follow the
Prometheus conventions with the ``image_cloner_`` prefix and base units
(seconds); ``prometheus_client`` appends ``_total`` to counters itself. The
metrics live in a registry of their own so tests can read them without the
process-wide default collectors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cloner.errors import RegistryError
from cloner.reconcile import Summary
from cloner.workloads import KINDS

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
for _action in ("created", "updated"):
    PULL_SECRETS_WRITTEN.labels(action=_action)
for _reason in ("foreign_secret", "serviceaccount_missing", "api_error"):
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
    IMAGES_WAITING.set(summary.waiting)
    GITOPS_HELD.set(len(summary.gitops))
    FIGHTS.set(len(summary.fights))
    IMAGES_HEALED.inc(summary.healed)
    PATCH_CONFLICTS.inc(summary.conflicts_retried)
    CYCLE_DURATION.observe(summary.duration)
    CYCLES.labels(result="ok" if summary.ok else "failed").inc()
    if summary.ok:
        LAST_SUCCESS.set(summary.started + summary.duration)


def record_cycle_error(duration: float) -> None:
    """Count a cycle that raised instead of returning a Summary.

    Args:
        duration: seconds the cycle ran before it raised.
    """
    CYCLE_DURATION.observe(duration)
    CYCLES.labels(result="error").inc()


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``address:port`` in a background thread.

    Raises:
        OSError: the port cannot be bound.
    """
    start_http_server(port, addr=address, registry=REGISTRY)
