"""Errors of image-cloner, named by what the reconcile loop should do with them.

Every error the adapters (``kube``, ``registry``) raise is one of these, so no
``kubernetes`` or ``docker`` exception leaks past them. ``temporary`` tells the
loop whether the same operation may succeed when retried next cycle (the model
is kopf's TemporaryError/PermanentError and go-containerregistry's
``Temporary()``). Messages never contain credentials.
"""

from __future__ import annotations


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


class RegistryError(ClonerError):
    """Pulling, pushing or inspecting an image failed.

    Args:
        reason: one of ``REASONS``; the label of the clone-failure metric.
            ``insecure_registry``: the Docker engine would reach the registry
            without TLS verification and it is not listed in
            ``insecureRegistries`` (final: a config change is needed).
        message: what happened, with the reference; never credentials.
        registry: the registry host the failure concerns, when known (a 429
            pauses that registry as a whole).
        retry_after: seconds the registry asked to wait (HTTP ``Retry-After``),
            when it said.
    """

    REASONS = (
        "auth",
        "not_found",
        "rate_limited",
        "network",
        "registry_error",
        "invalid_reference",
        "verify_failed",
        "naming_collision",
        "insecure_registry",
    )
    _TEMPORARY = frozenset({"rate_limited", "network", "registry_error", "verify_failed"})

    def __init__(
        self,
        reason: str,
        message: str,
        registry: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown registry error reason {reason!r}")
        super().__init__(message)
        self.reason = reason
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
