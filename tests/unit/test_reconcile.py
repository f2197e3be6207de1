"""reconcile_once against small in-memory stand-ins for the two Protocols.

These check the decisions of a pass (what is cloned, what is patched, what is
left alone). The same behaviour is proven against real components in tests/e2e.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from cloner.config import (
    BackoffSettings,
    CopySettings,
    PullSecretSettings,
    RefreshSettings,
    RolloutSettings,
    Settings,
)
from cloner.errors import KubeError, RegistryError
from cloner.model.credentials import DockerConfig
from cloner.model.identity import OCI_MANIFEST, Copied, Descriptor
from cloner.model.reference import Reference, parse_reference
from cloner.model.workloads import NamespaceInfo, Workload
from cloner.ops.provisioning import ADMISSION_SETTLE
from cloner.ops.reconcile import Reconciler
from tests.unit.fakes import FakeKube, Registries, Repo, workload

OWNED = "owned.example.com"
# FakeKube has no controller-manager: no rollout ever completes, so the canary
# of rollout.canary would hold every namespace at one workload. These tests
# are about the cycle, so they turn the canary off (the guard itself is tested
# in test_guard.py and test_rollout.py).
NO_CANARY = RolloutSettings(canary=False)
SKOPEO = CopySettings(backend="skopeo")
SETTINGS = Settings(
    rollout=NO_CANARY,
    target=f"{OWNED}/m",
    copy=SKOPEO,
    controller_namespace="image-cloner",
    backoff=BackoffSettings(jitter=0.0),
)


class FakeRegistry(Registries):
    """Owned copies in memory; every source exists unless listed in ``missing``.

    A source is made on first sight (one OCI image named after it); copies
    keep digests (``copyBackend: skopeo``).
    """

    def __init__(
        self, existing: Iterable[tuple[str, str]] = (), missing: Iterable[str] = ()
    ) -> None:
        super().__init__("skopeo")
        self.missing = set(missing)
        self.lookups = 0
        for owned, source in existing:  # owned name already holding a copy of source
            self.clone(parse_reference(source), parse_reference(owned))
        self.clones.clear()

    def _find(self, ref: Reference) -> tuple[str, str, bytes] | None:
        if ref.registry != OWNED and str(ref) not in self.missing:
            repo = self.repos.get(ref.name)
            if ref.digest is None and (repo is None or ref.tag_or_default not in repo.tags):
                self.image(ref.name, ref.tag_or_default, str(ref))
            elif ref.digest is not None and (repo is None or ref.digest not in repo.manifests):
                body = json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": ref.digest}})
                self.repos.setdefault(ref.name, Repo()).manifests[ref.digest] = (
                    OCI_MANIFEST,
                    body.encode(),
                )
        return super()._find(ref)

    def head(self, ref: Reference) -> Descriptor | None:
        self.lookups += 1
        return super().head(ref)

    def digest(self, owned: str) -> str | None:
        found = self._find(parse_reference(owned))
        return found[0] if found else None

    def delete(self, owned: str) -> None:
        ref = parse_reference(owned)
        del self.repos[ref.name].tags[ref.tag_or_default]


def make(
    kube: FakeKube, registry: FakeRegistry, settings: Settings, *args: Any, **kw: Any
) -> Reconciler:
    """A Reconciler whose manifest lookups and copies both go to ``registry``."""
    return Reconciler(kube, registry, registry, settings, *args, **kw)


def test_one_clone_per_distinct_image_and_every_workload_patched() -> None:
    kube = FakeKube(
        [
            workload("Deployment", "a", "web", "nginx:1.25", "redis", init=["busybox:1"]),
            workload("DaemonSet", "b", "agent", "docker.io/library/nginx:1.25"),
            workload("StatefulSet", "c", "db", "index.docker.io/library/nginx:1.25"),
        ]
    )
    registry = FakeRegistry()
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert sorted(s.split("@")[0] for s, _ in registry.clones) == [
        "docker.io/library/busybox",
        "docker.io/library/nginx",
        "docker.io/library/redis",
    ]
    assert summary.cloned == 3
    assert dict(summary.patched) == {"Deployment": 1, "DaemonSet": 1, "StatefulSet": 1}
    assert kube.image("a/web", "c1") == f"{OWNED}/m/docker.io/library/redis:latest"
    assert kube.image("a/web", "i0") == f"{OWNED}/m/docker.io/library/busybox:1"
    assert kube.image("c/db", "c0") == f"{OWNED}/m/docker.io/library/nginx:1.25"
    assert summary.ok


def test_second_pass_makes_no_clone_no_lookup_and_no_patch() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    registry = FakeRegistry()
    reconciler = make(kube, registry, SETTINGS)
    reconciler.reconcile_once()
    lookups, patches = registry.lookups, len(kube.patches)
    summary = reconciler.reconcile_once()
    assert summary.cloned == 0 and not summary.patched
    assert registry.lookups == lookups and len(kube.patches) == patches


def test_cached_source_is_not_cloned_again_for_a_new_workload() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    registry = FakeRegistry()
    reconciler = make(kube, registry, SETTINGS)
    reconciler.reconcile_once()
    kube.objects.append(workload("Deployment", "a", "web2", "nginx:1.25"))
    summary = reconciler.reconcile_once()
    assert len(registry.clones) == 1
    assert summary.patched["Deployment"] == 1
    assert kube.image("a/web2", "c0") == f"{OWNED}/m/docker.io/library/nginx:1.25"


def test_existing_owned_copy_is_used_without_cloning() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "quay.io/x/y:2")])
    registry = FakeRegistry(existing=[(f"{OWNED}/m/quay.io/x/y:2", "quay.io/x/y:2")])
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert registry.clones == []
    assert summary.patched["Deployment"] == 1
    assert summary.replaced == 0


def test_owned_name_holding_other_content_is_copied_over_before_the_patch() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "quay.io/x/y:2")])
    registry = FakeRegistry(existing=[(f"{OWNED}/m/quay.io/x/y:2", "quay.io/other/thing:9")])
    impostor = registry.digest(f"{OWNED}/m/quay.io/x/y:2")
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert len(registry.clones) == 1
    assert summary.replaced == 1
    result = summary.images["quay.io/x/y:2"]
    assert result.replaced == impostor
    assert registry.digest(f"{OWNED}/m/quay.io/x/y:2") == registry.digest("quay.io/x/y:2")


def test_failed_image_leaves_its_container_and_others_proceed() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25", "ghost:1")])
    registry = FakeRegistry(missing=["docker.io/library/ghost:1"])
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert kube.image("a/web", "c0") == f"{OWNED}/m/docker.io/library/nginx:1.25"
    assert kube.image("a/web", "c1") == "ghost:1"
    assert dict(summary.clone_failures) == {"not_found": 1}
    assert not summary.ok


def test_invalid_reference_is_reported_and_left_alone() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25", "NOT//valid")])
    summary = make(kube, FakeRegistry(), SETTINGS).reconcile_once()
    assert kube.image("a/web", "c1") == "NOT//valid"
    assert kube.image("a/web", "c0").startswith(OWNED)
    assert summary.invalid == [("Deployment a/web", "c1", summary.invalid[0][2])]


def test_digest_reference_points_to_pushed_digest() -> None:
    digest = "sha256:" + "b" * 64
    kube = FakeKube([workload("Deployment", "a", "web", f"quay.io/x/y@{digest}")])
    registry = FakeRegistry()
    make(kube, registry, SETTINGS).reconcile_once()
    pushed = registry.digest(f"{OWNED}/m/quay.io/x/y:sha256_{'b' * 64}")
    assert pushed == digest  # the copy keeps the source's digest
    assert kube.image("a/web", "c0") == f"{OWNED}/m/quay.io/x/y@{digest}"


def test_excluded_and_own_namespace_are_untouched() -> None:
    kube = FakeKube(
        [
            workload("Deployment", "kube-system", "dns", "coredns:1"),
            workload("Deployment", "image-cloner", "self", "python:3"),
        ]
    )
    registry = FakeRegistry()
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert registry.clones == [] and kube.patches == []
    assert sum(summary.workloads.values()) == 0


def test_list_failure_of_one_kind_does_not_stop_the_others() -> None:
    kube = FakeKube([workload("StatefulSet", "a", "db", "postgres:16")])
    kube.fail_list.add("Deployment")
    summary = make(kube, FakeRegistry(), SETTINGS).reconcile_once()
    assert summary.patched["StatefulSet"] == 1
    assert summary.list_failures and summary.list_failures[0][0] == "Deployment"


def test_concurrent_edit_makes_patch_fail_and_user_value_stands() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])

    class EditingRegistry(FakeRegistry):
        def clone(self, source: Reference, owned: Reference) -> Copied:
            kube.objects[0]["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.26"
            return super().clone(source, owned)

    summary = make(kube, EditingRegistry(), SETTINGS).reconcile_once()
    assert kube.image("a/web", "c0") == "nginx:1.26"
    assert summary.conflicts_retried == 1
    assert summary.patch_failures == []  # nothing left to patch after the fresh read


def test_namespace_list_failure_touches_nothing() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    kube.fail_list.add("Namespace")
    registry = FakeRegistry()
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert registry.clones == [] and kube.patches == []
    assert not summary.ok


def test_namespace_opt_out_is_honoured() -> None:
    kube = FakeKube(
        [
            workload("Deployment", "quiet", "web", "nginx:1.25"),
            workload("Deployment", "b", "x", "redis:7"),
        ]
    )
    kube.namespaces["quiet"] = NamespaceInfo("quiet", {"image-cloner.io/skip": "true"})
    registry = FakeRegistry()
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert [s.split("@")[0] for s, _ in registry.clones] == ["docker.io/library/redis"]
    assert kube.image("quiet/web", "c0") == "nginx:1.25"
    assert summary.excluded == 1


def test_pin_digest_patches_tag_and_pushed_digest() -> None:
    settings = Settings(rollout=NO_CANARY, target=f"{OWNED}/m", copy=SKOPEO, pin_digest=True)
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    registry = FakeRegistry()
    make(kube, registry, settings).reconcile_once()
    owned = f"{OWNED}/m/docker.io/library/nginx:1.25"
    assert kube.image("a/web", "c0") == f"{owned}@{registry.digest(owned)}"


def test_flat_naming_collision_is_reported_and_not_cloned() -> None:
    # With separator '-' every name is hashed when ambiguous, so force a
    # collision through two registries whose path components coincide.
    settings = Settings(rollout=NO_CANARY, target=f"{OWNED}/m", copy=SKOPEO, naming="flat")
    kube = FakeKube(
        [
            workload("Deployment", "a", "one", "example.com-5000/app:1"),
            workload("Deployment", "a", "two", "example.com:5000/app:1"),
        ]
    )
    registry = FakeRegistry()
    summary = make(kube, registry, settings).reconcile_once()
    assert len(registry.clones) == 1
    assert summary.clone_failures["naming_collision"] == 1
    reasons = {r.source.registry: r.reason for r in summary.images.values()}
    assert reasons == {"example.com-5000": None, "example.com:5000": "naming_collision"}


def test_invalid_reference_counts_as_failure_reason() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "UPPER:1", "nginx")])
    summary = make(kube, FakeRegistry(), SETTINGS).reconcile_once()
    assert summary.clone_failures["invalid_reference"] == 1


# --- pull secrets ----------------------------------------------------------------


class Creds:
    def __init__(self, password: str, user: str = "cloner") -> None:
        self.user = user
        self.set(password)

    def set(self, password: str) -> None:
        token = base64.b64encode(f"{self.user}:{password}".encode()).decode()
        self.current = DockerConfig.parse(json.dumps({"auths": {OWNED: {"auth": token}}}))
        self.version = f"{self.user}:{password}"


class SlowSecrets(FakeKube):
    """Secret creation takes 0.2 s; records how many run at once."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        super().__init__(objects)
        self.creating = 0
        self.most_at_once = 0
        self._guard = threading.Lock()

    def create_secret(self, ns: str, body: dict[str, Any]) -> None:
        with self._guard:
            self.creating += 1
            self.most_at_once = max(self.most_at_once, self.creating)
        time.sleep(0.2)
        with self._guard:
            self.creating -= 1
            super().create_secret(ns, body)


