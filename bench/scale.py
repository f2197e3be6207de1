"""image-cloner at cluster scale: cold, restart and warm cycles over 10,000 or 50,000 workloads.

Issue 11's second benchmark run, and issue 31's at 50,000, on the real
components of the end-to-end harness (``devenv/harness.py``: etcd,
kube-apiserver with RBAC, dockerd and two CNCF distribution registries, all
on 127.0.0.1):

1. a corpus of ``--images`` small images (a few KB, sharing base layers) in
   the public registry, each with a byte-identical copy in the owned
   registry under its owned name (what ``skopeo copy --all
   --preserve-digests`` leaves), so "owned copies are present";
2. ``--workloads`` Deployments (1 or 2 containers, 1.5 on average) over
   ``--namespaces`` namespaces, created on a thread pool of API calls;
3. **cold cycle**: ``controller.py --once`` as a real process with the
   image-cloner ServiceAccount's token (``manifests/base`` RBAC), durable
   state in namespace ``image-cloner``, ``listPageSize`` 500. Wall time,
   patches/s, first and last patch (from the ``patched ... container``
   log lines), registry requests (the registries' access logs) and API
   errors (the summary line and the API server's ``apiserver_request_total``);
4. **restart cycle**: ``--restart-workloads`` fresh Deployments of the same
   images, then ``--once`` again with the state kept: registry requests
   (target 0: every image was verified within ``refreshInterval``);
5. **rollouts written**: no controller-manager runs, so no rollout would
   ever complete and every switch of the cold cycle would stay pending (the
   rollout guard would follow them in every warm cycle). The bench plays
   the controller-manager's part: it writes each patched Deployment's
   status as rolled out (``observedGeneration`` = ``metadata.generation``,
   every replica count = ``spec.replicas``) through the status subresource,
   as the admin, on a thread pool, timed on its own (no controller figure
   counts it);
6. **switches completed**: the loop's first cycle (``pollInterval`` 2,
   metrics on) finds every rollout complete and stops following the
   switches: its time, completions (the guard's ``rolled out`` log lines,
   ``image_cloner_switches_completed_total``) and the time until their
   Events were written (the bench waits for them, so that no write of that
   cycle falls into the measured ones), and the process's RSS then;
7. **warm cycle**: the same loop, with no switch pending, over everything
   patched: cycle durations (summary lines), writes (the
   API server's write counters for the resources the controller writes,
   the controller's ``image_cloner_api_requests_total``, resourceVersions of
   a sample of workloads, ``patched=0 secrets_written=0``), registry requests,
   CPU seconds per cycle of the controller, kube-apiserver and etcd
   (``/proc/PID/stat`` over the measured cycles, divided by their number:
   the API server's and etcd's are the floor the controller's LISTs cost
   them), the process's RSS (``/proc/PID/status`` VmRSS, VmHWM) after the
   last cycle and VmRSS after each one (``rss_per_cycle`` in the JSON; the
   row "RSS growth, first to last warm cycle" must stay within a few MiB),
   and the guard's gauges: ``image_cloner_switches_pending`` 0 and
   ``image_cloner_switches_completed_total`` equal to the workloads patched.

Every figure is printed next to its target, written as JSON to
``--results-dir`` (default ``bench/results``) as ``scale-<UTC time>.json``,
and the patch timelines are drawn by ``bench/plot.py`` into a PNG beside it.
The targets depend on the size (``SIZE_TARGETS``, ``targets_for``): up to
49,999 workloads issue 11's (cold cycle <= 30 s, >= 400 patches/s, warm
cycle <= 2 s, RSS <= 200 MiB) with issue 31's controller CPU per warm cycle
<= 1.2 s; from 50,000 on issue 31's (>= 400 patches/s, warm cycle <= 4 s
with kube-apiserver on the same cores, controller CPU per warm cycle <= 1.5 s,
RSS and peak RSS <= 250 MiB). Both: no write and no registry request in a
warm cycle, RSS growth over the warm cycles <= 5 MiB.

``--profile`` records the cold cycle with py-spy (every thread, idle
included) and ``--profile-warm`` the measured warm cycles (on-CPU samples,
``--nonblocking``, from the first counters' reading to the last: py-spy's
own CPU, at 100 samples a second, then loads the machine, though not the
controller's CPU figure). The raw stacks are kept beside the JSON
(``scale-<time>-cold.pyspy.txt``, ``-warm.pyspy.txt``); the top 15
functions by own and by cumulative samples, as ``function (file)``, go into
the JSON (``cold.profile``, ``warm.profile``) and are printed before the
table. py-spy comes from PyPI (``pip install py-spy``), found on PATH or
next to this Python.

    .venv/bin/python -m bench.scale                    # 10,000 workloads, skopeo backend
    .venv/bin/python -m bench.scale --backend docker
    .venv/bin/python -m bench.scale --smoke            # ~50 workloads, for the e2e smoke test
    # issue 31: 50,000 workloads, RSS over 10 warm cycles, the warm profile
    .venv/bin/python -m bench.scale --workloads 50000 --namespaces 100 --images 400 \\
        --warm-cycles 10 --profile-warm

Exit status: 0 when every phase ran (a missed target is shown as ``MISS``
in the table, not as a failure); 1 when a phase could not run (a component
did not start, a creation failed, the controller crashed or never printed
its summary line); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench import measure
from devenv import images
from devenv.harness import Environment, Registry, ensure_components, free_port
from devenv.support import (
    controller_command,
    create_namespace,
    install_controller_rbac,
    request_lines,
    scrape,
    write_config,
)
from devenv.workloads import workload

ROOT = Path(__file__).resolve().parents[1]

STATE_NAMESPACE = "image-cloner"
NAMESPACE_PREFIX = "scale-"
#: what the controller writes (workloads, pull Secrets, ServiceAccounts, state, Events)
CONTROLLER_RESOURCES = frozenset(
    {"deployments", "daemonsets", "statefulsets", "secrets", "serviceaccounts", "configmaps"}
    | {"events"}
)
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})

_LOG_TIME = r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
PATCHED_LINE = re.compile(_LOG_TIME + r" INFO \S+: patched (?P<workload>\S+ \S+) container ")
SUMMARY_LINE = re.compile(_LOG_TIME + r" INFO \S+: reconcile: (?P<fields>.*)$")
#: the rollout guard's line for a switch whose rollout completed
COMPLETED_LINE = re.compile(
    _LOG_TIME + r" INFO \S+: (?P<workload>\S+ \S+): rolled out on owned copies$"
)
#: the first line of a loop's first cycle (``Reconciler._load_state``), before the guard follows
STATE_LINE = re.compile(_LOG_TIME + r" INFO \S+: state: \d+ verified copies")
#: the controller's gauge and counter of the switches its guard follows
SWITCHES_PENDING = "image_cloner_switches_pending"
SWITCHES_COMPLETED = "image_cloner_switches_completed_total"
_SAMPLE = re.compile(
    r"^apiserver_request_(?P<metric>total|duration_seconds_sum|duration_seconds_count)"
    r"\{(?P<labels>[^}]*)\} (?P<value>\S+)$"
)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Size:
    """How big a run is.

    Attributes:
        workloads: Deployments of the cold cycle.
        restart_workloads: fresh Deployments created before the restart cycle.
        images: distinct source images (each used by many containers).
        namespaces: namespaces the workloads are spread over.
        warm_cycles: warm cycles measured after the loop's first cycle.
        sample: workloads whose resourceVersion is compared across the warm cycles.
    """

    workloads: int
    restart_workloads: int
    images: int
    namespaces: int
    warm_cycles: int
    sample: int


@dataclass(frozen=True)
class Targets:
    """The targets of one size of run (an entry of ``SIZE_TARGETS``).

    Attributes:
        issue: where they are set.
        cold_s: the cold cycle's duration (summary line), at most; None where
            no issue sets one (at 50,000 issue 31 asks for patches/s instead).
        patches_per_s: the cold cycle's patches per second, at least.
        warm_cycle_s: each measured warm cycle's duration, at most.
        warm_controller_cpu_s: the controller's CPU seconds per warm cycle, at most.
        rss_mib: the loop's RSS (VmRSS) and peak RSS (VmHWM) after the warm cycles, at most.
        rss_growth_mib: its RSS growth from the first measured warm cycle to the last, at most.
    """

    issue: str
    cold_s: float | None
    patches_per_s: float
    warm_cycle_s: float
    warm_controller_cpu_s: float
    rss_mib: float
    rss_growth_mib: float


#: The targets by the number of workloads they hold from (``targets_for``): issue
#: 11's "Targets" at 10,000 (its "Build" item 4 for patches/s, item 5 for the
#: restart) with issue 31's controller CPU per warm cycle, and issue 31's at
#: 50,000 (warm cycles with kube-apiserver on the same 2 cores). A run smaller
#: than 10,000 workloads (the smoke test's) is held to the 10,000 targets.
SIZE_TARGETS: dict[int, Targets] = {
    10_000: Targets(
        issue="issue 11; controller CPU: issue 31",
        cold_s=30.0,
        patches_per_s=400.0,
        warm_cycle_s=2.0,
        warm_controller_cpu_s=1.2,
        rss_mib=200.0,
        rss_growth_mib=5.0,
    ),
    50_000: Targets(
        issue="issue 31",
        cold_s=None,
        patches_per_s=400.0,
        warm_cycle_s=4.0,
        warm_controller_cpu_s=1.5,
        rss_mib=250.0,
        rss_growth_mib=5.0,
    ),
}


def targets_for(workloads: int) -> Targets:
    """The ``SIZE_TARGETS`` entry of the largest size up to ``workloads`` (else the smallest)."""
    sizes = sorted(SIZE_TARGETS)
    return SIZE_TARGETS[max((s for s in sizes if s <= workloads), default=sizes[0])]


#: The size of issue 11's targets, and the smoke test's.
FULL = Size(
    workloads=10_000, restart_workloads=1_000, images=200, namespaces=50, warm_cycles=3, sample=200
)
SMOKE = Size(workloads=50, restart_workloads=10, images=10, namespaces=5, warm_cycles=2, sample=20)


@dataclass
class Row:
    """One figure of the table.

    Attributes:
        phase: ``setup``, ``cold``, ``restart`` or ``warm``.
        figure: what is measured, e.g. ``wall time``.
        value: the measured number (None when it could not be measured).
        unit: ``s``, ``/s``, ``MiB`` or a count's noun.
        target: the target as text (``<= 30 s``), "" for an informative figure.
        ok: whether the target is met; None without a target.
    """

    phase: str
    figure: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Run:
    """Everything one controller run left behind that the figures are read from.

    Attributes:
        argv: the command line (no credentials: they are in files).
        returncode: the exit code (None while a loop still runs).
        launched: epoch seconds when the process was started.
        wall: seconds from start to exit.
        log: the process's output file.
        summaries: the ``key=value`` fields of each summary line, with ``at``
            (epoch seconds of the line).
        patches: epoch seconds of each workload's first ``patched`` line.
        registry: requests per registry and method during the run.
        cpu: CPU seconds during the run: ``controller``, each component,
            ``machine_busy`` and ``machine_capacity`` (``cpu_delta``).
    """

    argv: list[str]
    returncode: int | None
    launched: float
    wall: float
    log: Path
    summaries: list[dict[str, Any]] = field(default_factory=list)
    patches: dict[str, float] = field(default_factory=dict)
    registry: dict[str, dict[str, int]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def log_time(text: str) -> float:
    """Epoch seconds of a ``logging`` default timestamp (local time, ms resolution).

    Args:
        text: ``YYYY-MM-DD HH:MM:SS,mmm`` as ``logging.Formatter`` writes ``asctime``.
    """
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_summary(fields: str) -> dict[str, Any]:
    """The ``key=value`` pairs of a ``reconcile:`` summary line.

    Numbers become ints (``duration`` a float in seconds); a parenthesised
    failure breakdown after ``clone_failures`` is ignored.

    Args:
        fields: the text after ``reconcile: ``.
    """
    parsed: dict[str, Any] = {}
    for key, value in re.findall(r"(\w+)=([0-9.]+)s?", re.sub(r"\([^)]*\)", "", fields)):
        parsed[key] = float(value) if key == "duration" else int(float(value))
    return parsed


def parse_log(text: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Summary lines and first patch time per workload, from a controller's output.

    Returns:
        ``(summaries, patches)``: each summary's fields plus ``at`` (epoch
        seconds); workload key (``Kind ns/name``) -> epoch seconds of its first
        ``patched ... container`` line.
    """
    summaries: list[dict[str, Any]] = []
    patches: dict[str, float] = {}
    for line in text.splitlines():
        if (match := PATCHED_LINE.match(line)) is not None:
            patches.setdefault(match["workload"], log_time(match["time"]))
        elif (match := SUMMARY_LINE.match(line)) is not None:
            summaries.append({**parse_summary(match["fields"]), "at": log_time(match["time"])})
    return summaries, patches


