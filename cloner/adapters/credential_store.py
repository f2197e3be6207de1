"""Registry credentials from a docker ``config.json`` and its credential helpers.

Called by the adapters ``engine``, ``distribution`` and ``skopeo`` (to authenticate pulls
and pushes) and by pull secret provisioning (to copy only the owned
registry's entry), always through ``CredentialStore.current.for_registry``.
Credentials are held in ``Credential`` objects whose ``repr`` hides the
password, so they never reach a log line by accident.

Format (docker/cli ``cli/config/configfile``): ``{"auths": {"<host>": {"auth":
base64("user:password")}}}`` or ``{"username": ..., "password": ...}``; keys
may be full URLs such as ``https://index.docker.io/v1/``, which Docker reduces
to the host name.

Credential helpers (docker/cli ``configfile.GetCredentialsStore``):
``{"credHelpers": {"<host>": "NAME"}}`` names a helper for one registry and
``{"credsStore": "NAME"}`` one for every other registry. A helper is the
program ``docker-credential-NAME`` on ``PATH``, run as ``docker-credential-NAME
get`` with the server URL on stdin; it prints ``{"ServerURL", "Username",
"Secret"}`` (docker/docker-credential-helpers). Precedence, as docker-py's
``auth.resolve_authconfig``: ``credHelpers[host]``, then ``credsStore``, then
``auths`` (the ``auths`` entry is used when the helper answers "credentials
not found"). Helpers are run by the docker SDK's ``docker.credentials.Store``
with a time limit, once per cycle (``CredentialStore.reload``). A helper that
fails makes that registry's credential unavailable (anonymous requests, which
a registry that needs credentials refuses: reason ``auth``); other registries
keep theirs. See docs/credentials.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import signal
import subprocess
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloner.errors import ConfigError
from cloner.model.credentials import (
    HELPER_TIMEOUT,
    TOKEN_USERNAME,
    Credential,
    DockerConfig,
    HelperRef,
)

log = logging.getLogger(__name__)


# --- credential helpers -----------------------------------------------------------------


class HelperFailed(Exception):
    """A credential helper gave no usable answer.

    The message names the helper program and the server URL, and never holds
    a secret: the helper's own output is shortened to one line and dropped
    when it looks like a credential answer.
    """


@functools.cache
def _store_class() -> type[Any]:
    """``docker.credentials.Store`` with a time limit on the helper (imported on first use).

    The docker SDK is imported here, not at module import: modules that use
    credentials without the Docker engine (``distribution``, ``skopeo``) must
    not load it (tests/unit/test_layering.py).
    """
    from docker.credentials import Store
    from docker.credentials.errors import (
        CredentialsNotFound,
        StoreError,
        process_store_error,
    )
    from docker.credentials.utils import create_environment_dict

    class _BoundedStore(Store):
        """``docker.credentials.Store`` with a time limit on the helper.

        docker-py 7.1 runs the helper with ``subprocess.check_output`` and no
        timeout, and puts the helper's whole output in its error. This runs it in
        its own process group, kills the group after ``timeout`` seconds, and
        keeps only a safe one-line excerpt of the output; ``get``'s parsing and
        ``CredentialsNotFound`` rule are docker-py's own.
        """

        def __init__(
            self, name: str, timeout: float, environment: Mapping[str, str] | None
        ) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "not installed" is raised by _execute
                super().__init__(name, environment=dict(environment) if environment else None)
            self.timeout = timeout

        def _execute(self, subcmd: str, data_input: bytes | None) -> bytes:
            if self.exe is None:
                raise StoreError(f"{self.program} not installed or not available in PATH")
            env = create_environment_dict(self.environment)
            try:
                process = subprocess.Popen(
                    [self.exe, subcmd],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    start_new_session=True,  # its own process group, killed as a whole
                )
            except OSError as exc:
                raise StoreError(f"{self.program} could not be started: {exc.strerror}") from None
            try:
                stdout, stderr = process.communicate(data_input, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise StoreError(
                    f"{self.program} did not answer within {self.timeout:g} s (killed)"
                ) from None
            if process.returncode != 0:
                excerpt = _excerpt(stdout) or _excerpt(stderr)
                error = subprocess.CalledProcessError(
                    process.returncode, [self.program, subcmd], output=excerpt.encode()
                )
                classified = process_store_error(error, self.program)
                if isinstance(classified, CredentialsNotFound):
                    raise classified
                raise StoreError(
                    f"{self.program} exited with status {process.returncode}"
                    + (f": {excerpt}" if excerpt else "")
                )
            return stdout

    return _BoundedStore


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the helper's process group (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _excerpt(output: bytes | None, limit: int = 200) -> str:
    """The first line of a helper's output, shortened, unless it may hold a credential."""
    text = (output or b"").decode("utf-8", "replace").strip()
    line = text.splitlines()[0].strip() if text else ""
    if "{" in line or "secret" in line.lower() or "password" in line.lower():
        return "(output not shown: it may contain a credential)"
    return line[:limit]


