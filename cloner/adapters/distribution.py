"""Registry HTTP API v2 client for manifests (the distribution spec). ADAPTER.

Used by the copy backends (Docker engine and skopeo) to ask a registry for a
manifest digest directly, without a pull: ``head`` sends ``HEAD
/v2/<repository>/manifests/<reference>`` (Docker Hub does not count a HEAD as
a pull) and ``get`` fetches the raw manifest bytes. ``controller.py`` builds
one ``DistributionClient`` and shares it; it is safe to call from several
clone threads at once.

It also copies the artifacts that refer to an image (``cloner.ops.artifacts``):
``referrers`` lists them (distribution-spec v1.1), ``copy_blob`` and
``put_manifest`` write their blobs and manifests byte for byte into the owned
registry, with the push credentials of the docker ``config.json``.

It is the only module that talks to registries with ``requests``. It must not:

- fetch image layers (only artifact blobs, at most ``MAX_BLOB_BYTES`` each),
  or write anything but artifacts and their tags;
- log credentials or put them into an error message or a ``repr``;
- let a ``requests`` or ``urllib3`` exception out: every failure is a
  ``RegistryError`` whose ``registry`` is the registry host;
- reach a registry without TLS verification unless it is listed in
  ``insecureRegistries`` (``cloner.model.tls.listed_insecure``); a listed one is
  tried over https without verification, then over plain http;
- import ``kubernetes`` or ``docker``.

Authentication follows the distribution token spec
(docs.docker.com/registry/spec/auth/token): a request goes out anonymously
(or with a cached token); on 401 the ``WWW-Authenticate`` challenge says
either ``Basic`` (retry with the credential of the docker ``config.json``) or
``Bearer realm=...,service=...`` (get a token for
``repository:<repository>:pull`` from the realm, with the credential if there
is one, cache it until shortly before ``expires_in``, retry).
"""

from __future__ import annotations

import base64
import hashlib
import http
import json
import logging
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.util.ssl_

from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.proxying import ProxyDecided
from cloner.errors import FailureReason, InvalidReference, RegistryError
from cloner.model.artifacts import referrer_descriptors
from cloner.model.credentials import Credential
from cloner.model.identity import DOCKER_LIST as DOCKER_MANIFEST_LIST
from cloner.model.identity import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Descriptor
from cloner.model.proxy import ProxyConfig
from cloner.model.reference import (
    DEFAULT_REGISTRY,
    LEGACY_DEFAULT_REGISTRY,
    Reference,
    validate_digest,
)
from cloner.model.tls import listed_insecure

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
)
_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # distribution refuses manifests over 4 MiB
MAX_TOKEN_BYTES = 1024 * 1024
#: Largest artifact blob copied (a signature is bytes, an SBOM megabytes).
MAX_BLOB_BYTES = 256 * 1024 * 1024
#: Pages of a referrers list followed at most (distribution-spec v1.1 pagination).
MAX_REFERRER_PAGES = 16
DEFAULT_TOKEN_SECONDS = 60.0  # token spec: expires_in defaults to 60
TOKEN_MARGIN_SECONDS = 10.0  # renew this long before a token expires (at most half its life)
_DIGEST_ALGORITHMS = frozenset({"sha256", "sha384", "sha512"})  # go-digest's registered ones


# --- pure parts --------------------------------------------------------------------


def registry_endpoint(registry: str) -> str:
    """The ``host[:port]`` that serves a registry's API: Docker Hub is ``registry-1.docker.io``."""
    if registry in (DEFAULT_REGISTRY, LEGACY_DEFAULT_REGISTRY):
        return DOCKER_HUB_ENDPOINT
    return registry


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header.

    Attributes:
        scheme: the auth scheme in lower case, for example ``bearer`` or ``basic``.
        params: auth-params, names in lower case, values unquoted.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
_SPACE = " \t"


