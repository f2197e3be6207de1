"""Writes wait out the API server's 429 (API Priority and Fairness) and then go through."""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cloner.adapters.kube import THROTTLE_TRIES, KubeClient


class Response:
    """What the client's ApiException reads from an HTTP response."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        self.status = status
        self.reason = "Too Many Requests"
        self.data = b"{}"
        self.headers = {"Retry-After": retry_after} if retry_after else {}

    def getheaders(self) -> dict[str, str]:
        return self.headers


def test_a_429_pauses_writes_for_retry_after_then_retries() -> None:
    kube = KubeClient(client.ApiClient())
    calls: list[float] = []

    def write() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ApiException(http_resp=Response(429, "0.2"))
        return "done"

    assert kube._throttled(write) == "done"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.19 and calls[2] - calls[1] >= 0.19


def test_the_pause_is_shared_by_every_write_and_the_last_429_is_raised() -> None:
    kube = KubeClient(client.ApiClient())

    def refused() -> None:
        raise ApiException(http_resp=Response(429, "0.05"))

    with pytest.raises(ApiException) as caught:
        kube._throttled(refused)
    assert caught.value.status == 429
    started = time.monotonic()
    kube._paused_until = started + 0.2  # another thread's 429
    kube._throttled(lambda: None)
    assert time.monotonic() - started >= 0.19
    assert THROTTLE_TRIES >= 2


def test_other_errors_are_not_retried() -> None:
    kube = KubeClient(client.ApiClient())
    calls = []

    def conflict() -> None:
        calls.append(1)
        raise ApiException(http_resp=Response(409, None))

    with pytest.raises(ApiException):
        kube._throttled(conflict)
    assert calls == [1]