def run_helper(
    ref: HelperRef,
    registry: str,
    timeout: float = HELPER_TIMEOUT,
    environment: Mapping[str, str] | None = None,
) -> Credential | None:
    """Ask a credential helper for one registry's credential (``get``).

    Protocol (docker/docker-credential-helpers): ``docker-credential-NAME
    get``, the server URL on stdin, ``{"ServerURL", "Username", "Secret"}`` on
    stdout. A ``Username`` of ``<token>`` means ``Secret`` is an identity
    token (docker/cli ``native_store.go``).

    Args:
        ref: the helper and the server URL to ask for.
        registry: the normalized host the answer is for.
        timeout: seconds before the helper is killed.
        environment: variables added to the controller's environment for
            the helper (for example ``AWS_REGION``); None for none.

    Returns:
        The credential, or None when the helper has none for the server
        ("credentials not found", or empty ``Username`` and ``Secret``).

    Raises:
        HelperFailed: the helper is not on PATH, cannot start, exits with
            another error, takes longer than ``timeout``, or prints something
            that is not the JSON answer. The message names the program and the
            server URL, never a secret.
    """
    from docker.credentials.errors import CredentialsNotFound, StoreError

    store = _store_class()(ref.name, timeout, environment)
    try:
        answer = store.get(ref.server)
    except CredentialsNotFound:
        return None
    except StoreError as exc:
        raise HelperFailed(f"{exc} (asked for {ref.server})") from None
    except (ValueError, KeyError, TypeError):
        raise HelperFailed(
            f"{ref.program} printed an answer that is not the JSON "
            f'{{"ServerURL", "Username", "Secret"}} (asked for {ref.server})'
        ) from None
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        raise HelperFailed(
            f"{ref.program} answered without a string Username and a Secret "
            f"(asked for {ref.server})"
        )
    if username == TOKEN_USERNAME:
        return Credential(registry, "", secret, ref.server, {"identitytoken": secret})
    return Credential(registry, username, secret, ref.server)


@dataclass(frozen=True, slots=True)
class _Answer:
    """One helper answer of a cycle: the credential, or why there is none."""

    credential: Credential | None
    found: bool  # False: "not found", the auths entry applies
    error: str = ""

    def fingerprint(self) -> str:
        """A hash of the answer for ``CredentialStore.version`` (no secret in the clear)."""
        c = self.credential
        text = (
            f"error:{self.error}"
            if self.error
            else f"cred:{c.username}\0{c.password}\0{c.key}\0{c.identity_token or ''}"
            if c
            else f"none:{self.found}"
        )
        return hashlib.sha256(text.encode()).hexdigest()