def parse_www_authenticate(header: str | None) -> tuple[Challenge, ...]:
    """Parse a ``WWW-Authenticate`` header (RFC 9110 section 11.6.1).

    Args:
        header: for example ``Bearer realm="https://auth.docker.io/token",
            service="registry.docker.io"``; several challenges may be joined
            with commas (several headers arrive that way).

    Returns:
        The challenges in order; empty for an empty or unparseable header.
        Parsing stops at the first malformed part and keeps what came before.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    text = header or ""
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in _SPACE + ",":
            i += 1
        name = _TOKEN_RE.match(text, i)
        if name is None:
            break
        j = name.end()
        while j < n and text[j] in _SPACE:
            j += 1
        if j < n and text[j] == "=":  # an auth-param of the current challenge
            j += 1
            while j < n and text[j] in _SPACE:
                j += 1
            quoted = _QUOTED_RE.match(text, j)
            token = None if quoted else _TOKEN_RE.match(text, j)
            if quoted:
                value, i = _QUOTED_PAIR_RE.sub(r"\1", quoted.group(1)), quoted.end()
            elif token:
                value, i = token.group(), token.end()
            else:
                value, i = "", j
            if challenges:
                challenges[-1][1].setdefault(name.group().lower(), value)
        else:  # a new challenge's scheme
            challenges.append((name.group().lower(), {}))
            i = name.end()
    return tuple(Challenge(scheme, params) for scheme, params in challenges)


_DELTA_SECONDS_RE = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110 section 10.2.3).

    Args:
        value: delay-seconds (``120``) or an HTTP-date (``Wed, 21 Oct 2015
            07:28:00 GMT``, also the obsolete RFC 850 and asctime forms).
        now: the current time (tests); default the system clock.

    Returns:
        The seconds to wait (0 for a date in the past), or None when the
        header is missing or is neither form.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS_RE.fullmatch(text):
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime and "-0000" dates: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def registry_error_text(body: bytes) -> str:
    """The registry's own words from an error body ``{"errors": [{"code", "message"}]}``.

    Returns:
        ``"CODE: message"`` for each error, joined with ``"; "``; ``""`` when
        the body is not such JSON.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
        parts.append(": ".join(p for p in (code, message) if p))
    return "; ".join(p for p in parts if p)


# --- the client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """An HTTP response, read; no ``requests`` object leaves the transport layer."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (requests' CaseInsensitiveDict)
    body: bytes


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    expires: float  # time.monotonic()
    credential: Credential | None = field(repr=False)


