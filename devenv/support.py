"""Helpers shared by the end-to-end tests: a per-test Scope, workload I/O, controller runs."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from cloner.model.workloads import kind_info, pod_spec_of
from devenv.harness import LOOPBACK, Environment, Registry, free_port
from devenv.workloads import Containers, workload

REPO = Path(__file__).resolve().parents[1]
# Runs the command after it as the shipped image's user (the Dockerfile's
# USER 10001), in a user namespace mapped to this process's user: files stay
# readable and writable, while skopeo sees an euid other than 0 and keeps its
# blob info cache under XDG_DATA_HOME as it does for any user but root
# (containers/image ``blobInfoCacheDir``; root's is the machine-wide
# /var/lib/containers/cache). No network namespace: loopback stays reachable.
SHIPPED_USER = ("unshare", "--user", "--map-user=10001", "--map-group=10001")


@dataclass
class Scope:
    """One test's slice of the shared environment."""

    env: Environment
    namespace: str
    target: str  # owned host + per-test prefix
    config: Path
    kubeconfig: Path  # the controller's: image-cloner ServiceAccount token

    @property
    def public(self) -> Registry:
        return self.env.public

    def run(self, config: Path | None = None, *args: str) -> subprocess.CompletedProcess[str]:
        """``controller.py --once`` as the image-cloner ServiceAccount."""
        return run_controller(self.env, config or self.config, *args, kubeconfig=self.kubeconfig)

    def source(self, name: str) -> str:
        """A reference in the public registry, unique to this test."""
        return f"{self.public.host}/{self.namespace}/{name}"

    def owned_repository(self, source_name: str, host: str | None = None) -> str:
        """The owned repository (path on the owned registry) of ``source(name)``'s repo.

        ``host`` is the source's registry when it is not the public one
        (a ``RegistryProxy`` in front of it).
        """
        component = (host or self.public.host).replace(":", "-")
        prefix = self.target.split("/", 1)[1]
        return f"{prefix}/{component}/{self.namespace}/{source_name}"

    def owned(self, source_name: str, host: str | None = None) -> str:
        return f"{self.env.owned.host}/{self.owned_repository(source_name, host)}"

    def write_config(self, name: str, **extra: Any) -> Path:
        """A controller config file ``name`` beside the test's own (:func:`write_config`).

        Its ``target`` is the test's and it covers only the test's namespace,
        unless ``extra`` (keys of the config file, added as given) says otherwise.
        """
        target = extra.pop("target", self.target)
        extra.setdefault("namespaces", {"include": [self.namespace]})
        return write_config(self.config.with_name(name), self.env, target, **extra)

    def metrics_config(self, name: str, **extra: Any) -> tuple[Path, int]:
        """:meth:`write_config` with /metrics served on 127.0.0.1 at a free port; and the port."""
        port = free_port()
        config = self.write_config(name, metricsPort=port, metricsAddress=LOOPBACK, **extra)
        return config, port


def create_namespace(env: Environment, name: str, **metadata: Any) -> None:
    """Create a namespace with its ``default`` ServiceAccount.

    There is no kube-controller-manager, so the ServiceAccount controller that
    would add ``default`` is played here.
    """
    with closing(env.api_client()) as api:
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name, **metadata}})
        core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})


def install_controller_rbac(env: Environment) -> Path:
    """Apply manifests/ namespace and RBAC; return the image-cloner ServiceAccount's kubeconfig.

    The RBAC is ``rbac.yaml`` (the ClusterRole), ``leader-election-rbac.yaml``
    (the Role for the Lease in namespace image-cloner) and ``state-rbac.yaml``
    (the Role for the durable-state ConfigMaps there).
    """
    env.run_kubectl("apply", "-f", str(REPO / "manifests" / "base" / "namespace.yaml"))
    env.run_kubectl("apply", "-f", str(REPO / "manifests" / "base" / "rbac.yaml"))
    env.run_kubectl("apply", "-f", str(REPO / "manifests" / "base" / "leader-election-rbac.yaml"))
    env.run_kubectl("apply", "-f", str(REPO / "manifests" / "base" / "state-rbac.yaml"))
    return env.service_account_kubeconfig("image-cloner", "image-cloner")