class CredentialStore:
    """The docker ``config.json`` in force, re-read and its helpers re-run every cycle.

    A ConfigMap or Secret volume updates the file in place, so the file is
    read again before every cycle; a malformed new file is reported and the
    last good credentials stay in use. Credential helpers are asked again at
    every ``reload`` (their tokens are short-lived: ECR's last 12 hours,
    GCR's an hour), for every ``credHelpers`` registry and, with a
    ``credsStore``, for every registry looked up so far; a registry first
    looked up during a cycle is asked then. Safe to use from several threads.

    Args:
        path: the file (``dockerConfig``).
        helper_timeout: seconds a helper may take (``HELPER_TIMEOUT``).
        helper_environment: variables added to the environment of helpers.

    Attributes:
        current: the credentials in use (empty until the first ``reload``).
        version: SHA-256 hex of the file text in use and of the helpers'
            answers (hashed: no secret in it), ``""`` before the first load.
            It changes when the file or any helper's answer changes.
    """

    def __init__(
        self,
        path: Path,
        helper_timeout: float = HELPER_TIMEOUT,
        helper_environment: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.helper_timeout = helper_timeout
        self.helper_environment = dict(helper_environment or {})
        self.current = DockerConfig({})
        self.version = ""
        self._parsed = DockerConfig({})
        self._file_version = ""
        self._answers: dict[str, _Answer] = {}
        self._asked: set[str] = set()  # credsStore registries looked up so far
        self._reported: dict[str, str] = {}  # host -> last failure logged
        self._lock = threading.RLock()

    def reload(self) -> bool:
        """Read the file again, adopt it if it changed and parses, and re-run its helpers.

        Returns:
            True when the credentials in use changed (the file, or a helper's
            answer), False when unchanged.

        Raises:
            ConfigError: the file cannot be read or is malformed (names the
                file and the problem, never a secret); the last good file
                stays in use (a malformed file: its helpers are still asked
                again; an unreadable one: nothing changes).
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                str(self.path), f"cannot read docker config: {exc.strerror}"
            ) from None
        file_version = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            file_changed = file_version != self._file_version
            malformed: ConfigError | None = None
            parsed = self._parsed
            if file_changed:
                try:
                    parsed = DockerConfig.parse(text, str(self.path))
                except ConfigError as exc:
                    # Keep the last good file, but still ask its helpers again:
                    # their tokens expire whatever happens to the file.
                    malformed, file_changed, file_version = exc, False, self._file_version
            hosts = set(parsed.cred_helpers)
            if parsed.creds_store:
                hosts |= self._asked | parsed.logged_in
            else:
                self._asked.clear()
            self._answers = {host: self._ask(parsed, host) for host in sorted(hosts)}
            self._parsed = parsed
            self._file_version = file_version
            if parsed.uses_helpers:
                self.current = DockerConfig(
                    parsed.credentials,
                    parsed.cred_helpers,
                    parsed.creds_store,
                    parsed.logged_in,
                    self._resolve,
                )
            else:
                self.current = parsed
            old = self.version
            self.version = self._compute_version() if file_version else ""
        if malformed is not None:
            raise malformed
        if file_changed:
            log.info(
                "loaded registry credentials from %s for: %s%s",
                self.path,
                ", ".join(sorted(parsed.credentials)) or "(none)",
                _describe_helpers(parsed),
            )
        elif self.version != old:
            log.info("a credential helper's answer changed: registry credentials updated")
        return self.version != old

    def _compute_version(self) -> str:
        digest = hashlib.sha256(self._file_version.encode())
        for host in sorted(self._answers):
            digest.update(f"\n{host}={self._answers[host].fingerprint()}".encode())
        return digest.hexdigest()

    def _resolve(self, host: str) -> Credential | None:
        """``for_registry`` of ``current``: the helper's answer of this cycle, or ``auths``."""
        with self._lock:
            parsed = self._parsed
            ref = parsed.helper_for(host)
            if ref is None:
                return parsed.credentials.get(host)
            answer = self._answers.get(host)
            if answer is None:  # a credsStore registry not asked yet this cycle
                answer = self._ask(parsed, host)
                self._answers[host] = answer
                self._asked.add(host)
                self.version = self._compute_version()
            if answer.error:
                return None
            if answer.found:
                return answer.credential
            return parsed.credentials.get(host)

    def _ask(self, parsed: DockerConfig, host: str) -> _Answer:
        """Run the helper for one host; log a failure once until it changes."""
        ref = parsed.helper_for(host)
        assert ref is not None
        try:
            credential = run_helper(ref, host, self.helper_timeout, self.helper_environment)
        except HelperFailed as exc:
            message = str(exc)
            if self._reported.get(host) != message:
                self._reported[host] = message
                log.error(
                    "credential helper %s (%s) failed for registry %s: %s; no credentials "
                    "are used for %s until it answers",
                    ref.program,
                    ref.source,
                    host,
                    message,
                    host,
                )
            return _Answer(None, found=False, error=message)
        if self._reported.pop(host, None) is not None:
            log.info("credential helper %s answers for registry %s again", ref.program, host)
        if credential is None:
            log.debug("credential helper %s has no credentials for %s", ref.program, host)
        return _Answer(credential, found=credential is not None)


def _describe_helpers(config: DockerConfig) -> str:
    parts = [f"{host} ({ref.program})" for host, ref in sorted(config.cred_helpers.items())]
    if config.creds_store:
        parts.append(f"every other registry (docker-credential-{config.creds_store})")
    return f"; credential helpers for: {', '.join(parts)}" if parts else ""