class DistributionClient:
    """Manifest HEAD and GET against registries (distribution spec), with token auth.

    Args:
        credentials: the registry credentials in force (read per request).
        insecure_registries: ``insecureRegistries``: ``host[:port]`` globs
            (``tls.listed_insecure``) of registries reached over https
            without verification, then plain http. Every other registry is
            reached over https with TLS verification only.
        timeout: seconds to connect, and seconds between two reads.
        proxy: the proxy settings (``model.proxy``): which URLs go through
            which proxy; the environment's own proxy variables are not read
            by ``requests`` itself. Default: no proxy.

    Attributes:
        requests: requests so far by (registry host, operation, outcome):
            ``HEAD``/``GET`` (manifests), ``token``, ``referrers``,
            ``blob_head``, ``blob_get``, ``POST`` (blob uploads, mounts),
            ``PUT`` (artifact blobs and manifests); the outcome is ``success``
            or a ``RegistryError`` reason (a HEAD of an unknown manifest
            counts as ``not_found``).
    """

    def __init__(
        self,
        credentials: CredentialStore,
        *,
        insecure_registries: Sequence[str] = (),
        timeout: float = 30.0,
        proxy: ProxyConfig | None = None,
    ) -> None:
        self._store = credentials
        self._insecure = tuple(insecure_registries)
        self._timeout = timeout
        proxy = proxy or ProxyConfig()
        self._session = _ProxiedSession(proxy)
        # Listed registries get https without verification on a session of
        # their own, whose one TLS context is made once: otherwise urllib3
        # makes a context and loads the system's roots (about 30 ms of CPU)
        # for every new connection, roots it then does not check against.
        self._unverified = _ProxiedSession(proxy)
        self._unverified.mount("https://", _UnverifiedAdapter())
        self._lock = threading.Lock()
        self._schemes: dict[str, str] = {}  # listed registry -> "https" or "http", what worked
        self._probing: dict[str, threading.Lock] = {}  # listed registry -> held while probing
        self._probe_failed: dict[str, RegistryError] = {}  # listed registry -> last probe's error
        self._tokens: dict[tuple[str, str], _Token] = {}  # (registry, scope) -> token
        self._basic: set[str] = set()  # registries that asked for Basic credentials
        self.requests: Counter[tuple[str, str, str]] = Counter()

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()
        self._unverified.close()

    # --- operations ------------------------------------------------------------------

    def head(self, ref: Reference) -> Descriptor | None:
        """HEAD /v2/<repository>/manifests/<digest or tag>.

        A registry that answers without ``Docker-Content-Digest`` (or without
        ``Content-Length``) is asked again with a GET, and the body is hashed.

        Args:
            ref: the manifest; its digest wins over its tag.

        Returns:
            The descriptor, or None when the registry says the manifest (or
            the repository) is unknown (404).

        Raises:
            RegistryError: ``auth``, ``rate_limited`` (with ``retry_after``),
                ``network``, ``registry_error``; see the module docstring.
        """
        try:
            answer = self._manifest("HEAD", ref)
        except RegistryError as exc:
            self._count(ref.registry, "HEAD", exc.reason)
            raise
        if answer.status == 404:
            self._count(ref.registry, "HEAD", "not_found")
            return None
        self._count(ref.registry, "HEAD", "success")
        digest = answer.headers.get("Docker-Content-Digest", "").strip()
        size = answer.headers.get("Content-Length", "").strip()
        if _valid_digest(digest) and size.isascii() and size.isdigit():
            return Descriptor(digest, _media_type(answer.headers), int(size))
        log.debug("HEAD %s: no Docker-Content-Digest or Content-Length; asking with GET", ref)
        try:
            descriptor, _ = self.get(ref)
        except RegistryError as exc:
            if exc.reason == "not_found":
                return None
            raise
        return descriptor

    def get(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """GET the raw manifest bytes.

        Args:
            ref: the manifest; its digest wins over its tag.

        Returns:
            The descriptor (digest of the body as received; the requested
            digest when ``ref`` has one) and the body.

        Raises:
            RegistryError: ``verify_failed`` when ``ref`` has a digest and the
                body does not hash to it; ``not_found`` on 404; ``auth``,
                ``rate_limited``, ``network``, ``registry_error`` as for ``head``.
        """
        what = f"GET {ref.pull_reference}"
        try:
            answer = self._manifest("GET", ref)
            if answer.status == 404:
                raise self._status_error(answer, what, ref.registry)
            descriptor = self._describe_body(ref, answer, what)
        except RegistryError as exc:
            self._count(ref.registry, "GET", exc.reason)
            raise
        self._count(ref.registry, "GET", "success")
        return descriptor, answer.body

    # --- artifacts: referrers, blobs, manifest writes ---------------------------------

    def referrers(self, repository: Reference, digest: str) -> list[dict[str, Any]] | None:
        """GET /v2/<repository>/referrers/<digest>: the referrers list of a manifest.

        distribution-spec v1.1, "Listing Referrers": a registry with the API
        answers 200 with an OCI image index (possibly empty, possibly split
        over pages by a ``Link: <...>; rel="next"`` header, all followed up to
        ``MAX_REFERRER_PAGES``); one without it answers 404 (or another 4xx).

        Args:
            repository: the repository (its tag and digest are ignored).
            digest: the subject manifest's digest.

        Returns:
            The descriptors listed (``mediaType``, ``digest``, ``size``,
            ``artifactType``, ``annotations``), or None when the registry
            does not implement the API.

        Raises:
            RegistryError: ``auth``, ``rate_limited``, ``network``,
                ``registry_error`` (also for a body that is no index).
        """
        registry = repository.registry
        path: str | None = f"/v2/{repository.repository}/referrers/{digest}"
        what = f"GET referrers of {repository.name}@{digest}"
        out: list[dict[str, Any]] = []
        pages = 0
        while path is not None:
            try:
                answer = self._api("GET", repository, path, what, accept=OCI_INDEX)
            except RegistryError as exc:
                self._count(registry, "referrers", exc.reason)
                raise
            if answer.status == 404 or (pages == 0 and answer.status in (400, 405)):
                self._count(registry, "referrers", "not_found")
                return None
            if not 200 <= answer.status < 300:
                self._count(registry, "referrers", "registry_error")
                raise self._status_error(answer, what, registry)
            try:
                out.extend(referrer_descriptors(answer.body))
            except ValueError as exc:
                self._count(registry, "referrers", "registry_error")
                raise RegistryError(
                    FailureReason.REGISTRY_ERROR, f"{what}: {exc}", registry
                ) from None
            self._count(registry, "referrers", "success")
            pages += 1
            path = _next_path(answer.headers.get("Link"), registry)
            if pages >= MAX_REFERRER_PAGES:
                break
        return out

    def blob_exists(self, repository: Reference, digest: str) -> bool:
        """HEAD /v2/<repository>/blobs/<digest>: whether the registry serves the blob.

        Raises:
            RegistryError: as for ``head``.
        """
        path = f"/v2/{repository.repository}/blobs/{digest}"
        what = f"HEAD blob {repository.name}@{digest}"
        answer = self._counted("HEAD", repository, path, what, "blob_head")
        return 200 <= answer.status < 300

    def copy_blob(self, source: Reference, target: Reference, digest: str, size: int) -> bool:
        """Copy one blob from ``source``'s repository to ``target``'s, byte for byte.

        distribution-spec "Pushing blobs": a blob the target already has is
        not sent again; in the same registry a cross-repository mount
        (``POST .../blobs/uploads/?mount=<digest>&from=<repository>``) is
        tried first; otherwise the blob is read (at most ``MAX_BLOB_BYTES``,
        checked against ``digest`` and ``size``) and pushed in one monolithic
        upload (``POST`` then ``PUT <location>?digest=``).

        Args:
            source: the repository the blob is read from.
            target: the repository it is written to (owned registry).
            digest: the blob's digest, ``sha256:...``.
            size: its size in bytes, as the manifest's descriptor says.

        Returns:
            True when the blob was sent or mounted, False when it was there.

        Raises:
            RegistryError: ``verify_failed`` when the bytes read do not hash
                to ``digest`` or differ in size; ``registry_error`` for a blob
                over ``MAX_BLOB_BYTES``; ``auth`` when the target refuses
                the write (401/403); the reasons of ``head`` otherwise.
        """
        if self.blob_exists(target, digest):
            return False
        name = target.repository
        if source.registry == target.registry:
            path = f"/v2/{name}/blobs/uploads/?mount={digest}&from={source.repository}"
            answer = self._write("POST", target, path, f"mount {digest} into {target.name}")
            if answer.status == 201:
                return True
        if size > MAX_BLOB_BYTES:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR,
                f"blob {source.name}@{digest} is {size} bytes, over {MAX_BLOB_BYTES}",
                source.registry,
            )
        what = f"GET blob {source.name}@{digest}"
        path = f"/v2/{source.repository}/blobs/{digest}"
        answer = self._counted("GET", source, path, what, "blob_get", limit=MAX_BLOB_BYTES)
        if answer.status == 404:
            raise self._status_error(answer, what, source.registry)
        algorithm = digest.partition(":")[0]
        if algorithm not in _DIGEST_ALGORITHMS:
            raise RegistryError(
                FailureReason.INVALID_REFERENCE, f"{what}: unknown digest", source.registry
            )
        actual = f"{algorithm}:{hashlib.new(algorithm, answer.body).hexdigest()}"
        if actual != digest or len(answer.body) != size:
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"{what}: received {len(answer.body)} bytes hashing to {actual}",
                source.registry,
            )
        start = self._write("POST", target, f"/v2/{name}/blobs/uploads/", f"upload to {name}")
        location = start.headers.get("Location", "")
        if start.status != 202 or not location:
            raise self._write_error(start, f"upload to {target.name}", target.registry)
        put = _with_digest(location, digest, target.registry)
        done = self._write(
            "PUT",
            target,
            put,
            f"PUT blob {target.name}@{digest}",
            data=answer.body,
            content_type="application/octet-stream",
        )
        if done.status != 201:
            raise self._write_error(done, f"PUT blob {target.name}@{digest}", target.registry)
        return True

    def put_manifest(self, ref: Reference, media_type: str, body: bytes) -> str:
        """PUT /v2/<repository>/manifests/<digest or tag>: push a manifest as these bytes.

        distribution-spec "Pushing Manifests": the registry stores the bytes
        as sent, so the digest stays the source's. A registry that answers
        ``Docker-Content-Digest`` must name the digest of the bytes.

        Args:
            ref: where to push: by digest (a referrer, a manifest the tag
                will name) or by tag (a cosign tag, a fallback index).
            media_type: the manifest's media type (``Content-Type``).
            body: the manifest bytes.

        Returns:
            The digest of ``body``, ``sha256:...``.

        Raises:
            RegistryError: ``auth`` when the registry refuses the write
                (401, 403); ``verify_failed`` when it reports another digest;
                ``registry_error``, ``network``, ``rate_limited`` otherwise.
        """
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        reference = ref.digest or ref.tag_or_default
        what = f"PUT {ref.name}:{reference}" if not ref.digest else f"PUT {ref.name}@{reference}"
        path = f"/v2/{ref.repository}/manifests/{reference}"
        answer = self._write("PUT", ref, path, what, data=body, content_type=media_type)
        if answer.status not in (200, 201):
            raise self._write_error(answer, what, ref.registry)
        said = answer.headers.get("Docker-Content-Digest", "").strip()
        if said.startswith("sha256:") and said != digest:
            raise RegistryError(
                FailureReason.VERIFY_FAILED,
                f"{what}: the registry stored {said}, the bytes sent are {digest}",
                ref.registry,
            )
        return digest

    def _counted(
        self,
        method: str,
        ref: Reference,
        path: str,
        what: str,
        operation: str,
        *,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> _Answer:
        """A read (``operation`` in ``requests``): a 2xx or 404 answer; raises otherwise."""
        try:
            answer = self._api(method, ref, path, what, limit=limit)
            if answer.status != 404 and not 200 <= answer.status < 300:
                raise self._status_error(answer, what, ref.registry)
        except RegistryError as exc:
            self._count(ref.registry, operation, exc.reason)
            raise
        outcome = "not_found" if answer.status == 404 else "success"
        self._count(ref.registry, operation, outcome)
        return answer

    def _write(
        self,
        method: str,
        ref: Reference,
        path: str,
        what: str,
        *,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> _Answer:
        """A write with push credentials (scope ``pull,push``); any answer is returned."""
        try:
            answer = self._api(
                method,
                ref,
                path,
                what,
                push=True,
                data=b"" if data is None else data,
                content_type=content_type,
            )
        except RegistryError as exc:
            self._count(ref.registry, method, exc.reason)
            raise
        ok = 200 <= answer.status < 300
        self._count(ref.registry, method, "success" if ok else _status_reason(answer.status))
        return answer

    def _write_error(self, answer: _Answer, what: str, registry: str) -> RegistryError:
        """A refused write: ``auth`` for 401/403 (final until the credentials change)."""
        error = self._status_error(answer, what, registry)
        if answer.status in (401, 403):
            return RegistryError(FailureReason.AUTH, str(error), registry)
        return error

    def _api(
        self,
        method: str,
        ref: Reference,
        path: str,
        what: str,
        *,
        push: bool = False,
        accept: str = _ACCEPT,
        data: bytes | None = None,
        content_type: str | None = None,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> _Answer:
        """One authenticated request to ``ref``'s registry; any HTTP answer is returned.

        Authentication as for manifests, with the scope
        ``repository:<name>:pull`` or, with ``push``, ``pull,push``. A 401
        after authenticating is returned to the caller.

        Raises:
            RegistryError: the request failed before an answer was read.
        """
        registry = ref.registry
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        credential = self._store.current.for_registry(registry)
        authorization = self._cached_authorization(registry, scope, credential)
        options: dict[str, Any] = {
            "accept": accept,
            "data": data,
            "content_type": content_type,
            "limit": limit,
        }
        answer = self._registry_call(method, registry, path, authorization, what, **options)
        if answer.status == 401:
            authorization = self._authorize(registry, scope, credential, answer, what)
            answer = self._registry_call(method, registry, path, authorization, what, **options)
            if answer.status == 401:
                self._forget(registry, scope)
        return answer

    # --- manifests -------------------------------------------------------------------

    def _manifest(self, method: str, ref: Reference) -> _Answer:
        """Ask for a manifest, authenticating as the registry asks.

        Returns:
            A 2xx answer, or the 404 answer (unknown manifest or repository).
        """
        registry = ref.registry
        what = f"{method} {ref.pull_reference}"
        path = f"/v2/{ref.repository}/manifests/{ref.digest or ref.tag_or_default}"
        scope = f"repository:{ref.repository}:pull"
        credential = self._store.current.for_registry(registry)
        authorization = self._cached_authorization(registry, scope, credential)
        answer = self._registry_call(method, registry, path, authorization, what)
        if answer.status == 401:
            authorization = self._authorize(registry, scope, credential, answer, what)
            answer = self._registry_call(method, registry, path, authorization, what)
            if answer.status == 401:
                self._forget(registry, scope)
                refused = (
                    f"the credentials for {registry} were refused"
                    if credential
                    else "the anonymous token was refused"
                )
                raise self._status_error(answer, what, registry, refused)
        if answer.status == 404 or 200 <= answer.status < 300:
            return answer
        raise self._status_error(answer, what, registry)

    def _describe_body(self, ref: Reference, answer: _Answer, what: str) -> Descriptor:
        body = answer.body
        if ref.digest:
            algorithm = ref.digest.partition(":")[0]
            if algorithm not in _DIGEST_ALGORITHMS:
                raise RegistryError(
                    FailureReason.INVALID_REFERENCE,
                    f"{what}: cannot verify a {algorithm!r} digest",
                    registry=ref.registry,
                )
            actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
            if actual != ref.digest:
                raise RegistryError(
                    FailureReason.VERIFY_FAILED,
                    f"{what}: the manifest received hashes to {actual}, not the digest asked for",
                    registry=ref.registry,
                )
            digest = ref.digest
        else:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            said = answer.headers.get("Docker-Content-Digest", "").strip()
            if said.startswith("sha256:") and said != digest:
                log.warning(
                    "%s: the registry says Docker-Content-Digest %s, the body hashes to %s",
                    what,
                    said,
                    digest,
                )
        media_type = _media_type(answer.headers) or _body_media_type(body)
        return Descriptor(digest, media_type, len(body))

    # --- authentication --------------------------------------------------------------

    def _cached_authorization(
        self, registry: str, scope: str, credential: Credential | None
    ) -> str | None:
        """The Authorization header to try first: a live token, or Basic if the registry asked."""
        with self._lock:
            token = self._tokens.get((registry, scope))
            if token is not None:
                if token.expires > time.monotonic() and token.credential == credential:
                    return f"Bearer {token.value}"
                del self._tokens[(registry, scope)]
            if registry in self._basic and credential is not None:
                return _basic_header(credential)
        return None

    def _forget(self, registry: str, scope: str) -> None:
        with self._lock:
            self._tokens.pop((registry, scope), None)
            self._basic.discard(registry)

    def _authorize(
        self,
        registry: str,
        scope: str,
        credential: Credential | None,
        answer: _Answer,
        what: str,
    ) -> str:
        """The Authorization header that answers a 401's challenge.

        Raises:
            RegistryError: ``auth`` when the challenge needs credentials the
                docker config does not have, or is of an unknown scheme; the
                errors of ``_fetch_token``.
        """
        challenges = {
            c.scheme: c for c in parse_www_authenticate(answer.headers.get("WWW-Authenticate"))
        }
        if "bearer" in challenges:
            try:
                token = self._fetch_token(registry, scope, credential, challenges["bearer"], what)
            except RegistryError as exc:
                self._count(registry, "token", exc.reason)
                raise
            self._count(registry, "token", "success")
            return f"Bearer {token}"
        if "basic" in challenges:
            if credential is None:
                raise self._status_error(
                    answer,
                    what,
                    registry,
                    f"the registry asks for credentials and the docker config has none for "
                    f"{registry}",
                )
            with self._lock:
                self._basic.add(registry)
            return _basic_header(credential)
        offered = ", ".join(challenges) or "none"
        raise self._status_error(
            answer, what, registry, f"unsupported authentication challenge (offered: {offered})"
        )

    def _fetch_token(
        self,
        registry: str,
        scope: str,
        credential: Credential | None,
        challenge: Challenge,
        what: str,
    ) -> str:
        """Get a pull token from the challenge's realm and cache it (counted by the caller).

        Raises:
            RegistryError: ``auth`` when the token service refuses, or would
                get credentials over plain http from an unlisted realm;
                ``registry_error`` for a realm that is no URL or an answer
                without a token; ``rate_limited``, ``network`` as for requests.
        """
        what = f"{what}: token"
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR,
                f"{what}: the Bearer challenge has no usable realm URL ({realm!r})",
                registry=registry,
            )
        listed = listed_insecure(parts.netloc, self._insecure)
        if parts.scheme == "http" and credential is not None and not listed:
            raise RegistryError(
                FailureReason.AUTH,
                f"{what}: the token service {parts.netloc} is plain http; credentials are not "
                "sent there unless it is listed in insecureRegistries",
                registry=registry,
            )
        params = {"scope": scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        answer = self._transport(
            "GET",
            realm,
            registry,
            what,
            # requests drops the header if the realm redirects to another host
            headers={"Authorization": _basic_header(credential)} if credential else None,
            verify=not listed,
            params=params,
            limit=MAX_TOKEN_BYTES,
        )
        if answer.status in (401, 403):
            refused = (
                f"the token service refused the credentials for {registry}"
                if credential
                else "the token service refused an anonymous token"
            )
            raise self._status_error(answer, what, registry, refused)
        if not 200 <= answer.status < 300:
            raise self._status_error(answer, what, registry)
        try:
            data = json.loads(answer.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR,
                f"{what}: the answer holds no token",
                registry=registry,
            )
        lifetime = _positive_number(data.get("expires_in")) or DEFAULT_TOKEN_SECONDS
        margin = min(TOKEN_MARGIN_SECONDS, lifetime / 2)
        with self._lock:
            self._tokens[(registry, scope)] = _Token(
                token, time.monotonic() + lifetime - margin, credential
            )
        return token

    # --- transport -------------------------------------------------------------------

    def _registry_call(
        self,
        method: str,
        registry: str,
        path: str,
        authorization: str | None,
        what: str,
        *,
        accept: str = _ACCEPT,
        data: bytes | None = None,
        content_type: str | None = None,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> _Answer:
        """One request to a registry's API, over the scheme(s) its listing allows.

        A registry not listed in ``insecureRegistries`` gets https with TLS
        verification. A listed one gets https without verification, then
        plain http when https cannot connect; the scheme that answered is
        remembered, and forgotten when it stops connecting. Until it is
        known, one request at a time tries the schemes; requests that waited
        for a try that failed raise its error.

        Raises:
            RegistryError: no scheme connected, or the request failed.
        """
        headers = {"Accept": accept}
        if authorization:
            headers["Authorization"] = authorization
        if content_type:
            headers["Content-Type"] = content_type
        body = {"data": data, "limit": limit}
        endpoint = registry_endpoint(registry)
        if not listed_insecure(registry, self._insecure):
            return self._transport(
                method, f"https://{endpoint}{path}", registry, what, headers=headers, **body
            )
        with self._lock:
            known = self._schemes.get(registry)
            probing = None if known else self._probing.setdefault(registry, threading.Lock())
            failed_before = self._probe_failed.get(registry)
        if probing is None:
            return self._over_schemes(
                method, registry, endpoint, path, what, headers, known, data, limit
            )
        # One request at a time finds the scheme: the others wait for it
        # instead of each paying an https attempt (a TLS context with the
        # system's roots, about 30 ms of CPU) that a plain-http registry
        # refuses. When the probe they waited for failed, they fail with its
        # error at once rather than trying one after another, so threads do
        # not queue for many timeouts behind a registry that is down.
        with probing:
            with self._lock:
                known = self._schemes.get(registry)
                failed = self._probe_failed.get(registry)
            if known is None and failed is not None and failed is not failed_before:
                raise failed
            try:
                return self._over_schemes(
                    method, registry, endpoint, path, what, headers, known, data, limit
                )
            except RegistryError as exc:
                with self._lock:
                    self._probe_failed[registry] = exc
                raise

    def _over_schemes(
        self,
        method: str,
        registry: str,
        endpoint: str,
        path: str,
        what: str,
        headers: Mapping[str, str],
        known: str | None,
        data: bytes | None = None,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> _Answer:
        """The request over ``known``, or https then http when none is known yet."""
        failure: RegistryError | None = None
        for scheme in (known,) if known else ("https", "http"):
            try:
                answer = self._transport(
                    method,
                    f"{scheme}://{endpoint}{path}",
                    registry,
                    what,
                    headers=headers,
                    verify=False,
                    connect_error=True,
                    data=data,
                    limit=limit,
                )
            except _ConnectError as exc:
                log.debug("%s over %s: %s", what, scheme, exc.error)
                failure = exc.error
                continue
            with self._lock:
                self._schemes[registry] = scheme
            return answer
        with self._lock:
            self._schemes.pop(registry, None)
        assert failure is not None
        raise failure

    def _transport(
        self,
        method: str,
        url: str,
        registry: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        verify: bool = True,
        params: Mapping[str, str] | None = None,
        limit: int = MAX_MANIFEST_BYTES,
        connect_error: bool = False,
        data: bytes | None = None,
    ) -> _Answer:
        """Send one request and read its answer; the only place ``requests`` is called.

        Raises:
            RegistryError: the request failed before an answer was read.
            _ConnectError: with ``connect_error``, a failure to connect (the
                caller may try another scheme); it carries the RegistryError.
        """
        try:
            session = self._session if verify else self._unverified
            response = session.request(
                method,
                url,
                headers=headers,
                params=params,
                data=data,
                verify=verify,
                timeout=self._timeout,
                stream=True,
                # A write is never replayed to another address; a read may
                # follow a redirect (blobs are often served from storage).
                allow_redirects=data is None and method in ("GET", "HEAD"),
            )
            with response:
                # A HEAD's (empty) body is read too: closing an answer whose
                # body was never read closes its connection, and every HEAD
                # then paid a new connection (a TLS handshake with https).
                body = response.content if method == "HEAD" else _read_limited(response, limit)
        except (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
            OSError,
            ValueError,  # urllib3's ProxySchemeUnsupported, IDNA errors of odd host names
        ) as exc:
            error = self._transport_error(exc, url, registry, what, verify)
            if connect_error and isinstance(exc, requests.exceptions.ConnectionError):
                raise _ConnectError(error) from None
            raise error from None
        if len(body) > limit:
            raise RegistryError(
                FailureReason.REGISTRY_ERROR,
                f"{what}: the answer is larger than {limit} bytes",
                registry,
            )
        return _Answer(response.status_code, response.headers, body)

    def _transport_error(
        self, exc: Exception, url: str, registry: str, what: str, verify: bool
    ) -> RegistryError:
        """Translate a ``requests``/``urllib3``/socket exception; the message names no secret."""
        cause = _root_cause(exc)
        host = urlsplit(url).netloc
        if isinstance(exc, requests.exceptions.SSLError):
            if verify:
                # Final, like skopeo's "server gave HTTP response to HTTPS
                # client": only a change of insecureRegistries (or of the
                # registry's certificate) helps, not a retry.
                message = (
                    f"{what}: TLS verification of {host} failed ({cause}); if the registry "
                    "serves plain http or a certificate not trusted here, list it in "
                    "insecureRegistries"
                )
                return RegistryError(FailureReason.INSECURE_REGISTRY, message, registry=registry)
            message = f"{what}: TLS handshake with {host} failed ({cause})"
            return RegistryError(FailureReason.NETWORK, message, registry=registry)
        if isinstance(exc, requests.exceptions.Timeout):
            return RegistryError(
                FailureReason.NETWORK,
                f"{what}: {host} timed out ({self._timeout:g}s)",
                registry=registry,
            )
        if isinstance(
            exc,
            (
                requests.exceptions.InvalidURL,
                requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema,
                requests.exceptions.InvalidHeader,
                requests.exceptions.TooManyRedirects,
                ValueError,
            ),
        ):
            return RegistryError(
                FailureReason.REGISTRY_ERROR, f"{what}: {cause}", registry=registry
            )
        return RegistryError(
            FailureReason.NETWORK, f"{what}: cannot reach {host}: {cause}", registry=registry
        )

    def _status_error(
        self, answer: _Answer, what: str, registry: str, detail: str = ""
    ) -> RegistryError:
        """The ``RegistryError`` for an HTTP status, with the registry's own error text."""
        status = answer.status
        if status in (401, 403):
            reason = "auth"
        elif status == 404:
            reason = "not_found"
        elif status == 429:
            reason = "rate_limited"
        else:
            reason = "registry_error"
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "HTTP status"
        words = [f"{status} {phrase}"]
        said = registry_error_text(answer.body)
        if said:
            words.append(said)
        if detail:
            words.append(detail)
        return RegistryError(
            reason,
            f"{what}: " + ": ".join(words),
            registry=registry,
            retry_after=parse_retry_after(answer.headers.get("Retry-After"))
            if status == 429
            else None,
        )

    def _count(self, registry: str, operation: str, outcome: str) -> None:
        with self._lock:
            self.requests[registry, operation, outcome] += 1


class _ProxiedSession(ProxyDecided, requests.Session):
    """The registry client's session: its proxy per URL is ``model.proxy``'s."""

    def __init__(self, proxy: ProxyConfig) -> None:
        super().__init__()
        self.proxy_config = proxy


class _UnverifiedAdapter(requests.adapters.HTTPAdapter):
    """https without certificate or host name checks, on one TLS context made once.

    Used only for registries listed in ``insecureRegistries`` (``verify=False``).
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_NONE)
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """The pool through a proxy, with the same unverified TLS context for the registry."""
        proxy_kwargs.setdefault(
            "ssl_context", urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_NONE)
        )
        return super().proxy_manager_for(proxy, **proxy_kwargs)


class _ConnectError(Exception):
    """Internal: a request could not connect; carries the translated error."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


def _read_limited(response: requests.Response, limit: int) -> bytes:
    """The body, read up to one chunk past ``limit`` (the caller refuses that much)."""
    chunks, total = [], 0
    for chunk in response.iter_content(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            break
    return b"".join(chunks)


def _basic_header(credential: Credential) -> str:
    """``Basic base64(user:password)``, UTF-8 as Go's ``SetBasicAuth`` sends it."""
    pair = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _valid_digest(digest: str) -> bool:
    try:
        validate_digest(digest)
    except InvalidReference:
        return False
    return True


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip()


def _body_media_type(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    media_type = data.get("mediaType") if isinstance(data, dict) else None
    return media_type if isinstance(media_type, str) else ""


def _positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


_OBJECT_PREFIX_RE = re.compile(r"^<[^>]*>: ")


def _root_cause(exc: BaseException) -> str:
    """The innermost error's text: requests wraps urllib3's ``MaxRetryError``, which wraps it."""
    seen: BaseException = exc
    for _ in range(10):
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException) and seen.args:
            inner = seen.args[0]
        if not isinstance(inner, BaseException):
            break
        seen = inner
    return _OBJECT_PREFIX_RE.sub("", str(seen)) or type(seen).__name__


def _status_reason(status: int) -> str:
    """The ``requests`` outcome of a non-2xx write answer."""
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "rate_limited"
    return "not_found" if status == 404 else "registry_error"


def _next_path(link: str | None, registry: str) -> str | None:
    """The path of a ``Link: <url>; rel="next"`` header on the same registry, else None.

    distribution-spec v1.1 pagination (RFC 8288 links); a link to another
    host is not followed (it would get this registry's credentials).
    """
    if not link:
        return None
    match = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?', link)
    if match is None:
        return None
    parts = urlsplit(match.group(1))
    if parts.netloc and parts.netloc != registry_endpoint(registry):
        return None
    if not parts.path.startswith("/v2/"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_digest(location: str, digest: str, registry: str) -> str:
    """The upload ``Location`` as a path on the registry, with ``digest=`` added.

    distribution-spec: the location may be absolute or relative and may
    carry a query of its own, which is kept.

    Raises:
        RegistryError: ``registry_error`` for a location on another host.
    """
    parts = urlsplit(location)
    if parts.netloc and parts.netloc != registry_endpoint(registry):
        raise RegistryError(
            FailureReason.REGISTRY_ERROR,
            f"upload location {parts.netloc} is not the registry {registry}",
            registry,
        )
    query = f"{parts.query}&digest={digest}" if parts.query else f"digest={digest}"
    return f"{parts.path}?{query}"
