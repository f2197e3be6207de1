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
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from cloner.model.credentials import Credential
from cloner.model.workloads import ADDED_PULL_SECRET, annotation_ops

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "image-cloner"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
SECRET_KEY = ".dockerconfigjson"


class AttachMode(StrEnum):
    """Where the managed pull Secret is attached (``pullSecret.attach``)."""

    SERVICEACCOUNT = "serviceaccount"  #: the ServiceAccount the pods run as
    WORKLOAD = "workload"  #: the pod template, in the image patch


ATTACH_MODES = tuple(AttachMode)


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


def is_managed(secret: Mapping[str, Any]) -> bool:
    """True when the Secret carries ``app.kubernetes.io/managed-by: image-cloner``."""
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY


def secret_action(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> str:
    """What to do to make the namespace hold ``desired``.

    Args:
        existing: the Secret of that name as read, or None when there is none.
        desired: from ``desired_secret``.

    Returns:
        ``create`` (none there), ``update`` (managed, content or type
        differs), ``none`` (managed and current), or ``foreign`` (a Secret of
        that name the controller does not manage: never overwritten).
    """
    if existing is None:
        return "create"
    if not is_managed(existing):
        return "foreign"
    if existing.get("type") != desired["type"] or (existing.get("data") or {}) != desired["data"]:
        return "update"
    return "none"


def updated_secret(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The body of the update (PUT) of a managed Secret.

    Keeps the existing metadata (labels and annotations others added, and
    ``resourceVersion`` as the precondition, so a concurrent change makes the
    update fail instead of being lost) and replaces type and data.
    """
    metadata = dict(existing.get("metadata") or {})
    metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY}
    return {**desired, "metadata": metadata}


def references_secret(pull_secrets: Sequence[Mapping[str, Any]] | None, name: str) -> bool:
    """True when an ``imagePullSecrets`` list already names the Secret."""
    return any((entry or {}).get("name") == name for entry in pull_secrets or ())


def service_account_patch(service_account: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The JSON patch that appends the Secret to a ServiceAccount's ``imagePullSecrets``.

    Entries already there are kept as they are. The patch ``test``s the
    ``resourceVersion`` that was read, so a concurrent edit of the
    ServiceAccount makes the API server refuse it rather than lose either change.
    It also sets the ``image-cloner.io/added-pull-secret`` annotation, so
    ``revert`` removes only what the controller added.

    Args:
        service_account: the ServiceAccount as read (JSON dict).
        name: the Secret name.

    Returns:
        The operations, or ``[]`` when the Secret is already listed.
    """
    current = service_account.get("imagePullSecrets")
    if references_secret(current, name):
        return []
    version = (service_account.get("metadata") or {}).get("resourceVersion", "")
    test = {"op": "test", "path": "/metadata/resourceVersion", "value": version}
    if current is None:
        add = {"op": "add", "path": "/imagePullSecrets", "value": [{"name": name}]}
    else:
        add = {"op": "add", "path": "/imagePullSecrets/-", "value": {"name": name}}
    annotations = (service_account.get("metadata") or {}).get("annotations") or {}
    marks = annotation_ops(annotations, version, {ADDED_PULL_SECRET: name})
    if marks and marks[0]["path"] == "/metadata/resourceVersion":
        marks = marks[1:]  # tested once already
    return [test, add, *marks]