# --- the environment's counters ------------------------------------------------------


def admin_session(env: Environment) -> requests.Session:
    """An HTTP session to the API server as the admin user, verifying its CA.

    ``trust_env`` is off: ``REQUESTS_CA_BUNDLE`` would otherwise replace the
    session's CA file, and a proxy setting must not see loopback traffic.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(env.ca_file)
    session.headers["Authorization"] = f"Bearer {env.admin_token}"
    return session


class Counters:
    """Offsets and counters of the components, read before and after a phase.

    Args:
        env: the running environment.
    """

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._session = admin_session(env)

    def registry_offsets(self) -> dict[str, int]:
        """Byte sizes of the registries' logs now (``{"public": n, "owned": n}``)."""
        return {r.name: r.log_path.stat().st_size for r in self._registries()}

    def registry_requests(self, since: dict[str, int]) -> dict[str, dict[str, int]]:
        """Requests each registry logged after ``since``, by method (``total`` too)."""
        counts: dict[str, dict[str, int]] = {}
        for registry in self._registries():
            methods: Counter[str] = Counter()
            for line in request_lines(registry, since[registry.name]):
                match = re.search(r'"(GET|HEAD|PUT|POST|PATCH) /v2/', line)
                if match is not None:
                    methods[match[1]] += 1
            counts[registry.name] = {**methods, "total": sum(methods.values())}
        return counts

    def _registries(self) -> tuple[Registry, Registry]:
        return self._env.public, self._env.owned

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each component and by the machine.

        Components are read from ``/proc/PID/stat`` (``utime``, ``stime``) of
        the processes the harness started (``kube-apiserver``, ``etcd``,
        ``dockerd``, ``registry-public``, ``registry-owned``); the machine's
        busy and stolen time from ``/proc/stat`` (``measure.machine_cpu``).
        """
        pids: dict[str, int] = {}
        for name, process in getattr(self._env, "_processes", {}).items():
            if process.popen is not None:
                pids["kube-apiserver" if name == "apiserver" else name] = process.popen.pid
        for registry in self._registries():
            process = getattr(registry, "_process", None)
            if process is not None and process.popen is not None:
                pids[f"registry-{registry.name}"] = process.popen.pid
        used = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                used[name] = proc_cpu(pid)
        busy, steal = measure.machine_cpu(Path("/proc/stat").read_text(), os.sysconf("SC_CLK_TCK"))
        used["machine_busy"], used["machine_steal"] = busy, steal
        return used

    def apiserver_requests(self) -> Counter[tuple[str, str, str]]:
        """Counters of the API server's ``/metrics``, keyed (verb, resource, code).

        ``apiserver_request_total`` by (verb, resource, code), and the
        ``apiserver_request_duration_seconds`` sum and count of each (verb,
        resource) under the codes ``duration_sum`` and ``duration_count``
        (seconds, as the API server measures a request, from receipt to answer).

        Raises:
            requests.HTTPError: /metrics did not answer 200.
        """
        response = self._session.get(self._env.apiserver_url + "/metrics", timeout=30)
        response.raise_for_status()
        totals: Counter[tuple[str, str, str]] = Counter()
        for line in response.text.splitlines():
            match = _SAMPLE.match(line)
            if match is None:
                continue
            labels = dict(_LABEL.findall(match["labels"]))
            verb, resource = labels.get("verb", ""), labels.get("resource", "")
            metric = match["metric"]
            if metric == "total":
                totals[verb, resource, labels.get("code", "")] += int(float(match["value"]))
            else:
                code = "duration_sum" if metric.endswith("sum") else "duration_count"
                totals[verb, resource, code] += float(match["value"])
        return totals

    def resource_versions(self, keys: Iterable[tuple[str, str]]) -> dict[str, str]:
        """``ns/name`` -> metadata.resourceVersion of each Deployment (admin reads)."""
        versions = {}
        for namespace, name in keys:
            response = self._session.get(
                f"{self._env.apiserver_url}/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
                timeout=30,
            )
            response.raise_for_status()
            versions[f"{namespace}/{name}"] = response.json()["metadata"]["resourceVersion"]
        return versions


def _count_answer(
    delta: Counter[str], writes_by: Counter[str], key: tuple[str, str, str], count: int
) -> None:
    """Add ``count`` answers of ``(verb, resource, code)`` to ``api_delta``'s counters."""
    verb, resource, code = key
    delta["requests"] += count
    if verb in WRITE_VERBS:
        if resource in CONTROLLER_RESOURCES:
            delta["writes"] += count
            writes_by[f"{verb} {resource}"] += count
        else:
            delta["other_writes"] += count
    if code == "429":
        delta["throttled"] += count
    if code == "429" or code.startswith("5"):
        delta["errors"] += count
    elif code.startswith("4"):
        delta["client_errors"] += count