def test_namespaces_are_made_ready_several_at_once_each_secret_once_before_its_patches() -> None:
    objects = [
        workload("Deployment", f"ns{n}", f"web{i}", "nginx:1.25")
        for n in range(4)
        for i in range(3)
    ]
    kube = SlowSecrets(objects)
    for n in range(4):
        kube.accounts[(f"ns{n}", "default")] = {"metadata": {"resourceVersion": "1"}}
    started = time.monotonic()
    summary = make(kube, FakeRegistry(), SETTINGS, Creds("pw")).reconcile_once()
    took = time.monotonic() - started
    assert summary.ok and sum(summary.patched.values()) == 12
    assert summary.provisioning.secrets["created"] == 4
    assert sorted(c for c in kube.calls if c.startswith("create secret")) == [
        f"create secret ns{n}" for n in range(4)
    ]
    # Each namespace's Secret and ServiceAccount come before its patches.
    for n in range(4):
        mine = [c for c in kube.calls if f"ns{n}" in c]
        assert mine[:3] == [
            f"create secret ns{n}",
            f"patch sa ns{n}/default",
            f"confirm sa ns{n}/default",
        ], mine
        assert len(mine) == 6
    # Four Secrets of 0.2 s each were written at the same time, not one after
    # another; then the admission settle, once for all.
    assert kube.most_at_once >= 2
    assert took < 0.75 + ADMISSION_SETTLE