def write_config(path: Path, env: Environment, target: str, **extra: Any) -> Path:
    config = {
        "target": target,
        "pollInterval": 1,
        "dockerHost": env.docker_host,
        "dockerConfig": str(env.docker_config),
        "dockerTimeout": 120,
        "metricsPort": 0,
        "leaderElection": {"enabled": False},
        "backoff": {"initial": 0.5, "max": 2},
        # The registries (and any test proxy) listen on 127.0.0.1, which the
        # engine reaches without TLS verification: allow them explicitly.
        "insecureRegistries": ["127.0.0.1:*"],
        # This environment has no controller-manager, so no rollout ever
        # completes: with the canary of rollout.canary each namespace would
        # stay at its first switched workload. The guard still follows and
        # would undo failures; the cluster tests (test_cluster.py,
        # test_rollout_guard.py) run it with the canary.
        "rollout": {"canary": False},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def controller_command(kubeconfig: Path, config: Path, *args: str) -> list[str]:
    """The command line that runs ``controller.py`` with this Python."""
    return [
        sys.executable,
        str(REPO / "controller.py"),
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
        *args,
    ]


def run_python(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this Python, from the repository; output captured, not checked."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def run_controller(
    env: Environment,
    config: Path,
    *args: str,
    timeout: float = 300,
    kubeconfig: Path | None = None,
    once: bool = True,
    wrapper: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``controller.py --once`` as a real process; returns its result (output captured).

    The environment is reduced to PATH (and ``extra_env``, such as TMPDIR)
    so no DOCKER_HOST or KUBECONFIG of the caller overrides the test's
    settings. ``wrapper`` is a command that execs the controller's command
    line after it (``unshare --user ...``).
    """
    return subprocess.run(
        [
            *wrapper,
            *controller_command(
                kubeconfig or env.kubeconfig, config, *(("--once",) if once else ()), *args
            ),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(extra_env or {})},
    )


#: The generated client's API class of each group version in ``KIND_INFO``.
_GROUP_APIS: Mapping[str, Callable[[kubernetes.client.ApiClient], Any]] = {
    "apps/v1": kubernetes.client.AppsV1Api,
    "batch/v1": kubernetes.client.BatchV1Api,
    "v1": kubernetes.client.CoreV1Api,
}


def _call(api: kubernetes.client.ApiClient, verb: str, kind: str) -> Callable[..., Any]:
    """The generated client's ``<verb>_namespaced_<kind>`` method (the kind table names it)."""
    info = kind_info(kind)
    return getattr(_GROUP_APIS[info.group_version](api), f"{verb}_namespaced_{info.snake}")


def create(
    api: kubernetes.client.ApiClient,
    kind: str,
    namespace: str,
    name: str,
    containers: Containers,
    init: Containers | None = None,
    **fields: Any,
) -> None:
    """Create a workload of any kind with the given images, labelled ``app=NAME``.

    ``fields`` go to :func:`devenv.workloads.workload` (``pod=``, ``spec=``...).
    """
    body = workload(kind, name, containers, init=init, labels={"app": name}, **fields)
    _call(api, "create", kind)(namespace, body)


def read(api: kubernetes.client.ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """The workload as the API server holds it (raw JSON)."""
    return json.loads(_call(api, "read", kind)(name, namespace, _preload_content=False).data)


def images(obj: Mapping[str, Any], kind: str | None = None) -> dict[str, str]:
    """Container name -> image, init containers included.

    ``kind`` for the items of a list, which carry none of their own.
    """
    spec = pod_spec_of(kind or obj["kind"], obj)
    return {c["name"]: c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}


def push_to_owned(env: Environment, source: str, owned: str) -> str:
    """Copy an image into the owned registry with the test's own credentials; return digest."""
    repository, tag = owned.rsplit(":", 1)
    with closing(env.docker_client()) as client:
        client.images.pull(source)
        client.api.tag(source, repository, tag)
        for line in client.api.push(
            repository,
            tag=tag,
            stream=True,
            decode=True,
            auth_config={"username": env.owned.username, "password": env.owned.password},
        ):
            assert "error" not in line, line
        client.api.remove_image(owned)
    digest = env.owned.manifest_digest(repository.split("/", 1)[1], tag)
    assert digest is not None
    return digest


def request_lines(registry: Registry, start: int = 0) -> list[str]:
    """Access-log lines the registry wrote after byte offset ``start``."""
    with open(registry.log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return [
        line for line in text.splitlines() if re.search(r'"(GET|HEAD|PUT|POST|PATCH) /v2/', line)
    ]


def blob_gets(registry: Registry, digest: str, start: int = 0) -> list[str]:
    """Access-log lines after ``start`` that GET the blob ``digest`` (its bytes were sent)."""
    return [
        line
        for line in request_lines(registry, start)
        if '"GET ' in line and f"/blobs/{digest}" in line
    ]


def blob_uploads(registry: Registry, start: int = 0) -> list[str]:
    """Access-log lines after ``start`` that complete a blob upload (``PUT .../blobs/uploads/``)."""
    return [
        line
        for line in request_lines(registry, start)
        if '"PUT ' in line and "/blobs/uploads/" in line
    ]


def log_size(registry: Registry) -> int:
    return registry.log_path.stat().st_size


def scrape(port: int) -> dict[str, float]:
    """Samples of the controller's /metrics: ``name{labels}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def secrets_holding(env: Environment, *needles: str) -> list[str]:
    """``namespace/name`` of every Secret of the cluster in which a needle shows.

    Every ``data`` value is decoded (base64), and in a ``.dockerconfigjson``
    every ``auth`` too (base64 of ``user:password``).
    """
    listed = json.loads(env.run_kubectl("get", "secrets", "-A", "-o", "json").stdout)
    found = []
    for secret in listed["items"]:
        texts = []
        for key, value in (secret.get("data") or {}).items():
            text = base64.b64decode(value).decode("utf-8", "replace")
            texts.append(text)
            if key == ".dockerconfigjson":
                for entry in json.loads(text).get("auths", {}).values():
                    texts.append(base64.b64decode(entry.get("auth", "")).decode("utf-8", "replace"))
        if any(needle in text for needle in needles for text in texts):
            meta = secret["metadata"]
            found.append(f"{meta['namespace']}/{meta['name']}")
    return found


def start_controller(
    kubeconfig: Path, config: Path, *args: str
) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """Start the controller loop as a process; its output lines are collected as they come.

    Returns:
        The process, its output lines so far, and the thread reading them
        (it ends with the process's output). The caller stops the process.
    """
    process = subprocess.Popen(
        controller_command(kubeconfig, config, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    assert process.stdout is not None
    stream = process.stdout
    reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    reader.start()
    return process, lines, reader


@contextmanager
def controller_loop(kubeconfig: Path, config: Path, *args: str) -> Iterator[list[str]]:
    """Run the controller loop as a process; yields its output lines (filled as they come).

    On exit it sends SIGTERM and asserts the process exited 0 within 30 s.
    """
    process, lines, reader = start_controller(kubeconfig, config, *args)
    try:
        yield lines
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        reader.join(timeout=5)
    assert process.returncode == 0, "".join(lines[-50:])


# --- a loopback proxy in front of a registry, for injected faults ------------------

#: ``/v2/<name>/manifests/<reference>`` (distribution spec "Pulling manifests").
MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/?]+)(?:\?.*)?$")

#: Hop-by-hop headers (RFC 9110 7.6.1), and those the proxy sets itself.
_NOT_FORWARDED = (
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-length",
    "date",
    "server",
)


@dataclass(frozen=True)
class Fault:
    """An answer the proxy gives instead of forwarding.

    Attributes:
        status: the HTTP status, e.g. 429 or 500.
        code: the distribution-spec error code of the JSON body, e.g. ``TOOMANYREQUESTS``.
        message: the error message of the body.
        headers: extra response headers, e.g. ``{"Retry-After": "6"}``.
    """

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


#: Requests that change a registry (distribution spec: uploads, manifest puts, deletes).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The answer to a write by a read-only user (distribution's own for a denied scope).
DENIED = Fault(403, "DENIED", "requested access to the resource is denied")


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy received.

    Attributes:
        at: ``time.monotonic()`` when it arrived (seconds; the test's own clock).
        method, path: as received.
        status: what the proxy answered (the upstream's status or the fault's).
        user: the user name of its ``Authorization: Basic`` header, ``""`` without one.
        agent: its ``User-Agent`` header (``containerd/...`` for the kubelet's pulls).
    """

    at: float
    method: str
    path: str
    status: int
    user: str = ""
    agent: str = ""

    @property
    def is_manifest(self) -> bool:
        """A GET or HEAD of ``/v2/<name>/manifests/<reference>``."""
        return self.method in ("GET", "HEAD") and MANIFEST_PATH.match(self.path) is not None


class RegistryProxy(http.server.ThreadingHTTPServer):
    """A loopback HTTP proxy in front of a real registry that can inject faults.

    Every request is recorded (``requests``) with its arrival time and the
    status answered. ``fault(method, path)`` decides per request: a ``Fault``
    is answered instead of forwarding, None forwards it unchanged (method,
    path, body and headers; the response's status, headers such as
    ``WWW-Authenticate``, ``Docker-Content-Digest``, ``Content-Type`` and
    ``Location``, and body; a HEAD keeps the upstream's ``Content-Length``).

    ``hold(method, path)`` True keeps a request waiting before it is
    forwarded, until ``release()`` (a registry that has stopped answering);
    such requests are in ``held`` from the moment they arrived.

    Each record names the basic-auth user of the request (``user``): with
    ``read_only`` users, every write (``WRITE_METHODS``) one of them sends is
    answered 403 ``DENIED`` and never forwarded, so the registry behind
    holds an account that can only pull. Request bodies may be sent with a
    length or chunked (``docker push`` streams layers chunked); they are
    forwarded with a length.

    Args:
        upstream: ``host:port`` of the registry (plain HTTP).
        fault: the per-request decision; called on the handler's thread,
            under the proxy's lock (so counting faults is safe).
        hold: which requests wait for ``release()``; none when not given.
        read_only: user names whose writes are refused.
    """

    daemon_threads = True

    def __init__(
        self,
        upstream: str,
        fault: Callable[[str, str], Fault | None] | None = None,
        hold: Callable[[str, str], bool] | None = None,
        read_only: Collection[str] = (),
    ) -> None:
        self.upstream = upstream
        self.fault = fault or (lambda _method, _path: None)
        self.hold = hold or (lambda _method, _path: False)
        self.read_only = frozenset(read_only)
        self.held: list[tuple[str, str]] = []
        self.released = threading.Event()
        self.requests: list[ProxiedRequest] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RegistryProxyHandler)

    def release(self) -> None:
        """Forward every held request, and stop holding new ones."""
        self.released.set()

    def hold_again(self) -> None:
        """Hold the requests ``hold`` picks from now on again; ``held`` starts empty."""
        with self.lock:
            self.held.clear()
            self.released.clear()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: use it as the registry host of image references."""
        return f"127.0.0.1:{self.server_address[1]}"

    def record(self, request: ProxiedRequest) -> None:
        with self.lock:
            self.requests.append(request)

    def decide(self, method: str, path: str, user: str) -> Fault | None:
        """The fault to answer with, if any: a read-only user's write, then ``fault``.

        Called under the proxy's lock.
        """
        if user in self.read_only and method in WRITE_METHODS:
            return DENIED
        return self.fault(method, path)

    def log_lines(self) -> list[str]:
        """One line per request so far: ``METHOD path status user=... agent=...``."""
        with self.lock:
            return [
                f"{r.method} {r.path} {r.status} user={r.user or '-'} agent={r.agent or '-'}"
                for r in self.requests
            ]

    def requests_between(self, start: float, end: float) -> list[ProxiedRequest]:
        """Requests that arrived at ``start < at < end`` (monotonic seconds)."""
        with self.lock:
            return [r for r in self.requests if start < r.at < end]


class _RegistryProxyHandler(http.server.BaseHTTPRequestHandler):
    server: RegistryProxy

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer_fault(self, fault: Fault) -> None:
        body = json.dumps({"errors": [{"code": fault.code, "message": fault.message}]}).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/json")
        for key, value in fault.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _user(self) -> str:
        """The user name of the request's ``Authorization: Basic`` header, ``""`` without one."""
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return ""
        try:
            return base64.b64decode(value.strip()).decode("utf-8").partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return ""

    def _body(self) -> bytes | None:
        """The request body (None without one), read by its length or chunk by chunk."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
            while self.rfile.readline().strip():  # trailer fields, up to the empty line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self) -> None:
        arrived = time.monotonic()
        body = self._body()
        request = ProxiedRequest(
            arrived, self.command, self.path, 0, self._user(), self.headers.get("User-Agent", "")
        )
        with self.server.lock:
            fault = self.server.decide(request.method, request.path, request.user)
        if fault is not None:
            self.server.record(replace(request, status=fault.status))
            self._answer_fault(fault)
            return
        with self.server.lock:
            held = not self.server.released.is_set() and self.server.hold(self.command, self.path)
            if held:
                self.server.held.append((self.command, self.path))
        if held:
            self.server.released.wait(timeout=300)
        connection = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            # Every header line as sent, repeated ones too (clients send one
            # Accept line per media type); Host is kept, so URLs the registry
            # builds (Location) point at the proxy. A body goes with its length.
            connection.putrequest(
                self.command, self.path, skip_host=True, skip_accept_encoding=True
            )
            framing = ("content-length", "transfer-encoding")
            for key, value in self.headers.items():
                if key.lower() not in framing:
                    connection.putheader(key, value)
            if body is not None or any(key in self.headers for key in framing):
                connection.putheader("Content-Length", str(len(body or b"")))
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()
            self.server.record(replace(request, status=response.status))
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _NOT_FORWARDED:
                    self.send_header(key, value)
            if self.command == "HEAD":
                upstream_length = response.getheader("Content-Length")
                if upstream_length is not None:
                    self.send_header("Content-Length", upstream_length)
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            connection.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815


@contextmanager
def serving(proxy: RegistryProxy) -> Iterator[RegistryProxy]:
    """Serve ``proxy`` on a thread for the block; shut it down and close it after."""
    thread = threading.Thread(target=proxy.serve_forever, name="registry-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.release()
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)


def too_many_requests(first: int, retry_after: float) -> Callable[[str, str], Fault | None]:
    """A fault decision: 429 with ``Retry-After`` for the first ``first`` manifest requests.

    Manifest requests are GET or HEAD of ``/v2/<name>/manifests/<reference>``
    (of any repository); everything else, and every manifest request after
    the first ``first``, is forwarded. The body is the distribution spec's
    ``TOOMANYREQUESTS`` error; ``Retry-After`` is in seconds (RFC 9110 10.2.3).
    """
    answered = 0

    def decide(method: str, path: str) -> Fault | None:
        nonlocal answered
        if answered >= first or method not in ("GET", "HEAD") or not MANIFEST_PATH.match(path):
            return None
        answered += 1
        return Fault(
            429,
            "TOOMANYREQUESTS",
            "injected: too many requests",
            {"Retry-After": f"{retry_after:g}"},
        )

    return decide
