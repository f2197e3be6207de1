"""A source registry that answers "too many requests", end to end (both copy backends).

The rate-limited registry is the real public registry behind the tests' own
loopback proxy (``support.RegistryProxy``): its first manifest requests get
HTTP 429 with ``Retry-After``, and it records every request it receives with
the time it arrived. To the controller the proxy is a registry of its own
(another host:port), so the public registry reached directly is a second
source registry that is not rate limited.

The outcomes asserted are the state of the world: the requests the proxy saw
and when, when the API server first held each workload with its owned image,
and what the owned registry holds. They do not depend on which client asked
the proxy first: the Docker engine (HEAD, then GET of the manifest; it keeps
``Retry-After`` to itself, hence ``rateLimitPause`` equal to it) or the
controller's own HEAD of the source manifest, which honours ``Retry-After``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import kubernetes.client
import pytest

from devenv.harness import Environment
from devenv.support import (
    MANIFEST_PATH,
    ProxiedRequest,
    RegistryProxy,
    Scope,
    controller_loop,
    create,
    images,
    read,
    serving,
    too_many_requests,
)
from devenv.waiting import wait_for

RETRY_AFTER = 6  # seconds, in the 429's Retry-After and as rateLimitPause
RATE_LIMITED = 2  # manifest requests answered 429: one engine pull asks HEAD, then GET
SLACK = 0.3  # seconds: the controller starts its pause after the 429 arrived at the proxy


class PatchWatch:
    """Polls the API server and records when each workload first held only owned images.

    Times are ``time.monotonic()`` of the test process, the clock the proxy uses.
    """

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, owned_host: str) -> None:
        self.api = api
        self.namespace = namespace
        self.owned_prefix = owned_host + "/"
        self.names: list[str] = []
        self.patched: dict[str, float] = {}
        self.stop = threading.Event()

    def add(self, name: str) -> None:
        self.names.append(name)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for name in list(self.names):
                if name in self.patched:
                    continue
                found = images(read(self.api, "Deployment", self.namespace, name))
                if all(image.startswith(self.owned_prefix) for image in found.values()):
                    self.patched[name] = time.monotonic()


@contextmanager
def watching(watch: PatchWatch) -> Iterator[PatchWatch]:
    thread = threading.Thread(target=watch.run, name="patch-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(timeout=10)


def episodes(rate_limited: list[ProxiedRequest]) -> list[list[ProxiedRequest]]:
    """429 answers grouped by attempt: answers less than 1 s apart belong together."""
    groups: list[list[ProxiedRequest]] = []
    for request in rate_limited:
        if groups and request.at - groups[-1][-1].at < 1.0:
            groups[-1].append(request)
        else:
            groups.append([request])
    return groups


def repository(request: ProxiedRequest) -> str:
    match = MANIFEST_PATH.match(request.path)
    return match.group("name") if match else ""


@pytest.mark.parametrize("backend", ["docker", "skopeo"])
def test_rate_limited_registry_is_paused_as_a_whole_while_another_registry_goes_on(
    scope: Scope, env: Environment, backend: str
) -> None:
    ns = scope.namespace
    api = env.api_client()
    for name in ("first", "second", "other", "later"):
        env.build_image(scope.source(f"{name}:1"), layers=1, seed=f"{ns}-{name}")
    proxy = RegistryProxy(env.public.host, too_many_requests(RATE_LIMITED, RETRY_AFTER))
    with serving(proxy):
        # Two workloads on the rate-limited registry, one on the other registry.
        create(api, "Deployment", ns, "first", {"main": f"{proxy.host}/{ns}/first:1"})
        create(api, "Deployment", ns, "second", {"main": f"{proxy.host}/{ns}/second:1"})
        create(api, "Deployment", ns, "other", {"main": scope.source("other:1")})
        config = scope.write_config(
            "c.yaml",
            pollInterval=1,
            copyBackend=backend,
            rateLimitPause=RETRY_AFTER,
            backoff={"initial": 0.5, "max": 2, "jitter": 0},
        )
        watch = PatchWatch(api, ns, env.owned.host)
        for name in ("first", "second", "other"):
            watch.add(name)
        with watching(watch), controller_loop(scope.kubeconfig, config) as output:
            wait_for(lambda: any(r.status == 429 for r in proxy.requests), 60, "rate limited")
            first_429 = next(r for r in proxy.requests if r.status == 429)
            # A workload created during the pause, on the other registry.
            create(api, "Deployment", ns, "later", {"main": scope.source("later:1")})
            watch.add("later")
            wait_for(
                lambda: len(watch.patched) == 4,
                RETRY_AFTER * RATE_LIMITED + 60,
                "all four patched",
            )
        requests = list(proxy.requests)

    rate_limited = [r for r in requests if r.status == 429]
    groups = episodes(rate_limited)
    timeline = "\n".join(
        f"  {r.at - first_429.at:7.2f}s {r.method} {r.path} {r.status}" for r in requests
    )
    patched = {name: round(at - first_429.at, 2) for name, at in watch.patched.items()}
    print(f"\nproxy requests (s after the first 429):\n{timeline}\npatched at: {patched}")

    # The proxy answered 429 exactly as often as it was told to, to manifest requests.
    assert len(rate_limited) == RATE_LIMITED, timeline
    assert all(r.is_manifest for r in rate_limited), timeline
    # After every 429 the registry is paused as a whole: nothing at all reaches
    # the proxy (no ping, no manifest, no blob, of either image) for Retry-After
    # seconds, then the next request comes soon after the pause ends.
    for group in groups:
        end = group[-1].at
        during = [r for r in requests if end < r.at < end + RETRY_AFTER - SLACK]
        assert during == [], timeline
        later = [r for r in requests if r.at > end]
        assert later, timeline
        assert later[0].at - end <= RETRY_AFTER + 4, timeline
    pause_end = groups[-1][-1].at + RETRY_AFTER - SLACK
    first_pause_end = groups[0][-1].at + RETRY_AFTER - SLACK
    # Both images of that registry waited, not only the one that got the 429:
    # neither workload was patched before the last pause ended, and the
    # first request for the image that was not answered 429 came after it.
    assert watch.patched["first"] >= pause_end, patched
    assert watch.patched["second"] >= pause_end, patched
    limited_repos = {repository(r) for r in rate_limited}
    for name in ("first", "second"):
        if f"{ns}/{name}" not in limited_repos:
            asked = [r.at for r in requests if f"/v2/{ns}/{name}/" in r.path]
            assert asked and min(asked) >= groups[0][-1].at + RETRY_AFTER - SLACK, timeline
    # The other registry went on meanwhile: its workloads, including one
    # created after the 429, were patched while the proxied registry was paused.
    assert watch.patched["other"] < first_pause_end, patched
    assert first_429.at < watch.patched["later"] < first_pause_end, patched
    # Everything was copied after the pause.
    for name in ("first", "second"):
        assert env.owned.tags(scope.owned_repository(name, proxy.host)) == ["1"]
        assert images(read(api, "Deployment", ns, name)) == {
            "main": f"{scope.owned(name, proxy.host)}:1"
        }
    for name in ("other", "later"):
        assert env.owned.tags(scope.owned_repository(name)) == ["1"]
        assert images(read(api, "Deployment", ns, name)) == {"main": f"{scope.owned(name)}:1"}
    # The controller said what it did.
    assert any(f"pausing registry {proxy.host}" in line for line in output), "".join(output)
    assert any("(rate_limited)" in line for line in output), "".join(output)