class TimedKube(FakeKube):
    """Records the monotonic time of every call; can refuse the confirmations."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        super().__init__(objects)
        self.at: list[tuple[str, float]] = []
        self.refuse_confirm = False

    def patch_workload(self, w: Workload, patch: list[dict[str, Any]]) -> None:
        super().patch_workload(w, patch)
        self.at.append((f"patch {w.key}", time.monotonic()))

    def service_account_at_least(
        self, ns: str, name: str, resource_version: str
    ) -> dict[str, Any] | None:
        self.at.append((f"confirm sa {ns}/{name}", time.monotonic()))
        if self.refuse_confirm:
            raise KubeError(504, "Too large resource version")
        return super().service_account_at_least(ns, name, resource_version)


def test_patches_wait_until_admission_sees_the_service_account_others_do_not() -> None:
    # new/: its default ServiceAccount gets the Secret now. old/: it lists it
    # already, so its pods get it from admission at once.
    kube = TimedKube([workload("Deployment", ns, "web", "nginx:1.25") for ns in ("new", "old")])
    kube.accounts[("new", "default")] = {"metadata": {"resourceVersion": "1"}}
    kube.accounts[("old", "default")] = {
        "metadata": {"resourceVersion": "1"},
        "imagePullSecrets": [{"name": "image-cloner-pull-secret"}],
    }
    summary = make(kube, FakeRegistry(), SETTINGS, Creds("pw")).reconcile_once()
    assert summary.ok and sum(summary.patched.values()) == 2
    at = dict(kube.at)
    assert "confirm sa old/default" not in at  # nothing changed there, nothing to confirm
    # The patch of new/web comes only after the cache confirmed the change, plus the settle.
    assert at["patch Deployment new/web"] - at["confirm sa new/default"] >= ADMISSION_SETTLE
    # old/web did not wait for new/'s settle.
    assert at["patch Deployment old/web"] < at["patch Deployment new/web"]


def test_unconfirmed_service_account_change_patches_next_cycle() -> None:
    kube = TimedKube([workload("Deployment", "new", "web", "nginx:1.25")])
    kube.accounts[("new", "default")] = {"metadata": {"resourceVersion": "1"}}
    kube.refuse_confirm = True
    reconciler = make(kube, FakeRegistry(), SETTINGS, Creds("pw"))
    first = reconciler.reconcile_once()
    assert sum(first.patched.values()) == 0
    assert [f[1] for f in first.provisioning.failures] == ["api_error"]
    assert "image-cloner-pull-secret" in [
        s["name"] for s in kube.accounts[("new", "default")]["imagePullSecrets"]
    ]
    assert not [c for c in kube.calls if c.startswith("patch Deployment")]
    # Next cycle the ServiceAccount lists the Secret already: no change, no wait.
    kube.refuse_confirm = False
    second = reconciler.reconcile_once()
    assert second.ok and sum(second.patched.values()) == 1
    assert kube.calls.count("patch sa new/default") == 1


def test_secret_and_service_account_are_in_place_before_the_patch() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    kube.accounts[("a", "default")] = {
        "metadata": {"resourceVersion": "1"},
        "imagePullSecrets": [{"name": "mine"}],
    }
    summary = make(kube, FakeRegistry(), SETTINGS, Creds("pw")).reconcile_once()
    assert kube.calls == [
        "create secret a",
        "patch sa a/default",
        "confirm sa a/default",
        "patch Deployment a/web",
    ]
    assert kube.accounts[("a", "default")]["imagePullSecrets"] == [
        {"name": "mine"},
        {"name": "image-cloner-pull-secret"},
    ]
    assert summary.provisioning.secrets["created"] == 1 and summary.ok


def test_foreign_secret_blocks_the_namespace() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    kube.accounts[("a", "default")] = {"metadata": {"resourceVersion": "1"}}
    foreign = {"metadata": {"name": "image-cloner-pull-secret"}, "type": "Opaque", "data": {}}
    kube.secrets[("a", "image-cloner-pull-secret")] = foreign
    summary = make(kube, FakeRegistry(), SETTINGS, Creds("pw")).reconcile_once()
    assert kube.calls == []
    assert kube.secrets[("a", "image-cloner-pull-secret")] is foreign
    assert summary.provisioning.failures[0][:2] == ("a", "foreign_secret")
    assert kube.image("a/web", "c0") == "nginx:1.25"


def test_missing_service_account_blocks_the_workload() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    summary = make(kube, FakeRegistry(), SETTINGS, Creds("pw")).reconcile_once()
    assert "patch Deployment a/web" not in kube.calls
    assert summary.provisioning.failures[0][1] == "serviceaccount_missing"


def test_workload_mode_leaves_service_accounts_alone() -> None:
    settings = Settings(
        rollout=NO_CANARY,
        target=f"{OWNED}/m",
        copy=SKOPEO,
        pull_secrets=PullSecretSettings(attach="workload"),
    )
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    make(kube, FakeRegistry(), settings, Creds("pw")).reconcile_once()
    assert kube.calls == ["create secret a", "patch Deployment a/web"]
    spec = kube.objects[0]["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "image-cloner-pull-secret"}]
    assert len(kube.patches) == 1  # images and pull secret in one patch: one rollout


def test_changed_credentials_update_every_managed_secret_next_cycle() -> None:
    kube = FakeKube(
        [
            workload("Deployment", "a", "web", "nginx:1.25"),
            workload("Deployment", "b", "x", "redis"),
        ]
    )
    for ns in ("a", "b"):
        kube.accounts[(ns, "default")] = {"metadata": {"resourceVersion": "1"}}
    creds = Creds("old")
    reconciler = make(kube, FakeRegistry(), SETTINGS, creds)
    reconciler.reconcile_once()
    creds.set("new")
    kube.calls.clear()
    summary = reconciler.reconcile_once()
    assert sorted(kube.calls) == ["update secret a", "update secret b"]
    assert summary.provisioning.secrets["updated"] == 2
    for ns in ("a", "b"):
        data = kube.secrets[(ns, "image-cloner-pull-secret")]["data"][".dockerconfigjson"]
        assert b"cloner:new" in base64.b64decode(
            json.loads(base64.b64decode(data))["auths"][OWNED]["auth"]
        )
    kube.calls.clear()
    reconciler.reconcile_once()
    assert kube.calls == []  # nothing left to do


def secret_auth(kube: FakeKube, ns: str) -> bytes:
    """The decoded ``auth`` of the owned entry of the managed Secret in ``ns``."""
    data = kube.secrets[(ns, "image-cloner-pull-secret")]["data"][".dockerconfigjson"]
    return base64.b64decode(json.loads(base64.b64decode(data))["auths"][OWNED]["auth"])


PULL_CONFIG = Settings(
    rollout=NO_CANARY,
    target=f"{OWNED}/m",
    copy=SKOPEO,
    pull_secrets=PullSecretSettings(docker_config="/etc/pull/config.json"),
)


def test_read_only_credentials_go_into_the_secrets_and_follow_their_rotation() -> None:
    kube = FakeKube(
        [
            workload("Deployment", "a", "web", "nginx:1.25"),
            workload("Deployment", "b", "x", "redis"),
        ]
    )
    for ns in ("a", "b"):
        kube.accounts[(ns, "default")] = {"metadata": {"resourceVersion": "1"}}
    push, read = Creds("push-pw"), Creds("read-pw", user="reader")
    reconciler = make(kube, FakeRegistry(), PULL_CONFIG, push, pull_credentials=read)
    summary = reconciler.reconcile_once()
    assert summary.ok and sum(summary.patched.values()) == 2
    assert [secret_auth(kube, ns) for ns in ("a", "b")] == [b"reader:read-pw"] * 2
    # The read-only password rotates: every managed Secret follows next cycle.
    read.set("read-pw-2")
    kube.calls.clear()
    reconciler.reconcile_once()
    assert sorted(kube.calls) == ["update secret a", "update secret b"]
    assert [secret_auth(kube, ns) for ns in ("a", "b")] == [b"reader:read-pw-2"] * 2
    # The push password rotates: no Secret holds it, none is written.
    push.set("push-pw-2")
    kube.calls.clear()
    reconciler.reconcile_once()
    assert kube.calls == []


def test_a_pull_config_without_the_owned_entry_holds_namespaces_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoOwnedEntry:
        current = DockerConfig.parse(json.dumps({"auths": {"other.example.com": {}}}))
        version = "v1"

    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    kube.accounts[("a", "default")] = {"metadata": {"resourceVersion": "1"}}
    reconciler = make(
        kube, FakeRegistry(), PULL_CONFIG, Creds("pw"), pull_credentials=NoOwnedEntry()
    )
    with caplog.at_level(logging.WARNING, logger="cloner.ops.provisioning"):
        first = reconciler.reconcile_once()
        second = reconciler.reconcile_once()
    # Never a fall-back to the push credentials: no Secret, no patch.
    assert kube.secrets == {} and kube.image("a/web", "c0") == "nginx:1.25"
    for summary in (first, second):
        ((namespace, reason, message),) = summary.provisioning.failures
        assert (namespace, reason) == ("a", "pull_credentials_missing")
        assert message.startswith("/etc/pull/config.json (pullSecret.dockerConfig) has no entry")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per version of the file
    assert "/etc/pull/config.json (pullSecret.dockerConfig) has no entry" in warnings[0]


def test_provision_false_creates_nothing() -> None:
    settings = Settings(
        rollout=NO_CANARY,
        target=f"{OWNED}/m",
        copy=SKOPEO,
        pull_secrets=PullSecretSettings(provision=False),
    )
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    make(kube, FakeRegistry(), settings, Creds("pw")).reconcile_once()
    assert kube.calls == ["patch Deployment a/web"]


# --- faults and safety ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backoff_settings() -> Settings:
    return Settings(
        rollout=NO_CANARY,
        target=f"{OWNED}/m",
        copy=SKOPEO,
        backoff=BackoffSettings(initial=10, maximum=40, jitter=0),
    )


def attempts_per_pass(
    reconciler: Reconciler, registry: FakeRegistry, clock: Clock, passes: int = 12
) -> list[int]:
    """One pass every 5 s: 1 where the pass asked a registry, else 0."""
    attempts = []
    for _ in range(passes):
        before = sum(registry.requests.values())
        reconciler.reconcile_once()
        attempts.append(int(sum(registry.requests.values()) > before))
        clock.now += 5
    return attempts


def test_failed_image_backs_off_exponentially_without_retry_storm() -> None:
    clock = Clock()
    kube = FakeKube([workload("Deployment", "a", "web", "quay.io/team/app:1")])
    registry = FakeRegistry()
    registry.down["quay.io"] = RegistryError("network", "connection refused", "quay.io")
    reconciler = make(kube, registry, backoff_settings(), clock=clock)
    # A temporary failure: tried at t=0, 10 (after 10 s) and 30 (after 20 s),
    # next at 70: 3 tries in a minute, not 12.
    assert attempts_per_pass(reconciler, registry, clock) == [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    summary = reconciler.reconcile_once()
    assert summary.not_tried == 1 and not summary.ok


def test_permanent_failure_waits_the_cap_until_credentials_change() -> None:
    clock = Clock()
    kube = FakeKube([workload("Deployment", "a", "web", "ghost:1")])
    kube.accounts[("a", "default")] = {"metadata": {"resourceVersion": "1"}}
    registry = FakeRegistry(missing=["docker.io/library/ghost:1"])
    creds = Creds("old")
    reconciler = make(kube, registry, backoff_settings(), creds, clock=clock)
    # not_found cannot heal by waiting: the cap (40 s) at once, not 10 then 20.
    assert attempts_per_pass(reconciler, registry, clock, 7) == [1, 0, 0, 0, 0, 0, 0]
    assert reconciler.waiting_images()["docker.io/library/ghost:1"]["reason"] == "not_found"
    # New credentials (or a new config) may be what it needed: tried at once.
    creds.set("new")
    assert attempts_per_pass(reconciler, registry, clock, 3) == [1, 0, 0]
    # ...and the failure is kept across a restart with what it depends on.
    with reconciler._images.state.locked() as book:
        failure = book.failures["docker.io/library/ghost:1"]
    assert failure.reason == "not_found" and failure.inputs is not None


def test_rate_limited_registry_is_paused_as_a_whole_with_retry_after() -> None:
    clock = Clock()
    kube = FakeKube(
        [
            workload("Deployment", "a", "web", "quay.io/x/a:1"),
            workload("Deployment", "a", "api", "ghcr.io/x/b:1"),
        ]
    )

    class Limited(FakeRegistry):
        def clone(self, source: Reference, owned: Reference) -> Copied:
            if source.registry == "quay.io":
                raise RegistryError("rate_limited", "toomanyrequests", "quay.io", retry_after=120)
            return super().clone(source, owned)

    registry = Limited()
    reconciler = make(kube, registry, SETTINGS, clock=clock)
    first = reconciler.reconcile_once()
    assert first.clone_failures == {"rate_limited": 1}
    assert kube.image("a/api", "c0").startswith(OWNED)  # the other registry went on
    kube.objects.append(workload("Deployment", "a", "new", "quay.io/x/other:2"))
    clock.now += 60
    second = reconciler.reconcile_once()
    waiting = {r.source.repository: r for r in second.images.values() if r.retry_in}
    assert set(waiting) == {"x/a", "x/other"}  # the whole registry waits
    assert "paused" in (waiting["x/other"].message or "")
    clock.now += 61
    lookups = registry.lookups
    reconciler.reconcile_once()
    assert registry.lookups > lookups  # tried again after Retry-After


def test_conflict_is_retried_once_with_fresh_state() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25", "redis:7")])

    class EditingRegistry(FakeRegistry):
        def clone(self, source: Reference, owned: Reference) -> Copied:
            if "redis" in str(source):  # a user edits the other container meanwhile
                spec = kube.objects[0]["spec"]["template"]["spec"]
                spec["containers"][0]["image"] = "nginx:1.26"
            return super().clone(source, owned)

    summary = make(kube, EditingRegistry(), SETTINGS).reconcile_once()
    assert kube.image("a/web", "c0") == "nginx:1.26"  # the user's value stands
    assert kube.image("a/web", "c1") == f"{OWNED}/m/docker.io/library/redis:7"
    assert summary.conflicts_retried == 1 and not summary.patch_failures


def test_gitops_workloads_are_reported_not_patched() -> None:
    argo = workload("Deployment", "a", "web", "nginx:1.25")
    argo["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "app:apps/Deployment:a/web"
    }
    owned_by = workload("Deployment", "a", "rollout", "redis:7")
    owned_by["metadata"]["ownerReferences"] = [{"kind": "Rollout", "name": "r", "controller": True}]
    kube = FakeKube([argo, owned_by])
    registry = FakeRegistry()
    summary = make(kube, registry, SETTINGS).reconcile_once()
    assert registry.clones == [] and kube.patches == []
    assert sorted(k for k, _ in summary.gitops) == ["Deployment a/rollout", "Deployment a/web"]
    patching = Settings(rollout=NO_CANARY, target=f"{OWNED}/m", copy=SKOPEO, gitops="patch")
    make(kube, registry, patching).reconcile_once()
    assert kube.image("a/web", "c0").startswith(OWNED)


def test_fight_is_detected_and_patching_stops() -> None:
    clock = Clock()
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    settings = Settings(rollout=NO_CANARY, target=f"{OWNED}/m", copy=SKOPEO, fight_limit=3)
    reconciler = make(kube, FakeRegistry(), settings, clock=clock)
    patches = []
    for _ in range(6):
        summary = reconciler.reconcile_once()
        patches.append(len(kube.patches))
        kube.objects[0]["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.25"
        clock.now += 10
    assert patches == [1, 2, 3, 3, 3, 3]
    assert summary.fights and "set back 3 times" in summary.fights[0][1]
    clock.now += 3600
    reconciler.reconcile_once()
    assert len(kube.patches) == 4  # an hour later it tries again


def test_missing_owned_copy_is_cloned_again_from_the_original() -> None:
    clock = Clock()
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    registry = FakeRegistry()
    settings = Settings(
        rollout=NO_CANARY,
        target=f"{OWNED}/m",
        copy=SKOPEO,
        refresh=RefreshSettings(verify_interval=60),
    )
    reconciler = make(kube, registry, settings, clock=clock, wall=clock)
    reconciler.reconcile_once()
    owned = f"{OWNED}/m/docker.io/library/nginx:1.25"
    assert kube.image("a/web", "c0") == owned
    kube.objects[0]["metadata"]["annotations"] = {
        "image-cloner.io/original-images": '{"c0":"nginx:1.25"}'
    }
    registry.delete(owned)
    clock.now += 30
    reconciler.reconcile_once()
    assert registry.digest(owned) is None  # not yet: verifyInterval is 60 s
    clock.now += 31
    summary = reconciler.reconcile_once()
    assert registry.digest(owned) is not None and summary.healed == 1
    assert len(registry.clones) == 2


def test_stop_abandons_and_patches_nothing() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    reconciler: Reconciler

    class StoppingRegistry(FakeRegistry):
        def clone(self, source: Reference, owned: Reference) -> Copied:
            reconciler.stop()  # SIGTERM arrives during the push
            return super().clone(source, owned)

    registry = StoppingRegistry()
    reconciler = make(kube, registry, SETTINGS)
    summary = reconciler.reconcile_once()
    assert kube.patches == [] and summary.stopped and not summary.ok
    assert kube.image("a/web", "c0") == "nginx:1.25"


# --- patch as soon as ready, clones across cycles ------------------------------------


class SlowRegistry(FakeRegistry):
    """Copies of ``slow`` sources wait for ``release``."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.release = threading.Event()

    def clone(self, source: Reference, owned: Reference) -> Copied:
        if self.slow in source.repository:
            assert self.release.wait(10), "never released"
        return super().clone(source, owned)


