"""Paginated lists: every item once and in order, one restart on an expired token."""

from __future__ import annotations

import gc
import json
import threading
from typing import Any
from unittest import mock

import orjson
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cloner.adapters import kube as kube_module
from cloner.adapters.kube import KubeClient, _json_page, decode_large
from cloner.errors import KubeError


class Body:
    """A raw (``_preload_content=False``) answer as ``read_body`` reads it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.released = False

    def release_conn(self) -> None:
        self.released = True


class Gone:
    """What ``ApiException`` reads from a 410 answer."""

    status = 410
    reason = "Gone"
    data = b'{"message": "continue token expired"}'
    headers: dict[str, str] = {}  # noqa: RUF012 (read only)

    def getheaders(self) -> dict[str, str]:
        return self.headers


def page(uids: list[str], token: str | None) -> bytes:
    items = [{"metadata": {"uid": uid, "name": uid}} for uid in uids]
    return json.dumps({"metadata": {"continue": token or ""}, "items": items}).encode()


class Lister:
    """A list call over fixed pages keyed by continue token; records the tokens asked for."""

    def __init__(self, pages: dict[str | None, Any]) -> None:
        self.pages = pages
        self.asked: list[str | None] = []
        self.answers: list[Body] = []
        self.lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> Body:
        token = kwargs["_continue"]
        assert kwargs["_preload_content"] is False
        with self.lock:
            self.asked.append(token)
        answer = self.pages[token]
        if isinstance(answer, Exception):
            raise answer
        body = Body(answer)
        self.answers.append(body)
        return body


def test_every_item_of_every_page_once_in_order_and_connections_given_back() -> None:
    lister = Lister(
        {None: page(["a", "b"], "t1"), "t1": page(["c"], "t2"), "t2": page(["d"], None)}
    )
    kube = KubeClient(client.ApiClient(), page_size=2)
    names = [
        item["metadata"]["name"] for item in kube._paginate(lister, "list x", None, _json_page)
    ]
    assert names == ["a", "b", "c", "d"]
    assert lister.asked == [None, "t1", "t2"]
    assert all(body.released for body in lister.answers)
    assert kube.requests["success"] == 3


def test_an_expired_token_lists_again_once_without_repeating_items() -> None:
    lister = Lister(
        {
            None: page(["a", "b"], "t1"),
            "t1": ApiException(http_resp=Gone()),
        }
    )
    kube = KubeClient(client.ApiClient())
    items = kube._paginate(lister, "list x", None, _json_page)
    assert [next(items)["metadata"]["uid"], next(items)["metadata"]["uid"]] == ["a", "b"]
    # The restart asks for page 1 again (now the last page, with one more item).
    lister.pages[None] = page(["a", "b", "c"], None)
    assert [item["metadata"]["uid"] for item in items] == ["c"]
    assert lister.asked == [None, "t1", None]


def test_a_second_expired_token_is_an_error() -> None:
    lister = Lister({None: page(["a"], "t1"), "t1": ApiException(http_resp=Gone())})
    kube = KubeClient(client.ApiClient())
    items = kube._paginate(lister, "list x", None, _json_page)
    assert next(items)["metadata"]["uid"] == "a"
    lister.pages[None] = page(["a"], "t1")  # expires again after the restart
    with pytest.raises(KubeError) as caught:
        list(items)
    assert caught.value.status == 410
    assert "list x" in str(caught.value)


def test_namespaced_and_node_lists_read_their_pages_as_dicts() -> None:
    # The rollout guard's reads (list_namespaced) and node_platforms page as
    # the workload lists do, each page decoded by _json_page.
    kube = KubeClient(client.ApiClient(), page_size=2)
    pods = Lister({None: page(["a", "b"], "t1"), "t1": page(["c"], None)})
    asked: list[str] = []

    def list_pods(namespace: str, **kwargs: Any) -> Body:
        asked.append(namespace)
        return pods(**kwargs)

    info = {"operatingSystem": "linux", "architecture": "arm64"}
    node = {"metadata": {"uid": "n1"}, "status": {"nodeInfo": info}}
    nodes = Lister({None: json.dumps({"metadata": {}, "items": [node]}).encode()})
    with (
        mock.patch.object(kube._core, "list_namespaced_pod", list_pods),
        mock.patch.object(kube._core, "list_node", nodes),
    ):
        listed = kube.list_namespaced("pods", "team-a")
        platforms = kube.node_platforms()
    assert [item["metadata"]["name"] for item in listed] == ["a", "b", "c"]
    assert asked == ["team-a", "team-a"] and pods.asked == [None, "t1"]
    assert platforms == ["linux/arm64"]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_an_unreadable_page_is_a_kube_error(body: bytes) -> None:
    kube = KubeClient(client.ApiClient())
    with pytest.raises(KubeError, match="unreadable response"):
        list(kube._paginate(Lister({None: body}), "list x", None, _json_page))


def test_a_page_is_decoded_with_the_collector_paused_and_it_is_on_again_after() -> None:
    seen: list[bool] = []

    body = page(["a"], None)
    original = orjson.loads

    def loads(data: bytes) -> Any:
        seen.append(gc.isenabled())
        return original(data)

    assert gc.isenabled()
    with mock.patch.object(kube_module.orjson, "loads", loads):
        items = list(
            KubeClient(client.ApiClient())._paginate(Lister({None: body}), "x", None, _json_page)
        )
    assert [i["metadata"]["uid"] for i in items] == ["a"]
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_someone_turned_off_stays_off() -> None:
    gc.disable()
    try:
        assert decode_large(b'{"a": [1]}') == {"a": [1]}
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_concurrent_decodes_turn_the_collector_on_only_when_the_last_one_ends() -> None:
    inside = threading.Barrier(2, timeout=5)
    states: list[bool] = []
    original = orjson.loads

    def loads(data: bytes) -> Any:
        inside.wait()  # both decodes are in progress
        result = original(data)
        states.append(gc.isenabled())
        return result

    with mock.patch.object(kube_module.orjson, "loads", loads):
        threads = [threading.Thread(target=decode_large, args=(b"[1]",)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    assert states == [False, False]
    assert gc.isenabled()
