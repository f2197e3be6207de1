"""In-memory stand-ins for unit tests of the decisions (never for e2e tests).

``FakeKube`` is the one stand-in Kubernetes API: it stores objects as JSON
dicts and applies JSON patches with ``apply_patch`` (RFC 6902, through the
``jsonpatch`` library), refusing a failed ``test`` with 422 as the API
server does; it serves the reconcile cycle (``reconcile.KubeAPI``), pull
secret provisioning and revert (``revert.RevertAPI``), the Event recorder
(``events.EventAPI``) and the leader elector (one Lease, through the
``CoordinationV1Api`` methods it calls). ``workload`` builds the objects it
stores (``devenv.workloads``, with these tests' conventions).


``Registries`` holds manifests by repository, answers ``head``/``get`` like
the distribution API (``cloning.ManifestAPI``) and copies like a backend
(``cloning.CopyBackend``): ``skopeo`` copies the manifest bytes and every
child (same digests); ``docker`` writes a new single manifest with the
config of the engine platform's image (a new digest, the same config).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
from kubernetes.client.exceptions import ApiException

from cloner.errors import KubeError, RegistryError
from cloner.model.identity import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Copied,
    Descriptor,
    child_for,
)
from cloner.model.pullsecrets import SecretInfo, ServiceAccount
from cloner.model.reference import Reference
from cloner.model.workloads import KINDS, NamespaceInfo, Workload, kind_info, pod_spec_of
from devenv import workloads


def workload(
    kind: str, ns: str, name: str, *images: str, init: Iterable[str] = (), **fields: Any
) -> dict[str, Any]:
    """A workload object of ``kind`` (``devenv.workloads``) as ``FakeKube`` stores it.

    Containers ``c0``, ``c1``... run ``images``, init containers ``i0``...
    run ``init``; its uid is ``ns/name`` and its resourceVersion ``1``.
    ``fields`` go to the builder (``labels``, ``spec``, ``status``, and
    ``metadata``, which adds to those two).
    """
    initial = {f"i{i}": image for i, image in enumerate(init)}
    metadata = {"uid": f"{ns}/{name}", "resourceVersion": "1", **fields.pop("metadata", {})}
    return workloads.workload(
        kind,
        name,
        {f"c{i}": image for i, image in enumerate(images)},
        init=initial or None,
        namespace=ns,
        metadata=metadata,
        **fields,
    )


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repo:
    tags: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class Registries:
    """Every registry in one dict; ``down`` registries fail with their error."""

    def __init__(self, backend: str = "skopeo", engine_platform: str = "linux/amd64") -> None:
        self.backend = backend
        self.engine_platform = engine_platform
        self.repos: dict[str, Repo] = {}
        self.down: dict[str, RegistryError] = {}
        self.requests: Counter[str] = Counter()  # registry -> requests
        self.clones: list[tuple[str, str]] = []
        self.abandoned = 0  # abandon() calls

    @property
    def keeps_digests(self) -> bool:
        """Copies like skopeo (every digest kept) or like a Docker engine."""
        return self.backend == "skopeo"

    # building ---------------------------------------------------------------

    def put(self, name: str, tag: str | None, media: str, body: bytes) -> str:
        repo = self.repos.setdefault(name, Repo())
        digest = sha(body)
        repo.manifests[digest] = (media, body)
        if tag is not None:
            repo.tags[tag] = digest
        return digest

    def image(
        self,
        name: str,
        tag: str | None,
        seed: str,
        platform: str = "linux/amd64",
        layers: tuple[str, ...] = (),
    ) -> str:
        """A single-platform OCI image (``layers``: blob digests); returns its manifest digest."""
        os, arch = platform.split("/")[:2]
        config = sha(json.dumps({"seed": seed, "os": os, "architecture": arch}).encode())
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"digest": config},
                "layers": [{"digest": d} for d in layers],
            }
        ).encode()
        return self.put(name, tag, OCI_MANIFEST, body)

    def index(self, name: str, tag: str | None, seed: str, platforms: tuple[str, ...]) -> str:
        """An OCI index of one image per platform; returns the index digest."""
        entries = []
        for platform in platforms:
            os, arch = platform.split("/")[:2]
            child = self.image(name, None, seed + platform, platform)
            entries.append({"digest": child, "platform": {"os": os, "architecture": arch}})
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        ).encode()
        return self.put(name, tag, OCI_INDEX, body)

    def config_of(self, name: str, digest: str) -> str:
        _media, body = self.repos[name].manifests[digest]
        return str(json.loads(body)["config"]["digest"])

    # ManifestAPI ------------------------------------------------------------

    def _ask(self, ref: Reference) -> None:
        self.requests[ref.registry] += 1
        if ref.registry in self.down:
            raise self.down[ref.registry]

    def _find(self, ref: Reference) -> tuple[str, str, bytes] | None:
        repo = self.repos.get(ref.name)
        if repo is None:
            return None
        digest = ref.digest or repo.tags.get(ref.tag_or_default)
        if digest is None or digest not in repo.manifests:
            return None
        media, body = repo.manifests[digest]
        return digest, media, body

    def head(self, ref: Reference) -> Descriptor | None:
        self._ask(ref)
        found = self._find(ref)
        return Descriptor(found[0], found[1], len(found[2])) if found else None

    def get(self, ref: Reference) -> tuple[Descriptor, bytes]:
        self._ask(ref)
        found = self._find(ref)
        if found is None:
            raise RegistryError("not_found", f"{ref}: manifest unknown", ref.registry)
        return Descriptor(found[0], found[1], len(found[2])), found[2]

    # CopyBackend ------------------------------------------------------------

    def preflight(self, source: Reference, owned: Reference) -> None:
        """Nothing is refused up front."""

    def abandon(self) -> None:
        """Counts the calls (``abandoned``); a copy in flight goes on."""
        self.abandoned += 1

    def clone(self, source: Reference, owned: Reference) -> Copied:
        self._ask(source)
        self._ask(owned)
        found = self._find(source)
        if found is None:
            raise RegistryError("not_found", f"pull {source}: manifest unknown", source.registry)
        self.clones.append((str(source), str(owned)))
        digest, media, body = found
        if self.backend == "skopeo":
            if media == OCI_INDEX:
                for entry in json.loads(body)["manifests"]:
                    child_media, child_body = self.repos[source.name].manifests[entry["digest"]]
                    self.put(owned.name, None, child_media, child_body)
            repo = self.repos.setdefault(owned.name, Repo())
            repo.manifests[digest] = (media, body)  # byte for byte: the same digest
            if owned.tag is not None:
                repo.tags[owned.tag] = digest
            return Copied(digest)
        # docker: one platform, re-serialised with the same config
        if media == OCI_INDEX:
            from cloner.model.identity import parse_manifest

            child = child_for(parse_manifest(digest, media, body), self.engine_platform)
            assert child is not None
            digest = child
        config = self.config_of(source.name, digest)
        new = json.dumps(
            {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": {"digest": config}},
            indent=3,
        ).encode()
        return Copied(self.put(owned.name, owned.tag, DOCKER_MANIFEST, new), config)


class PatchFailed(Exception):
    """A ``test`` operation failed or a path does not exist (the API server's 422)."""


def apply_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """``doc`` after a JSON patch (RFC 6902), as a new dict; raises ``PatchFailed``."""
    try:
        return jsonpatch.apply_patch(doc, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise PatchFailed(str(exc)) from None


class _LeaseResponse:
    """What ``CoordinationV1Api`` returns with ``_preload_content=False``: the body in ``data``."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()


class FakeKube:
    """Workloads, namespaces, Secrets, ServiceAccounts, ConfigMaps, Events and a Lease in memory.

    Args:
        objects: workload objects as JSON dicts, each with its ``kind`` (kept, not copied).

    Attributes:
        calls: the writes in order: ``patch <Kind ns/name>``, ``patch sa ns/name``,
            ``create secret ns``, ``update secret ns``.
        patches: ``(workload key, operations)`` of every workload patch tried.
        fail_list: kinds (or ``Namespace``) whose list call fails.
        fail_patch: workload names whose patches fail with 422.
        gets: ``(namespace, name)`` of every ServiceAccount read.
        events: the Events written, by ``(namespace, name)``, as the API server
            stores them (a name made from ``generateName``).
        event_calls: ``("create", namespace)`` and ``("patch", name)`` of every
            Event write tried.
        event_failure: raised by every Event write while set.
        lease: the one Lease (any name, any namespace), None before it is created;
            its ``resourceVersion`` is checked on replace (409), as the API server does.
        lease_writes: every Lease stored, in order.
        lease_failure: raised by every Lease call while set.
        lock: held by the Lease calls (the elector runs on its own thread).
    """

    def __init__(
        self, objects: list[dict[str, Any]] | None = None, accounts: Iterable[dict[str, Any]] = ()
    ) -> None:
        self.objects = [] if objects is None else objects
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.calls: list[str] = []
        self.gets: list[tuple[str, str]] = []
        self.fail_list: set[str] = set()
        self.fail_patch: set[str] = set()
        self.namespaces: dict[str, NamespaceInfo] = {}
        self.nodes: list[str] = []
        self.unpatchable: list[dict[str, Any]] = []
        self.config_maps: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.accounts: dict[tuple[str, str], dict[str, Any]] = {
            (a["metadata"]["namespace"], a["metadata"]["name"]): a for a in accounts
        }
        self.account_version = 0  # resourceVersion of the last ServiceAccount patch
        #: what the rollout guard reads per namespace: ``pods``, ``events``,
        #: ``replicasets`` (JSON dicts with their ``metadata.namespace``)
        self.namespaced: dict[str, list[dict[str, Any]]] = {}
        self.deleted_pods: list[tuple[str, str, str]] = []
        self.namespaced_reads: list[tuple[str, str]] = []
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.event_calls: list[tuple[str, str]] = []
        self.event_failure: Exception | None = None
        self.lease: dict[str, Any] | None = None
        self.lease_writes: list[dict[str, Any]] = []
        self.lease_failure: Exception | None = None
        self.lock = threading.Lock()

    # Workloads ---------------------------------------------------------------

    def _position(self, kind: str, namespace: str, name: str) -> int | None:
        for i, obj in enumerate(self.objects):
            meta = obj["metadata"]
            if obj["kind"] == kind and meta["namespace"] == namespace and meta["name"] == name:
                return i
        return None

    def object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object (raises ``LookupError`` when there is none)."""
        position = self._position(kind, namespace, name)
        if position is None:
            raise LookupError(f"{kind} {namespace}/{name}")
        return self.objects[position]

    def list_namespaces(self) -> Iterator[NamespaceInfo]:
        if "Namespace" in self.fail_list:
            raise KubeError(503, "unavailable")
        for name in sorted({o["metadata"]["namespace"] for o in self.objects}):
            yield self.namespaces.get(name, NamespaceInfo(name))

    def list_workloads(
        self, kind: str, excluded: Iterable[str] = (), namespace: str | None = None
    ) -> Iterator[Workload]:
        if kind in self.fail_list:
            raise KubeError(0, "unreachable")
        for obj in self.objects:
            ns = obj["metadata"]["namespace"]
            if obj["kind"] == kind and ns not in excluded and namespace in (None, ns):
                yield Workload.from_api(kind, copy.deepcopy(obj))

    def get_workload(self, kind: str, ns: str, name: str) -> Workload | None:
        position = self._position(kind, ns, name)
        return None if position is None else Workload.from_api(kind, self.objects[position])

    def patch_workload(self, w: Workload, patch: list[dict[str, Any]]) -> None:
        self.calls.append(f"patch {w.key}")
        self.patches.append((w.key, patch))
        if w.name in self.fail_patch:
            raise KubeError(422, f"patch {w.key}: 422 the server rejected our request")
        position = self._position(w.kind, w.namespace, w.name)
        assert position is not None, w.key
        try:
            patched = apply_patch(self.objects[position], patch)
        except PatchFailed:
            raise KubeError(422, "test failed") from None
        # As the API server: every accepted write gives the object a new resourceVersion.
        meta = patched.setdefault("metadata", {})
        meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 1)
        self.objects[position] = patched

    def list_namespaced(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        self.namespaced_reads.append((resource, namespace))
        kinds = [k for k in KINDS if kind_info(k).plural == resource]
        if kinds:
            found = [o for o in self.objects if o["kind"] == kinds[0]]
        else:
            found = self.namespaced.get(resource, [])
        return [copy.deepcopy(o) for o in found if o["metadata"]["namespace"] == namespace]

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        self.calls.append(f"delete pod {namespace}/{name}")
        self.deleted_pods.append((namespace, name, uid))

    def image(self, uid: str, container: str) -> str:
        """The image of one container (init or not) of the stored workload with that uid."""
        obj = next(o for o in self.objects if o["metadata"].get("uid") == uid)
        spec = pod_spec_of(obj["kind"], obj)
        entries = list(spec.get("containers") or ()) + list(spec.get("initContainers") or ())
        return next(c["image"] for c in entries if c["name"] == container)

    def node_platforms(self) -> list[str]:
        return list(self.nodes)

    def list_unpatchable(self, excluded: Iterable[str]) -> Iterator[Workload]:
        for obj in self.unpatchable:
            if obj["metadata"]["namespace"] not in excluded:
                yield Workload.from_api(obj["kind"], obj)

    # ConfigMaps, Secrets, ServiceAccounts -----------------------------------

    def get_config_map(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.config_maps.get((ns, name))

    def create_config_map(self, ns: str, body: dict[str, Any]) -> None:
        key = (ns, body["metadata"]["name"])
        if key in self.config_maps:
            raise KubeError(409, "exists")
        self.config_maps[key] = body

    def replace_config_map(self, ns: str, body: dict[str, Any]) -> None:
        key = (ns, body["metadata"]["name"])
        if key not in self.config_maps:
            raise KubeError(404, "not found")
        self.config_maps[key] = body

    def get_secret(self, ns: str, name: str) -> SecretInfo | None:
        found = self.secrets.get((ns, name))
        return None if found is None else SecretInfo.from_api(found)

    def create_secret(self, ns: str, body: dict[str, Any]) -> None:
        self.calls.append(f"create secret {ns}")
        self.secrets[(ns, body["metadata"]["name"])] = body

    def replace_secret(self, ns: str, body: dict[str, Any]) -> None:
        self.calls.append(f"update secret {ns}")
        self.secrets[(ns, body["metadata"]["name"])] = body

    def get_service_account(self, ns: str, name: str) -> ServiceAccount | None:
        self.gets.append((ns, name))
        found = self.accounts.get((ns, name))
        return None if found is None else ServiceAccount.from_api(found)

    def patch_service_account(self, ns: str, name: str, patch: list[dict[str, Any]]) -> str:
        self.calls.append(f"patch sa {ns}/{name}")
        try:
            account = apply_patch(self.accounts[(ns, name)], patch)
        except PatchFailed:
            raise KubeError(422, "test failed") from None
        self.account_version += 1
        account.setdefault("metadata", {})["resourceVersion"] = str(self.account_version)
        self.accounts[(ns, name)] = account
        return str(self.account_version)

    def service_account_at_least(
        self, ns: str, name: str, resource_version: str
    ) -> ServiceAccount | None:
        """As the watch cache would: the account, once its version reached ``resource_version``."""
        self.calls.append(f"confirm sa {ns}/{name}")
        account = self.accounts.get((ns, name))
        if account is None:
            return None
        held = int(account.get("metadata", {}).get("resourceVersion", "0"))
        if held < int(resource_version):
            raise KubeError(504, "Too large resource version")
        return ServiceAccount.from_api(account)

    # Events ------------------------------------------------------------------

    def create_event(self, namespace: str, body: dict[str, Any]) -> str:
        self.event_calls.append(("create", namespace))
        if self.event_failure is not None:
            raise self.event_failure
        name = f"{body['metadata']['generateName']}{len(self.event_calls):05d}"
        self.events[(namespace, name)] = {**body, "metadata": {**body["metadata"], "name": name}}
        return name

    def patch_event(
        self, namespace: str, name: str, patch: list[dict[str, Any]] | dict[str, Any]
    ) -> None:
        self.event_calls.append(("patch", name))
        if self.event_failure is not None:
            raise self.event_failure
        if (namespace, name) not in self.events:
            raise KubeError(404, f"patch event {namespace}/{name}: 404 not found")
        assert isinstance(patch, dict)
        self.events[(namespace, name)].update(patch)

    # The Lease, as CoordinationV1Api -------------------------------------------

    def _lease_check(self) -> None:
        if self.lease_failure is not None:
            raise self.lease_failure

    def _store_lease(self, body: dict[str, Any]) -> _LeaseResponse:
        body = json.loads(json.dumps(body))
        body["metadata"]["resourceVersion"] = str(len(self.lease_writes) + 1)
        self.lease = body
        self.lease_writes.append(body)
        return _LeaseResponse(body)

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> _LeaseResponse:
        with self.lock:
            self._lease_check()
            if self.lease is None:
                raise ApiException(status=404, reason="Not Found")
            return _LeaseResponse(self.lease)

    def create_namespaced_lease(
        self, namespace: str, body: dict[str, Any], **_: Any
    ) -> _LeaseResponse:
        with self.lock:
            self._lease_check()
            if self.lease is not None:
                raise ApiException(status=409, reason="AlreadyExists")
            return self._store_lease(body)

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> _LeaseResponse:
        with self.lock:
            self._lease_check()
            assert self.lease is not None
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            return self._store_lease(body)