def test_a_stop_wakes_a_cycle_waiting_for_a_clone_and_asks_the_backend_to_abandon() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "slow/app:1")])
    registry = SlowRegistry("slow")
    reconciler = make(kube, registry, SETTINGS)  # clone_wait None: waits for every clone
    threading.Timer(0.3, reconciler.stop).start()
    started = time.monotonic()
    summary = reconciler.reconcile_once()
    took = time.monotonic() - started
    assert took < 5, took  # not the 10 s the clone is held
    assert summary.stopped and kube.patches == []
    assert reconciler.clones_in_flight() == 1
    assert registry.abandoned == 1
    registry.release.set()
    deadline = time.monotonic() + 5
    while reconciler.clones_in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reconciler.clones_in_flight() == 0
    assert kube.patches == []  # the clone that ended after the stop patched nothing


def test_a_workload_is_patched_as_soon_as_its_images_are_ready() -> None:
    settings = Settings(
        rollout=NO_CANARY,
        target=f"{OWNED}/m",
        copy=CopySettings(backend="skopeo", concurrency=4),
        backoff=BackoffSettings(jitter=0),
    )

    class ReleasingKube(FakeKube):
        def patch_workload(self, w: Workload, patch: list[dict[str, Any]]) -> None:
            super().patch_workload(w, patch)
            if w.name == "fast":
                registry.release.set()  # the fast workload was patched while slow still copied

    kube = ReleasingKube(
        [
            workload("Deployment", "a", "fast", "quay.io/x/fast:1"),
            workload("Deployment", "a", "slow", "quay.io/x/slow:1"),
        ]
    )
    registry = SlowRegistry("slow")
    summary = make(kube, registry, settings).reconcile_once()
    assert [key for key, _ in kube.patches] == ["Deployment a/fast", "Deployment a/slow"]
    assert summary.patched["Deployment"] == 2 and summary.ok