def api_delta(
    before: Counter[tuple[str, str, str]], after: Counter[tuple[str, str, str]]
) -> dict[str, Any]:
    """What the API server answered between two ``apiserver_requests`` readings.

    Returns:
        ``writes`` (write verbs on ``CONTROLLER_RESOURCES``), ``writes_by`` (the
        same by ``VERB resource``), ``other_writes`` (write verbs on any other
        resource, e.g. the API server's own Leases), ``write_latency`` (mean
        seconds the API server spent on each ``VERB resource`` of those
        writes), ``errors`` (answers 429
        or 5xx), ``throttled`` (429), ``client_errors`` (other 4xx, e.g. the
        404 of a pull Secret not created yet), ``requests`` (all).
    """
    writes_by: Counter[str] = Counter()
    delta: Counter[str] = Counter()
    latency: dict[str, float] = {}
    for key in set(after) | set(before):
        count = after[key] - before[key]
        if count <= 0:
            continue
        verb, resource, code = key
        if code == "duration_count":
            spent = after[verb, resource, "duration_sum"] - before[verb, resource, "duration_sum"]
            if verb in WRITE_VERBS and resource in CONTROLLER_RESOURCES:
                latency[f"{verb} {resource}"] = spent / count
            continue
        if code == "duration_sum":
            continue
        _count_answer(delta, writes_by, key, count)
    return {
        **{k: delta[k] for k in ("requests", "writes", "other_writes", "errors", "throttled")},
        "client_errors": delta["client_errors"],
        "writes_by": dict(sorted(writes_by.items())),
        "write_latency": dict(sorted(latency.items())),
    }


# --- corpus and workloads --------------------------------------------------------------


def build_corpus(env: Environment, count: int) -> list[str]:
    """Push ``count`` small images to the public registry and the same bytes to the owned one.

    Image ``i`` has three layers of 2 KB: one of 4 base layers, one of 20
    middle layers (shared by every 4th and every 20th image, as real images
    share their bases) and one of its own. The owned copy is pushed with the
    same config, layers and manifest bytes, so it has the source's digest:
    what ``skopeo copy --all --preserve-digests`` leaves, and what
    ``identity.same_content`` accepts for both backends.

    Args:
        env: the environment (public and owned registries).
        count: number of images.

    Returns:
        The source references ``HOST:PORT/bench/app-<i>:1``.

    Raises:
        images.ImageBuildError: a registry refused a blob or a manifest.
    """
    bases = [images.layer(f"scale/base/{k}") for k in range(4)]
    middles = [images.layer(f"scale/middle/{k}") for k in range(20)]
    owned_prefix = owned_path_prefix(env)

    def one(index: int) -> str:
        repository = f"bench/app-{index}"
        layers = [bases[index % 4], middles[index % 20], images.layer(f"scale/own/{index}")]
        label = f"image-cloner scale bench {index}"
        source = images.build_image(env.public, repository, "1", layers=layers, label=label)
        copy = images.build_image(
            env.owned, f"{owned_prefix}/{repository}", "1", layers=layers, label=label
        )
        if copy.digest != source.digest:
            raise images.ImageBuildError(f"owned copy of {repository}: {copy.digest}")
        return f"{env.public.host}/{repository}:1"

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def owned_target(env: Environment) -> str:
    """The controller's ``target``: the owned registry with the path prefix ``mirror``."""
    return f"{env.owned.host}/mirror"


def owned_path_prefix(env: Environment) -> str:
    """Where ``naming: nested`` puts the public registry's images in the owned registry."""
    return "mirror/" + env.public.host.replace(":", "-")


def workload_specs(
    size: Size, corpus: Sequence[str], prefix: str, count: int
) -> list[tuple[str, str, list[str]]]:
    """``(namespace, name, images)`` of ``count`` Deployments.

    Even-numbered ones have two containers, odd ones one, so 10,000
    workloads have 15,000 containers; the images cycle over the corpus.

    Args:
        size: the run's size (namespaces).
        corpus: the source references.
        prefix: name prefix, e.g. ``w`` (cold) or ``r`` (restart).
        count: how many.
    """
    specs = []
    for i in range(count):
        chosen = [corpus[i % len(corpus)]]
        if i % 2 == 0:
            chosen.append(corpus[(i + 37) % len(corpus)])
        specs.append((f"{NAMESPACE_PREFIX}{i % size.namespaces}", f"{prefix}-{i}", chosen))
    return specs


def create_deployments(env: Environment, specs: Sequence[tuple[str, str, list[str]]]) -> float:
    """Create the Deployments on 8 threads (one HTTP session each); return the seconds taken.

    Raises:
        RuntimeError: the API server did not answer 201 to a create.
    """
    local = threading.local()

    def session() -> requests.Session:
        existing = getattr(local, "session", None)
        if existing is None:
            existing = local.session = admin_session(env)
        return existing

    def create(spec: tuple[str, str, list[str]]) -> None:
        namespace, name, chosen = spec
        containers = {f"c{j}": image for j, image in enumerate(chosen)}
        body = workload(
            "Deployment",
            name,
            containers,
            namespace=namespace,
            labels={"app": name},
            spec={"replicas": 1},
        )
        url = f"{env.apiserver_url}/apis/apps/v1/namespaces/{namespace}/deployments"
        response = session().post(url, json=body, timeout=60)
        if response.status_code != 201:
            raise RuntimeError(f"create {namespace}/{name}: {response.status_code} {response.text}")

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for _ in pool.map(create, specs):
            pass
    return time.monotonic() - started


def delete_deployments(env: Environment, specs: Sequence[tuple[str, str, list[str]]]) -> None:
    """Delete the Deployments on 8 threads (there are no Pods: no controller-manager runs).

    Raises:
        RuntimeError: the API server answered neither 200/202 nor 404.
    """
    local = threading.local()

    def delete(spec: tuple[str, str, list[str]]) -> None:
        namespace, name, _ = spec
        session = getattr(local, "session", None) or admin_session(env)
        local.session = session
        url = f"{env.apiserver_url}/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        response = session.delete(url, timeout=60)
        if response.status_code not in (200, 202, 404):
            raise RuntimeError(f"delete {namespace}/{name}: {response.status_code}")

    with ThreadPoolExecutor(8) as pool:
        for _ in pool.map(delete, specs):
            pass


def patched_deployments(keys: Iterable[str]) -> dict[str, set[str]]:
    """Namespace -> names of the Deployments among workload keys (``Deployment ns/name``)."""
    wanted: dict[str, set[str]] = {}
    for key in keys:
        kind, _, where = key.partition(" ")
        namespace, _, name = where.partition("/")
        if kind == "Deployment" and namespace and name:
            wanted.setdefault(namespace, set()).add(name)
    return wanted


