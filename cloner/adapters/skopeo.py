"""Registry-to-registry copies with ``skopeo copy``; the only module that runs skopeo.

Called by the cloning layer (``copyBackend: skopeo``) to copy a source image,
every platform of it, into the owned registry with its manifests byte for
byte, so the owned digest is the source digest. It must not import
``docker`` or ``kubernetes``; it raises nothing but ``RegistryError`` (and
``ValueError`` for an owned reference it cannot write to), and never puts a
credential on a command line or in a log line.

The command (skopeo-copy(1), skopeo 1.9; the test bed notes in
``/work/shared/TESTBED.md``)::

    skopeo --command-timeout 600s copy -q --all --preserve-digests --retry-times 0 \\
        --digestfile F --authfile A --src-tls-verify=B --dest-tls-verify=B \\
        docker://SOURCE docker://OWNED

- ``--all``: every platform of an index or manifest list (without it skopeo
  copies one platform and writes a new, single-platform manifest);
- ``--preserve-digests``: refuse any change that would alter a digest, so a
  successful copy is the source byte for byte;
- ``--retry-times 0``: retrying is the controller's job (backoff, registry
  pauses); skopeo still waits out a 429 itself a few times (containers/image
  ``makeRequestToResolvedURL``, up to 5 attempts honouring ``Retry-After``);
- ``--digestfile``: skopeo writes the manifest digest it wrote (the index's
  for an index), compared with the source digest afterwards;
- ``--authfile``: a temporary 0600 file with only the two registries'
  entries, in the base64 ``auth`` form (skopeo 1.9 ignores ``username`` and
  ``password`` fields: "unauthorized"); skopeo reads it more than once, so it
  is a file, not a pipe;
- ``--src-tls-verify``/``--dest-tls-verify``: false exactly for registries
  listed in ``insecureRegistries`` (``cloner.model.tls.listed_insecure``); skopeo
  then also falls back to plain HTTP;
- ``--command-timeout``: skopeo's own deadline ("context deadline exceeded").

skopeo 1.9 also reads credentials from ``$DOCKER_CONFIG/config.json``,
``$HOME/.docker/config.json`` and ``$XDG_CONFIG_HOME/containers/auth.json``
when the auth file has no entry for a registry, even with ``--authfile``
(seen on the test bed), so it runs with an environment of its own: ``HOME``
is a private empty directory and those variables are not passed.

Every copy of one backend shares one blob info cache: ``XDG_DATA_HOME`` is a
0700 directory the backend makes once (removed when the process exits; a new
one beyond 16 MiB, since it lives in the pod's small ``/tmp``), and skopeo
keeps ``containers/cache/blob-info-cache-v1.boltdb`` in it. That file
records which repositories of a registry hold a blob (digests and repository
names, no credential), and it is how skopeo knows to mount a shared base
layer from the repository an earlier copy wrote it to instead of pulling it
from the source and uploading it again (containers/image
``blobinfocache.DefaultCache``; its ``blobInfoCacheDir`` uses
``XDG_DATA_HOME`` for any user but root, and root always uses
``/var/lib/containers/cache``). Without it, a private ``HOME`` per copy
gives every copy an empty cache: measured as the shipped image's non-root
user on the test bed, 8 images sharing base layers uploaded 18.1 MB with no
mount instead of the 7.7 MB unique.

A failure is exit status 1 with one ``level=fatal msg="..."`` line on stderr
(logrus text format). The message is classified by the shared
``cloner.errors.registry_error`` and attributed to the source or the owned
registry, so that a 429 pauses the registry that sent it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from cloner.adapters.credential_store import CredentialStore
from cloner.errors import FailureReason, RegistryError, registry_error
from cloner.model.credentials import Credential
from cloner.model.identity import BackendName, Copied
from cloner.model.proxy import ProxyConfig
from cloner.model.reference import Reference
from cloner.model.tls import listed_insecure

log = logging.getLogger(__name__)

PROCESS_TIMEOUT_MARGIN = 10.0  # seconds the process may run past --command-timeout
# Environment variables passed on to skopeo: the search path, temporary files
# and CA bundles. The proxy variables are written from ``model.proxy``'s
# settings (``ProxyConfig.child_environ``). Everything else, notably
# DOCKER_CONFIG, REGISTRY_AUTH_FILE and XDG_CONFIG_HOME (other credential
# sources), is not.
_PASSED_ENV = (
    "PATH",
    "TMPDIR",
    "TZ",
    "LANG",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
# skopeo's blob info cache under XDG_DATA_HOME, and the size (bytes) beyond
# which a backend starts a new one (module docstring).
BLOB_INFO_CACHE = Path("containers", "cache", "blob-info-cache-v1.boltdb")
CACHE_MAX_BYTES = 16 * 1024 * 1024
_DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")

Side = Literal["source", "owned"]


def _size(path: Path) -> int:
    """Bytes of ``path``; 0 when it does not exist (yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _duration(seconds: float) -> str:
    """A Go ``time.ParseDuration`` text for a number of seconds, for example ``600s``."""
    return f"{seconds:g}s"


def transport_name(reference: Reference) -> str:
    """The ``docker://`` transport name skopeo is given for a reference.

    Args:
        reference: a normalized reference.

    Returns:
        ``docker://registry/repository@digest`` when it has a digest (content
        pinned, the tag is not used), else ``docker://registry/repository:tag``
        (``latest`` when there is no tag, Docker's implicit tag).
    """
    return f"docker://{reference.pull_reference}"


def copy_argv(
    skopeo: str,
    source: Reference,
    owned: Reference,
    *,
    digest_file: Path,
    auth_file: Path,
    command_timeout: float,
    insecure_registries: Sequence[str],
) -> list[str]:
    """The argument list of one ``skopeo copy``. Pure.

    Args:
        skopeo: the executable, a name looked up in ``PATH`` or a path.
        source: what to copy (by digest when it has one).
        owned: where to, a tag (checked by the caller).
        digest_file: where skopeo writes the digest it wrote.
        auth_file: the temporary auth file.
        command_timeout: skopeo's own deadline, seconds.
        insecure_registries: the ``insecureRegistries`` patterns; a listed
            registry gets ``--*-tls-verify=false``, every other ``true``.

    Returns:
        The argv (no shell involved), with no credential in it.
    """
    src_verify = not listed_insecure(source.registry, insecure_registries)
    dest_verify = not listed_insecure(owned.registry, insecure_registries)
    return [
        skopeo,
        "--command-timeout",
        _duration(command_timeout),
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        "--retry-times",
        "0",
        "--digestfile",
        str(digest_file),
        "--authfile",
        str(auth_file),
        f"--src-tls-verify={str(src_verify).lower()}",
        f"--dest-tls-verify={str(dest_verify).lower()}",
        transport_name(source),
        transport_name(owned),
    ]


def _auth_key(registry: str) -> str:
    """The ``auths`` key skopeo looks a registry up by: the host, ``docker.io`` for Docker Hub."""
    host = registry.lower()
    return "docker.io" if host in _DOCKER_HUB_HOSTS else registry


def auth_document(credentials: Mapping[str, Credential | None]) -> dict[str, Any]:
    """The auth file content for some registries. Pure.

    Args:
        credentials: registry host -> its credential, or None for anonymous
            access (no entry is written then).

    Returns:
        ``{"auths": {host: {"auth": base64("user:password")}}}`` (the
        containers-auth.json(5) form skopeo 1.9 understands); an identity
        token is written as ``identitytoken`` beside ``auth`` = base64
        ``"user:"``, as ``docker login`` stores it.
    """
    auths: dict[str, dict[str, str]] = {}
    for registry, credential in credentials.items():
        if credential is None:
            continue
        token = credential.entry.get("identitytoken") if credential.entry else None
        if token:
            pair = f"{credential.username or ''}:"
            entry = {"auth": base64.b64encode(pair.encode()).decode(), "identitytoken": str(token)}
        else:
            pair = f"{credential.username}:{credential.password}"
            entry = {"auth": base64.b64encode(pair.encode()).decode()}
        auths[_auth_key(registry)] = entry
    return {"auths": auths}


_FATAL_RE = re.compile(r'\bmsg=(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>\S+))')
_GO_ESCAPE_RE = re.compile(r"\\(.)")


def _unquote(text: str) -> str:
    """Undo Go's ``strconv.Quote`` (logrus quotes values that need it)."""
    try:
        value = json.loads(f'"{text}"')
        if isinstance(value, str):
            return value
    except ValueError:
        pass
    return _GO_ESCAPE_RE.sub(lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def fatal_message(stderr: str) -> str | None:
    """The message of skopeo's ``level=fatal`` line. Pure.

    Args:
        stderr: skopeo's standard error, for example ``time="..."
            level=fatal msg="initializing source docker://...: ..."``.

    Returns:
        The ``msg`` value, unquoted; else the last non-empty line (without a
        leading ``Error:``) for output in another format; None when stderr is
        empty.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "level=fatal" in line or "level=error" in line:
            match = _FATAL_RE.search(line)
            if match:
                quoted = match.group("quoted")
                return _unquote(quoted) if quoted is not None else match.group("bare")
    if not lines:
        return None
    last = lines[-1]
    return last[len("Error:") :].strip() if last.startswith("Error:") else last


# Which side of the copy an operation named in a message belongs to. The
# leftmost one in the message wins: containers/image wraps errors outer to
# inner, so the leftmost is the operation that failed ("trying to reuse blob
# ... at destination: checking whether a blob ... exists in HOST: ...").
# "happened during read" marks a source stream that broke while its bytes
# were being written, so it counts before everything else.
_SOURCE_STREAM_RE = re.compile(r"happened during read", re.I)
_SIDE_MARKERS: tuple[tuple[Side, re.Pattern[str]], ...] = (
    (
        "source",
        re.compile(
            r"initializing source|reading manifest|reading blob|reading signatures|"
            r"parsing manifest|choosing an image from manifest list|fetching blob",
            re.I,
        ),
    ),
    (
        "owned",
        re.compile(
            r"initializing destination|trying to reuse blob|writing|uploading|destination|"
            r"storing|committing|putting",
            re.I,
        ),
    ),
)
# Registry paths and transport names can contain any marker word: drop every
# token with a "/" before looking for markers.
_PATH_TOKEN_RE = re.compile(r"\S*/\S*")


def _mentions(message: str, registry: str) -> list[int]:
    """Positions where a registry host is named in a message (Docker Hub by any alias)."""
    hosts = _DOCKER_HUB_HOSTS if registry.lower() in _DOCKER_HUB_HOSTS else (registry,)
    positions: list[int] = []
    for host in hosts:
        pattern = re.compile(rf"(?<![0-9A-Za-z.-]){re.escape(host)}(?![0-9A-Za-z.-])", re.I)
        positions.extend(match.start() for match in pattern.finditer(message))
    return positions


def failing_side(message: str, source: Reference, owned: Reference) -> Side:
    """Which registry a skopeo failure concerns. Pure.

    Args:
        message: the fatal message.
        source: the copy's source; owned: its destination.

    Returns:
        ``source`` or ``owned``: first by the operation named (leftmost
        marker: "initializing source", "reading manifest", "reading blob" ->
        source; "trying to reuse blob", "writing", "uploading",
        "destination" -> owned), then by the registry host named last
        (innermost), else ``source``.
    """
    if _SOURCE_STREAM_RE.search(message):
        return "source"
    words = _PATH_TOKEN_RE.sub(" ", message)
    found: list[tuple[int, Side]] = []
    for side, pattern in _SIDE_MARKERS:
        match = pattern.search(words)
        if match:
            found.append((match.start(), side))
    if found:
        return min(found)[1]
    if source.registry.lower() != owned.registry.lower():
        source_at = _mentions(message, source.registry)
        owned_at = _mentions(message, owned.registry)
        if owned_at and (not source_at or max(owned_at) > max(source_at)):
            return "owned"
    return "source"


def copy_error(stderr: str, returncode: int, source: Reference, owned: Reference) -> RegistryError:
    """The ``RegistryError`` for a failed ``skopeo copy``. Pure.

    Args:
        stderr: skopeo's standard error.
        returncode: its exit status (1 for a fatal error, negative for a signal).
        source, owned: the copy's two references.

    Returns:
        The error classified by ``cloner.errors.registry_error`` from the fatal
        message (or "skopeo exited with status N" when there is none), about
        the registry ``failing_side`` names.
    """
    message = fatal_message(stderr) or f"skopeo exited with status {returncode} and no message"
    side = failing_side(message, source, owned)
    registry = source.registry if side == "source" else owned.registry
    return registry_error(message, f"skopeo copy {source} -> {owned}", registry)


class SkopeoBackend:
    """Copies images registry to registry with ``skopeo copy --all --preserve-digests``.

    Args:
        credentials: the docker ``config.json`` in force; the entries of the
            source's and the owned registry (``current.for_registry(host)``)
            are written to the auth file of each copy.
        insecure_registries: ``insecureRegistries`` patterns; only those
            registries are reached without TLS verification.
        command_timeout: seconds skopeo may take for one copy
            (``--command-timeout``); the process is killed
            ``PROCESS_TIMEOUT_MARGIN`` seconds later.
        skopeo: the executable name or path.
        proxy: the proxy settings (``model.proxy``), given to skopeo as its
            ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``; default none.

    Attributes:
        requests: ``("copy", "success" | reason)`` -> count, for the
            registry request metric.
        last_duration: seconds the last ``clone`` took, for the duration metric.

    Raises:
        ValueError: ``command_timeout`` is not positive.
    """

    #: ``--all --preserve-digests``: every manifest digest and platform is kept.
    keeps_digests = BackendName.SKOPEO.keeps_digests

    def __init__(
        self,
        credentials: CredentialStore,
        *,
        insecure_registries: Sequence[str] = (),
        command_timeout: float = 600.0,
        skopeo: str = "skopeo",
        proxy: ProxyConfig | None = None,
    ) -> None:
        if command_timeout <= 0:
            raise ValueError(f"command_timeout must be positive, not {command_timeout!r}")
        self.credentials = credentials
        self.proxy = proxy or ProxyConfig()
        self.insecure_registries = tuple(insecure_registries)
        self.command_timeout = float(command_timeout)
        self.skopeo = skopeo
        self.requests: Counter[tuple[str, str]] = Counter()
        self.last_duration = 0.0
        self._cache_lock = threading.Lock()
        self._cache: Path | None = None
        self._processes_lock = threading.Lock()
        self._processes: set[subprocess.Popen[str]] = set()
        self._abandoned = False
        self._remove_cache: weakref.finalize[Any, Any] | None = None

    def blob_info_cache(self) -> Path:
        """The directory every copy of this backend gets as ``XDG_DATA_HOME``; made on first use.

        A 0700 temporary directory, the same for the backend's lifetime and
        removed by :meth:`close` or when the process exits; a new one once
        skopeo's cache file in it is over ``CACHE_MAX_BYTES``. skopeo keeps
        its blob info cache in it (module docstring).

        Raises:
            OSError: the temporary directory cannot be made.
        """
        with self._cache_lock:
            if self._cache is not None and _size(self._cache / BLOB_INFO_CACHE) > CACHE_MAX_BYTES:
                self._drop_cache()  # a fresh cache costs mounts the old one knew
            if self._cache is None:
                path = Path(tempfile.mkdtemp(prefix="image-cloner-skopeo-cache-"))  # mode 0700
                self._remove_cache = weakref.finalize(self, shutil.rmtree, path, True)
                self._cache = path
            return self._cache

    def close(self) -> None:
        """Remove the blob info cache directory; a later copy makes a new one."""
        with self._cache_lock:
            self._drop_cache()

    def _drop_cache(self) -> None:
        if self._remove_cache is not None:
            self._remove_cache()
        self._cache = self._remove_cache = None

    def preflight(self, source: Reference, owned: Reference) -> None:
        """Nothing to refuse up front: TLS verification follows ``insecureRegistries`` per copy."""

    def clone(self, source: Reference, owned: Reference) -> Copied:
        """Copy every platform of ``source`` to ``owned``, preserving digests.

        Args:
            source: the image; copied by digest when it has one, else by tag.
            owned: the destination, a tag without digest (a digest-only
                source goes to a tag such as ``sha256-<hex>``).

        Returns:
            ``Copied`` with the digest skopeo wrote (``--digestfile``): the
            index digest for a multi-platform image, equal to the source's.

        Raises:
            ValueError: ``owned`` has no tag, or has a digest.
            RegistryError: the copy failed (classified, with the registry it
                concerns), skopeo is missing or timed out, or the digest
                written differs from the source digest (``verify_failed``).
        """
        if owned.digest is not None or not owned.tag:
            raise ValueError(f"owned reference must be a tag without digest: {owned}")
        started = time.monotonic()
        try:
            digest = self._copy(source, owned)
        except RegistryError as exc:
            self.requests["copy", exc.reason] += 1
            raise
        finally:
            self.last_duration = time.monotonic() - started
        self.requests["copy", "success"] += 1
        log.info("skopeo copied %s -> %s (%s) in %.2fs", source, owned, digest, self.last_duration)
        return Copied(digest)

    def _copy(self, source: Reference, owned: Reference) -> str:
        what = f"skopeo copy {source} -> {owned}"
        store = self.credentials.current
        document = auth_document(
            {
                source.registry: store.for_registry(source.registry),
                owned.registry: store.for_registry(owned.registry),
            }
        )
        workdir = Path(tempfile.mkdtemp(prefix="image-cloner-skopeo-"))  # mode 0700
        try:
            home = workdir / "home"
            home.mkdir(mode=0o700)
            auth_file = workdir / "auth.json"
            descriptor = os.open(auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
            digest_file = workdir / "digest"
            argv = copy_argv(
                self.skopeo,
                source,
                owned,
                digest_file=digest_file,
                auth_file=auth_file,
                command_timeout=self.command_timeout,
                insecure_registries=self.insecure_registries,
            )
            log.debug("running %s", argv)
            result = self._run(argv, home, what)
            if result.returncode != 0:
                raise copy_error(result.stderr, result.returncode, source, owned)
            try:
                written = digest_file.read_text(encoding="utf-8").strip()
            except OSError:
                written = ""
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not written:
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"{what}: skopeo exited 0 but wrote no digest",
                owned.registry,
            )
        if source.digest is not None and written != source.digest:
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"{what}: skopeo wrote {written}, the source digest is {source.digest}",
                owned.registry,
            )
        return written

    def abandon(self) -> None:
        """Shutting down: kill every skopeo process this backend started, and start no new one.

        A killed copy's ``clone`` raises ``RegistryError`` (``registry_error``);
        what it had written is never patched to (the cloner abandons it), and
        the next start verifies the owned name before using it. The processes
        are the ones this backend keeps (``subprocess.Popen``), never found by
        name. Never raises.
        """
        with self._processes_lock:
            self._abandoned = True
            running = list(self._processes)
        for process in running:
            if process.poll() is None:
                log.warning("shutting down: killing skopeo (pid %d) in flight", process.pid)
                process.kill()

    def _run(self, argv: list[str], home: Path, what: str) -> subprocess.CompletedProcess[str]:
        """Run skopeo with its own environment; translate a missing binary and a timeout."""
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env.update(self.proxy.child_environ())
        env["HOME"] = str(home)
        env.setdefault("PATH", os.defpath)
        env["XDG_DATA_HOME"] = str(self.blob_info_cache())
        limit = self.command_timeout + PROCESS_TIMEOUT_MARGIN
        with self._processes_lock:
            if self._abandoned:
                raise RegistryError(
                    FailureReason.REGISTRY_ERROR, f"{what}: not started, shutting down"
                )
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    errors="replace",
                    env=env,
                )
            except OSError as exc:
                raise RegistryError(
                    FailureReason.REGISTRY_ERROR,
                    f"{what}: cannot run {self.skopeo!r}: {exc.strerror or exc}; "
                    "install skopeo or set the path to it",
                ) from None
            self._processes.add(process)
        try:
            stdout, stderr = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RegistryError(
                FailureReason.NETWORK,
                f"{what}: skopeo did not finish within {limit:g}s and was killed",
            ) from None
        finally:
            with self._processes_lock:
                self._processes.discard(process)
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