def test_a_cycle_stops_waiting_and_the_next_collects_the_clone_without_copying_again() -> None:
    settings = Settings(
        rollout=NO_CANARY, target=f"{OWNED}/m", copy=CopySettings(backend="skopeo", concurrency=2)
    )
    kube = FakeKube(
        [
            workload("Deployment", "a", "fast", "quay.io/x/fast:1"),
            workload("Deployment", "a", "slow", "quay.io/x/slow:1"),
        ]
    )
    registry = SlowRegistry("slow")
    reconciler = make(kube, registry, settings, clone_wait=0.3)
    first = reconciler.reconcile_once()
    assert first.in_flight == 1 and not first.ok
    assert kube.image("a/fast", "c0").startswith(OWNED)  # not held up by the slow clone
    assert kube.image("a/slow", "c0") == "quay.io/x/slow:1"
    second = reconciler.reconcile_once()  # still running: the same clone, not a second one
    assert second.in_flight == 1
    registry.release.set()
    third = reconciler.reconcile_once()
    assert third.cloned == 1 and third.patched["Deployment"] == 1
    assert kube.image("a/slow", "c0").startswith(OWNED)
    assert [s.split("@")[0] for s, _ in registry.clones].count("quay.io/x/slow") == 1


def test_a_template_with_its_own_pull_secrets_also_gets_the_managed_one() -> None:
    # ServiceAccount admission adds the ServiceAccount's imagePullSecrets only
    # to pods that list none, so this template must list the managed Secret.
    obj = workload("Deployment", "a", "web", "nginx:1.25")
    obj["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": "mine"}]
    kube = FakeKube([obj, workload("Deployment", "a", "plain", "redis:7")])
    kube.accounts[("a", "default")] = {"metadata": {"resourceVersion": "1"}}
    summary = make(kube, FakeRegistry(), SETTINGS, Creds("pw")).reconcile_once()
    assert summary.ok
    web = kube.objects[0]["spec"]["template"]["spec"]
    assert web["imagePullSecrets"] == [{"name": "mine"}, {"name": "image-cloner-pull-secret"}]
    plain = kube.objects[1]["spec"]["template"]["spec"]
    assert "imagePullSecrets" not in plain  # it gets the Secret through its ServiceAccount
    assert kube.accounts[("a", "default")]["imagePullSecrets"] == [
        {"name": "image-cloner-pull-secret"}
    ]


