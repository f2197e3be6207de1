"""Figures from logs for bench/copies.py: registry access logs and controller log lines. Pure.

Nothing here does I/O; ``bench/copies.py`` reads the files and passes the text.

Registry access log: CNCF distribution 2.8 writes one combined-log-format
line per request (gorilla ``handlers.CombinedLoggingHandler``)::

    127.0.0.1 - - [01/Dec/2026:21:45:48 +0000] "GET /v2/a/blobs/sha256:de0a... HTTP/1.1" 200 1002 ""

The number after the status is the bytes of the *response* body, so it
measures what a registry served (blobs pulled from the public registry), not
what it received. What the owned registry received is derived from the
uploads it completed: ``PUT /v2/<name>/blobs/uploads/<uuid>?...digest=<d>``
answered 201 (distribution spec ``spec.md`` "Pushing blobs"), each counted
with the size of blob ``<d>`` as stored.

Controller log (``controller.py`` text format, ``%(asctime)s`` local time
with milliseconds): ``cloner.ops.cloning`` logs ``copying SRC (DIGEST) to OWNED``
when a copy starts and ``cloned SRC to OWNED (DIGEST)`` when it is verified;
``cloner.ops.reconcile`` logs ``patched NS/KIND/NAME container C: OLD -> NEW``
after each patch.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

_ACCESS_RE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>/v2/\S*) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\d+|-)'
)
_DIGEST_RE = re.compile(r"[?&]digest=(?P<digest>sha256(?::|%3A)[0-9a-f]{64})", re.I)
_LOG_TIME_RE = re.compile(r"^(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")
METHODS = ("HEAD", "GET", "PUT", "POST", "PATCH")
PHASES = ("startup", "prepare", "copies", "patches", "exit")


@dataclass(frozen=True, slots=True)
class Access:
    """One request from a registry access log.

    Attributes:
        method: HTTP method. path: the request target (with query).
        status: the HTTP status answered. size: response body bytes (0 for ``-``).
    """

    method: str
    path: str
    status: int
    size: int

    @property
    def kind(self) -> str:
        """``manifest``, ``blob``, ``upload``, ``tags`` or ``base`` (``/v2/``), from the path."""
        path = self.path.split("?", 1)[0]
        if "/blobs/uploads/" in path or path.endswith("/blobs/uploads"):
            return "upload"
        if "/blobs/" in path:
            return "blob"
        if "/manifests/" in path:
            return "manifest"
        if "/tags/" in path:
            return "tags"
        return "base"


def parse_access(text: str) -> list[Access]:
    """Every access-log request in ``text`` (other lines, such as logrus lines, are skipped)."""
    out = []
    for line in text.splitlines():
        match = _ACCESS_RE.search(line)
        if match:
            size = match.group("size")
            out.append(
                Access(
                    match.group("method"),
                    match.group("path"),
                    int(match.group("status")),
                    0 if size == "-" else int(size),
                )
            )
    return out


def request_counts(accesses: Iterable[Access]) -> dict[str, int]:
    """Requests by method (``HEAD`` ... ``PATCH``, others under their name), plus totals.

    Returns:
        method -> count, ``total``, and ``unauthorized`` (answered 401: the
        auth challenge a client gets before it sends credentials).
    """
    counts: Counter[str] = Counter({method: 0 for method in METHODS})
    for access in accesses:
        counts[access.method] += 1
        counts["total"] += 1
        if access.status == 401:
            counts["unauthorized"] += 1
    counts.setdefault("total", 0)
    counts.setdefault("unauthorized", 0)
    return dict(counts)


def request_profile(accesses: Iterable[Access]) -> dict[str, int]:
    """Requests by ``METHOD kind`` (e.g. ``HEAD manifest``, ``GET blob``), for the profile."""
    return dict(Counter(f"{a.method} {a.kind}" for a in accesses))


def blob_bytes_served(accesses: Iterable[Access]) -> int:
    """Bytes of blob bodies served: ``GET .../blobs/<digest>`` answered 200 (bytes)."""
    return sum(
        a.size for a in accesses if a.method == "GET" and a.kind == "blob" and a.status == 200
    )


def manifest_bytes_served(accesses: Iterable[Access]) -> int:
    """Bytes of manifest bodies served: ``GET .../manifests/<ref>`` answered 200 (bytes)."""
    return sum(
        a.size for a in accesses if a.method == "GET" and a.kind == "manifest" and a.status == 200
    )


def completed_uploads(accesses: Iterable[Access]) -> list[str]:
    """Digests of the completed blob uploads: ``PUT`` of an upload with ``digest=``, 201."""
    out = []
    for access in accesses:
        if access.method == "PUT" and access.kind == "upload" and access.status == 201:
            match = _DIGEST_RE.search(access.path)
            if match:
                out.append(match.group("digest").replace("%3A", ":").replace("%3a", ":"))
    return out


def mounts(accesses: Iterable[Access]) -> int:
    """Cross-repository blob mounts the registry made (``POST ...?mount=`` answered 201)."""
    return sum(
        1
        for a in accesses
        if a.method == "POST" and a.kind == "upload" and "mount=" in a.path and a.status == 201
    )


def uploaded_bytes(accesses: Iterable[Access], sizes: Mapping[str, int]) -> int:
    """Bytes of the blobs whose upload completed, each upload counted (a blob pushed twice: twice).

    Args:
        accesses: the owned registry's requests of one run.
        sizes: digest -> size in bytes (from the registry's storage); a digest
            missing from it counts 0.
    """
    return sum(sizes.get(digest, 0) for digest in completed_uploads(accesses))


def log_time(line: str) -> float | None:
    """Epoch seconds of a controller log line's ``asctime`` (local time), None if it has none."""
    match = _LOG_TIME_RE.match(line)
    if not match:
        return None
    parsed = datetime.strptime(match.group("time"), "%Y-%m-%d %H:%M:%S,%f")
    return time.mktime(parsed.timetuple()) + parsed.microsecond / 1e6


def patch_times(log: str) -> list[float]:
    """Epoch seconds of every ``patched ... container`` line, in log order."""
    out = []
    for line in log.splitlines():
        if " cloner.ops.reconcile: patched " in line and " container " in line:
            at = log_time(line)
            if at is not None:
                out.append(at)
    return out


@dataclass(frozen=True, slots=True)
class CopySpan:
    """One copy the controller made: from ``copying`` to ``cloned`` (epoch seconds)."""

    source: str
    start: float
    end: float


_COPYING_RE = re.compile(r" cloner\.ops\.cloning: copying (?P<source>\S+) \(")
_CLONED_RE = re.compile(r" cloner\.ops\.cloning: cloned (?P<source>\S+) to ")


def copy_spans(log: str) -> list[CopySpan]:
    """The copies of a controller log, paired by source (a start without an end is dropped)."""
    started: dict[str, float] = {}
    spans = []
    for line in log.splitlines():
        at = log_time(line)
        if at is None:
            continue
        match = _COPYING_RE.search(line)
        if match:
            started[match.group("source")] = at
            continue
        match = _CLONED_RE.search(line)
        if match and match.group("source") in started:
            source = match.group("source")
            spans.append(CopySpan(source, started.pop(source), at))
    return spans


def phases(log: str, started: float, ended: float) -> dict[str, float | None]:
    """Where a ``controller.py --once`` run spent its wall time (seconds each).

    Args:
        log: the controller's log (stderr).
        started, ended: epoch seconds when the process was started and had exited.

    Returns:
        ``startup`` (process start to its first log line: interpreter and
        imports), ``prepare`` (to the first copy: config, lists, plan, source
        and owned HEADs of the first image), ``copies`` (first copy start to
        the last verified copy), ``patches`` (from there to the summary line:
        pull secrets, patches, Events), ``exit`` (summary line to process
        end). A phase whose lines are missing is None.
    """
    times = [t for t in (log_time(line) for line in log.splitlines()) if t is not None]
    spans = copy_spans(log)
    summary = [
        log_time(line) for line in log.splitlines() if " cloner.ops.loop: reconcile: " in line
    ]
    first = times[0] if times else None
    copy_start = min((s.start for s in spans), default=None)
    copy_end = max((s.end for s in spans), default=None)
    done = summary[-1] if summary else None

    def between(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {
        "startup": between(started, first),
        "prepare": between(first, copy_start),
        "copies": between(copy_start, copy_end),
        "patches": between(copy_end, done),
        "exit": between(done, ended),
    }


def max_overlap(spans: Sequence[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant (0 for none)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def median(values: Sequence[float]) -> float | None:
    """The median, None for no values."""
    return statistics.median(values) if values else None


def machine_cpu(stat: str, ticks: int) -> tuple[float, float]:
    """Busy and stolen CPU seconds of all cores from the text of ``/proc/stat``.

    Its first line is ``cpu user nice system idle iowait irq softirq steal
    ...`` in clock ticks (proc(5)). Busy is all but idle, iowait and steal;
    steal is the time the hypervisor ran other guests while this one wanted
    to run, which slows every figure of a run.

    Args:
        stat: the file's text.
        ticks: clock ticks per second (``os.sysconf("SC_CLK_TCK")``).

    Returns:
        ``(busy, steal)`` in seconds since boot.
    """
    values = [int(v) for v in stat.split("\n", 1)[0].split()[1:]]
    busy = sum(values[:7]) - values[3] - values[4]
    steal = values[7] if len(values) > 7 else 0
    return busy / ticks, steal / ticks


def cpu_floor(loop: Mapping[str, float | None], backend: str, cpus: int) -> float | None:
    """The lowest wall-time ratio to the loop that this machine's CPUs allow. Pure.

    The work a contender must cause as the loop did: for the docker loop,
    everything but the loop's own docker CLI processes (the engine, the
    registries, the kernel's part: ``cpu_machine_s - cpu_children_s``); for
    the skopeo loop, everything (the backend runs the same skopeo copies).
    Spread over ``cpus`` CPUs with none idle, it takes at least that CPU time
    / ``cpus`` seconds of wall time; divided by the loop's median wall time
    that is a ratio no contender beats without less work. The contender's
    own CPU (Python start-up, checks, patches) comes on top.

    Args:
        loop: the loop's summary (``cpu_machine_s``, ``cpu_children_s``,
            ``wall_median_s``, seconds).
        backend: ``docker`` or ``skopeo``.
        cpus: CPUs of the machine; 0 or unknown CPU figures give None.

    Returns:
        The ratio, or None when it cannot be computed.
    """
    machine, children = loop.get("cpu_machine_s"), loop.get("cpu_children_s")
    if machine is None or children is None:
        return None
    required = machine - children if backend == "docker" else machine
    return cpu_ratio(required, cpus, loop.get("wall_median_s"))


def cpu_ratio(cpu_seconds: float | None, cpus: int, wall: float | None) -> float | None:
    """``cpu_seconds`` spread over ``cpus`` CPUs, over ``wall`` seconds. Pure.

    Returns:
        The ratio, or None when a figure is missing (or ``cpus``/``wall`` is 0).
    """
    if cpu_seconds is None or not cpus or not wall:
        return None
    return cpu_seconds / cpus / wall
