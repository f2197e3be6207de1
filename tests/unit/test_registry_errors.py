"""Error classification of Docker engine and registry messages, and stream errors."""

import pytest

from cloner.adapters.engine import _stream_errors
from cloner.errors import RegistryError, classify_registry_message


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("unauthorized: authentication required", "auth"),
        ("no basic auth credentials", "auth"),
        ("denied: requested access to the resource is denied", "auth"),
        ("manifest unknown: manifest unknown", "not_found"),
        ("manifest for 127.0.0.1:5000/x:1 not found: manifest unknown", "not_found"),
        ("toomanyrequests: You have reached your pull rate limit", "rate_limited"),
        (
            "Get http://127.0.0.1:5000/v2/: dial tcp 127.0.0.1:5000: connect: connection refused",
            "network",
        ),
        ("received unexpected HTTP status: 500 Internal Server Error", "registry_error"),
        # skopeo 1.9 fatal messages (level=fatal msg=...), as seen on the test bed
        (
            "initializing source docker://127.0.0.1:5000/a:1: pinging container registry "
            '127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": http: server gave HTTP '
            "response to HTTPS client",
            "insecure_registry",
        ),
        (
            "reading manifest 1 in 127.0.0.1:5000/a: manifest unknown: manifest unknown",
            "not_found",
        ),
        ("copying system image from manifest list: context deadline exceeded", "network"),
        (
            "Instructed to preserve digests, but an image of the given format cannot be "
            "written without changing its digest",
            "unsupported",
        ),
        (
            "writing manifest: uploading manifest 1 to 127.0.0.1:5001/a: toomanyrequests: "
            "slow down",
            "rate_limited",
        ),
    ],
)
def test_messages_are_classified(message: str, reason: str) -> None:
    assert classify_registry_message(message) == reason


@pytest.mark.parametrize(
    ("reason", "temporary"),
    [
        ("source_unverified", True),
        ("network", True),
        ("multi_platform", False),
        ("unsupported", False),
        ("insecure_registry", False),
    ],
)
def test_reasons_know_if_retrying_may_help(reason: str, temporary: bool) -> None:
    assert RegistryError(reason, "x").temporary is temporary


def test_error_line_in_a_200_stream_raises() -> None:
    lines = [
        {"status": "Preparing", "id": "abc"},
        {
            "errorDetail": {"message": "unauthorized: authentication required"},
            "error": "unauthorized: authentication required",
        },
    ]
    with pytest.raises(RegistryError) as caught:
        _stream_errors(lines, "push x")
    assert caught.value.reason == "auth"
    assert not caught.value.temporary


def test_aux_payloads_are_returned() -> None:
    lines = [
        {"status": "Pushed"},
        {"aux": {"Tag": "1", "Digest": "sha256:" + "a" * 64, "Size": 527}},
    ]
    assert _stream_errors(lines, "push x") == [
        {"Tag": "1", "Digest": "sha256:" + "a" * 64, "Size": 527}
    ]


def test_push_progress_counts_pushed_layers_and_logs_at_most_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cloner.adapters.engine import PushProgress

    now = [0.0]
    progress = PushProgress("owned.example.com/x:1", every=5, clock=lambda: now[0])
    lines = [
        {"status": "Layer already exists", "id": "aaa"},
        {"status": "Pushing", "id": "bbb", "progressDetail": {"current": 100, "total": 1000}},
        {"status": "Pushing", "id": "bbb", "progressDetail": {"current": 600, "total": 1000}},
        {"status": "Pushing", "id": "ccc", "progressDetail": {"current": 10, "total": 50}},
        {"status": "Pushed", "id": "bbb"},
        {"status": "Pushed", "id": "ccc"},
    ]
    with caplog.at_level("INFO", logger="cloner.adapters.engine"):
        for i, line in enumerate(lines):
            now[0] = i * 2.0  # 0, 2, 4, 6, 8, 10 s
            progress(line)
    assert progress.pushed_bytes == 1050
    logged = [r.getMessage() for r in caplog.records]
    # at t=6 s (>= 5 s after the start); t=8 and t=10 are within 5 s of it
    assert logged == ["pushing owned.example.com/x:1: 610 of 1050 bytes"]
