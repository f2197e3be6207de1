"""Pull secrets for the owned registry: the Secret, and how it gets used. Pure: no I/O.

Called by ``reconcile``, which reads and writes the objects through ``kube``.
After a workload is switched to owned images, kubelet must be able to pull
them, so every namespace the controller patches gets a Secret of type
``kubernetes.io/dockerconfigjson`` holding only the owned registry's entry of
the docker ``config.json`` (never the other registries' credentials), and the
Secret is attached to the ServiceAccount the pods run as, or to the pod
template. Kubernetes API conventions followed: the managed-by label
(``app.kubernetes.io/managed-by``) marks what the controller owns; a Secret of
the same name without it is never touched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from cloner.model.credentials import Credential, HelperRef
from cloner.model.workloads import ADDED_PULL_SECRET, JsonPatch, annotation_ops, pull_secret_ops

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "image-cloner"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
SECRET_KEY = ".dockerconfigjson"


class AttachMode(StrEnum):
    """Where the managed pull Secret is attached (``pullSecret.attach``)."""

    SERVICEACCOUNT = "serviceaccount"  #: the ServiceAccount the pods run as
    WORKLOAD = "workload"  #: the pod template, in the image patch


ATTACH_MODES = tuple(AttachMode)


class ProvisionFailure(StrEnum):
    """Why a namespace was not made ready to pull (``ProvisionReport.failures``).

    Also the label ``reason`` of ``image_cloner_pull_secret_failures_total``.
    """

    #: A Secret of the managed name exists without the managed-by label.
    FOREIGN_SECRET = "foreign_secret"
    #: The ServiceAccount the pods run as does not exist.
    SERVICEACCOUNT_MISSING = "serviceaccount_missing"
    #: A read or write of the API server failed.
    API_ERROR = "api_error"
    #: A credential helper answers for the owned registry but gave no
    #: credential this cycle (also ``PullCredential.reason``).
    CREDENTIALS_UNAVAILABLE = "credentials_unavailable"
    #: ``pullSecret.dockerConfig`` has no entry for the owned registry while
    #: ``dockerConfig`` has one: the registry wants credentials (also
    #: ``PullCredential.reason``).
    PULL_CREDENTIALS_MISSING = "pull_credentials_missing"


CREDENTIALS_UNAVAILABLE = ProvisionFailure.CREDENTIALS_UNAVAILABLE
PULL_CREDENTIALS_MISSING = ProvisionFailure.PULL_CREDENTIALS_MISSING


class SecretAction(StrEnum):
    """What makes a namespace hold the desired pull Secret (``secret_action``)."""

    CREATE = "create"  #: none there: create it
    UPDATE = "update"  #: managed, but its type or data differ: replace them
    NONE = "none"  #: managed and current
    FOREIGN = "foreign"  #: a Secret of that name the controller does not manage


@dataclass(frozen=True, slots=True)
class OwnedEntry:
    """What one docker ``config.json`` holds for the owned registry, as resolved this cycle.

    Attributes:
        credential: its credential now (a helper's answer or the ``auths``
            entry), or None.
        helper: the credential helper that answers for the owned registry, or None.
        source: the file, for messages.
    """

    credential: Credential | None
    helper: HelperRef | None
    source: str


@dataclass(frozen=True, slots=True)
class PullCredential:
    """What the managed pull Secrets hold this cycle, or why workloads must wait.

    Attributes:
        credential: the credential to put in the Secrets; None when there is
            none to put there.
        reason: ``""`` when workloads may be patched (with ``credential`` in
            their namespace's Secret, or with no Secret when ``credential`` is
            None: the owned registry is taken to allow anonymous pulls);
            else ``CREDENTIALS_UNAVAILABLE`` or ``PULL_CREDENTIALS_MISSING``:
            no workload that needs the Secret may be patched (its new pods
            could not pull).
        message: says why, for logs and the namespace failures; ``""`` with
            no reason. Never holds a secret.
    """

    credential: Credential | None = None
    reason: ProvisionFailure | Literal[""] = ""
    message: str = ""


def pull_credential(registry: str, push: OwnedEntry, pull: OwnedEntry | None) -> PullCredential:
    """Decide which credential the managed pull Secrets hold (issue 28). Pure.

    Rules, in order (docs/credentials.md, "Read-only credentials for the nodes"):

    1. the entry in force is ``pull`` (``pullSecret.dockerConfig``) when it is
       configured, else ``push`` (``dockerConfig``); its credential, if any,
       goes into the Secrets;
    2. its helper gave nothing: ``CREDENTIALS_UNAVAILABLE``;
    3. ``pull`` has no entry while ``push`` has one: ``PULL_CREDENTIALS_MISSING``,
       never a fall-back to the push credentials;
    4. otherwise no Secret is needed: no file has an entry for the owned
       registry, so it is taken to allow anonymous pulls.

    Args:
        registry: the owned registry host, for messages.
        push: the owned entry of ``dockerConfig``.
        pull: the owned entry of ``pullSecret.dockerConfig``; None when unset.

    Returns:
        The ``PullCredential``.
    """
    entry = push if pull is None else pull
    if entry.credential is not None:
        return PullCredential(entry.credential)
    if entry.helper is not None:
        return PullCredential(
            reason=CREDENTIALS_UNAVAILABLE,
            message=f"credential helper {entry.helper.program} gave no credential "
            f"for the owned registry {registry}",
        )
    if pull is not None and (push.credential is not None or push.helper is not None):
        return PullCredential(
            reason=PULL_CREDENTIALS_MISSING,
            message=f"{pull.source} (pullSecret.dockerConfig) has no entry for the owned "
            f"registry {registry}; the push credentials of {push.source} are never put "
            "in pull secrets",
        )
    return PullCredential()


def carries_push_credentials(provision: bool, pull_docker_config: object | None) -> bool:
    """Whether the managed pull Secrets carry the push credentials (issue 28). Pure.

    True when Secrets are provisioned (``pullSecret.provision``) and no
    ``pullSecret.dockerConfig`` is set: the owned registry's entry of
    ``dockerConfig`` then goes into every patched namespace. The controller
    logs a Warning once at start-up and sets the gauge
    ``image_cloner_pull_secret_has_push_credentials`` to 1.

    Args:
        provision: ``pullSecret.provision``.
        pull_docker_config: ``pullSecret.dockerConfig`` (a path), or None.
    """
    return provision and pull_docker_config is None


def dockerconfigjson(credential: Credential) -> bytes:
    """The ``.dockerconfigjson`` payload: exactly one ``auths`` entry.

    The entry is the owned registry's entry as written in the docker
    ``config.json`` (same key, same fields), so kubelet reads it as Docker
    would. Keys are sorted so equal credentials give equal bytes.

    Args:
        credential: the owned registry's credential.

    Returns:
        The JSON document, UTF-8 encoded.
    """
    entry = dict(credential.entry) or {
        "auth": base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()
    }
    key = credential.key or credential.registry
    return json.dumps({"auths": {key: entry}}, sort_keys=True, separators=(",", ":")).encode()


def desired_secret(name: str, namespace: str, credential: Credential) -> dict[str, Any]:
    """The managed pull Secret as it should be.

    Args:
        name: the Secret name (``pullSecret.name``).
        namespace: where it lives.
        credential: the owned registry's credential.

    Returns:
        A core/v1 Secret as a JSON-ready dict.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        },
        "type": SECRET_TYPE,
        "data": {SECRET_KEY: base64.b64encode(dockerconfigjson(credential)).decode()},
    }


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A core/v1 Secret as the pull Secret rules need it (snapshot of the API object).

    Attributes:
        namespace, name: where it is.
        metadata: its ``metadata`` as read, kept whole so that an update
            (PUT) keeps what others wrote (labels, annotations, owner
            references, finalizers) and tests ``resourceVersion``.
        type: its ``type`` ("" when absent).
        data: its ``data``, base64 values by key.
    """

    namespace: str
    name: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    type: str = ""
    data: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> SecretInfo:
        """The snapshot of a Secret as the API returns it (JSON dict)."""
        meta = dict(obj.get("metadata") or {})
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            metadata=meta,
            type=str(obj.get("type") or ""),
            data=dict(obj.get("data") or {}),
        )

    @property
    def resource_version(self) -> str:
        """``metadata.resourceVersion`` as read."""
        return str(self.metadata.get("resourceVersion", ""))

    @property
    def managed(self) -> bool:
        """True when it carries ``app.kubernetes.io/managed-by: image-cloner``."""
        labels = self.metadata.get("labels") or {}
        return labels.get(MANAGED_BY_LABEL) == MANAGED_BY


def secret_action(existing: SecretInfo | None, desired: Mapping[str, Any]) -> SecretAction:
    """What to do to make the namespace hold ``desired``.

    Args:
        existing: the Secret of that name as read, or None when there is none.
        desired: from ``desired_secret``.

    Returns:
        ``CREATE`` (none there), ``UPDATE`` (managed, content or type
        differs), ``NONE`` (managed and current), or ``FOREIGN`` (a Secret of
        that name the controller does not manage: never overwritten).
    """
    if existing is None:
        return SecretAction.CREATE
    if not existing.managed:
        return SecretAction.FOREIGN
    if existing.type != desired["type"] or dict(existing.data) != desired["data"]:
        return SecretAction.UPDATE
    return SecretAction.NONE


def updated_secret(existing: SecretInfo, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The body of the update (PUT) of a managed Secret.

    Keeps the existing metadata (labels and annotations others added, and
    ``resourceVersion`` as the precondition, so a concurrent change makes the
    update fail instead of being lost) and replaces type and data.
    """
    metadata = dict(existing.metadata)
    metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY}
    return {**desired, "metadata": metadata}


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A core/v1 ServiceAccount as the pull Secret rules need it (snapshot of the API object).

    Attributes:
        namespace, name: where it is.
        resource_version: ``metadata.resourceVersion`` as read (what patches
            ``test``).
        annotations: its annotations.
        pull_secrets: the names in its ``imagePullSecrets``, in order; None
            when the field is absent.
    """

    namespace: str
    name: str
    resource_version: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    pull_secrets: tuple[str, ...] | None = None

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> ServiceAccount:
        """The snapshot of a ServiceAccount as the API returns it (JSON dict)."""
        meta = obj.get("metadata") or {}
        listed = obj.get("imagePullSecrets")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            annotations=dict(meta.get("annotations") or {}),
            pull_secrets=(
                None if listed is None else tuple(str((e or {}).get("name", "")) for e in listed)
            ),
        )

    def lists(self, secret: str) -> bool:
        """True when its ``imagePullSecrets`` names ``secret``."""
        return secret in (self.pull_secrets or ())


def service_account_patch(account: ServiceAccount, name: str) -> JsonPatch:
    """The JSON patch that appends the Secret to a ServiceAccount's ``imagePullSecrets``.

    ``workloads.pull_secret_ops`` decides the list; the patch ``test``s the
    ``resourceVersion`` that was read first, so a concurrent edit of the
    ServiceAccount makes the API server refuse it rather than lose either
    change. It also sets the ``image-cloner.io/added-pull-secret``
    annotation, so ``revert`` removes only what the controller added.

    Args:
        account: the ServiceAccount as read.
        name: the Secret name.

    Returns:
        The operations, or ``[]`` when the Secret is already listed.
    """
    added = pull_secret_ops("/imagePullSecrets", account.pull_secrets, name)
    if not added:
        return []
    version = account.resource_version
    test = {"op": "test", "path": "/metadata/resourceVersion", "value": version}
    marks = annotation_ops(account.annotations, version, {ADDED_PULL_SECRET: name})
    if marks and marks[0]["path"] == "/metadata/resourceVersion":
        marks = marks[1:]  # tested once already
    return [test, *added, *marks]
