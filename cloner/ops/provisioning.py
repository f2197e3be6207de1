"""Pull secret provisioning for one reconcile cycle.

Called by ``reconcile`` before it patches a workload: the workload's namespace
must hold the managed pull Secret, and (``pullSecret.attach: serviceaccount``)
the ServiceAccount its pods run as must list it, so no new pod starts without
the credentials it needs. Also called once per change of the docker
``config.json`` (and at start) to bring every managed Secret up to date. The
Secrets hold the owned registry's entry of ``pullSecret.dockerConfig`` when it
is set (read-only credentials), else that of ``dockerConfig``
(``pullsecrets.pull_credential``). It works through the ``SecretAPI``
protocol; the decisions are the pure functions of ``pullsecrets``. Failures
are recorded, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloner.config import PullSecretSettings
from cloner.errors import KubeError
from cloner.model.credentials import Credential, DockerConfig
from cloner.model.pullsecrets import (
    PULL_CREDENTIALS_MISSING,
    AttachMode,
    OwnedEntry,
    ProvisionFailure,
    PullCredential,
    SecretAction,
    SecretInfo,
    ServiceAccount,
    desired_secret,
    pull_credential,
    secret_action,
    service_account_patch,
    updated_secret,
)
from cloner.model.workloads import JsonPatch

log = logging.getLogger(__name__)

# Seconds between the API server's watch cache holding a ServiceAccount change
# and the first patch that makes pods of that ServiceAccount. The ServiceAccount
# admission plugin copies imagePullSecrets into a new pod from an informer fed
# by that cache (Kubernetes plugin/pkg/admission/serviceaccount,
# getServiceAccount reads its lister first); the margin covers the informer's
# own delivery, which is milliseconds on a loaded API server.
ADMISSION_SETTLE = 0.5


class SecretAPI(Protocol):
    """The Kubernetes calls provisioning needs (implemented by ``kube.KubeClient``)."""

    def get_secret(self, namespace: str, name: str) -> SecretInfo | None:
        """The Secret, None if absent; raises ``KubeError``."""
        ...

    def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a Secret; raises ``KubeError``."""
        ...

    def replace_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Update a Secret (resourceVersion precondition); raises ``KubeError``."""
        ...

    def get_service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        """The ServiceAccount, None if absent; raises ``KubeError``."""
        ...

    def patch_service_account(self, namespace: str, name: str, patch: JsonPatch) -> str:
        """Apply a JSON patch to a ServiceAccount; returns its new resourceVersion.

        Raises ``KubeError``.
        """
        ...

    def service_account_at_least(
        self, namespace: str, name: str, resource_version: str
    ) -> ServiceAccount | None:
        """The ServiceAccount as the API server's cache holds it at ``resource_version`` or later.

        None if absent; raises ``KubeError`` (also when the cache did not catch up).
        """
        ...


class Credentials(Protocol):
    """The registry credentials in force (``credentials.CredentialStore``)."""

    current: DockerConfig
    version: str


@dataclass(slots=True)
class ProvisionReport:
    """What provisioning did in one cycle.

    Attributes:
        secrets: Secrets written, by action (``created``, ``updated``).
        service_accounts_patched: ServiceAccounts that got the Secret added.
        failures: ``(namespace, reason, message)``.
    """

    secrets: Counter[str] = field(default_factory=Counter)
    service_accounts_patched: int = 0
    failures: list[tuple[str, ProvisionFailure, str]] = field(default_factory=list)


class PullSecrets:
    """Makes namespaces ready to pull from the owned registry, once per cycle each.

    Args:
        kube: the Kubernetes side.
        credentials: the credentials in force (``dockerConfig``: push).
        owned_registry: the owned registry host (whose entry is provisioned).
        settings: the ``pullSecret`` group: the Secret's name, and where it is
            attached (``serviceaccount`` or ``workload``).
        pull_credentials: the read-only credentials of ``pullSecret.dockerConfig``
            (``settings.docker_config``), whose owned entry the Secrets then
            hold instead; None when that setting is unset.
    """

    def __init__(
        self,
        kube: SecretAPI,
        credentials: Credentials,
        owned_registry: str,
        settings: PullSecretSettings,
        pull_credentials: Credentials | None = None,
    ) -> None:
        self._kube = kube
        self._credentials = credentials
        self._pull_credentials = pull_credentials
        self._pull_source = str(settings.docker_config)
        self._owned_registry = owned_registry
        self.name = settings.name
        self._attach_service_accounts = settings.attach == AttachMode.SERVICEACCOUNT
        self._swept_version = ""
        self._warned_version = ""
        self._report = ProvisionReport()
        self._lock = threading.Lock()
        self._namespace_locks: dict[str, threading.Lock] = {}
        self._namespaces: dict[str, bool] = {}
        self._service_accounts: dict[tuple[str, str], bool] = {}
        self._admits: dict[tuple[str, str], float] = {}  # (namespace, account) -> monotonic time

    def _namespace_lock(self, namespace: str) -> threading.Lock:
        with self._lock:
            return self._namespace_locks.setdefault(namespace, threading.Lock())

    def start_cycle(self) -> ProvisionReport:
        """Forget the per-cycle state; returns the report this cycle fills."""
        self._report = ProvisionReport()
        self._namespaces.clear()
        self._service_accounts.clear()
        now = time.monotonic()
        with self._lock:
            self._admits = {k: t for k, t in self._admits.items() if t > now}
        return self._report

    def admission_wait(self, namespace: str, service_account: str) -> float:
        """Seconds until new pods of ``service_account`` in ``namespace`` surely get the Secret.

        After this process added the Secret to the ServiceAccount, the
        ServiceAccount admission plugin may still copy the old
        ``imagePullSecrets`` into pods for a moment (it reads an informer,
        not etcd), and such a pod never gets the Secret: no workload of that
        ServiceAccount may be patched before this wait is over.

        Returns:
            Seconds (0.0 when nothing was changed lately).
        """
        with self._lock:
            until = self._admits.get((namespace, service_account), 0.0)
        return max(0.0, until - time.monotonic())

    def _in_force(self) -> Credentials:
        """The credentials whose owned entry goes into the Secrets (the pull ones when set)."""
        return self._credentials if self._pull_credentials is None else self._pull_credentials

    def _owned_entry(self, credentials: Credentials, source: str) -> OwnedEntry:
        config = credentials.current
        registry = self._owned_registry
        return OwnedEntry(config.for_registry(registry), config.helper_for(registry), source)

    def _decide(self) -> PullCredential:
        """This cycle's pull credential, or why namespaces must wait (``pull_credential``).

        A missing entry for the owned registry is logged once per version of
        the credentials in force.
        """
        push = self._owned_entry(self._credentials, "dockerConfig")
        pull = None
        if self._pull_credentials is not None:
            pull = self._owned_entry(self._pull_credentials, self._pull_source)
        decided = pull_credential(self._owned_registry, push, pull)
        version = self._in_force().version
        if decided.credential is None and self._warned_version != version:
            self._warned_version = version
            if decided.reason == PULL_CREDENTIALS_MISSING:
                log.warning(
                    "%s: workloads in namespaces that need the pull secret are not patched",
                    decided.message,
                )
            elif not decided.reason:
                log.warning(
                    "the docker config has no entry for the owned registry %s: no pull "
                    "secret is provisioned (nodes must be able to pull from it already)",
                    self._owned_registry,
                )
        return decided

    def credential(self) -> Credential | None:
        """The credential the Secrets hold, or None (then no Secret is provisioned)."""
        return self._decide().credential

    def sweep(self, namespaces: Iterable[str]) -> None:
        """Bring every managed Secret in ``namespaces`` up to date, once per credentials version.

        Runs at the first cycle and after the docker ``config.json`` in force
        (``pullSecret.dockerConfig`` when set) or a helper's answer changed;
        only Secrets the controller manages are updated, none are created.
        If any read fails the sweep runs again next cycle.
        """
        credential = self.credential()
        version = self._in_force().version
        if credential is None or self._swept_version == version:
            return
        complete = True
        for namespace in sorted(set(namespaces)):
            try:
                existing = self._kube.get_secret(namespace, self.name)
            except KubeError as exc:
                log.error("checking the pull secret of %s failed: %s", namespace, exc)
                complete = False
                continue
            if existing is None or not existing.managed:
                continue
            complete &= self._converge(namespace, existing, credential)
        if complete:
            self._swept_version = version

    def namespace_ready(self, namespace: str, service_account: str) -> bool:
        """Make sure pods of ``service_account`` in ``namespace`` can pull owned images.

        Thread-safe: the write pool makes several namespaces ready at once;
        calls for one namespace take turns, so its Secret is written once.

        Returns:
            True when the Secret (and, in ``serviceaccount`` mode, the
            attachment) is in place or not needed; False when the workload
            must not be patched this cycle (the failure is recorded).
        """
        with self._namespace_lock(namespace):
            return self._ready(namespace, service_account)

    def _ready(self, namespace: str, service_account: str) -> bool:
        decided = self._decide()
        if decided.reason:
            # No credential for the Secret although the registry wants one:
            # patching would start pods that cannot pull.
            if namespace not in self._namespaces:
                self._namespaces[namespace] = self._fail(namespace, decided.reason, decided.message)
            return False
        credential = decided.credential
        if credential is None:
            return True  # no credential configured: nodes pull by themselves
        if namespace not in self._namespaces:
            self._namespaces[namespace] = self._ensure_secret(namespace, credential)
        if not self._namespaces[namespace]:
            return False
        if not self._attach_service_accounts:
            return True
        key = (namespace, service_account)
        if key not in self._service_accounts:
            self._service_accounts[key] = self._ensure_attached(namespace, service_account)
        return self._service_accounts[key]

    def workload_pull_secret(self, template_secrets: tuple[str, ...] | None = None) -> str | None:
        """The Secret to add to a pod template, or None.

        In ``workload`` mode always. In ``serviceaccount`` mode only when the
        template lists ``imagePullSecrets`` of its own: the ServiceAccount
        admission plugin adds a ServiceAccount's ``imagePullSecrets`` only to
        pods that list none (Kubernetes ``plugin/pkg/admission/serviceaccount``),
        so such pods would never see the managed Secret.

        Args:
            template_secrets: the pod template's ``imagePullSecrets`` names
                (``Workload.pull_secrets``); None when it has none.
        """
        if self.credential() is None:
            return None
        if self._attach_service_accounts and not template_secrets:
            return None
        return self.name

    def _fail(self, namespace: str, reason: ProvisionFailure, message: str) -> bool:
        self._report.failures.append((namespace, reason, message))
        log.error("not patching workloads in %s this cycle: %s", namespace, message)
        return False

    def _ensure_secret(self, namespace: str, credential: Credential) -> bool:
        try:
            existing = self._kube.get_secret(namespace, self.name)
        except KubeError as exc:
            return self._fail(namespace, ProvisionFailure.API_ERROR, str(exc))
        return self._converge(namespace, existing, credential)

    def _converge(
        self, namespace: str, existing: SecretInfo | None, credential: Credential
    ) -> bool:
        desired = desired_secret(self.name, namespace, credential)
        action = secret_action(existing, desired)
        try:
            if action == SecretAction.FOREIGN:
                return self._fail(
                    namespace,
                    ProvisionFailure.FOREIGN_SECRET,
                    f"Secret {namespace}/{self.name} exists and is not managed by "
                    "image-cloner (no app.kubernetes.io/managed-by=image-cloner label); "
                    "it is left as it is",
                )
            if action == SecretAction.CREATE:
                self._kube.create_secret(namespace, desired)
                with self._lock:  # namespaces are made ready in parallel
                    self._report.secrets["created"] += 1
                log.info("created pull secret %s/%s", namespace, self.name)
            elif action == SecretAction.UPDATE:
                assert existing is not None
                self._kube.replace_secret(namespace, updated_secret(existing, desired))
                with self._lock:
                    self._report.secrets["updated"] += 1
                log.info("updated pull secret %s/%s", namespace, self.name)
        except KubeError as exc:
            return self._fail(namespace, ProvisionFailure.API_ERROR, str(exc))
        return True

    def _ensure_attached(self, namespace: str, name: str) -> bool:
        try:
            account = self._kube.get_service_account(namespace, name)
            if account is None:
                return self._fail(
                    namespace,
                    ProvisionFailure.SERVICEACCOUNT_MISSING,
                    f"ServiceAccount {namespace}/{name} does not exist",
                )
            patch = service_account_patch(account, self.name)
            if patch:
                version = self._kube.patch_service_account(namespace, name, patch)
                with self._lock:
                    self._report.service_accounts_patched += 1
                log.info("added pull secret %s to ServiceAccount %s/%s", self.name, namespace, name)
                return self._await_admission(namespace, name, version)
        except KubeError as exc:
            return self._fail(namespace, ProvisionFailure.API_ERROR, str(exc))
        return True

    def _await_admission(self, namespace: str, name: str, version: str) -> bool:
        """Wait until the API server's cache holds the patched ServiceAccount.

        Then ``admission_wait`` gives the seconds until its new pods surely
        get the Secret. If the cache cannot confirm it, the namespace is not patched
        this cycle; the next one finds the ServiceAccount already attached.
        Raises ``KubeError`` (the caller records it).
        """
        seen = self._kube.service_account_at_least(namespace, name, version) if version else None
        if seen is None or not seen.lists(self.name):
            return self._fail(
                namespace,
                ProvisionFailure.API_ERROR,
                f"the API server did not confirm that ServiceAccount {namespace}/{name} "
                f"lists {self.name} (version {version or 'unknown'}); retried next cycle",
            )
        with self._lock:
            self._admits[(namespace, name)] = time.monotonic() + ADMISSION_SETTLE
        return True
