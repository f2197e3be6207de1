"""Kubernetes adapter: workloads, namespaces, Secrets and ServiceAccounts.

With ``leader`` (Leases), the only module that imports ``kubernetes``.

Called by ``reconcile`` through the ``KubeAPI`` protocol and built by
``controller.py``. It lists workloads (paginated, all namespaces, one list
call per kind per page) and sends JSON patches. Responses are read as raw JSON
(``_preload_content=False``), decoded with ``orjson`` and turned into
``workloads.Workload`` snapshots, which is much cheaper than the client's model
deserialization on large clusters (``orjson`` decodes a list page of 500
Deployments about twice as fast as ``json``). Every ``ApiException`` and
transport error becomes a ``KubeError``; no library exception leaves this
module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote, urlencode

import certifi
import orjson
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from cloner import collector
from cloner.adapters.curl import Answer, CurlSettings, CurlTransport
from cloner.errors import ConfigError, KubeError
from cloner.model import wire
from cloner.model.proxy import ProxyConfig
from cloner.model.pullsecrets import SecretInfo, ServiceAccount
from cloner.model.workloads import (
    UNPATCHABLE_KINDS,
    JsonPatch,
    KindInfo,
    NamespaceInfo,
    Workload,
    WorkloadKind,
    kind_info,
)

log = logging.getLogger(__name__)

#: (connect, read) timeout in seconds for every API call.
REQUEST_TIMEOUT = (10.0, 60.0)
#: Tries of a write the API server answered 429 (API Priority and Fairness).
THROTTLE_TRIES = 4
#: Seconds waited after a 429 without Retry-After, doubled per try.
THROTTLE_BACKOFF = 0.5


def load_api_client(
    kubeconfig: Path | None = None, proxy: ProxyConfig | None = None
) -> client.ApiClient:
    """Build an API client, with controller-runtime's precedence.

    The proxy to the API server is ``proxy``'s decision for its address
    (``model.proxy``: ``HTTPS_PROXY`` unless ``NO_PROXY`` covers it), unless
    the kubeconfig's cluster names a ``proxy-url``, which wins. In a cluster
    the API server's service address (``KUBERNETES_SERVICE_HOST``) is always
    reached directly: it is inside the cluster, where no corporate proxy is.

    Args:
        kubeconfig: an explicit kubeconfig file; when None, the in-cluster
            ServiceAccount is used if present, else ``KUBECONFIG`` or
            ``~/.kube/config``.
        proxy: the proxy settings; default none.

    Returns:
        A configured ``kubernetes.client.ApiClient``.

    Raises:
        ConfigError: no usable configuration was found (names the source).
    """
    # proxy="": the client reads no proxy variable itself (the host setter of
    # kubernetes>=35 would otherwise pick HTTPS_PROXY again for each host).
    configuration = client.Configuration(proxy="")
    in_cluster = False
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
                in_cluster = True
            except ConfigException:
                config.load_kube_config(client_configuration=configuration)
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        source = str(kubeconfig) if kubeconfig else "kubeconfig"
        raise ConfigError(source, f"no usable Kubernetes configuration: {exc}") from None
    configuration.no_proxy = None
    if not configuration.proxy:
        decided = None if in_cluster else (proxy or ProxyConfig()).proxy_for(configuration.host)
        configuration.proxy = decided
    return client.ApiClient(configuration)


def translate_error(exc: Exception, what: str) -> KubeError:
    """Turn a client or transport exception into a ``KubeError`` naming the call.

    Args:
        exc: an ``ApiException``, a urllib3 or OS error, or a ``ValueError``
            from an unreadable response body.
        what: the call, for example ``list deployments``.
    """
    if isinstance(exc, ApiException):
        message = status_message(exc.body) or exc.reason or ""
        return KubeError(exc.status or 0, f"{what}: {exc.status} {message}")
    if isinstance(exc, ValueError):
        return KubeError(0, f"{what}: unreadable response: {exc}")
    return KubeError(0, f"{what}: API server unreachable: {type(exc).__name__}: {exc}")


def status_message(body: bytes | str | None) -> str:
    """The ``message`` of a ``metav1.Status`` error body, JSON or protobuf; "" if none.

    A protobuf body is the Kubernetes envelope (``k8s\\0`` then a
    ``runtime.Unknown`` whose field 2 holds the ``Status``, whose field 3 is
    the message: ``apimachinery/pkg/runtime/generated.proto``,
    ``apis/meta/v1/generated.proto``).
    """
    if not body:
        return ""
    if isinstance(body, str):
        body = body.encode("utf-8", "replace")
    if body.startswith(PROTOBUF_MAGIC):
        raw = _protobuf_field(body[len(PROTOBUF_MAGIC) :], 2)
        message = _protobuf_field(raw or b"", 3)
        return (message or b"").decode("utf-8", "replace")
    try:
        decoded = json.loads(body)
    except ValueError:
        return ""
    return str(decoded.get("message") or "") if isinstance(decoded, dict) else ""


def _protobuf_field(data: bytes, number: int) -> bytes | None:
    """The first length-delimited field ``number`` of a protobuf message, or None.

    Walks the wire format (varint, 64-bit, length-delimited and 32-bit
    fields); a truncated or malformed message gives None.
    """
    fixed = {1: 8, 5: 4}  # wire type -> bytes
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            wire = key & 7
            if wire == 0:
                _, position = _varint(data, position)
            elif wire in fixed:
                position += fixed[wire]
            elif wire == 2:
                length, position = _varint(data, position)
                if position + length > len(data):
                    return None
                if key >> 3 == number:
                    return data[position : position + length]
                position += length
            else:
                return None
    except ValueError:
        return None
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """A protobuf varint at ``position``: ``(value, next position)``. Raises ``ValueError``."""
    value = shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("truncated varint")


_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/strategic-merge-patch+json"
JSON = "application/json"
# Protobuf answers cost the API server less to encode than JSON (measured
# 2.85 against 3.03 ms of its CPU per Deployment patch); JSON where a
# resource has no protobuf form. Only for answers whose body is not used.
PROTOBUF_OR_JSON = "application/vnd.kubernetes.protobuf, application/json"
PROTOBUF_MAGIC = b"k8s\x00"


class Transport(Protocol):
    """Sends one request and reads its whole answer (``CurlTransport``, ``PoolTransport``)."""

    def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Answer:
        """The answer, whatever its status; raises ``OSError`` or a urllib3 error for none."""
        ...


class PoolTransport:
    """Requests through the generated client's own urllib3 pool (its proxy, its TLS options).

    Args:
        pool: ``ApiClient.rest_client.pool_manager`` (a urllib3 ``PoolManager``
            or ``ProxyManager``).
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._timeout = urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1])

    def request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Answer:
        """Send through the pool; the connection goes back to it. Raises urllib3 errors, OSError."""
        response = self._pool.request(
            method, url, body=body, headers=headers, timeout=self._timeout, preload_content=False
        )
        data = read_body(response)
        if 200 <= response.status <= 299:
            return Answer(response.status, "", [], data)  # as CurlTransport: no headers kept
        return Answer(response.status, response.reason or "", list(response.headers.items()), data)