def test_a_helper_giving_no_owned_credential_holds_the_namespace_back() -> None:
    class HelperCreds:
        current = DockerConfig.parse(json.dumps({"credHelpers": {OWNED: "broken"}}))
        version = "v1"

    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    kube.accounts[("a", "default")] = {"metadata": {"resourceVersion": "1"}}
    summary = make(kube, FakeRegistry(), SETTINGS, HelperCreds()).reconcile_once()
    assert kube.image("a/web", "c0") == "nginx:1.25"  # pods could not pull the owned copy
    assert summary.provisioning.failures[0][:2] == ("a", "credentials_unavailable")
    assert "docker-credential-broken" in summary.provisioning.failures[0][2]


# --- CronJobs, Jobs and bare Pods ---------------------------------------------------


def test_a_cron_job_is_patched_in_its_job_template() -> None:
    kube = FakeKube([workload("CronJob", "a", "nightly", "busybox:1.36")])
    summary = make(kube, FakeRegistry(), SETTINGS).reconcile_once()
    assert summary.patched["CronJob"] == 1
    spec = kube.objects[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == f"{OWNED}/m/docker.io/library/busybox:1.36"
    paths = {op["path"] for _, patch in kube.patches for op in patch}
    assert "/spec/jobTemplate/spec/template/spec/containers/0/image" in paths
    annotations = kube.objects[0]["metadata"]["annotations"]
    assert json.loads(annotations["image-cloner.io/original-images"]) == {"c0": "busybox:1.36"}


def test_jobs_and_bare_pods_are_reported_not_patched() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    job = workload("Job", "a", "once", "busybox:1", "redis:7")
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "a", "uid": "a/p"},
        "spec": {"containers": [{"name": "c0", "image": "alpine:3"}]},
    }
    kube.unpatchable = [job, pod]
    summary = make(kube, FakeRegistry(), SETTINGS).reconcile_once()
    assert summary.unpatchable == {"Job": 2, "Pod": 1}
    assert [key for key, _ in kube.patches] == ["Deployment a/web"]
