"""End-to-end test environment: real etcd, kube-apiserver, dockerd and registries.

Everything listens on 127.0.0.1 only, on free ports picked by binding port 0.
Each component is a child process whose ``Popen`` is kept so that exactly
that process is stopped (terminate, wait, kill on timeout); its output goes to
``<workdir>/logs/<component>.log``. A component that fails to start raises
:class:`ComponentError` with the tail of its log.

Typical use::

    env = Environment.start(Path(tempfile.mkdtemp(prefix="ic-", dir="/tmp")))
    try:
        digest = env.build_image(f"{env.public.host}/library/app:1")
    finally:
        env.stop()
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import kubernetes.client
import kubernetes.config
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
HACK = REPO_ROOT / "hack"
LOOPBACK = "127.0.0.1"
ADMIN_USER = "admin"
OWNED_USER = "cloner"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)

# Unix socket paths are limited to 108 bytes; dockerd's managed containerd puts
# sockets a few levels below the exec root, so keep a margin.
_MAX_SOCKET_DIR = 60


class ComponentError(RuntimeError):
    """A component of the environment failed to start or to become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free ports, holding each bound until all are picked."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a short helper command, raising with its output if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise ComponentError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def kube_bin_dir() -> Path:
    """Return the directory holding kube-apiserver and kubectl, building them if needed."""
    result = _run([str(HACK / "build-kube.sh")])
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    for binary in ("kube-apiserver", "kubectl"):
        if not os.access(bin_dir / binary, os.X_OK):
            raise ComponentError(f"hack/build-kube.sh did not produce {bin_dir / binary}")
    return bin_dir


def ensure_components() -> Path:
    """Install missing Debian packages and build kube-apiserver/kubectl.

    Runs ``hack/install-deps.sh`` and ``hack/build-kube.sh`` (both do nothing
    when everything is present) and returns the kube bin directory.
    """
    _run([str(HACK / "install-deps.sh")])
    return kube_bin_dir()


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ("" if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class Process:
    """One child process with its own log file, started and stopped exactly."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        stop_timeout: float = 15.0,
    ) -> None:
        """Describe the process; nothing is started until :meth:`start`."""
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.stop_timeout = stop_timeout
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start the process (no-op if it is running), appending to its log."""
        if self.running:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = self.log.open("ab")
        self._log_handle.write(f"\n=== start {time.strftime('%H:%M:%S')}: {self.argv}\n".encode())
        self._log_handle.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=self.env,
            # Own session: a Ctrl-C on the test run does not hit the children
            # before the harness stops them in order.
            start_new_session=True,
        )

    def stop(self) -> None:
        """Terminate the process, wait, and kill it if it does not exit in time."""
        popen = self.popen
        if popen is not None and popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        self.popen = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def fail(self, message: str) -> ComponentError:
        """Build an error about this component that includes the tail of its log."""
        return ComponentError(
            f"{self.name}: {message}\n--- tail of {self.log} ---\n{tail(self.log)}"
        )

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it returns true; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            if self.popen is None:
                raise self.fail("not started")
            code = self.popen.poll()
            if code is not None:
                raise self.fail(f"exited with code {code} before {what}")
            try:
                if ready():
                    return
            except Exception as exc:  # not answering yet: connection refused, no socket, ...
                last_error = exc
            if time.monotonic() > deadline:
                raise self.fail(f"not {what} after {timeout:.0f}s (last error: {last_error!r})")
            time.sleep(0.1)