def curl_settings(configuration: client.Configuration) -> CurlSettings | None:
    """How ``CurlTransport`` reaches the API server as the client would, or None if it cannot.

    The client's urllib3 pool (``kubernetes.client.rest.RESTClientObject``)
    verifies the peer against ``ssl_ca_cert`` (``certifi``'s roots when
    unset) unless ``verify_ssl`` is off, and presents ``cert_file`` and
    ``key_file``. Options libcurl is not given here (a proxy, a TLS server
    name or host name to assert, urllib3 retries) keep the urllib3 path.

    Args:
        configuration: the client's ``kubernetes.client.Configuration``.

    Returns:
        The settings, or None for the urllib3 path.
    """
    kept = ("proxy_headers", "tls_server_name", "assert_hostname", "retries")
    if any(getattr(configuration, name, None) for name in kept):
        return None
    if not str(configuration.host).startswith(("https://", "http://")):
        return None
    return CurlSettings(
        ca_file=configuration.ssl_ca_cert or certifi.where(),
        verify=bool(configuration.verify_ssl),
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        connect_timeout=REQUEST_TIMEOUT[0],
        timeout=REQUEST_TIMEOUT[0] + REQUEST_TIMEOUT[1],
        proxy=configuration.proxy or "",
    )


class KubeClient:
    """Workload listing and patching against a real API server.

    Args:
        api_client: from ``load_api_client``.
        page_size: the ``limit`` of each list call (items per page).
        transport: sends the requests made past the generated client
            (patches, Events, reads by name); default ``CurlTransport`` when
            ``curl_settings`` allows it, else ``PoolTransport`` on the
            client's pool.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        page_size: int = 500,
        transport: Transport | None = None,
    ) -> None:
        self._api_client = api_client
        if transport is None:
            settings = curl_settings(api_client.configuration)
            transport = (
                CurlTransport(settings)
                if settings is not None
                else PoolTransport(api_client.rest_client.pool_manager)
            )
        self.transport = transport
        self._apps = client.AppsV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._version = client.VersionApi(api_client)
        #: requests so far by outcome: success, 4xx, 5xx, unreachable (for metrics)
        self.requests: Counter[str] = Counter()
        self._paused_until = 0.0  # monotonic: writes wait after a 429 (shared by threads)
        self._pause_lock = threading.Lock()
        self._page_size = page_size
        #: (kind, field selector) -> uid -> snapshot, from the last complete list of each
        self._snapshots: dict[tuple[str, str | None], dict[str, Workload]] = {}
        # The generated client's API object of each group/version (KindInfo).
        self._groups: dict[str, Any] = {
            "apps/v1": self._apps,
            "batch/v1": self._batch,
            "v1": self._core,
        }

    def reachable(self, timeout: float = 3.0) -> bool:
        """True when the API server answers ``/version`` within ``timeout`` seconds."""
        try:
            self._version.get_code(_request_timeout=(timeout, timeout))
        except (ApiException, *_TRANSPORT_ERRORS, ValueError) as exc:
            self._failed(exc, "get /version")
            return False
        self.requests["success"] += 1
        return True

    def _throttled(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Make a write, waiting out the API server's "too many requests".

        A 429 (API Priority and Fairness rejecting the request) pauses every
        write of this client, on every thread, for its ``Retry-After`` (or
        ``THROTTLE_BACKOFF`` doubled per try), then the write is tried again,
        ``THROTTLE_TRIES`` times in all; the last 429 is raised.
        """
        for attempt in range(THROTTLE_TRIES):
            with self._pause_lock:
                wait = self._paused_until - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return call(*args, **kwargs)
            except ApiException as exc:
                if exc.status != 429 or attempt == THROTTLE_TRIES - 1:
                    raise
                delay = _retry_after(exc) or THROTTLE_BACKOFF * 2**attempt
                self.requests["4xx"] += 1
                with self._pause_lock:
                    first = self._paused_until <= time.monotonic()
                    self._paused_until = max(self._paused_until, time.monotonic() + delay)
                if first:
                    log.warning("API server: too many requests; pausing writes for %.1fs", delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_json(
        self, method: str, path: str, body: Any, content_type: str = JSON, accept: str = JSON
    ) -> bytes:
        """One write with the body serialized by ``orjson``, past the generated client.

        The generated methods validate every parameter, sanitize the body
        and serialize it with ``json`` on each call: 0.04-0.14 ms of the
        0.8-1.0 ms of controller CPU a write cost through urllib3
        (bench/kube_writes.py; the rest was urllib3, http.client and TLS).
        This sends the same request (URL, ``Accept``, ``Content-Type``,
        ``User-Agent``, the ``authorization`` header the client's
        configuration gives, refreshed tokens included) through
        ``self.transport``: libcurl with the client's TLS files, or the
        client's own urllib3 pool (``curl_settings``).

        Args:
            method: ``PATCH``, ``POST``, ``PUT`` (or ``GET``, with no body).
            path: the API path, for example
                ``/apis/apps/v1/namespaces/default/deployments/web`` (already
                quoted, with its query if any).
            body: JSON-serializable object (dict or list); None sends none.
            content_type: the request's ``Content-Type``.
            accept: the request's ``Accept``.

        Returns:
            The response body (bytes); the connection stays open for the next.

        Raises:
            ApiException: the API server answered outside 2xx (``status``,
                ``headers`` and ``body`` set, as the generated client raises).
            urllib3.exceptions.HTTPError, OSError (``curl.CurlError``):
                transport errors.
        """
        api = self._api_client
        headers = {**api.default_headers, "Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        api.update_params_for_auth(headers, [], ["BearerToken"], path, method, None)
        answer = self.transport.request(
            method,
            api.configuration.host + path,
            None if body is None else orjson.dumps(body),
            headers,
        )
        if not 200 <= answer.status <= 299:
            # What ApiException(http_resp=...) sets, without the deprecated getheaders().
            error = ApiException(status=answer.status, reason=answer.reason)
            error.body, error.headers = answer.data, urllib3.HTTPHeaderDict(answer.headers)
            raise error
        return answer.data

    def _failed(self, exc: Exception, what: str) -> KubeError:
        """Count a failed request by outcome and translate it."""
        error = translate_error(exc, what)
        status = error.status
        self.requests[f"{status // 100}xx" if status else "unreachable"] += 1
        return error

    def list_workloads(
        self,
        kind: str,
        excluded_namespaces: Iterable[str] = (),
        namespace: str | None = None,
    ) -> Iterator[Workload]:
        """Yield every workload of one kind as a snapshot, for a cycle and for ``revert``.

        Pages through the all-namespaces list with ``limit``/``continue``;
        the exclusions (and ``namespace``) are sent as a field selector
        (``metadata.namespace!=NS``, ``metadata.namespace=NS``) so the API
        server does not send what would be dropped.

        Args:
            kind: one of ``workloads.KINDS``.
            excluded_namespaces: namespaces to leave out.
            namespace: only this namespace; None for all.

        Raises:
            ValueError: unknown kind.
            KubeError: a list call failed.
        """
        info = kind_info(kind)
        if not info.patchable:
            raise ValueError(f"{kind} is not a reconciled workload kind")
        only = [f"metadata.namespace={namespace}"] if namespace else []
        selector = ",".join([*only, *_excluding(excluded_namespaces)]) or None
        pages = self._paginate(self._lister(info), f"list {info.plural}", selector, _workload_page)
        # An object whose uid and resourceVersion are those of the last
        # complete list is the same object (the API server gives every change
        # a new resourceVersion): its snapshot is used again, not rebuilt.
        known = self._snapshots.get((info.kind, selector), {})
        listed: dict[str, Workload] = {}
        for item in pages:
            version = item.metadata.resourceVersion if item.metadata else None
            snapshot = known.get(item.uid)
            if snapshot is None or not version or snapshot.resource_version != version:
                snapshot = Workload.from_item(kind, item)
            if snapshot.uid:
                listed[snapshot.uid] = snapshot
            yield snapshot
        # Complete: what it did not return is gone (or out of the selector).
        self._snapshots[(info.kind, selector)] = listed

    def list_unpatchable(self, excluded_namespaces: Iterable[str]) -> Iterator[Workload]:
        """Jobs and bare Pods (no controller owner), to report the public images they use.

        Their images cannot be changed (``workloads.UNPATCHABLE_KINDS``);
        Pods that a workload controls are left out, since their workload is
        reconciled. Paginated, excluded namespaces left out by field selector.

        Raises:
            KubeError: a list call failed.
        """
        selector = ",".join(_excluding(excluded_namespaces)) or None
        for kind in UNPATCHABLE_KINDS:
            info = kind_info(kind)
            pages = self._paginate(
                self._lister(info), f"list {info.plural}", selector, _workload_page
            )
            for item in pages:
                workload = Workload.from_item(kind, item)
                if kind == WorkloadKind.POD and workload.controller_owner is not None:
                    continue
                yield workload

    def get_workload(self, kind: str, namespace: str, name: str) -> Workload | None:
        """The workload as it is now, or None when it is gone.

        Raises:
            KubeError: the read failed.
            ValueError: unknown kind.
        """
        info = kind_info(kind)
        read = getattr(self._groups[info.group_version], f"read_namespaced_{info.snake}")
        obj = self._read(read, f"get {info.plural} {namespace}/{name}", name, namespace)
        return None if obj is None else Workload.from_api(kind, obj)

    def _lister(self, info: KindInfo) -> Callable[..., Any]:
        """The list-for-all-namespaces call of a kind, sent through ``self.transport``.

        The same request as the generated client's
        ``list_<kind>_for_all_namespaces`` (path, ``limit``, ``continue``,
        ``fieldSelector``, headers and token, as ``_send_json`` sends them),
        with the keyword arguments ``_paginate`` passes; the answer's body is
        returned as ``read_body`` reads it. Through libcurl a 50,000-workload
        list (about 100 pages, 128 MB) costs the controller less CPU than
        through urllib3 and ``http.client`` (bench/scale.py, issue 31).

        Raises:
            ApiException: the API server answered outside 2xx.
            urllib3.exceptions.HTTPError, OSError: transport errors.
        """
        root = "/api" if "/" not in info.group_version else "/apis"
        collection = f"{root}/{info.group_version}/{info.plural}"

        def call(limit: int, _continue: str | None, field_selector: str | None, **_: Any) -> _Read:
            query = {"limit": str(limit)}
            if _continue:
                query["continue"] = _continue
            if field_selector:
                query["fieldSelector"] = field_selector
            return _Read(self._send_json("GET", f"{collection}?{urlencode(query)}", None))

        return call

    def list_namespaces(self) -> Iterator[NamespaceInfo]:
        """Yield every namespace with its labels and annotations (paginated).

        Raises:
            KubeError: a list call failed.
        """
        pages = self._paginate(self._core.list_namespace, "list namespaces", None, _json_page)
        for item in pages:
            yield NamespaceInfo.from_api(item)

    def _paginate(
        self,
        call: Callable[..., Any],
        what: str,
        field_selector: str | None,
        decode: Callable[[bytes], _Page[T]],
    ) -> Iterator[T]:
        """Items of a list call, page by page (``limit``/``continue``).

        Each page's body is decoded by ``decode`` (``_json_page``: dicts;
        ``_workload_page``: ``wire.WorkloadItem``). If the continue token
        expires (410 Gone) mid-list, the list starts again once; items
        already yielded (by uid) are not yielded twice.

        Raises:
            KubeError: a call failed, or a page could not be decoded.
        """
        restarted = False
        token: str | None = None
        seen: set[str] = set()
        while True:
            try:
                response = call(
                    limit=self._page_size,
                    _continue=token,
                    field_selector=field_selector,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
                page = decode(read_body(response))
                self.requests["success"] += 1
            except ApiException as exc:
                if exc.status == 410 and token and not restarted:
                    log.info("%s: continue token expired, listing again", what)
                    restarted, token = True, None
                    continue
                raise self._failed(exc, what) from None
            except (*_TRANSPORT_ERRORS, ValueError) as exc:
                raise self._failed(exc, what) from None
            for uid, item in page.items:
                if uid in seen:  # a restarted list repeats items
                    continue
                seen.add(uid)
                yield item
            token = page.token
            if not token:
                return

    def patch_workload(self, workload: Workload, patch: JsonPatch) -> None:
        """Apply a JSON patch (RFC 6902) to a workload.

        Args:
            workload: the snapshot the patch was planned from.
            patch: the operations (a list, so the client sends
                ``application/json-patch+json``).

        Raises:
            KubeError: refused; ``conflict`` is True when a ``test`` failed or
                the object changed (422/409), which means a concurrent edit.
        """
        path = kind_info(workload.kind).path(
            quote(workload.namespace, safe=""), quote(workload.name, safe="")
        )
        try:
            # The answer is not read: protobuf, cheaper for the API server.
            self._throttled(self._send_json, "PATCH", path, patch, JSON_PATCH, PROTOBUF_OR_JSON)
            self.requests["success"] += 1
        except (ApiException, *_TRANSPORT_ERRORS) as exc:
            raise self._failed(exc, f"patch {workload.key}") from None

    # The rollout guard: what a namespace with a pending switch holds -------

    def list_namespaced(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        """Every object of one resource in one namespace, as the API returns it (JSON dicts).

        For the rollout guard, which reads only namespaces with a switch
        still rolling out: one paginated list per resource and namespace,
        never one request per workload.

        Args:
            resource: ``pods``, ``events``, ``replicasets`` or a workload
                kind's plural (``deployments``, ``daemonsets``,
                ``statefulsets``, ``cronjobs``), with their ``status``.
            namespace: the namespace.

        Raises:
            ValueError: unknown resource.
            KubeError: a list call failed.
        """
        calls: dict[str, Callable[..., Any]] = {
            "pods": self._core.list_namespaced_pod,
            "events": self._core.list_namespaced_event,
            "replicasets": self._apps.list_namespaced_replica_set,
            "deployments": self._apps.list_namespaced_deployment,
            "daemonsets": self._apps.list_namespaced_daemon_set,
            "statefulsets": self._apps.list_namespaced_stateful_set,
            "cronjobs": self._batch.list_namespaced_cron_job,
        }
        if resource not in calls:
            raise ValueError(f"unknown resource {resource!r}")
        call = calls[resource]

        def namespaced(**kwargs: Any) -> Any:
            return call(namespace, **kwargs)

        return list(self._paginate(namespaced, f"list {resource} in {namespace}", None, _json_page))

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete one pod, only if it is still the one read (``preconditions.uid``).

        Used for a StatefulSet's forced rollback (Kubernetes docs,
        StatefulSet "Forced rollback"). A pod already gone is not an error.

        Raises:
            KubeError: refused (409 when the uid no longer matches).
        """
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        try:
            self._throttled(self._send_json, "DELETE", path, body)
            self.requests["success"] += 1
        except ApiException as exc:
            if exc.status == 404:
                self.requests["4xx"] += 1
                return
            raise self._failed(exc, f"delete pod {namespace}/{name}") from None
        except _TRANSPORT_ERRORS as exc:
            raise self._failed(exc, f"delete pod {namespace}/{name}") from None

    # Pull secrets and ServiceAccounts ----------------------------------------

    def _read(self, call: Callable[..., Any], what: str, *args: str) -> dict[str, Any] | None:
        """GET an object as raw JSON through a generated client call; None on 404."""
        return self._read_body(
            lambda: read_body(
                call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
            ),
            what,
        )

    def _read_body(self, fetch: Callable[[], bytes], what: str) -> dict[str, Any] | None:
        """Parse what ``fetch`` read as a JSON object; None on 404. Raises ``KubeError``."""
        try:
            obj = dict(orjson.loads(fetch()))
            self.requests["success"] += 1
            return obj
        except ApiException as exc:
            if exc.status == 404:
                self.requests["4xx"] += 1
                return None
            raise self._failed(exc, what) from None
        except (*_TRANSPORT_ERRORS, ValueError) as exc:
            raise self._failed(exc, what) from None

    def _write(self, call: Callable[..., Any], what: str, *args: Any) -> bytes:
        """Send a write; returns the answer's body (JSON bytes, unparsed)."""
        try:
            body = read_body(
                self._throttled(
                    call, *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            )
            self.requests["success"] += 1
            return body
        except (ApiException, *_TRANSPORT_ERRORS) as exc:
            raise self._failed(exc, what) from None

    # Secrets and ConfigMaps: read, create, update (PUT) by name ------------

    def _named(self, resource: str) -> tuple[Callable[..., Any], ...]:
        """The read, create and replace calls of a namespaced core/v1 resource."""
        api = self._core
        if resource == "secret":
            return (
                api.read_namespaced_secret,
                api.create_namespaced_secret,
                api.replace_namespaced_secret,
            )
        return (
            api.read_namespaced_config_map,
            api.create_namespaced_config_map,
            api.replace_namespaced_config_map,
        )

    def _get_named(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = self._named(resource)[0]
        return self._read(read, f"get {resource} {namespace}/{name}", name, namespace)

    def _create_named(self, resource: str, namespace: str, body: dict[str, Any]) -> None:
        create = self._named(resource)[1]
        name = body["metadata"]["name"]
        self._write(create, f"create {resource} {namespace}/{name}", namespace, body)

    def _replace_named(self, resource: str, namespace: str, body: dict[str, Any]) -> None:
        replace = self._named(resource)[2]
        name = body["metadata"]["name"]
        self._write(replace, f"update {resource} {namespace}/{name}", name, namespace, body)

    def get_secret(self, namespace: str, name: str) -> SecretInfo | None:
        """The Secret's snapshot, or None when there is none. Raises ``KubeError``."""
        found = self._get_named("secret", namespace, name)
        return None if found is None else SecretInfo.from_api(found)

    def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a Secret. Raises ``KubeError`` (409 when one appeared meanwhile)."""
        self._create_named("secret", namespace, body)

    def replace_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Update (PUT) a Secret; ``metadata.resourceVersion`` is the precondition.

        Raises:
            KubeError: 409 when it changed since it was read.
        """
        self._replace_named("secret", namespace, body)

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap as JSON, or None when there is none. Raises ``KubeError``."""
        return self._get_named("configmap", namespace, name)

    def create_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap. Raises ``KubeError`` (409 when one exists)."""
        self._create_named("configmap", namespace, body)

    def replace_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Update (PUT) a ConfigMap. Raises ``KubeError`` (404 when it is gone)."""
        self._replace_named("configmap", namespace, body)

    def node_platforms(self) -> list[str]:
        """``os/architecture`` of every Node (``status.nodeInfo``), paginated.

        Raises:
            KubeError: the list failed.
        """
        platforms = []
        for item in self._paginate(self._core.list_node, "list nodes", None, _json_page):
            info = (item.get("status") or {}).get("nodeInfo") or {}
            os, arch = info.get("operatingSystem"), info.get("architecture")
            if os and arch:
                platforms.append(f"{os}/{arch}")
        return platforms

    def get_service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        """The ServiceAccount's snapshot, or None when there is none. Raises ``KubeError``."""
        found = self._read(
            self._core.read_namespaced_service_account,
            f"get serviceaccount {namespace}/{name}",
            name,
            namespace,
        )
        return None if found is None else ServiceAccount.from_api(found)

    def patch_service_account(self, namespace: str, name: str, patch: JsonPatch) -> str:
        """Apply a JSON patch to a ServiceAccount.

        Returns:
            The ``metadata.resourceVersion`` the patch produced ("" when the
            answer names none).

        Raises:
            KubeError: refused or unreachable.
        """
        what = f"patch serviceaccount {namespace}/{name}"
        body = self._write(
            self._core.patch_namespaced_service_account, what, name, namespace, patch
        )
        try:
            return str(orjson.loads(body).get("metadata", {}).get("resourceVersion", ""))
        except (ValueError, AttributeError):
            return ""

    def service_account_at_least(
        self, namespace: str, name: str, resource_version: str
    ) -> ServiceAccount | None:
        """The ServiceAccount as the API server's cache holds it, at ``resource_version`` or later.

        A GET with ``resourceVersion`` set is served from the API server's
        watch cache, which waits until it has caught up with that version
        ("not older than": Kubernetes API concepts, "Semantics for get and
        list"). Admission plugins read informers fed by that same cache: the
        ServiceAccount admission plugin copies ``imagePullSecrets`` into new
        pods from one. Needs only ``get`` on serviceaccounts.

        Returns:
            The ServiceAccount's snapshot, or None when there is none.

        Raises:
            KubeError: refused, unreachable, or the cache did not catch up
                in the API server's wait (504 "Too large resource version").
        """
        what = f"get serviceaccount {namespace}/{name} at version {resource_version}"
        path = (
            f"/api/v1/namespaces/{quote(namespace, safe='')}/serviceaccounts/"
            f"{quote(name, safe='')}?resourceVersion={quote(resource_version, safe='')}"
        )
        found = self._read_body(lambda: self._send_json("GET", path, None), what)
        return None if found is None else ServiceAccount.from_api(found)

    # Events ------------------------------------------------------------------

    def create_event(self, namespace: str, body: dict[str, Any]) -> str:
        """Create a core/v1 Event (``ops.events.EventRecorder``).

        Args:
            namespace: the Event's namespace (the involved object's).
            body: the Event as JSON; usually named by ``metadata.generateName``.

        Returns:
            The ``metadata.name`` the API server gave it.

        Raises:
            KubeError: refused or unreachable, or the answer names no Event.
        """
        what = f"create event in {namespace}"
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        try:
            created = orjson.loads(self._throttled(self._send_json, "POST", path, body, JSON))
        except (ApiException, *_TRANSPORT_ERRORS, ValueError) as exc:
            raise self._failed(exc, what) from None
        self.requests["success"] += 1
        meta = created.get("metadata") if isinstance(created, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise translate_error(ValueError("no metadata.name in the created Event"), what)
        return name

    def patch_event(self, namespace: str, name: str, patch: JsonPatch | dict[str, Any]) -> None:
        """Patch a core/v1 Event, for example its ``count`` and ``lastTimestamp``.

        Args:
            namespace, name: the Event.
            patch: a dict (sent as a strategic merge patch) or a list of
                operations (sent as a JSON patch, RFC 6902).

        Raises:
            KubeError: refused or unreachable; status 404 when the Event is gone
                (expired after the API server's ``--event-ttl``, or deleted).
        """
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events/{quote(name, safe='')}"
        content_type = JSON_PATCH if isinstance(patch, list) else MERGE_PATCH
        try:
            self._throttled(self._send_json, "PATCH", path, patch, content_type)
            self.requests["success"] += 1
        except (ApiException, *_TRANSPORT_ERRORS) as exc:
            raise self._failed(exc, f"patch event {namespace}/{name}") from None


def _excluding(namespaces: Iterable[str]) -> list[str]:
    """Field selector terms leaving out each namespace, in a stable order."""
    return [f"metadata.namespace!={ns}" for ns in sorted(namespaces)]


def _retry_after(exc: ApiException) -> float | None:
    """Seconds of a ``Retry-After`` header in seconds (the API server's form), or None."""
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def decode_large(body: bytes) -> Any:
    """``orjson.loads`` of a large body (a list page) with the cyclic garbage collector paused.

    Decoding a page of 500 objects creates some 10^5 dicts and lists; with
    the collector on, each few hundred of them start a collection that also
    walks the objects already alive, so the decode took 16-23 ms instead of
    8-9 ms per page (bench: a 950 KB page, 300,000 live objects). The
    decoded objects hold no reference cycles (``collector.paused``).

    Args:
        body: the JSON bytes.

    Returns:
        The decoded value.

    Raises:
        orjson.JSONDecodeError: not JSON (a ``ValueError``).
    """
    with collector.paused():
        return orjson.loads(body)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Read:
    """A body already read, as ``read_body`` reads a raw response (no connection to give back)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class _Page(Generic[T]):
    """A decoded list page: ``(uid, item)`` of each item, and the continue token (None: last)."""

    items: list[tuple[str, T]]
    token: str | None


def _json_page(body: bytes) -> _Page[dict[str, Any]]:
    """A list page as JSON dicts (``decode_large``).

    Raises:
        ValueError: not JSON, or not a JSON object.
    """
    page = decode_large(body)
    if not isinstance(page, dict):
        raise ValueError(f"a list answer is a JSON object, not {type(page).__name__}")
    items = [
        ((item.get("metadata") or {}).get("uid", ""), item)
        for item in page.get("items") or ()
        if isinstance(item, dict)
    ]
    return _Page(items, (page.get("metadata") or {}).get("continue") or None)


def _workload_page(body: bytes) -> _Page[wire.WorkloadItem]:
    """A workload list page as the fields a snapshot reads (``wire.decode_page``).

    Raises:
        ValueError: not JSON, or a field of the wrong type (``msgspec.DecodeError``).
    """
    with collector.paused():
        page = wire.decode_page(body)
        return _Page([(item.uid, item) for item in page.items or ()], page.token)


def read_body(response: Any) -> bytes:
    """Read a raw (``_preload_content=False``) response and give its connection back.

    Without ``release_conn`` every such request keeps its connection out of
    urllib3's pool, so the next request opens a new TLS connection: one
    handshake per write, on both sides (measured: bench/scale.py).
    """
    try:
        return bytes(response.data)
    finally:
        release = getattr(response, "release_conn", None)
        if release is not None:
            release()
