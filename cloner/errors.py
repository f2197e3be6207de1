"""Errors of image-cloner, named by what the reconcile loop should do with them.

Every error the adapters (``kube``, ``registry``) raise is one of these, so no
``kubernetes`` or ``docker`` exception leaks past them. ``temporary`` tells the
loop whether the same operation may succeed when retried next cycle (the model
is kopf's TemporaryError/PermanentError and go-containerregistry's
``Temporary()``). Messages never contain credentials.
"""

from __future__ import annotations

import re
from enum import StrEnum


class ClonerError(Exception):
    """Root of every error image-cloner raises on purpose.

    Attributes:
        temporary: True when retrying the same operation later may succeed.
    """

    temporary: bool = False


class ConfigError(ClonerError, ValueError):
    """A setting is missing or malformed; start-up stops.

    Args:
        field: dotted name of the offending setting, for example ``pollInterval``.
        problem: what is wrong with it, in words.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"config: {field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidReference(ClonerError, ValueError):
    """An image reference does not follow the distribution reference grammar.

    Args:
        text: the reference as written (shown quoted in the message).
        problem: what is wrong with it.
    """

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"invalid reference {text!r}: {problem}")
        self.text = text
        self.problem = problem


class FailureReason(StrEnum):
    """Why an image was not cloned or verified: ``RegistryError.reason``.

    The label ``reason`` of ``image_cloner_clone_failures_total`` and the
    backoff's reason; the meaning of each is given by ``RegistryError``.
    """

    AUTH = "auth"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    NETWORK = "network"
    REGISTRY_ERROR = "registry_error"
    INVALID_REFERENCE = "invalid_reference"
    VERIFY_FAILED = "verify_failed"
    NAMING_COLLISION = "naming_collision"
    INSECURE_REGISTRY = "insecure_registry"
    SOURCE_UNVERIFIED = "source_unverified"
    MULTI_PLATFORM = "multi_platform"
    UNSUPPORTED = "unsupported"
    SIGNATURES_NOT_COPIED = "signatures_not_copied"
    SIGNATURES_LOST = "signatures_lost"


class RegistryError(ClonerError):
    """Pulling, pushing or inspecting an image failed.

    Args:
        reason: one of ``REASONS``; the label of the clone-failure metric.
            ``insecure_registry``: the Docker engine would reach the registry
            without TLS verification and it is not listed in
            ``insecureRegistries`` (final: a config change is needed).
            ``source_unverified``: the source cannot be asked and the owned
            name has no record of verification, so it is not used.
            ``multi_platform``: the Docker engine backend would drop platforms
            the cluster's nodes run (final: use ``copyBackend: skopeo``).
            ``unsupported``: the copy tool refused the operation itself, for
            example skopeo's "Instructed to preserve digests" (final).
            ``signatures_not_copied``: under ``signatures: require``, the
            source's signatures or referrers are not all in the owned
            registry yet (temporary). ``signatures_lost``: under ``require``,
            the backend gives copies new digests and the source is signed
            (final: use ``copyBackend: skopeo``).
        message: what happened, with the reference; never credentials.
        registry: the registry host the failure concerns, when known (a 429
            pauses that registry as a whole).
        retry_after: seconds the registry asked to wait (HTTP ``Retry-After``),
            when it said.
    """

    REASONS = tuple(FailureReason)
    _TEMPORARY = frozenset(
        {
            FailureReason.RATE_LIMITED,
            FailureReason.NETWORK,
            FailureReason.REGISTRY_ERROR,
            FailureReason.VERIFY_FAILED,
            FailureReason.SOURCE_UNVERIFIED,
            FailureReason.SIGNATURES_NOT_COPIED,
        }
    )

    def __init__(
        self,
        reason: FailureReason | str,
        message: str,
        registry: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown registry error reason {reason!r}")
        super().__init__(message)
        self.reason = FailureReason(reason)
        self.registry = registry
        self.retry_after = retry_after
        self.temporary = reason in self._TEMPORARY


class KubeError(ClonerError):
    """A Kubernetes API call failed.

    Args:
        status: HTTP status code, or 0 when the API server could not be reached.
        message: what happened, naming the object.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        # 409 Conflict, 422 from a failed JSON patch `test`, 429 and 5xx, or no
        # answer at all: the next cycle re-reads the object and decides again.
        self.temporary = status in (0, 409, 422, 429) or status >= 500

    @property
    def conflict(self) -> bool:
        """True when the object changed under us (409, or a failed patch ``test``)."""
        return self.status in (409, 422)


_REASON_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # skopeo (containers/image) refusing the copy itself: no retry helps.
    ("unsupported", re.compile(r"instructed to preserve digests", re.I)),
    # TLS verification on against a plain-HTTP registry (Go's net/http text).
    ("insecure_registry", re.compile(r"server gave HTTP response to HTTPS client", re.I)),
    ("rate_limited", re.compile(r"toomanyrequests|too many requests|rate limit|\b429\b", re.I)),
    (
        "auth",
        re.compile(
            r"unauthori[sz]ed|authentication required|no basic auth|denied|forbidden|"
            r"incorrect username or password|\b401\b|\b403\b",
            re.I,
        ),
    ),
    (
        "not_found",
        re.compile(
            r"manifest unknown|not found|does not exist|no such image|name unknown|\b404\b",
            re.I,
        ),
    ),
    (
        "network",
        re.compile(
            r"connection refused|connection reset|no such host|i/o timeout|timed out|timeout|"
            r"network is unreachable|\bEOF\b|dial tcp|no route to host|server misbehaving|"
            r"context deadline exceeded",
            re.I,
        ),
    ),
)


def classify_registry_message(message: str) -> str:
    """The failure reason for an error message from a Docker engine or registry.

    Args:
        message: the engine's error text, for example ``manifest unknown``.

    Returns:
        One of ``auth``, ``not_found``, ``rate_limited``, ``network`` or
        ``registry_error`` (the default: a 5xx or anything unrecognised). The
        classes follow skopeo's and go-containerregistry's retry classifiers:
        auth and not-found are final, the others temporary.
    """
    for reason, pattern in _REASON_PATTERNS:
        if pattern.search(message):
            return reason
    return "registry_error"


_RETRY_AFTER_RE = re.compile(r"retry[- ]after[\s:=]+(\d+(?:\.\d+)?)", re.I)


def retry_after_seconds(message: str) -> float | None:
    """Seconds a "retry after N" in an error message asks for, or None.

    The engine does not pass HTTP headers on, but registries commonly repeat
    ``Retry-After`` in the error text of a 429.
    """
    match = _RETRY_AFTER_RE.search(message)
    return float(match.group(1)) if match else None


def registry_error(message: str, what: str, registry: str | None) -> RegistryError:
    """A ``RegistryError`` for an engine or registry message about ``registry``."""
    return RegistryError(
        classify_registry_message(message),
        f"{what}: {message}",
        registry=registry,
        retry_after=retry_after_seconds(message),
    )
