"""Backoff timing and registry pauses."""

from cloner.model.backoff import Backoff, BackoffPolicy, RegistryPauses


def test_delay_doubles_and_caps() -> None:
    policy = BackoffPolicy(initial=10, maximum=60, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [10, 20, 40, 60, 60]


def test_jitter_spreads_within_bounds() -> None:
    policy = BackoffPolicy(initial=100, maximum=1000, jitter=0.2)
    assert policy.delay(1, rand=lambda: 0.0) == 80
    assert policy.delay(1, rand=lambda: 0.999999) < 120.001
    assert policy.delay(1, rand=lambda: 0.5) == 100


def test_backoff_waits_then_forgets_on_success() -> None:
    backoff = Backoff(BackoffPolicy(10, 100, 0))
    until = backoff.failed("img", "network", now=0)
    assert until == 10
    assert backoff.backing_off("img", 5) == (10, "network")
    assert backoff.backing_off("img", 10) is None
    assert backoff.failed("img", "network", now=10) == 30
    backoff.succeeded("img")
    assert backoff.failures("img") == 0


def test_retry_after_is_a_lower_bound() -> None:
    backoff = Backoff(BackoffPolicy(10, 100, 0))
    assert backoff.failed("img", "rate_limited", now=0, not_before=300) == 300


def test_registry_pause_never_shortens() -> None:
    pauses = RegistryPauses()
    pauses.pause("docker.io", 100)
    pauses.pause("docker.io", 50)
    assert pauses.paused_until("docker.io", 60) == 100
    assert pauses.paused_until("docker.io", 100) is None
    assert pauses.paused_until("quay.io", 0) is None


def test_permanent_failure_waits_the_cap_at_once_until_its_inputs_change() -> None:
    book = Backoff(BackoffPolicy(initial=10, maximum=400, jitter=0), rand=lambda: 0.5)
    until = book.failed("x", "not_found", now=0, permanent=True, inputs="cfg-1")
    assert until == 400  # the cap, not initial
    assert book.backing_off("x", 399, inputs="cfg-1") == (400, "not_found")
    assert book.backing_off("x", 1, inputs="cfg-2") is None  # new credentials or config
    assert book.backing_off_all(1, inputs="cfg-2") == {}
    # A temporary failure ignores the inputs: waiting heals it, not a new password.
    book.failed("y", "network", now=0)
    assert book.backing_off("y", 5, inputs="anything") == (10, "network")