def rolled_out_status(deployment: dict[str, Any]) -> dict[str, Any]:
    """The merge patch of the status subresource that says a Deployment has rolled out.

    What the controller-manager's deployment controller writes once every
    replica of the newest ReplicaSet is available: ``observedGeneration`` is
    ``metadata.generation`` and the replica counts are ``spec.replicas``, so
    ``kubectl rollout status`` (and ``model.rollout.rollout_status``) says
    complete.
    """
    replicas = (deployment.get("spec") or {}).get("replicas", 1)
    return {
        "status": {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
    }


def write_rollouts(env: Environment, keys: Iterable[str]) -> dict[str, Any]:
    """Play the controller-manager's part: mark each patched Deployment as rolled out.

    Lists the Deployments of each namespace (one request per namespace, for
    their generation), then writes ``rolled_out_status`` of each patched one
    through ``.../deployments/NAME/status`` (merge patch) on 8 threads, one
    admin session each, as ``create_deployments`` creates them.

    Args:
        env: the environment.
        keys: workload keys (``Deployment ns/name``) the controller patched.

    Returns:
        ``written`` (statuses written), ``missing`` (patched Deployments not
        found), ``seconds`` (listing and writing), ``rate`` (written per second).

    Raises:
        RuntimeError: the API server did not answer 200 to a list or a write.
    """
    wanted = patched_deployments(keys)
    started = time.monotonic()
    lister = admin_session(env)
    todo: list[tuple[str, str, dict[str, Any]]] = []
    for namespace in sorted(wanted):
        url = f"{env.apiserver_url}/apis/apps/v1/namespaces/{namespace}/deployments"
        response = lister.get(url, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"list deployments in {namespace}: {response.status_code}")
        for item in response.json().get("items") or ():
            name = item["metadata"]["name"]
            if name in wanted[namespace]:
                todo.append((namespace, name, rolled_out_status(item)))
    local = threading.local()

    def write(job: tuple[str, str, dict[str, Any]]) -> None:
        namespace, name, body = job
        session = getattr(local, "session", None) or admin_session(env)
        local.session = session
        url = f"{env.apiserver_url}/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status"
        response = session.patch(
            url,
            data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=60,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"status of {namespace}/{name}: {response.status_code} {response.text}"
            )

    with ThreadPoolExecutor(8) as pool:
        for _ in pool.map(write, todo):
            pass
    seconds = time.monotonic() - started
    return {
        "written": len(todo),
        "missing": sum(len(names) for names in wanted.values()) - len(todo),
        "seconds": seconds,
        "rate": len(todo) / seconds if seconds > 0 else None,
    }


# --- profiles --------------------------------------------------------------------------

#: functions each profile table lists (issue 31's "top 15 functions")
PROFILE_TOP = 15
#: a frame of py-spy's raw output: ``function (file:line)``, or ``function (file)``
_FRAME = re.compile(r"^(?P<function>.+) \((?P<file>[^()]+?)(?::\d+)?\)$")


def py_spy() -> str:
    """The py-spy executable: on PATH, or next to this Python (a venv's ``bin``).

    Raises:
        RuntimeError: there is none (``pip install py-spy``).
    """
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise RuntimeError("profiling needs py-spy (pip install py-spy)")
    return spy


def short_path(path: str) -> str:
    """A source file as a profile names it: after ``site-packages/``, or relative to the repo."""
    _, marker, inside = path.rpartition("site-packages/")
    if marker:
        return inside
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return path


def frame_key(frame: str) -> str | None:
    """``function (file)`` of a raw py-spy frame, the line left out; None for a thread or process.

    ``--threads`` puts a ``thread (TID): NAME`` frame at the root of each
    stack, ``--subprocesses`` a ``process PID:"..."`` one: they are no function.
    """
    if frame.startswith(("thread (", "process ")):
        return None
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['function']} ({short_path(match['file'])})"


def profile_top(raw: str, top: int = PROFILE_TOP) -> dict[str, Any]:
    """The functions with the most samples in py-spy's ``--format raw`` output.

    Each line of the output is a stack, root first, frames joined by ``;``,
    then a space and its sample count. A function's own samples are those of
    the stacks it is the leaf of; its cumulative samples those of the stacks
    it is on (once per stack, however deep it recurses).

    Args:
        raw: the text py-spy wrote.
        top: how many functions each list holds.

    Returns:
        ``samples`` (all stacks' counts), ``own`` and ``cumulative``: the
        ``top`` functions by each, most first, as ``{"function": "name
        (file)", "samples": n, "percent": of all samples}``.
    """
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        keys = [key for frame in stack.split(";") if (key := frame_key(frame)) is not None]
        if keys:
            own[keys[-1]] += samples
        for key in set(keys):
            cumulative[key] += samples

    def ranked(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": key, "samples": n, "percent": 100.0 * n / total}
            for key, n in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:top]
        ]

    return {"samples": total, "own": ranked(own), "cumulative": ranked(cumulative)}


def read_profile(path: Path) -> dict[str, Any]:
    """``profile_top`` of a raw py-spy file, with its path as ``raw``."""
    return {"raw": str(path), **profile_top(path.read_text(errors="replace"))}


def format_profile(title: str, profile: dict[str, Any]) -> str:
    """The two tables of a ``read_profile`` (or the ``error`` of a profile that failed)."""
    if "error" in profile:
        return f"{title}: no profile: {profile['error']}"
    lines = [f"{title}: {profile['samples']} samples, {profile['raw']}"]
    for kind, label in (("own", "own samples"), ("cumulative", "cumulative samples")):
        lines.append(f"  top {len(profile[kind])} functions by {label}:")
        lines.append(f"  {'samples':>8} {'%':>6}  function")
        lines.extend(
            f"  {entry['samples']:>8} {entry['percent']:>6.1f}  {entry['function']}"
            for entry in profile[kind]
        )
    return "\n".join(lines)


