"""olareg: an in-memory OCI registry with the referrers API, on loopback.

``olareg`` (github.com/olareg/olareg, built once per machine by
``hack/build-olareg.sh``) is the registry the signature and referrer tests
use where Debian's distribution 2.8 falls short: it serves
``GET /v2/<name>/referrers/<digest>`` (OCI distribution spec 1.1), and with
``referrers_api=False`` it is a registry without that API, so clients must
fall back to the ``sha256-<hex>`` tag schema.

Behaviour of olareg v0.2.1 seen here (tests/e2e/test_olareg.py checks it):

* ``--store-type mem``: everything is lost when the process stops; a restart
  is an empty registry (on the same port).
* Referrers API on: a pushed manifest with ``subject`` is answered with an
  ``OCI-Subject`` header and listed by ``GET /v2/<name>/referrers/<digest>``
  (an image index, with ``artifactType`` and ``annotations`` per entry,
  ``?artifactType=`` filtering); an unknown subject or repository gives 200
  with an empty list.
* Referrers API off: the same manifest is still accepted (201, no
  ``OCI-Subject`` header, no fallback tag made for the client), and
  ``GET /v2/<name>/referrers/<digest>`` answers **405** ``UNSUPPORTED``, not
  the 404 the spec asks for. go-containerregistry falls back to the
  ``sha256-<hex>`` tag only on 404/400/406, so cosign v3.1.3's default
  (new bundle format) fails there ("UNSUPPORTED: ... method not allowed");
  ``cosign sign --new-bundle-format=false`` (``.sig`` tag) still works.
  Debian's distribution 2.8 answers 404 and cosign falls back to the tag.
* Blob uploads: POST then PUT (monolithic), a single POST with ``?digest=``,
  and cross-repository mounts (``POST ...?mount=<digest>&from=<repo>``: 201
  when the source has the blob, else 202 with an upload session).
* With ``--verbosity trace`` (``log_requests=True``) every request is logged
  to stderr, one ``msg=ServeHTTP ... method=GET url=/v2/... status=200``
  line each, written just after the response; :meth:`Olareg.request_log`
  parses them.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from devenv.harness import HACK, LOOPBACK, ComponentError, Process, free_port

_REQUEST_LINE = re.compile(
    r'\bmsg=ServeHTTP\b.*?\bmethod=(?P<method>\S+) url=(?P<url>"(?:[^"\\]|\\.)*"|\S+)'
    r" status=(?P<status>\d+)"
)


def olareg_bin() -> Path:
    """Return the path of the olareg binary, building it first if needed.

    Runs ``hack/build-olareg.sh`` (about 40 s on 2 cores the first time on a
    machine, a few milliseconds afterwards), which prints the bin directory.

    Raises:
        ComponentError: the build failed (with its output) or left no
            executable ``olareg``.
    """
    result = subprocess.run(
        [str(HACK / "build-olareg.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ComponentError(
            f"hack/build-olareg.sh exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    binary = Path(result.stdout.strip().splitlines()[-1]) / "olareg"
    if not binary.is_file():
        raise ComponentError(f"hack/build-olareg.sh did not produce {binary}")
    return binary


@dataclass(frozen=True)
class LoggedRequest:
    """One request olareg logged: method, path and query as sent, HTTP status."""

    method: str
    url: str
    status: int

    @property
    def path(self) -> str:
        """The URL path without the query string, e.g. ``/v2/lib/app/manifests/1``."""
        return self.url.split("?", 1)[0]


@dataclass
class Olareg:
    """One ``olareg serve --store-type mem`` process on ``127.0.0.1:port``.

    ``workdir`` holds ``logs/<name>.log`` and an empty ``<name>-root``
    directory passed as ``--dir`` (the mem store only reads an OCI layout from
    there, so an empty one makes it start empty whatever the current
    directory). ``port`` defaults to a free port picked at construction and
    is kept across :meth:`stop`/:meth:`start`. ``binary`` defaults to
    :func:`olareg_bin`. Anonymous, plain HTTP, push enabled, no deletes.
    Usable as a context manager (start on enter, stop on exit).
    """

    workdir: Path
    name: str = "olareg"
    referrers_api: bool = True
    log_requests: bool = True
    port: int = field(default_factory=free_port)
    binary: Path | None = field(default=None, repr=False)
    _process: Process | None = field(default=None, init=False, repr=False)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry host as image references use it."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        """The process's log file (stdout and stderr, appended across restarts)."""
        return self.workdir / "logs" / f"{self.name}.log"

    @property
    def running(self) -> bool:
        """Whether the olareg process is running."""
        return self._process is not None and self._process.running

    def argv(self) -> list[str]:
        """The command line :meth:`start` runs (needs :attr:`binary` set or buildable)."""
        if self.binary is None:
            self.binary = olareg_bin()
        root = self.workdir / f"{self.name}-root"
        argv = [
            str(self.binary),
            "serve",
            "--store-type",
            "mem",
            "--dir",
            str(root),
            "--addr",
            LOOPBACK,
            "--port",
            str(self.port),
        ]
        if not self.referrers_api:
            argv.append("--api-referrer=false")
        if self.log_requests:
            argv += ["--verbosity", "trace"]
        return argv

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as response:
                return int(response.status) == 200
        except urllib.error.HTTPError:
            return False

    def start(self, timeout: float = 30.0) -> None:
        """Start olareg (no-op if running) and wait until ``GET /v2/`` answers 200.

        Builds the binary first if :attr:`binary` is unset. ``timeout`` is in
        seconds. Raises :class:`ComponentError` (with the tail of the log) if
        the process exits or does not answer in time, e.g. port taken.
        """
        if self.running:
            return
        argv = self.argv()
        (self.workdir / f"{self.name}-root").mkdir(parents=True, exist_ok=True)
        self._process = Process(self.name, argv, self.log_path, stop_timeout=10.0)
        self._process.start()
        try:
            self._process.wait_until(self._ping, timeout, "answering GET /v2/")
        except BaseException:
            self._process.stop()
            raise

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s); its content is lost."""
        if self._process is not None:
            self._process.stop()

    def request_log(self) -> list[LoggedRequest]:
        """Parse the requests logged so far, oldest first (needs ``log_requests``).

        Includes the readiness probes of :meth:`start` (``GET /v2/``), so count
        the requests of interest by method and path. olareg writes each line
        right after sending the response: a client may see the response a
        moment before the line is in the log.

        Raises:
            ValueError: ``log_requests`` is False (olareg logs no requests).
        """
        if not self.log_requests:
            raise ValueError(f"{self.name}: started without request logging (log_requests)")
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        requests = []
        for match in _REQUEST_LINE.finditer(text):
            url = match["url"]
            if url.startswith('"'):
                url = json.loads(url)
            requests.append(LoggedRequest(match["method"], url, int(match["status"])))
        return requests

    def __enter__(self) -> Self:
        """Start the registry (see :meth:`start`) and return it."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the registry."""
        self.stop()
