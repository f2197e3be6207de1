"""Prometheus metrics: every ``prometheus_client`` object lives here.

Called by ``loop`` (``record_cycle`` after each pass, ``record_cycle_error``
when a pass raised) and by ``controller.py`` (``serve``). Names follow the
Prometheus conventions with the ``image_cloner_`` prefix and base units
(seconds); ``prometheus_client`` appends ``_total`` to counters itself. The
metrics live in a registry of their own so tests can read them without the
process-wide default collectors.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cloner import __version__
from cloner.errors import RegistryError
from cloner.model.pullsecrets import ProvisionFailure
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
ARTIFACTS_COPIED = Counter(
    "image_cloner_artifacts_copied",
    "Signatures, attestations, SBOMs and OCI referrers written beside owned copies, by kind "
    "(signature, attestation, sbom, referrer).",
    ["kind"],
    registry=REGISTRY,
)
ARTIFACT_FAILURES = Counter(
    "image_cloner_artifact_failures",
    "Syncs of a source's signatures and referrers that failed, by reason; retried with backoff.",
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
    "api_error, credentials_unavailable, pull_credentials_missing).",
    ["reason"],
    registry=REGISTRY,
)
PULL_SECRET_PUSH_CREDENTIALS = Gauge(
    "image_cloner_pull_secret_has_push_credentials",
    "1 when the managed pull Secrets carry the push credentials of dockerConfig "
    "(pullSecret.dockerConfig is unset), 0 when they carry read-only ones or none are made.",
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
SWITCH_FAILURES = Counter(
    "image_cloner_switch_failures",
    "Switches whose rollout the owned copy broke, by cause (owned_pull_failed, "
    "admission_denied, progress_deadline); each was undone.",
    ["reason"],
    registry=REGISTRY,
)
SWITCHES_UNDONE = Counter(
    "image_cloner_switches_undone",
    "Workloads patched back to their original references after a failed switch.",
    registry=REGISTRY,
)
SWITCHES_COMPLETED = Counter(
    "image_cloner_switches_completed",
    "Switches whose rollout completed (kubectl rollout status rules).",
    registry=REGISTRY,
)
SWITCHES_SLOW = Counter(
    "image_cloner_switches_slow",
    "Switches whose rollout took longer than rollout.timeout for reasons that are not "
    "the owned copy's (reported, never undone).",
    registry=REGISTRY,
)
SWITCHES_PENDING = Gauge(
    "image_cloner_switches_pending",
    "Switches whose rollout is still followed.",
    registry=REGISTRY,
)
SWITCHES_HELD = Gauge(
    "image_cloner_switches_held",
    "Workloads not patched in the last cycle because a failed switch holds them or "
    "their namespace back, or they wait for their namespace's canary.",
    registry=REGISTRY,
)
CLONE_DURATION = Histogram(
    "image_cloner_clone_duration_seconds",
    "Duration of one successful clone (pull, tag, push, verify) in seconds.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
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
for _reason in ProvisionFailure:
    NAMESPACE_FAILURES.labels(reason=_reason)
for _result in ("ok", "failed", "error"):
    CYCLES.labels(result=_result)


def record_cycle(summary: Summary) -> None:
    """Update every metric from the Summary of one pass (the one update site).

    Args:
        summary: the pass's ``reconcile.Summary``; read only.
    """
    _count_cycle(summary)
    _gauge_cycle(summary)
    CYCLE_DURATION.observe(summary.duration)
    CYCLES.labels(result="ok" if summary.ok else "failed").inc()
    if summary.ok:
        LAST_SUCCESS.set(summary.started + summary.duration)


def _count_cycle(summary: Summary) -> None:
    """The counters and the clone-duration histogram: what happened in the pass."""
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
    for result in summary.images.values():
        if result.cloned and result.duration is not None:
            CLONE_DURATION.observe(result.duration)
    IMAGES_HEALED.inc(summary.healed)
    OWNED_COPIES_REPLACED.inc(summary.replaced)
    SOURCES_MOVED.inc(summary.moved)
    for kind, count in summary.artifacts_copied.items():
        ARTIFACTS_COPIED.labels(kind=kind).inc(count)
    for reason, count in summary.artifact_failures.items():
        ARTIFACT_FAILURES.labels(reason=reason).inc(count)
    PATCH_CONFLICTS.inc(summary.conflicts_retried)
    rollout = summary.rollout
    for reason, count in rollout.failures.items():
        SWITCH_FAILURES.labels(reason=reason).inc(count)
    SWITCHES_UNDONE.inc(rollout.undone)
    SWITCHES_COMPLETED.inc(rollout.completed)
    SWITCHES_SLOW.inc(rollout.slow)


def _gauge_cycle(summary: Summary) -> None:
    """The gauges: the state the pass found."""
    for kind in KINDS:
        WORKLOADS_SEEN.labels(kind=kind).set(summary.workloads.get(kind, 0))
    IMAGES_WAITING.set(summary.not_tried)
    IMAGES.labels(state="owned").set(summary.owned_images)
    IMAGES.labels(state="backing_off").set(summary.not_tried)
    IMAGES.labels(state="pending").set(
        sum(1 for r in summary.images.values() if r.image is None and r.retry_in is None)
    )
    GITOPS_HELD.set(len(summary.gitops))
    FIGHTS.set(len(summary.fights))
    SWITCHES_PENDING.set(summary.rollout.pending)
    SWITCHES_HELD.set(len(summary.rollout.held))
    if summary.unpatchable is not None:
        for kind, count in summary.unpatchable.items():
            UNPATCHABLE_PUBLIC_IMAGES.labels(kind=kind).set(count)


class AdapterCollector(Collector):
    """The adapters' request and byte counters, read when Prometheus scrapes.

    The adapters keep running totals (``KubeClient.requests``, the copy
    backends' and ``DistributionClient.requests``, ``pushed_bytes``); this
    collector turns them into counter families at scrape time, so nothing is
    copied between cycles. Sources are set once at start (``watch_adapters``);
    before that the families are exported empty.
    """

    def __init__(self) -> None:
        self.api: Callable[[], Mapping[str, int]] = dict
        self.registry: Callable[[], Mapping[tuple[str, str], int]] = dict
        self.pushed_bytes: Callable[[], int] = int
        self.events_dropped: Callable[[], int] = int

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Counter families ``image_cloner_api_requests_total``, ``..._registry_requests_total``,
        ``..._pushed_bytes_total``, ``..._events_dropped_total`` from the current totals."""
        api = CounterMetricFamily(
            "image_cloner_api_requests",
            "Kubernetes API requests by outcome (success, 4xx, 5xx, unreachable).",
            labels=["outcome"],
        )
        for outcome, total in sorted(self.api().items()):
            api.add_metric([outcome], total)
        registry = CounterMetricFamily(
            "image_cloner_registry_requests",
            "Registry operations by operation (inspect, pull, tag, push through the engine; "
            "copy with skopeo; head, get, token by the controller) and outcome.",
            labels=["operation", "outcome"],
        )
        for (operation, outcome), total in sorted(self.registry().items()):
            registry.add_metric([operation, outcome], total)
        pushed = CounterMetricFamily(
            "image_cloner_pushed_bytes",
            "Bytes of image layers pushed to the owned registry (layers it already had excluded).",
        )
        pushed.add_metric([], self.pushed_bytes())
        dropped = CounterMetricFamily(
            "image_cloner_events_dropped",
            "Kubernetes Events not written: more were waiting behind the patches than the "
            "queue holds, or the shutdown deadline passed.",
        )
        dropped.add_metric([], self.events_dropped())
        yield from (api, registry, pushed, dropped)


ADAPTERS = AdapterCollector()
REGISTRY.register(ADAPTERS)


def watch_adapters(
    api: Callable[[], Mapping[str, int]],
    registry: Callable[[], Mapping[tuple[str, str], int]],
    pushed_bytes: Callable[[], int],
    events_dropped: Callable[[], int] = int,
) -> None:
    """Point the request and byte counters at the adapters' running totals.

    Args:
        api: Kubernetes API requests so far, outcome -> count.
        registry: registry operations so far, (operation, outcome) -> count.
        pushed_bytes: layer bytes pushed so far.
        events_dropped: Events dropped so far (``WritePool.dropped``).
    """
    ADAPTERS.api, ADAPTERS.registry, ADAPTERS.pushed_bytes = api, registry, pushed_bytes
    ADAPTERS.events_dropped = events_dropped


def exposition() -> tuple[bytes, str]:
    """The current metrics in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def set_leader(leading: bool) -> None:
    """Whether this replica acts (holds the Lease, or leader election is off)."""
    LEADER.set(1 if leading else 0)


def set_pull_secret_push_credentials(carried: bool) -> None:
    """Whether the managed pull Secrets carry the push credentials (set once at start-up).

    Args:
        carried: ``pullsecrets.carries_push_credentials`` of the settings.
    """
    PULL_SECRET_PUSH_CREDENTIALS.set(1 if carried else 0)


def record_cycle_error(duration: float) -> None:
    """Count a cycle that raised instead of returning a Summary.

    Args:
        duration: seconds the cycle ran before it raised.
    """
    CYCLE_DURATION.observe(duration)
    CYCLES.labels(result="error").inc()