def start_profiler(pid: int, output: Path, seconds: float, log: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of a running process (``--nonblocking``: never paused) into ``output``.

    ``seconds`` bounds it; ``stop_profiler`` ends it earlier, when the
    measured window ends. Raw stacks at 100 samples a second, idle ones
    (a thread waiting) left out, so the samples are the CPU's.

    Raises:
        RuntimeError: no py-spy (``py_spy``).
    """
    argv = [py_spy(), "record", "--format", "raw", "--rate", "100", "--nonblocking"]
    argv += ["--pid", str(pid), "--duration", str(max(1, round(seconds))), "-o", str(output)]
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def end_process(process: subprocess.Popen[Any], signum: int, timeout: float = 60.0) -> None:
    """Send ``signum`` to a process of ours if it still runs; wait ``timeout`` s, then kill it."""
    if process.poll() is None:
        process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def stop_profiler(profiler: subprocess.Popen[bytes], output: Path, log: Path) -> dict[str, Any]:
    """End ``start_profiler``'s process with SIGINT (it writes its output then); its profile.

    Returns:
        ``read_profile`` of ``output``, or ``{"error": ...}`` when py-spy
        failed (e.g. it may not read the process's memory) or wrote nothing.
    """
    end_process(profiler, signal.SIGINT)
    if profiler.returncode != 0 or not output.exists():
        said = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"py-spy exited {profiler.returncode}: {' / '.join(said)}"}
    return read_profile(output)


# --- controller runs -------------------------------------------------------------------


def start_controller(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` (the controller) from the repository with PATH alone, its output to ``log``.

    The environment is reduced to PATH (skopeo and the engine are found
    there), so nothing of the caller's overrides the config.
    """
    with log.open("wb") as output:
        return subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, env={"PATH": "/usr/bin:/bin"}
        )


def run_once(
    env: Environment,
    counters: Counters,
    config: Path,
    kubeconfig: Path,
    log: Path,
    profile: Path | None = None,
) -> Run:
    """``controller.py --once`` as a real process; its figures once it exited.

    The environment is reduced to PATH (skopeo and the engine are found
    there), so nothing of the caller's overrides the config. The CPU time of
    the controller (``RUSAGE_CHILDREN``), of each component and of the whole
    machine during the run goes to ``Run.cpu``.

    Args:
        profile: write a ``py-spy record --format raw --threads --idle``
            profile of the run there (collapsed stacks, every thread, waiting
            included); py-spy must be on PATH or next to this Python (``py_spy``).

    Raises:
        RuntimeError: no summary line (the controller crashed), or py-spy missing.
    """
    argv = controller_command(kubeconfig, config, "--once")
    if profile is not None:
        argv = [py_spy(), "record", "--format", "raw", "--threads", "--idle", "--rate", "100"]
        argv += ["--output", str(profile), "--", *controller_command(kubeconfig, config, "--once")]
    offsets = counters.registry_offsets()
    cpu_before = counters.cpu()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    started = time.monotonic()
    process = start_controller(argv, log)
    try:
        returncode = process.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_delta(cpu_before, counters.cpu(), wall)
    cpu["controller"] = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    summaries, patches = parse_log(log.read_text(errors="replace"))
    if not summaries:
        raise RuntimeError(f"controller printed no summary line (exit {returncode}): {log}")
    return Run(
        argv,
        returncode,
        launched,
        wall,
        log,
        summaries,
        patches,
        counters.registry_requests(offsets),
        cpu,
    )


def cpu_delta(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """CPU seconds each component used between two ``Counters.cpu`` readings.

    ``machine_busy`` is the machine's busy CPU seconds (all cores, every
    process: other users of the machine included); ``machine_steal`` the
    CPU seconds the hypervisor took for other guests; ``machine_capacity``
    is ``wall`` times the number of cores.
    """
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    delta["machine_capacity"] = wall * (os.cpu_count() or 1)
    return delta


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process used so far, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process from ``/proc/PID/status``, in MiB."""
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) / 1024.0  # kB
    return memory


def wait_for_summaries(
    log: Path, count: int, alive: Callable[[], bool], timeout: float
) -> list[dict[str, Any]]:
    """Poll a running controller's output until it printed ``count`` summary lines.

    Raises:
        RuntimeError: the process exited, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        summaries, _ = parse_log(log.read_text(errors="replace"))
        if len(summaries) >= count:
            return summaries
        if not alive():
            raise RuntimeError(f"controller loop exited before cycle {count}: {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {count} summary lines within {timeout:.0f}s: {log}")
        time.sleep(0.05)


def event_writes(delta: dict[str, Any]) -> int:
    """Event writes (any write verb on ``events``) in an ``api_delta``."""
    return sum(n for what, n in delta["writes_by"].items() if what.endswith(" events"))


def wait_for_writes(
    counters: Counters,
    since: Counter[tuple[str, str, str]],
    events: int,
    alive: Callable[[], bool],
    timeout: float,
    quiet: float = 1.0,
) -> dict[str, Any]:
    """Poll the API server until the controller's writes since ``since`` are all answered.

    Done when at least ``events`` Event writes were answered and no write
    on ``CONTROLLER_RESOURCES`` came for ``quiet`` seconds: the Events a
    cycle records wait in the controller's write pool
    (``cloner.ops.writes``) and are written after its summary line.

    Returns:
        ``events`` (Event writes since ``since``), ``writes`` (all of them
        on ``CONTROLLER_RESOURCES``), ``last_write`` (epoch seconds when the
        last change was seen), ``drained`` (False when ``timeout`` passed first).

    Raises:
        RuntimeError: the controller exited.
    """
    started = time.monotonic()
    seen: int | None = None
    changed, changed_at = started, time.time()
    while True:
        delta = api_delta(since, counters.apiserver_requests())
        now = time.monotonic()
        if delta["writes"] != seen:
            seen, changed, changed_at = delta["writes"], now, time.time()
        done = event_writes(delta) >= events and now - changed >= quiet
        if done or now - started > timeout:
            return {
                "events": event_writes(delta),
                "writes": delta["writes"],
                "last_write": changed_at,
                "drained": done,
            }
        if not alive():
            raise RuntimeError("controller loop exited while its writes were awaited")
        time.sleep(0.25)


def scrape_after(port: int, cycles: int, alive: Callable[[], bool]) -> dict[str, float]:
    """The controller's /metrics once they count ``cycles`` cycles (the summary line comes first).

    Raises:
        RuntimeError: the controller exited, or 30 seconds passed.
    """
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(port)
        counted = sum(
            value
            for key, value in samples.items()
            if key.startswith("image_cloner_reconcile_cycles_total")
        )
        if counted >= cycles:
            return samples
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the controller's metrics never counted {cycles} cycles")
        time.sleep(0.05)


def completion_figures(log: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The loop's first cycle, which finds the rollouts complete: when it ran, what it completed.

    Returns:
        ``started`` (epoch seconds of its ``state:`` line, the first of the
        cycle; None without one), ``cycle`` (s from that line to the summary
        line: the summary's ``duration`` leaves out the state read and the
        guard's following, which run before its clock starts), ``completed``
        (the guard's ``rolled out`` lines of the cycle), ``following`` (s from
        the cycle's start to its last ``rolled out`` line), ``times`` (s after
        the cycle's start of each ``rolled out`` line, sorted).
    """
    text = log.read_text(errors="replace")
    started = None
    times = []
    for line in text.splitlines():
        if started is None and (match := STATE_LINE.match(line)) is not None:
            started = log_time(match["time"])
        elif (match := COMPLETED_LINE.match(line)) is not None:
            at = log_time(match["time"])
            if at <= summary["at"]:
                times.append(at)
    zero = started if started is not None else float(summary["at"]) - float(summary["duration"])
    times = sorted(t - zero for t in times)
    return {
        "started": started,
        "cycle": float(summary["at"]) - zero,
        "completed": len(times),
        "following": times[-1] if times else None,
        "times": times,
    }


def follow_cycles(
    log: Path, pid: int, done: int, cycles: int, alive: Callable[[], bool]
) -> tuple[list[dict[str, Any]], list[float | None]]:
    """Follow a loop for ``cycles`` more cycles after ``done`` summary lines; its RSS after each.

    Returns:
        ``(summaries, rss)``: every summary line so far, and the VmRSS (MiB)
        of process ``pid`` read as soon as each of the ``cycles`` summary
        lines was seen (one poll, at most 50 ms, later).

    Raises:
        RuntimeError: the process exited, or 120 s plus 30 s per cycle passed.
    """
    deadline = time.monotonic() + 120 + 30 * cycles
    summaries: list[dict[str, Any]] = []
    rss: list[float | None] = []
    for cycle in range(done + 1, done + cycles + 1):
        summaries = wait_for_summaries(log, cycle, alive, max(1.0, deadline - time.monotonic()))
        rss.append(proc_memory(pid).get("VmRSS"))
    return summaries, rss


def controller_api_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """``image_cloner_api_requests_total`` between two scrapes, by ``outcome``."""
    delta = {}
    for key, value in after.items():
        if key.startswith("image_cloner_api_requests_total{"):
            outcome = dict(_LABEL.findall(key)).get("outcome", "")
            delta[outcome] = int(value - before.get(key, 0.0))
    return delta


def run_warm(
    env: Environment,
    counters: Counters,
    config: Path,
    kubeconfig: Path,
    log: Path,
    metrics_port: int,
    cycles: int,
    sample: Sequence[tuple[str, str]],
    profile: Path | None = None,
) -> dict[str, Any]:
    """The controller loop over workloads that are all patched: ``cycles`` warm cycles.

    The loop's first cycle (a restart: it reads the state, and finds every
    switch's rollout complete) is left out, and so are the cycles that run
    while the Events of the completed switches are written (until the API
    server saw them and then no write for a second); the counters are read
    after the next summary line and again ``cycles`` cycles later, the
    process's RSS after each of those cycles' summary lines. The loop is
    stopped with SIGTERM (exactly this process) and must exit 0.

    Args:
        profile: record the measured cycles with py-spy (``start_profiler``)
            into this file, from the first counters' reading to the last.

    Returns:
        The warm figures: ``summaries`` (of the measured cycles), ``registry``,
        ``api`` (the API server's delta), ``controller_api`` (the delta of
        ``image_cloner_api_requests_total`` by outcome), ``resource_versions_changed``
        (sampled workloads whose resourceVersion changed), ``memory`` (MiB),
        ``rss_per_cycle`` (VmRSS in MiB after each measured cycle), ``cpu``
        (``cpu_delta`` of the measured cycles, the controller's too),
        ``profile`` (``stop_profiler``'s, with ``profile`` only),
        ``returncode``, ``first_cycle`` (the restart cycle's summary and its
        registry requests), ``switches`` (the first cycle's completions, see
        ``completion_figures``, the wait for their Events, the cycles left
        out, the process's memory after the first cycle and once the
        Events were written, and the gauge and counter of
        ``SWITCHES_PENDING`` and ``SWITCHES_COMPLETED`` after the first and
        the last measured cycle).

    Raises:
        RuntimeError: the loop exited early or printed no summaries in time.
    """
    argv = controller_command(kubeconfig, config)
    offsets_start = counters.registry_offsets()
    api_start = counters.apiserver_requests()
    process = start_controller(argv, log)
    profiler = None
    spy_log = log.with_name(log.stem + "-py-spy.log")
    try:

        def alive() -> bool:
            return process.poll() is None

        first = wait_for_summaries(log, 1, alive, 600)
        first_registry = counters.registry_requests(offsets_start)
        own_first = scrape_after(metrics_port, 1, alive)
        completed_first = int(own_first.get(SWITCHES_COMPLETED, 0.0))
        memory_first = proc_memory(process.pid)
        drain = wait_for_writes(counters, api_start, completed_first, alive, 600)
        memory_drained = proc_memory(process.pid)
        # Measure from the end of a cycle, as after the first one.
        skip = len(parse_log(log.read_text(errors="replace"))[0]) + 1
        wait_for_summaries(log, skip, alive, 120)
        if profile is not None:
            profiler = start_profiler(process.pid, profile, 180 + 30 * cycles, spy_log)
        offsets = counters.registry_offsets()
        api_before = counters.apiserver_requests()
        own_before = scrape_after(metrics_port, skip, alive)
        versions_before = counters.resource_versions(sample)
        cpu_before = {**counters.cpu(), "controller": proc_cpu(process.pid)}
        window = time.monotonic()
        summaries, rss_per_cycle = follow_cycles(log, process.pid, skip, cycles, alive)
        cpu = cpu_delta(
            cpu_before,
            {**counters.cpu(), "controller": proc_cpu(process.pid)},
            time.monotonic() - window,
        )
        spied = None if profiler is None else stop_profiler(profiler, profile, spy_log)
        memory = proc_memory(process.pid)
        own_after = scrape_after(metrics_port, skip + cycles, alive)
        api_after = counters.apiserver_requests()
        registry = counters.registry_requests(offsets)
        versions_after = counters.resource_versions(sample)
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
            profiler.wait(timeout=10)
        end_process(process, signal.SIGTERM)
    switches = {
        **completion_figures(log, first[0]),
        "completed_first": completed_first,
        "pending_first": int(own_first.get(SWITCHES_PENDING, -1.0)),
        "events_written": drain["events"],
        "writes_after_first": drain["writes"],
        "events_drained": drain["drained"],
        "events_done_after": drain["last_write"] - float(first[0]["at"]),
        "cycles_left_out": skip - 1,
        "memory_first": memory_first,
        "memory_drained": memory_drained,
        "pending": int(own_after.get(SWITCHES_PENDING, -1.0)),
        "completed": int(own_after.get(SWITCHES_COMPLETED, -1.0)),
        "completed_measured": int(
            own_after.get(SWITCHES_COMPLETED, 0.0) - own_before.get(SWITCHES_COMPLETED, 0.0)
        ),
    }
    return {
        "argv": argv,
        "summaries": summaries[skip : skip + cycles],
        "registry": registry,
        "api": api_delta(api_before, api_after),
        "controller_api": controller_api_delta(own_before, own_after),
        "resource_versions_sampled": len(versions_before),
        "resource_versions_changed": sum(
            1 for key, version in versions_before.items() if versions_after.get(key) != version
        ),
        "memory": memory,
        "rss_per_cycle": rss_per_cycle,
        "cpu": cpu,
        **({} if spied is None else {"profile": spied}),
        "returncode": process.returncode,
        "first_cycle": {"summary": first[0], "registry": first_registry},
        "switches": switches,
        "log": str(log),
    }


# --- figures ---------------------------------------------------------------------------


def cycle_start(run: Run) -> float:
    """Epoch seconds when the run's first cycle started (its summary time minus duration)."""
    summary = run.summaries[0]
    return float(summary["at"]) - float(summary["duration"])


def cycle_figures(run: Run) -> dict[str, Any]:
    """A ``--once`` run's figures: wall, cycle duration, patches, rates, first/last patch.

    Returns:
        ``wall`` (s, process start to exit), ``duration`` (s, the summary
        line's), ``patched`` (workloads, the summary's), ``patches_per_s``
        (patched / duration), ``window_rate`` (patched / (last - first
        patch)), ``first_patch``/``last_patch`` (s after the cycle started),
        ``startup`` (s from process start to cycle start), ``api_failures``
        (``patch_failures + namespace_failures + list_failures``), ``registry``,
        ``summary``, ``returncode``, ``patch_times`` (s after the cycle
        started, sorted).
    """
    summary = run.summaries[0]
    zero = cycle_start(run)
    times = sorted(t - zero for t in run.patches.values())
    duration = float(summary["duration"])
    patched = int(summary.get("patched", 0))
    window = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "wall": run.wall,
        "duration": duration,
        "startup": zero - run.launched,
        "patched": patched,
        "patches_per_s": patched / duration if duration > 0 else None,
        "window_rate": len(times) / window if window > 0 else None,
        "first_patch": times[0] if times else None,
        "last_patch": times[-1] if times else None,
        "api_failures": sum(
            int(summary.get(k, 0)) for k in ("patch_failures", "namespace_failures")
        )
        + int(summary.get("list_failures", 0)),
        "registry": run.registry,
        "summary": summary,
        "returncode": run.returncode,
        "patch_times": times,
        "cpu": run.cpu,
        "log": str(run.log),
    }


def at_most(value: float | None, target: float) -> bool | None:
    """``value <= target``; None when there is no value."""
    return None if value is None else value <= target


def at_least(value: float | None, target: float) -> bool | None:
    """``value >= target``; None when there is no value."""
    return None if value is None else value >= target


def zero(phase: str, figure: str, value: float | None, unit: str) -> Row:
    """A figure whose target is 0."""
    return Row(phase, figure, value, unit, "0", value == 0)


def equal(phase: str, figure: str, value: float | None, unit: str, expected: int) -> Row:
    """A figure whose target is exactly ``expected``."""
    return Row(phase, figure, value, unit, f"= {expected}", value == expected)


def most(phase: str, figure: str, value: float | None, unit: str, target: float | None) -> Row:
    """A figure whose target is at most ``target`` (in ``unit``); informative when None."""
    if target is None:
        return Row(phase, figure, value, unit)
    return Row(phase, figure, value, unit, f"<= {target:g} {unit}", at_most(value, target))


def build_rows(result: dict[str, Any]) -> list[Row]:
    """The table: every figure of a result, next to its target (``targets_for`` its size)."""
    setup, cold, restart = (result[k] for k in ("setup", "cold", "restart"))
    size = result["size"]
    targets = targets_for(size["workloads"])
    cold_registry = cold["registry"]
    restart_registry = restart["registry"]
    cpu = cold.get("cpu") or {}
    latency = cold["api"].get("write_latency") or {}
    patch_ms = event_ms = None
    if "PATCH deployments" in latency:
        patch_ms = 1000.0 * latency["PATCH deployments"]
    if "POST events" in latency:
        event_ms = 1000.0 * latency["POST events"]
    busy = others = None
    if cpu.get("machine_capacity"):
        busy = 100.0 * cpu["machine_busy"] / cpu["machine_capacity"]
        ours = sum(v for k, v in cpu.items() if not k.startswith("machine"))
        others = cpu["machine_busy"] - ours
    return [
        Row("setup", "corpus build (public + owned copies)", setup["corpus_seconds"], "s"),
        Row("setup", "Deployments created", setup["created"], "workloads"),
        Row("setup", "containers", setup["containers"], "containers"),
        Row("setup", "creation rate", setup["create_rate"], "/s"),
        Row("cold", "wall time (process start to exit)", cold["wall"], "s"),
        most("cold", "cycle duration (summary line)", cold["duration"], "s", targets.cold_s),
        Row("cold", "start-up before the cycle", cold["startup"], "s"),
        Row(
            "cold",
            "after the cycle: Events and exit",
            cold["wall"] - cold["startup"] - cold["duration"],
            "s",
        ),
        Row(
            "cold", "Events created (POST events)", cold["api"]["writes_by"].get("POST events"), ""
        ),
        equal("cold", "workloads patched", cold["patched"], "workloads", size["workloads"]),
        Row(
            "cold",
            "patches/s (patched / cycle)",
            cold["patches_per_s"],
            "/s",
            f">= {targets.patches_per_s:g}/s",
            at_least(cold["patches_per_s"], targets.patches_per_s),
        ),
        Row("cold", "patches/s (first to last patch)", cold["window_rate"], "/s"),
        Row("cold", "first patch after cycle start", cold["first_patch"], "s"),
        Row("cold", "last patch after cycle start", cold["last_patch"], "s"),
        Row("cold", "registry requests, public", cold_registry["public"]["total"], "requests"),
        Row("cold", "registry requests, owned", cold_registry["owned"]["total"], "requests"),
        zero("cold", "API failures (summary line)", cold["api_failures"], "failures"),
        zero("cold", "API 429/5xx answers (API server)", cold["api"]["errors"], "answers"),
        Row("cold", "API writes (API server)", cold["api"]["writes"], "writes"),
        zero("cold", "exit code", cold["returncode"], ""),
        Row("cold", "API server time per PATCH deployments", patch_ms, "ms"),
        Row("cold", "API server time per POST events", event_ms, "ms"),
        Row("cold", "CPU: controller", cpu.get("controller"), "s"),
        Row("cold", "CPU: kube-apiserver", cpu.get("kube-apiserver"), "s"),
        Row("cold", "CPU: etcd", cpu.get("etcd"), "s"),
        Row("cold", "CPU: whole machine busy", busy, "%"),
        Row("cold", "CPU: other processes on the machine", others, "s"),
        Row("cold", "CPU: stolen by the hypervisor", cpu.get("machine_steal"), "s"),
        Row("restart", "wall time", restart["wall"], "s"),
        Row("restart", "cycle duration", restart["duration"], "s"),
        equal(
            "restart",
            "fresh workloads patched",
            restart["patched"],
            "workloads",
            size["restart_workloads"],
        ),
        Row("restart", "first patch after cycle start", restart["first_patch"], "s"),
        zero(
            "restart",
            "registry requests, public (source lookups)",
            restart_registry["public"]["total"],
            "requests",
        ),
        zero("restart", "registry requests, owned", restart_registry["owned"]["total"], "requests"),
        *rollout_rows(result),
        *warm_rows(result, targets),
    ]


def warm_rows(result: dict[str, Any], targets: Targets) -> list[Row]:
    """The measured warm cycles' figures, the guard's among them, next to ``targets``.

    CPU per cycle is each process's CPU seconds over the measured cycles
    (from the summary line before the first to the last one's) divided by
    their number; the RSS growth is the last measured cycle's VmRSS less the
    first's (``run_warm``'s ``rss_per_cycle``), None with fewer than two.
    """
    warm = result["warm"]
    durations = [float(s["duration"]) for s in warm["summaries"]]
    longest, median = max(durations), statistics.median(durations)
    warm_registry = warm["registry"]["public"]["total"] + warm["registry"]["owned"]["total"]
    first_registry = warm["first_cycle"]["registry"]
    first_total = first_registry["public"]["total"] + first_registry["owned"]["total"]
    quiet = sum(
        int(s.get("patched", 0)) + int(s.get("secrets_written", 0)) for s in warm["summaries"]
    )
    reads = sum(warm["controller_api"].values()) / max(1, len(durations))
    rss, hwm = warm["memory"].get("VmRSS"), warm["memory"].get("VmHWM")
    changed = warm["resource_versions_changed"]
    warm_cpu = warm.get("cpu") or {}
    warm_busy = None
    if warm_cpu.get("machine_capacity"):
        warm_busy = 100.0 * warm_cpu["machine_busy"] / warm_cpu["machine_capacity"]
    per_cycle = {
        name: seconds / max(1, len(durations))
        for name, seconds in warm_cpu.items()
        if not name.startswith("machine")
    }
    rss_per_cycle = [value for value in warm.get("rss_per_cycle") or () if value is not None]
    growth = rss_per_cycle[-1] - rss_per_cycle[0] if len(rss_per_cycle) > 1 else None
    return [
        Row("warm", "cycles measured", len(durations), "cycles"),
        most("warm", "cycle duration, max", longest, "s", targets.warm_cycle_s),
        most("warm", "cycle duration, median", median, "s", targets.warm_cycle_s),
        zero("warm", "writes (API server)", warm["api"]["writes"], "writes"),
        zero("warm", "patched + secrets_written (summary)", quiet, ""),
        zero(
            "warm",
            "sampled resourceVersions changed",
            changed,
            f"of {warm['resource_versions_sampled']}",
        ),
        Row("warm", "controller API requests per cycle", reads, "requests"),
        zero("warm", "registry requests", warm_registry, "requests"),
        zero("warm", "registry requests, loop's first cycle", first_total, "requests"),
        most(
            "warm",
            "CPU: controller per cycle",
            per_cycle.get("controller"),
            "s",
            targets.warm_controller_cpu_s,
        ),
        Row("warm", "CPU: kube-apiserver per cycle", per_cycle.get("kube-apiserver"), "s"),
        Row("warm", "CPU: etcd per cycle", per_cycle.get("etcd"), "s"),
        Row("warm", "CPU: whole machine busy", warm_busy, "%"),
        most("warm", "RSS (VmRSS)", rss, "MiB", targets.rss_mib),
        most("warm", "peak RSS (VmHWM)", hwm, "MiB", targets.rss_mib),
        most(
            "warm",
            "RSS growth, first to last warm cycle",
            growth,
            "MiB",
            targets.rss_growth_mib,
        ),
        *switch_rows(result),
        zero("warm", "loop exit code (SIGTERM)", warm["returncode"], ""),
    ]


def rollout_rows(result: dict[str, Any]) -> list[Row]:
    """The rollouts the bench wrote and the loop's first cycle, which completed the switches."""
    rollouts, warm = result.get("rollouts"), result["warm"]
    switches = warm.get("switches")
    if rollouts is None or switches is None:
        return []
    patched = result["cold"]["patched"]
    pending = switches["pending_first"]
    drained = switches["memory_drained"]
    return [
        equal(
            "rollout",
            "statuses written as rolled out (bench)",
            rollouts["written"],
            "workloads",
            patched,
        ),
        Row("rollout", "status writes: time (not the controller)", rollouts["seconds"], "s"),
        Row("rollout", "status writes: rate", rollouts["rate"], "/s"),
        Row("rollout", "switches completed: cycle", switches["cycle"], "s"),
        Row(
            "rollout",
            "switches completed: summary duration",
            float(warm["first_cycle"]["summary"]["duration"]),
            "s",
        ),
        Row("rollout", "switches completed: following", switches["following"], "s"),
        equal(
            "rollout",
            "switches completed in that cycle",
            switches["completed_first"],
            "switches",
            patched,
        ),
        zero("rollout", "switches pending after it", pending, "switches"),
        Row("rollout", "its Events written, after its summary", switches["events_done_after"], "s"),
        Row("rollout", "cycles left out meanwhile", switches["cycles_left_out"], "cycles"),
        Row("rollout", "RSS after that cycle", switches["memory_first"].get("VmRSS"), "MiB"),
        Row("rollout", "RSS once its Events were written", drained.get("VmRSS"), "MiB"),
        Row("rollout", "peak RSS by then (VmHWM)", drained.get("VmHWM"), "MiB"),
    ]


def switch_rows(result: dict[str, Any]) -> list[Row]:
    """The guard's gauge and counter after the measured warm cycles."""
    switches = result["warm"].get("switches")
    if switches is None:
        return []
    patched = result["cold"]["patched"]
    pending, completed = switches["pending"], switches["completed"]
    measured = switches["completed_measured"]
    return [
        zero("warm", "switches pending (gauge)", pending, "switches"),
        equal("warm", "switches completed (counter)", completed, "switches", patched),
        Row("warm", "switches completed in the measured cycles", measured, "switches"),
    ]


def format_value(value: float | None) -> str:
    """A figure for the table: integers as is, others with 2 decimals, "-" for none."""
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    """The table printed at the end: phase, figure, value, unit, target, verdict."""
    header = f"{'phase':<8} {'figure':<42} {'value':>10} {'unit':<10} {'target':<12} verdict"
    lines = [header]
    for row in rows:
        verdict = "" if row.ok is None else ("ok" if row.ok else "MISS")
        lines.append(
            f"{row.phase:<8} {row.figure:<42} {format_value(row.value):>10} "
            f"{row.unit:<10} {row.target:<12} {verdict}".rstrip()
        )
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def restart_phase(
    env: Environment,
    counters: Counters,
    size: Size,
    corpus: Any,
    once_config: Path,
    kubeconfig: Path,
    logs: Path,
) -> dict[str, Any]:
    """Fresh Deployments of the same images, ``--once`` with the state kept; then delete them.

    The warm cycle that follows runs over the cold cycle's workloads only, as
    issue 11 measured it.
    """
    restart_specs = workload_specs(size, corpus, "r", size.restart_workloads)
    create_deployments(env, restart_specs)
    restart_run = run_once(env, counters, once_config, kubeconfig, logs / "controller-restart.log")
    restart = cycle_figures(restart_run)
    print(
        f"restart: cycle {restart['duration']:.1f}s, {restart['patched']} patched, "
        f"registry {restart['registry']}",
        flush=True,
    )
    delete_deployments(env, restart_specs)
    return restart


def print_warm(warm: dict[str, Any]) -> None:
    """Two progress lines of ``run_warm``'s figures: the switches completed, the warm cycles."""
    switches = warm["switches"]
    print(
        f"switches completed: {switches['completed_first']} in the loop's first cycle "
        f"({switches['cycle']:.1f}s, summary duration "
        f"{float(warm['first_cycle']['summary']['duration']):.1f}s), their Events written "
        f"{switches['events_done_after']:.1f}s after it; then pending "
        f"{switches['pending']}, completed {switches['completed']}",
        flush=True,
    )
    rss = [None if value is None else round(value, 1) for value in warm["rss_per_cycle"]]
    durations = [s["duration"] for s in warm["summaries"]]
    print(f"warm: {durations} s, RSS after each {rss} MiB", flush=True)


def build_cluster_state(env: Environment, size: Size) -> tuple[Any, Any, float, float]:
    """The corpus (with owned copies), the namespaces and the Deployments.

    Returns:
        ``(corpus, specs, corpus seconds, creation seconds)``.
    """
    t0 = time.monotonic()
    corpus = build_corpus(env, size.images)
    corpus_seconds = time.monotonic() - t0
    print(f"{len(corpus)} images (and owned copies) in {corpus_seconds:.1f}s", flush=True)
    for index in range(size.namespaces):
        create_namespace(env, f"{NAMESPACE_PREFIX}{index}")
    specs = workload_specs(size, corpus, "w", size.workloads)
    create_seconds = create_deployments(env, specs)
    containers = sum(len(s[2]) for s in specs)
    print(
        f"{len(specs)} Deployments ({containers} containers) in {create_seconds:.1f}s "
        f"({len(specs) / create_seconds:.0f}/s)",
        flush=True,
    )
    return corpus, specs, corpus_seconds, create_seconds


def run(
    size: Size,
    backend: str,
    results_dir: Path,
    keep: bool,
    profile: bool = False,
    profile_warm: bool = False,
) -> dict[str, Any]:
    """Start an Environment, run every phase, stop it; return the result (also written).

    Args:
        profile: py-spy profile of the cold cycle (``run_once``), its top
            functions in ``cold["profile"]``.
        profile_warm: py-spy profile of the measured warm cycles
            (``run_warm``), its top functions in ``warm["profile"]``.

    Raises:
        RuntimeError, ComponentError, images.ImageBuildError: a phase could
            not run (see the module docstring's exit status).
    """
    kube_bin = ensure_components()
    workdir = Path(tempfile.mkdtemp(prefix="ic-scale-", dir="/tmp"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"work dir {workdir}", flush=True)
    started = time.monotonic()
    env = Environment.start(workdir, kube_bin=kube_bin)
    failed = True
    try:
        print(f"environment up in {time.monotonic() - started:.1f}s", flush=True)
        counters = Counters(env)
        kubeconfig = install_controller_rbac(env)
        corpus, specs, corpus_seconds, create_seconds = build_cluster_state(env, size)
        containers = sum(len(s[2]) for s in specs)
        common = {
            "copyBackend": backend,
            "controllerNamespace": STATE_NAMESPACE,
            "listPageSize": 500,
            "namespaces": {"include": [f"{NAMESPACE_PREFIX}*"]},
            "pollInterval": 2,
            # No controller-manager runs here, so no rollout completes by
            # itself: with rollout.canary each namespace would stay at its
            # first switched workload. write_config sets it off for every
            # API-server-only config; said here too, as issue 27 asks.
            # (write_rollouts plays the controller-manager's part instead.)
            "rollout": {"canary": False},
        }
        once_config = write_config(workdir / "once.yaml", env, owned_target(env), **common)
        metrics_port = free_port()
        loop_config = write_config(
            workdir / "loop.yaml", env, owned_target(env), **common, metricsPort=metrics_port
        )
        logs = workdir / "logs"

        api_before = counters.apiserver_requests()
        spy = results_dir / f"scale-{stamp}-cold.pyspy.txt" if profile else None
        warm_spy = results_dir / f"scale-{stamp}-warm.pyspy.txt" if profile_warm else None
        if profile or profile_warm:
            results_dir.mkdir(parents=True, exist_ok=True)
        cold_run = run_once(
            env, counters, once_config, kubeconfig, logs / "controller-cold.log", profile=spy
        )
        cold = {
            **cycle_figures(cold_run),
            "api": api_delta(api_before, counters.apiserver_requests()),
            **({} if spy is None else {"profile": read_profile(spy)}),
        }
        print(
            f"cold: wall {cold['wall']:.1f}s, cycle {cold['duration']:.1f}s, "
            f"{cold['patched']} patched",
            flush=True,
        )

        restart = restart_phase(env, counters, size, corpus, once_config, kubeconfig, logs)
        # The controller-manager's part: every switch of the cold cycle rolls out.
        rollouts = write_rollouts(env, cold_run.patches)
        print(
            f"rollouts: {rollouts['written']} Deployment statuses written as rolled out "
            f"in {rollouts['seconds']:.1f}s ({rollouts['rate'] or 0:.0f}/s)",
            flush=True,
        )
        step = max(1, len(specs) // size.sample)
        sample = [(ns, name) for ns, name, _ in specs[::step]][: size.sample]
        warm = run_warm(
            env,
            counters,
            loop_config,
            kubeconfig,
            logs / "controller-warm.log",
            metrics_port,
            size.warm_cycles,
            sample,
            profile=warm_spy,
        )
        print_warm(warm)
        targets = targets_for(size.workloads)
        result: dict[str, Any] = {
            "title": f"image-cloner scale bench: {size.workloads} workloads, "
            f"{size.images} images, copyBackend {backend} ({stamp})",
            "stamp": stamp,
            "backend": backend,
            "size": asdict(size),
            "setup": {
                "corpus_seconds": corpus_seconds,
                "created": len(specs),
                "containers": containers,
                "create_seconds": create_seconds,
                "create_rate": len(specs) / create_seconds,
            },
            "cold": cold,
            "restart": restart,
            "rollouts": rollouts,
            "warm": warm,
            "targets": asdict(targets),
            "timelines": {
                "cold": {
                    "label": f"cold cycle: {cold['patched']} workloads patched",
                    "ylabel": "workloads patched",
                    "t": cold["patch_times"],
                },
                "restart": {
                    "label": f"restart cycle: {restart['patched']} fresh workloads patched",
                    "ylabel": "workloads patched",
                    "t": restart["patch_times"],
                },
                "switches": {
                    "label": f"loop's first cycle: {len(warm['switches']['times'])} "
                    "switches followed to their completed rollout",
                    "ylabel": "switches completed",
                    "t": warm["switches"]["times"],
                },
            },
            "marks": {}
            if targets.cold_s is None
            else {"cold": [[targets.cold_s, f"target {targets.cold_s:g} s"]]},
        }
        result["rows"] = [asdict(row) for row in build_rows(result)]
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"scale-{stamp}.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        result["json"] = str(path)
        failed = False
        return result
    finally:
        with contextlib.suppress(Exception):
            env.stop()
        if keep or failed:
            print(f"work dir kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table; the exit status of the docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=None, help="Deployments (10000)")
    parser.add_argument("--restart-workloads", type=int, default=None, help="fresh ones (1000)")
    parser.add_argument("--images", type=int, default=None, help="distinct images (200)")
    parser.add_argument("--namespaces", type=int, default=None, help="namespaces (50)")
    parser.add_argument("--warm-cycles", type=int, default=None, help="warm cycles measured (3)")
    parser.add_argument("--backend", choices=["skopeo", "docker"], default="skopeo")
    parser.add_argument("--smoke", action="store_true", help="~50 workloads, 10 images")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and data")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profile of the cold cycle (raw stacks)"
    )
    parser.add_argument(
        "--profile-warm",
        action="store_true",
        help=f"py-spy profile of the measured warm cycles (top {PROFILE_TOP} functions)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    base = SMOKE if args.smoke else FULL
    size = Size(
        workloads=args.workloads or base.workloads,
        restart_workloads=args.restart_workloads or base.restart_workloads,
        images=args.images or base.images,
        namespaces=args.namespaces or base.namespaces,
        warm_cycles=args.warm_cycles or base.warm_cycles,
        sample=base.sample,
    )
    if min(size.workloads, size.restart_workloads, size.images, size.namespaces) < 1:
        parser.error("sizes must be at least 1")
    if args.profile or args.profile_warm:
        try:
            py_spy()
        except RuntimeError as error:
            parser.error(str(error))
    result = run(
        size,
        args.backend,
        args.results_dir,
        args.keep_workdir,
        profile=args.profile,
        profile_warm=args.profile_warm,
    )
    rows = [Row(**row) for row in result["rows"]]
    for phase in ("cold", "warm"):
        if "profile" in result[phase]:
            print(f"\n{format_profile(f'{phase} profile (py-spy)', result[phase]['profile'])}")
    print()
    print(format_table(rows))
    print(f"\njson: {result['json']}")
    if not args.no_plot:
        from bench.plot import plot_result

        print(f"plot: {plot_result(Path(result['json']))}")
    missed = [row.figure for row in rows if row.ok is False]
    print(f"targets missed: {len(missed)}" + (f" ({'; '.join(missed)})" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
