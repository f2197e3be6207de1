"""Typed decoding of workload pages gives the snapshot the JSON dict gave, field for field.

The oracle is the dict-walking mapping ``Workload.from_api`` had before list
pages were decoded into ``wire`` structs (issue 31): random objects, with
fields absent, null, empty or surrounded by fields the snapshot never reads
(``status``, ``managedFields``, probes), go through both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloner.adapters.kube import _workload_page
from cloner.model.rollout import exemption
from cloner.model.workloads import (
    CONTAINER_LISTS,
    KIND_INFO,
    Container,
    Workload,
    WorkloadKind,
    kind_info,
    pod_spec_of,
)


def oracle(kind: str, obj: Mapping[str, Any]) -> Workload:
    """``Workload.from_api`` as it was: walking the JSON dict."""
    kind = WorkloadKind(kind)
    meta = obj.get("metadata") or {}
    pod_spec = pod_spec_of(kind, obj)
    spec_path = kind_info(kind).pod_spec_pointer
    containers = []
    for list_name in CONTAINER_LISTS:
        for index, container in enumerate(pod_spec.get(list_name) or ()):
            image = container.get("image")
            if image:
                containers.append(
                    Container(container.get("name", ""), image, list_name, index, spec_path)
                )
    return Workload(
        kind=kind,
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        containers=tuple(containers),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        service_account=pod_spec.get("serviceAccountName") or "default",
        pull_secrets=(
            tuple((e or {}).get("name", "") for e in pod_spec["imagePullSecrets"] or ())
            if "imagePullSecrets" in pod_spec
            else None
        ),
        controller_owner=next(
            (
                f"{ref.get('kind')}/{ref.get('name')}"
                for ref in meta.get("ownerReferences") or ()
                if ref.get("controller")
            ),
            None,
        ),
        generation=meta.get("generation") or 0,
        exempt=exemption(kind, obj),
    )


text = st.text(alphabet="abcxyz-./:@0123456789", min_size=1, max_size=12)
noise = st.dictionaries(
    st.sampled_from(["status", "managedFields", "livenessProbe", "env", "resources", "x"]),
    st.recursive(
        st.none() | st.integers(-(2**40), 2**40) | text,
        lambda c: st.lists(c, max_size=3),
        max_leaves=4,
    ),
    max_size=3,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field that is present with a value, present as null, or absent (``ABSENT``)."""
    return st.one_of(strategy, st.none(), st.just(ABSENT))


ABSENT = object()


def obj(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not ABSENT}


containers = st.lists(
    st.builds(
        lambda name, image, extra: {**obj(name=name, image=image), **extra},
        text,
        maybe(text),
        noise,
    ),
    max_size=3,
)
pod_spec = st.builds(
    lambda c, i, sa, ps, extra: {
        **obj(containers=c, initContainers=i, serviceAccountName=sa, imagePullSecrets=ps),
        **extra,
    },
    maybe(containers),
    maybe(containers),
    maybe(text),
    maybe(st.lists(st.one_of(st.none(), st.builds(lambda n: {"name": n}, text)), max_size=2)),
    noise,
)
metadata = st.builds(
    lambda name, ns, uid, rv, gen, labels, ann, owners, extra: {
        **obj(
            name=name,
            namespace=ns,
            uid=uid,
            resourceVersion=rv,
            generation=gen,
            labels=labels,
            annotations=ann,
            ownerReferences=owners,
        ),
        **extra,
    },
    text,
    text,
    text,
    text,
    maybe(st.integers(min_value=0, max_value=10**6)),
    maybe(st.dictionaries(text, text, max_size=3)),
    maybe(st.dictionaries(text, text, max_size=3)),
    maybe(
        st.lists(
            st.builds(
                lambda k, n, c: obj(kind=k, name=n, controller=c), text, text, maybe(st.booleans())
            ),
            max_size=2,
        )
    ),
    noise,
)


@st.composite
def workload_objects(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(KIND_INFO)))
    spec: Any = draw(pod_spec)
    for part in reversed(kind_info(kind).pod_spec[1:]):
        spec = {part: spec}
    spec = {
        **spec,
        **obj(
            replicas=draw(maybe(st.integers(min_value=0, max_value=3))),
            paused=draw(maybe(st.booleans())),
            updateStrategy=draw(maybe(st.sampled_from([{}, {"type": "OnDelete"}]))),
        ),
    }
    return kind, {"metadata": draw(metadata), "spec": spec, "status": draw(noise)}


@settings(max_examples=150, deadline=None)
@given(st.lists(workload_objects(), min_size=1, max_size=4))
def test_a_decoded_page_gives_the_snapshots_of_the_json(
    objects: list[tuple[str, dict[str, Any]]],
) -> None:
    body = orjson.dumps({"metadata": {"continue": "t"}, "items": [o for _, o in objects]})
    page = _workload_page(body)
    assert page.token == "t"
    for (kind, raw), (uid, item) in zip(objects, page.items, strict=True):
        assert uid == raw["metadata"]["uid"]
        assert Workload.from_item(kind, item) == oracle(kind, raw)
        assert Workload.from_api(kind, raw) == oracle(kind, raw)


def test_a_page_of_the_wrong_shape_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        _workload_page(b'{"items": [{"metadata": {"generation": "two"}}]}')
    with pytest.raises(ValueError):
        _workload_page(b"not json")
