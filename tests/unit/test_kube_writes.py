"""The hot writes (workload patches, Events) go past the generated client, same request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from urllib3 import HTTPHeaderDict

from cloner.adapters.kube import KubeClient, PoolTransport, status_message
from cloner.errors import KubeError
from cloner.model.workloads import Container, Workload


class Response:
    """What urllib3 returns with ``preload_content=False``, as far as the adapter reads it."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.reason = {200: "OK", 201: "Created", 409: "Conflict", 429: "Too Many"}.get(status)
        self.data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.headers = HTTPHeaderDict(headers or {})
        self.released = False

    def getheaders(self) -> HTTPHeaderDict:
        return self.headers

    def release_conn(self) -> None:
        self.released = True


class Pool:
    """Stands in for the client's urllib3 pool: records each request, answers in turn."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []
        self.given: list[Response] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        self.sent.append({"method": method, "url": url, **kwargs})
        answer = self.answers.pop(0)
        self.given.append(answer)
        return answer


def kube_with(pool: Pool, token: str = "t0k3n") -> KubeClient:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:6443"
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api_client = client.ApiClient(configuration)
    return KubeClient(api_client, transport=PoolTransport(pool))


WEB = Workload(
    kind="Deployment",
    namespace="team-a",
    name="web",
    uid="u-1",
    resource_version="7",
    containers=(Container("app", "nginx:1.25", "containers", 0, "/spec/template/spec"),),
)


def test_a_workload_patch_is_one_json_patch_request_with_the_clients_auth() -> None:
    pool = Pool(Response(200, {"kind": "Deployment"}))
    kube = kube_with(pool)
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "x:1"}]

    kube.patch_workload(WEB, patch)

    (sent,) = pool.sent
    assert sent["method"] == "PATCH"
    assert sent["url"] == "https://127.0.0.1:6443/apis/apps/v1/namespaces/team-a/deployments/web"
    assert json.loads(sent["body"]) == patch
    assert sent["headers"]["Content-Type"] == "application/json-patch+json"
    # The answer is not read: protobuf first, JSON for a server without it.
    assert sent["headers"]["Accept"] == "application/vnd.kubernetes.protobuf, application/json"
    assert sent["headers"]["authorization"] == "Bearer t0k3n"
    assert sent["headers"]["User-Agent"].startswith("OpenAPI-Generator/")
    assert sent["preload_content"] is False
    assert pool.given[0].released
    assert kube.requests["success"] == 1


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("DaemonSet", "/apis/apps/v1/namespaces/team-a/daemonsets/web"),
        ("StatefulSet", "/apis/apps/v1/namespaces/team-a/statefulsets/web"),
        ("CronJob", "/apis/batch/v1/namespaces/team-a/cronjobs/web"),
    ],
)
def test_each_kind_is_patched_at_its_own_path(kind: str, path: str) -> None:
    pool = Pool(Response(200, {}))
    workload = Workload(kind, "team-a", "web", "u", "1", WEB.containers)
    kube_with(pool).patch_workload(workload, [{"op": "test", "path": "/x", "value": 1}])
    assert pool.sent[0]["url"].endswith(path)


def test_a_refreshed_token_is_sent_on_the_next_write() -> None:
    pool = Pool(Response(200, {}), Response(200, {}))
    kube = kube_with(pool)
    kube.patch_workload(WEB, [])
    kube._api_client.configuration.api_key["authorization"] = "n3w"
    kube.patch_workload(WEB, [])
    assert [s["headers"]["authorization"] for s in pool.sent] == ["Bearer t0k3n", "Bearer n3w"]


def test_a_conflict_becomes_a_kube_error_and_the_connection_goes_back() -> None:
    pool = Pool(Response(409, {"message": "the object has been modified"}))
    kube = kube_with(pool)
    with pytest.raises(KubeError) as caught:
        kube.patch_workload(WEB, [])
    assert caught.value.status == 409 and caught.value.conflict
    assert "the object has been modified" in str(caught.value)
    assert pool.given[0].released
    assert kube.requests["4xx"] == 1


def test_a_429_on_the_raw_path_waits_for_retry_after_and_retries() -> None:
    pool = Pool(Response(429, {}, {"Retry-After": "0"}), Response(201, {"metadata": {"name": "e"}}))
    kube = kube_with(pool)
    assert kube.create_event("team-a", {"kind": "Event"}) == "e"
    assert len(pool.sent) == 2
    assert all(answer.released for answer in pool.given)


def test_an_event_is_created_by_post_and_its_name_returned() -> None:
    pool = Pool(Response(201, {"metadata": {"name": "web.17f0"}}))
    body = {"kind": "Event", "metadata": {"generateName": "web."}, "reason": "Patched"}
    assert kube_with(pool).create_event("team-a", body) == "web.17f0"
    (sent,) = pool.sent
    assert sent["method"] == "POST"
    assert sent["url"] == "https://127.0.0.1:6443/api/v1/namespaces/team-a/events"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert json.loads(sent["body"]) == body


def test_an_event_answer_without_a_name_is_an_error() -> None:
    with pytest.raises(KubeError, match=r"no metadata\.name"):
        kube_with(Pool(Response(201, {"metadata": {}}))).create_event("team-a", {})


@pytest.mark.parametrize(
    ("patch", "content_type"),
    [
        ({"count": 2}, "application/strategic-merge-patch+json"),
        ([{"op": "replace", "path": "/count", "value": 2}], "application/json-patch+json"),
    ],
)
def test_an_event_patch_picks_its_content_type_by_shape(patch: Any, content_type: str) -> None:
    pool = Pool(Response(200, {}))
    kube_with(pool).patch_event("team-a", "web.17f0", patch)
    (sent,) = pool.sent
    assert sent["url"] == "https://127.0.0.1:6443/api/v1/namespaces/team-a/events/web.17f0"
    assert sent["headers"]["Content-Type"] == content_type
    assert json.loads(sent["body"]) == patch


def test_a_gone_event_is_a_404_kube_error() -> None:
    with pytest.raises(KubeError) as caught:
        kube_with(Pool(Response(404, {"message": "not found"}))).patch_event("a", "b", {})
    assert caught.value.status == 404


def test_an_unreachable_api_server_is_a_kube_error_with_status_0() -> None:
    class Down(Pool):
        def request(self, method: str, url: str, **kwargs: Any) -> Response:
            raise ConnectionRefusedError("connection refused")

    kube = kube_with(Down())
    with pytest.raises(KubeError) as caught:
        kube.patch_workload(WEB, [])
    assert caught.value.status == 0
    assert kube.requests["unreachable"] == 1


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (length < 128)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def protobuf_status(message: str, code: int) -> bytes:
    """A ``metav1.Status`` as the API server sends it in protobuf: envelope, Unknown, Status."""
    status = (
        _field(1, b"")  # metadata
        + _field(2, b"Failure")
        + _field(3, message.encode())
        + _field(4, b"Invalid")
        + bytes([6 << 3 | 0, code & 0x7F | 0x80, code >> 7])  # code, a varint
    )
    type_meta = _field(1, b"v1") + _field(2, b"Status")
    return b"k8s\x00" + _field(1, type_meta) + _field(2, status) + _field(4, b"")


def test_a_protobuf_error_answer_gives_its_message_and_status() -> None:
    body = protobuf_status("the server rejected our request due to an error in our request", 422)
    pool = Pool(Response(422, body))
    with pytest.raises(KubeError) as caught:
        kube_with(pool).patch_workload(WEB, [])
    assert caught.value.status == 422 and caught.value.conflict
    assert str(caught.value) == (
        "patch Deployment team-a/web: 422 the server rejected our request due to an error "
        "in our request"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"kind": "Status", "message": "not found"}', "not found"),
        ('{"message": "as text"}', "as text"),
        (b"k8s\x00" + _field(2, _field(3, b"short")), "short"),
        (b"k8s\x00" + _field(2, _field(3, b"short"))[:-2], ""),  # truncated
        (b"k8s\x00\x0f", ""),  # an unknown wire type
        (b"<html>bad gateway</html>", ""),
        (b"[1, 2]", ""),
        (None, ""),
    ],
)
def test_status_message_reads_json_and_protobuf_and_nothing_else(body: Any, message: str) -> None:
    assert status_message(body) == message


def deployment_page(names: list[str], token: str) -> dict[str, Any]:
    items = [
        {
            "metadata": {"name": n, "namespace": "team-a", "uid": f"u-{n}", "resourceVersion": "3"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}},
            "status": {"replicas": 1},
        }
        for n in names
    ]
    return {"metadata": {"continue": token}, "items": items}


def test_a_workload_list_is_paged_through_the_transport_with_the_clients_auth() -> None:
    pool = Pool(
        Response(200, deployment_page(["web", "api"], "next/page=")),
        Response(200, deployment_page(["db"], "")),
    )
    kube = KubeClient(kube_with(pool)._api_client, page_size=2, transport=PoolTransport(pool))

    listed = list(kube.list_workloads("Deployment", ["kube-system", "ops"]))

    assert [w.name for w in listed] == ["web", "api", "db"]
    assert listed[0].containers[0].image == "nginx:1" and listed[0].resource_version == "3"
    first, second = pool.sent
    selector = "fieldSelector=metadata.namespace%21%3Dkube-system%2Cmetadata.namespace%21%3Dops"
    assert first["method"] == "GET"
    assert first["url"] == f"https://127.0.0.1:6443/apis/apps/v1/deployments?limit=2&{selector}"
    assert second["url"] == (
        "https://127.0.0.1:6443/apis/apps/v1/deployments"
        f"?limit=2&continue=next%2Fpage%3D&{selector}"
    )
    assert first["headers"]["authorization"] == "Bearer t0k3n"
    assert all(answer.released for answer in pool.given)


def test_a_list_answer_outside_2xx_is_a_kube_error_with_its_status() -> None:
    pool = Pool(Response(403, {"kind": "Status", "message": "forbidden"}))
    kube = kube_with(pool)
    with pytest.raises(KubeError) as raised:
        list(kube.list_workloads("StatefulSet"))
    assert raised.value.status == 403
    assert pool.sent[0]["url"] == "https://127.0.0.1:6443/apis/apps/v1/statefulsets?limit=500"


def listing(kube: KubeClient) -> dict[str, Workload]:
    return {w.name: w for w in kube.list_workloads("Deployment")}


def test_an_unchanged_object_keeps_its_snapshot_and_a_changed_one_gets_a_new_one() -> None:
    first = deployment_page(["web", "api", "db"], "")
    second = deployment_page(["web", "api"], "")  # db deleted
    second["items"][1]["metadata"]["resourceVersion"] = "4"  # api changed...
    second["items"][1]["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
    third = deployment_page(["web", "api", "db"], "")  # db recreated (same uid here)
    pool = Pool(Response(200, first), Response(200, second), Response(200, third))
    kube = KubeClient(kube_with(pool)._api_client, transport=PoolTransport(pool))

    before = listing(kube)
    after = listing(kube)

    assert after["web"] is before["web"]  # same uid and resourceVersion: the same snapshot
    assert after["api"] is not before["api"]
    assert after["api"].containers[0].image == "nginx:2" and after["api"].resource_version == "4"
    assert set(after) == {"web", "api"}
    again = listing(kube)
    assert again["db"] is not before["db"]  # dropped with the list that did not return it
    assert again["api"].resource_version == "3"  # the object's own version, not a kept one


def test_a_list_that_fails_midway_keeps_the_last_complete_lists_snapshots() -> None:
    pool = Pool(
        Response(200, deployment_page(["web"], "")),
        Response(200, deployment_page(["web"], "more")),
        Response(403, {"kind": "Status", "message": "forbidden"}),
        Response(200, deployment_page(["web"], "")),
    )
    kube = KubeClient(kube_with(pool)._api_client, transport=PoolTransport(pool))
    before = listing(kube)
    with pytest.raises(KubeError):
        listing(kube)
    assert listing(kube)["web"] is before["web"]
