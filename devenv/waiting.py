"""Poll until something holds: the one waiting helper of the tests, benchmarks and demos.

Standard library only, so unit tests use it as well as the end-to-end ones.
A component that must also stay alive while it is awaited has
``devenv.harness.Process.wait_until``; a controller's output lines are
awaited on a condition variable by the tests that read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str] = "the condition",
    *,
    interval: float = 0.2,
) -> T:
    """Call ``check()`` every ``interval`` seconds until it returns something truthy.

    Args:
        check: asked at once, then after each ``interval``; its truthy answer is returned.
        timeout: seconds after the first call when a falsy answer is final.
        what: what is awaited, for the message; a callable is asked only then.
        interval: seconds between calls.

    Returns:
        The first truthy value ``check()`` returned.

    Raises:
        AssertionError: ``timeout`` passed first; the message names ``what``
            and the last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {described} (last: {value!r})"
            )
        time.sleep(interval)


def seconds_until(check: Callable[[], object], timeout: float, what: str) -> float:
    """:func:`wait_for` at its default interval; returns the seconds it took, not the value."""
    started = time.monotonic()
    wait_for(check, timeout, what)
    return time.monotonic() - started