def _basic_auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Registry:
    """A CNCF distribution registry (``docker-registry serve``) on loopback.

    ``username``/``password`` are None for an anonymous registry; otherwise the
    registry uses htpasswd (bcrypt) basic auth with that user, plus the
    accounts in ``users`` (``set_user``): distribution's htpasswd auth takes
    one file, which holds them all.
    """

    name: str
    host: str
    username: str | None
    password: str | None
    root: Path = field(repr=False)
    on_password_change: Callable[[Registry], None] | None = field(default=None, repr=False)
    #: Further accounts of the htpasswd file, name -> password (``set_user``).
    users: dict[str, str] = field(default_factory=dict, repr=False)
    _process: Process | None = field(default=None, init=False, repr=False)
    _http_secret: str = field(default_factory=lambda: secrets.token_hex(16), init=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def config_path(self) -> Path:
        """The registry's YAML configuration file."""
        return self.root / "config.yml"

    @property
    def htpasswd_path(self) -> Path:
        """The bcrypt htpasswd file (only used when the registry has a user)."""
        return self.root / "htpasswd"

    @property
    def log_path(self) -> Path:
        """The registry's log file."""
        return self.root.parent / "logs" / f"registry-{self.name}.log"

    @property
    def running(self) -> bool:
        """Whether the registry process is running."""
        return self._process is not None and self._process.running

    def _write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "storage").mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": self._http_secret},
        }
        if self.username is not None:
            if self.password is None:
                raise ValueError(f"registry {self.name}: username without password")
            self._write_htpasswd()
            config["auth"] = {
                "htpasswd": {"realm": f"{self.name}-registry", "path": str(self.htpasswd_path)}
            }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _write_htpasswd(self) -> None:
        """Write every account, bcrypt; the passwords go to ``htpasswd -i`` on stdin.

        distribution 2.8 reads the file again when its modification time
        changes (its htpasswd access controller checks it on every request),
        so a running registry takes a new file at the next request.
        """
        assert self.username is not None and self.password is not None
        accounts = {self.username: self.password, **self.users}
        lines = [
            _run(["htpasswd", "-Bin", name], input=password).stdout.strip()
            for name, password in accounts.items()
        ]
        path = self.htpasswd_path
        before = path.stat().st_mtime_ns if path.exists() else None
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        after = path.stat().st_mtime_ns
        if after == before:  # a coarse clock: make the change visible all the same
            os.utime(path, ns=(after + 1_000_000, after + 1_000_000))

    def launch(self) -> None:
        """Start the process without waiting for it to be ready (see :meth:`wait_ready`)."""
        if self.running:
            return
        self._write_config()
        self._process = Process(
            f"registry-{self.name}",
            ["docker-registry", "serve", str(self.config_path)],
            self.log_path,
        )
        self._process.start()

    def _ping(self) -> bool:
        status = self._status("/v2/", auth=False)
        if self.username is None:
            return status == 200
        if status != 401:
            return False
        return self._status("/v2/", auth=True) == 200

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``GET /v2/`` answers as expected (200, or 401 then 200 with auth)."""
        if self._process is None:
            raise ComponentError(f"registry {self.name} not started")
        self._process.wait_until(self._ping, timeout, "answering GET /v2/")

    def start(self) -> None:
        """(Re)start the registry with the same config, port and storage; wait until ready."""
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        """Stop the registry process (no-op if it is not running)."""
        if self._process is not None:
            self._process.stop()

    def set_user(self, name: str, password: str) -> None:
        """Add a further htpasswd account, or give it a new password; no restart.

        A running registry takes the rewritten file at the next request (see
        ``_write_htpasswd``); this waits until ``GET /v2/`` as ``name``
        answers 200. ``username``'s own password changes with ``set_password``.

        Raises:
            ValueError: the registry is anonymous, or ``name`` is ``username``.
            ComponentError: the registry does not accept the account within 10 s.
        """
        if self.username is None:
            raise ValueError(f"registry {self.name} is anonymous")
        if name == self.username:
            raise ValueError(f"{name} is the registry's own user: use set_password")
        self.users[name] = password
        if not self.htpasswd_path.exists():
            return  # written when the registry starts
        self._write_htpasswd()
        if self._process is not None and self.running:
            self._process.wait_until(
                lambda: self.status_as("/v2/", name, password) == 200, 10, f"accepting {name}"
            )

    def set_password(self, password: str) -> None:
        """Rewrite the htpasswd file with a new bcrypt password and restart the registry."""
        if self.username is None:
            raise ValueError(f"registry {self.name} is anonymous")
        self.password = password
        self.stop()
        self.start()
        if self.on_password_change is not None:
            self.on_password_change(self)

    # --- HTTP API -------------------------------------------------------------------

    def _request(
        self,
        path: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> urllib.request.Request:
        request = urllib.request.Request(
            path if path.startswith("http") else self.url + path, method=method
        )
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        if auth and self.username is not None and self.password is not None:
            request.add_header(
                "Authorization", "Basic " + _basic_auth(self.username, self.password)
            )
        return request

    def _status(self, path: str, auth: bool = True) -> int:
        """Return the HTTP status of ``GET path`` (no exception on 4xx/5xx)."""
        return _status_of(self._request(path, auth=auth))

    def status(self, path: str, auth: bool = False) -> int:
        """HTTP status of ``GET path``, anonymous by default (e.g. 401 for the owned one)."""
        return self._status(path, auth=auth)

    def status_as(self, path: str, username: str, password: str, method: str = "GET") -> int:
        """HTTP status of ``METHOD path`` as ``username`` (no exception on 4xx/5xx)."""
        request = self._request(path, method=method, auth=False)
        request.add_header("Authorization", "Basic " + _basic_auth(username, password))
        return _status_of(request)

    def _get_json(self, path: str) -> tuple[Any, str | None]:
        with urllib.request.urlopen(self._request(path), timeout=30) as response:
            return json.load(response), response.headers.get("Link")

    def catalog(self) -> list[str]:
        """Return all repositories (``GET /v2/_catalog``, following pagination)."""
        repositories: list[str] = []
        path: str | None = "/v2/_catalog?n=1000"
        while path:
            body, link = self._get_json(path)
            repositories.extend(body.get("repositories") or [])
            path = _next_link(link)
        return repositories

    def tags(self, repository: str) -> list[str]:
        """Return the tags of ``repository`` ([] if the repository does not exist)."""
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n=1000"
        try:
            while path:
                body, link = self._get_json(path)
                tags.extend(body.get("tags") or [])
                path = _next_link(link)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return tags

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """Return the digest the registry reports for a manifest, or None if it is absent.

        ``reference`` is a tag or a digest. Accepts Docker v2 manifests and
        manifest lists and OCI manifests and indexes.
        """
        path = f"/v2/{repository}/manifests/{reference}"
        headers = {"Accept": MANIFEST_ACCEPT}
        for method in ("HEAD", "GET"):
            try:
                with urllib.request.urlopen(
                    self._request(path, method=method, headers=headers), timeout=30
                ) as response:
                    digest = response.headers.get("Docker-Content-Digest")
                    if digest:
                        return str(digest)
                    if method == "GET":
                        return "sha256:" + hashlib.sha256(response.read()).hexdigest()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise
        return None


def _status_of(request: urllib.request.Request) -> int:
    """The HTTP status the request gets (no exception on 4xx/5xx)."""
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _next_link(link: str | None) -> str | None:
    """Parse a registry pagination ``Link: </v2/...>; rel="next"`` header."""
    if not link or 'rel="next"' not in link:
        return None
    start, end = link.find("<"), link.find(">")
    return link[start + 1 : end] if 0 <= start < end else None


def _short_dir(preferred: Path) -> tuple[Path, bool]:
    """Return a directory for unix sockets: ``preferred`` if short enough, else a /tmp one.

    The boolean tells whether the directory was created outside the workdir
    (and must be removed by the caller).
    """
    if len(str(preferred)) <= _MAX_SOCKET_DIR:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred, False
    return Path(tempfile.mkdtemp(prefix="ic-s-", dir="/tmp")), True


@dataclass
class Environment:
    """The real components the controller's end-to-end tests run against.

    Started with :meth:`start`; :meth:`stop` stops everything it started in
    reverse order and is safe to call more than once.
    """

    workdir: Path
    kubeconfig: Path
    kubectl: Path
    docker_host: str
    public: Registry
    owned: Registry
    docker_config: Path
    kube_bin: Path = field(repr=False)
    apiserver_url: str = field(repr=False)
    etcd_url: str = field(repr=False)
    etcd_peer_url: str = field(repr=False)
    ca_file: Path = field(repr=False)
    admin_token: str = field(repr=False)
    node: bool = field(default=False, repr=False)
    storage_driver: str = field(default="vfs", repr=False)
    _processes: dict[str, Process] = field(default_factory=dict, init=False, repr=False)
    _socket_dir: Path | None = field(default=None, init=False, repr=False)
    _socket_dir_owned: bool = field(default=False, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)

    # --- lifecycle --------------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        kube_bin: Path | None = None,
        node: bool = False,
        storage_driver: str = "vfs",
    ) -> Environment:
        """Start etcd, kube-apiserver, dockerd and both registries; wait until each is ready.

        ``kube_bin`` is the directory with kube-apiserver and kubectl; by
        default ``hack/build-kube.sh`` is asked for it (building if needed).
        ``node=True`` prepares the API server for a kubelet and the other
        control-plane components (devenv/cluster.py): Node,RBAC
        authorization, the NodeRestriction admission plugin, kubelet client
        certificates and client certificates for the controller-manager,
        scheduler and kubelet (:meth:`client_cert`). ``storage_driver`` is
        dockerd's (``vfs`` works on any file system; the bench can ask for
        ``overlay2``, what the docker-in-docker sidecar uses on a node). On any
        failure everything already started is stopped before raising.
        """
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        kube_bin = kube_bin or kube_bin_dir()
        apiserver_port, public_port, owned_port, etcd_port, etcd_peer_port = free_ports(5)
        public = Registry(
            "public", f"{LOOPBACK}:{public_port}", None, None, root=workdir / "public"
        )
        owned = Registry(
            "owned",
            f"{LOOPBACK}:{owned_port}",
            OWNED_USER,
            secrets.token_urlsafe(18),
            root=workdir / "owned",
        )
        env = cls(
            workdir=workdir,
            kubeconfig=workdir / "kubeconfig",
            kubectl=kube_bin / "kubectl",
            docker_host="",
            public=public,
            owned=owned,
            docker_config=workdir / "docker-config" / "config.json",
            kube_bin=kube_bin,
            apiserver_url=f"https://{LOOPBACK}:{apiserver_port}",
            etcd_url=f"http://{LOOPBACK}:{etcd_port}",
            etcd_peer_url=f"http://{LOOPBACK}:{etcd_peer_port}",
            ca_file=workdir / "pki" / "ca.crt",
            admin_token=secrets.token_hex(24),
            node=node,
            storage_driver=storage_driver,
        )
        owned.on_password_change = lambda _registry: env.write_docker_config()
        atexit.register(env.stop)
        try:
            env._start_all()
        except BaseException:
            env.stop()
            raise
        return env

    def _start_all(self) -> None:
        self._socket_dir, self._socket_dir_owned = _short_dir(self.workdir / "run")
        self.docker_host = f"unix://{self._socket_dir / 'docker.sock'}"
        self._make_pki()
        self.write_docker_config()
        self._write_admin_kubeconfig()

        etcd = self._etcd_process()
        apiserver = self._apiserver_process()
        dockerd = self._dockerd_process()
        self._processes = {"etcd": etcd, "apiserver": apiserver, "dockerd": dockerd}

        # Launch everything that does not depend on anything else, then wait.
        etcd.start()
        dockerd.start()
        self.public.launch()
        self.owned.launch()
        self._wait_etcd()
        apiserver.start()
        self.public.wait_ready()
        self.owned.wait_ready()
        self._wait_dockerd()
        self._wait_apiserver()

    def stop(self) -> None:
        """Stop everything that was started, in reverse order. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []
        for stop in (
            self.owned.stop,
            self.public.stop,
            *(p.stop for p in reversed(list(self._processes.values()))),
        ):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                errors.append(repr(exc))
        if self._socket_dir_owned and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if errors:
            raise ComponentError("errors while stopping: " + "; ".join(errors))

    def stop_component(self, name: str) -> None:
        """Stop one component: "etcd", "apiserver", "dockerd", "public" or "owned"."""
        if name == "public":
            self.public.stop()
        elif name == "owned":
            self.owned.stop()
        else:
            self._component(name).stop()

    def start_component(self, name: str) -> None:
        """(Re)start one stopped component with its original configuration; wait until ready."""
        if name == "public":
            self.public.start()
        elif name == "owned":
            self.owned.start()
        else:
            self._component(name).start()
            {
                "etcd": self._wait_etcd,
                "apiserver": self._wait_apiserver,
                "dockerd": self._wait_dockerd,
            }[name]()

    def _component(self, name: str) -> Process:
        try:
            return self._processes[name]
        except KeyError:
            raise ValueError(
                f"unknown component {name!r}; one of etcd, apiserver, dockerd, public, owned"
            ) from None

    # --- etcd -------------------------------------------------------------------

    def _etcd_process(self) -> Process:
        client, peer = self.etcd_url, self.etcd_peer_url
        return Process(
            "etcd",
            [
                "etcd",
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=e2e={peer}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
            self.workdir / "logs" / "etcd.log",
        )

    def _wait_etcd(self) -> None:
        etcd = self._processes["etcd"]
        url = self.etcd_url + "/health"

        def healthy() -> bool:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(json.load(response).get("health") == "true")

        etcd.wait_until(healthy, 30, "healthy")

    # --- kube-apiserver ---------------------------------------------------------

    def _make_pki(self) -> None:
        """CA, apiserver serving cert (127.0.0.1/localhost) and service-account key pair."""
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        (pki / "openssl.log").write_text("")
        ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
        key, csr, crt = pki / "apiserver.key", pki / "apiserver.csr", pki / "apiserver.crt"
        ext = pki / "apiserver.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1\n"
        )
        _run(["openssl", "genrsa", "-out", str(ca_key), "2048"])
        _run(
            [
                "openssl",
                "req",
                "-x509",
                "-new",
                "-key",
                str(ca_key),
                "-sha256",
                "-days",
                "30",
                "-subj",
                "/CN=image-cloner-e2e-ca",
                "-out",
                str(ca_crt),
            ]
        )
        _run(["openssl", "genrsa", "-out", str(key), "2048"])
        _run(
            [
                "openssl",
                "req",
                "-new",
                "-key",
                str(key),
                "-subj",
                "/CN=kube-apiserver",
                "-out",
                str(csr),
            ]
        )
        _run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca_crt),
                "-CAkey",
                str(ca_key),
                "-CAcreateserial",
                "-sha256",
                "-days",
                "30",
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            ]
        )
        _run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"])
        _run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")])
        tokens = pki / "tokens.csv"
        tokens.write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        for secret in (ca_key, key, pki / "sa.key", tokens):
            secret.chmod(0o600)
        if self.node:
            # Kubernetes' well-known identities: the Node authorizer and the
            # system:kube-* ClusterRoleBindings match these names and groups.
            self._client_cert(
                "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"
            )
            self._client_cert("controller-manager", "system:kube-controller-manager")
            self._client_cert("scheduler", "system:kube-scheduler")
            self._client_cert("kubelet", f"system:node:{LOOPBACK}", "system:nodes")

    def _client_cert(self, name: str, common_name: str, organization: str = "") -> None:
        """Write ``pki/NAME.key`` and ``pki/NAME.crt``: a client certificate signed by the CA."""
        pki = self.workdir / "pki"
        key, csr, crt = pki / f"{name}.key", pki / f"{name}.csr", pki / f"{name}.crt"
        ext = pki / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n"
        )
        subject = f"/CN={common_name}" + (f"/O={organization}" if organization else "")
        _run(["openssl", "genrsa", "-out", str(key), "2048"])
        key.chmod(0o600)
        _run(["openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)])
        _run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(self.ca_file),
                "-CAkey",
                str(pki / "ca.key"),
                "-CAcreateserial",
                "-sha256",
                "-days",
                "30",
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            ]
        )

    def make_client_cert(
        self, name: str, common_name: str, organization: str = ""
    ) -> tuple[Path, Path]:
        """Sign a new client certificate (user ``common_name``, group ``organization``).

        Returns:
            (certificate, key) paths under ``pki/``.
        """
        self._client_cert(name, common_name, organization)
        pki = self.workdir / "pki"
        return pki / f"{name}.crt", pki / f"{name}.key"

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """Return (certificate, key) paths of a client made with ``node=True``.

        ``name`` is one of "controller-manager", "scheduler", "kubelet",
        "apiserver-kubelet-client". Raises ValueError without ``node=True``.
        """
        if not self.node:
            raise ValueError("client certificates exist only with Environment.start(node=True)")
        pki = self.workdir / "pki"
        return pki / f"{name}.crt", pki / f"{name}.key"

    def _apiserver_process(self) -> Process:
        pki = self.workdir / "pki"
        port = self.apiserver_url.rsplit(":", 1)[1]
        return Process(
            "kube-apiserver",
            [
                str(self.kube_bin / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                *(
                    [
                        "--authorization-mode=Node,RBAC",
                        "--enable-admission-plugins=NodeRestriction",
                        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                        # The node's Hostname address is 127.0.0.1 (kubelet
                        # --hostname-override); its InternalIP is not loopback.
                        "--kubelet-preferred-address-types=Hostname,InternalIP",
                    ]
                    if self.node
                    else ["--authorization-mode=RBAC"]
                ),
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--profiling=false",
                # The lease reconciler would try to publish 127.0.0.1 as the
                # endpoint of the "kubernetes" Service, which validation refuses.
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
            self.workdir / "logs" / "kube-apiserver.log",
            stop_timeout=30,
        )

    def _wait_apiserver(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def ready() -> bool:
            request = urllib.request.Request(self.apiserver_url + "/readyz")
            request.add_header("Authorization", f"Bearer {self.admin_token}")
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as response:
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False  # 500 while post-start hooks are still running

        self._processes["apiserver"].wait_until(ready, 120, "ready (/readyz)")

    def _write_kubeconfig(
        self, path: Path, user: str, token: str, namespace: str = "default"
    ) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.apiserver_url,
                        "certificate-authority-data": base64.b64encode(
                            self.ca_file.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "e2e", "context": {"cluster": "e2e", "user": user, "namespace": namespace}}
            ],
            "current-context": "e2e",
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _write_admin_kubeconfig(self) -> None:
        self._write_kubeconfig(self.kubeconfig, ADMIN_USER, self.admin_token)

    # --- dockerd ----------------------------------------------------------------

    def _dockerd_process(self) -> Process:
        assert self._socket_dir is not None
        root = self.workdir / "docker"
        root.mkdir(exist_ok=True)
        daemon_json = root / "daemon.json"
        daemon_json.write_text("{}\n")  # do not pick up /etc/docker/daemon.json
        return Process(
            "dockerd",
            [
                "dockerd",
                f"--config-file={daemon_json}",
                f"--data-root={root / 'data'}",
                f"--exec-root={self._socket_dir / 'exec'}",
                f"--pidfile={self._socket_dir / 'dockerd.pid'}",
                "-H",
                self.docker_host,
                f"--storage-driver={self.storage_driver}",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ],
            self.workdir / "logs" / "dockerd.log",
            stop_timeout=30,
        )

    def _wait_dockerd(self) -> None:
        def pong() -> bool:
            client = docker.APIClient(base_url=self.docker_host, version="auto", timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()

        self._processes["dockerd"].wait_until(pong, 60, "answering /_ping")

    def write_docker_config(self) -> Path:
        """(Re)write ``docker_config`` with an ``auths`` entry for the owned registry."""
        assert self.owned.username is not None and self.owned.password is not None
        self.docker_config.parent.mkdir(parents=True, exist_ok=True)
        auth = _basic_auth(self.owned.username, self.owned.password)
        self.docker_config.write_text(
            json.dumps({"auths": {self.owned.host: {"auth": auth}}}, indent=2)
        )
        self.docker_config.chmod(0o600)
        return self.docker_config

    # --- clients ----------------------------------------------------------------

    def api_client(self) -> kubernetes.client.ApiClient:
        """A Kubernetes API client for the admin user (group system:masters)."""
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def docker_client(self) -> docker.DockerClient:
        """A docker SDK client for the harness's dockerd (API version negotiated)."""
        return docker.DockerClient(base_url=self.docker_host, version="auto", timeout=300)

    def kubectl_env(self) -> dict[str, str]:
        """Environment for running ``kubectl`` (and the docker CLI) against this environment."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            DOCKER_HOST=self.docker_host,
            DOCKER_CONFIG=str(self.docker_config.parent),
            KUBECACHEDIR=str(self.workdir / "kubectl-cache"),
        )
        return env

    def run_kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl with the admin kubeconfig; returns the completed process."""
        return subprocess.run(
            [
                str(self.kubectl),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.workdir / 'kubectl-cache'}",
                *args,
            ],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def service_account_kubeconfig(
        self, namespace: str, name: str, expiration_seconds: int = 86400
    ) -> Path:
        """Write a kubeconfig authenticating as ServiceAccount ``namespace/name``.

        The ServiceAccount is created if it does not exist (there is no
        controller-manager to create ``default`` ones); the token comes from the
        TokenRequest API. Returns the kubeconfig path.
        """
        with self.api_client() as api:
            core = kubernetes.client.CoreV1Api(api)
            try:
                core.create_namespaced_service_account(
                    namespace, kubernetes.client.V1ServiceAccount(metadata={"name": name})
                )
            except kubernetes.client.ApiException as exc:
                if exc.status != 409:
                    raise
            request = kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(
                    audiences=[], expiration_seconds=expiration_seconds
                )
            )
            token = core.create_namespaced_service_account_token(
                name, namespace, request
            ).status.token
        path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}.yaml"
        return self._write_kubeconfig(
            path, f"system:serviceaccount:{namespace}:{name}", token, namespace
        )

    # --- images -----------------------------------------------------------------

    def build_image(self, reference: str, layers: int = 2, seed: str = "") -> str:
        """Build a small ``FROM scratch`` image with ``layers`` layers, push it, return its digest.

        Each layer is a ``COPY`` of a small file whose content depends on
        ``seed`` and the layer index, so different seeds give different
        layers and digests. ``reference`` (``HOST:PORT/repo[:tag]``, normally
        on ``public.host``) is pushed anonymously; any error in the push
        stream raises. Returns the manifest digest the registry reports.
        """
        if layers < 1:
            raise ValueError("layers must be >= 1")
        repository, tag = _split_reference(reference)
        with tempfile.TemporaryDirectory(prefix="ic-build-", dir=self.workdir) as context:
            lines = ["FROM scratch"]
            for index in range(layers):
                filename = f"layer-{index}.txt"
                Path(context, filename).write_text(
                    f"image-cloner e2e layer {index} seed={seed!r}\n"
                )
                lines.append(f"COPY {filename} /{filename}")
            lines.append(f'LABEL org.opencontainers.image.description="e2e seed={seed}"')
            Path(context, "Dockerfile").write_text("\n".join(lines) + "\n")
            with contextlib.closing(self.docker_client()) as client:
                client.images.build(
                    path=context, tag=reference, rm=True, forcerm=True, nocache=False
                )
                pushed_digest: str | None = None
                for line in client.images.push(repository, tag=tag, stream=True, decode=True):
                    if "error" in line or "errorDetail" in line:
                        raise ComponentError(f"push of {reference} failed: {line}")
                    aux = line.get("aux") or {}
                    pushed_digest = aux.get("Digest", pushed_digest)
        registry = self._registry_for(repository)
        path = repository.split("/", 1)[1]
        digest = registry.manifest_digest(path, tag)
        if digest is None:
            raise ComponentError(f"{reference} pushed but the registry has no manifest for it")
        if pushed_digest is not None and pushed_digest != digest:
            raise ComponentError(f"{reference}: push reported {pushed_digest}, registry {digest}")
        return digest

    def _registry_for(self, repository: str) -> Registry:
        host = repository.split("/", 1)[0]
        for registry in (self.public, self.owned):
            if registry.host == host:
                return registry
        raise ValueError(f"{repository} is not on {self.public.host} or {self.owned.host}")

    @contextlib.contextmanager
    def stopped(self, name: str) -> Iterator[None]:
        """Context manager: stop a component for the duration of the block, then restart it."""
        self.stop_component(name)
        try:
            yield
        finally:
            self.start_component(name)


def _split_reference(reference: str) -> tuple[str, str]:
    """Split ``host:port/repo[:tag]`` into (``host:port/repo``, tag); tag defaults to latest."""
    if "@" in reference:
        raise ValueError(f"build_image needs a tag, not a digest: {reference}")
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, "latest"
