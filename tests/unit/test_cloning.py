"""ImageCloner: identity before reuse, both backends, durable state, refresh.

Against ``fakes.Registries`` (in-memory registries that copy like skopeo or
like a Docker engine). The same behaviour is proven on real registries in
tests/e2e/test_fidelity.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from cloner.config import BackoffSettings, CopySettings
from cloner.errors import RegistryError
from cloner.model.identity import DOCKER_MANIFEST, OCI_INDEX, Copied, child_for, parse_manifest
from cloner.model.reference import Reference, Target, parse_reference
from cloner.model.state import StateBook
from cloner.ops.cloning import ImageCloner
from cloner.ops.state import StateStore
from devenv.waiting import wait_for
from tests.unit.fakes import Registries

SRC = "src.example"
TARGET = Target.parse("owned.example/m")
AMD_ARM = ("linux/amd64", "linux/arm64")


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cloner(
    registries: Registries,
    nodes: tuple[str, ...] = (),
    book: StateBook | None = None,
    wall: Wall | None = None,
    **kw: object,
) -> ImageCloner:
    copy = CopySettings(
        backend=registries.backend,
        concurrency=kw.pop("concurrency", 1),  # type: ignore[arg-type]
        registry_concurrency=kw.pop("registry_concurrency", 3),  # type: ignore[arg-type]
    )
    return ImageCloner(
        registries,
        registries,
        copy=copy,
        backoff=kw.pop("backoff", BackoffSettings()),  # type: ignore[arg-type]
        engine_platform=lambda: registries.engine_platform,
        node_platforms=lambda: nodes,
        state=None if book is None else StateStore(book),
        wall=wall or Wall(),
        **kw,  # type: ignore[arg-type]
    )


def ensure(c: ImageCloner, text: str) -> tuple[Reference, Reference, object]:
    source = parse_reference(text)
    owned = TARGET.owned_name(source)
    return source, owned, c.ensure_all([(source, owned)])[str(source)]


# --- skopeo: every platform, the same digests -------------------------------------


def test_skopeo_copies_an_index_with_every_platform_and_the_same_digest() -> None:
    regs = Registries("skopeo")
    digest = regs.index(f"{SRC}/app", "1", "s", AMD_ARM)
    _source, owned, result = ensure(cloner(regs), f"{SRC}/app:1")
    assert result.image == str(owned)
    assert result.cloned and result.platforms == AMD_ARM
    assert regs.head(owned).digest == digest
    for child in regs.repos[f"{SRC}/app"].manifests:
        assert regs.head(owned.with_digest(child)) is not None


def test_digest_only_source_keeps_its_digest() -> None:
    regs = Registries("skopeo")
    digest = regs.index(f"{SRC}/app", None, "s", AMD_ARM)
    _, owned, result = ensure(cloner(regs), f"{SRC}/app@{digest}")
    assert result.image == f"{owned.name}@{digest}"


def test_impostor_under_the_owned_tag_is_copied_over_for_a_digest_only_source() -> None:
    regs = Registries("skopeo")
    digest = regs.image(f"{SRC}/app", None, "real")
    source = parse_reference(f"{SRC}/app@{digest}")
    owned = TARGET.owned_name(source)
    impostor = regs.image(owned.name, owned.tag, "impostor")
    result = cloner(regs).ensure_all([(source, owned)])[str(source)]
    assert result.replaced == impostor
    assert result.image == f"{owned.name}@{digest}"
    assert regs.head(owned).digest == digest


def test_impostor_under_the_owned_tag_is_copied_over_for_a_tagged_source() -> None:
    regs = Registries("skopeo")
    digest = regs.image(f"{SRC}/app", "1", "real")
    owned = TARGET.owned_name(parse_reference(f"{SRC}/app:1"))
    impostor = regs.image(owned.name, "1", "impostor")
    _, _, result = ensure(cloner(regs), f"{SRC}/app:1")
    assert result.replaced == impostor and result.cloned
    assert regs.head(owned).digest == digest


# --- docker: one platform, compared by config ---------------------------------------


def test_docker_refuses_a_multi_platform_source_when_nodes_run_other_platforms() -> None:
    regs = Registries("docker")
    regs.index(f"{SRC}/app", "1", "s", AMD_ARM)
    _, owned, result = ensure(cloner(regs, nodes=AMD_ARM), f"{SRC}/app:1")
    assert result.image is None and result.reason == "multi_platform"
    assert "copyBackend: skopeo" in (result.message or "")
    assert regs.head(owned) is None and regs.clones == []


def test_docker_copies_a_multi_platform_source_when_every_node_is_the_engines() -> None:
    regs = Registries("docker")
    index = regs.index(f"{SRC}/app", "1", "s", AMD_ARM)
    _, owned, result = ensure(cloner(regs, nodes=("linux/amd64",)), f"{SRC}/app:1")
    assert result.cloned and result.image == str(owned)
    head = regs.head(owned)
    assert head is not None and head.media_type == DOCKER_MANIFEST and head.digest != index
    _, body = regs.repos[f"{SRC}/app"].manifests[index]
    amd64 = child_for(parse_manifest(index, OCI_INDEX, body), "linux/amd64")
    assert amd64 is not None
    assert regs.config_of(owned.name, head.digest) == regs.config_of(f"{SRC}/app", amd64)


def test_docker_digest_pinned_source_is_repinned_to_the_copy_with_the_same_config() -> None:
    regs = Registries("docker")
    digest = regs.image(f"{SRC}/app", None, "s")
    _, owned, result = ensure(cloner(regs), f"{SRC}/app@{digest}")
    assert result.image is not None and digest not in result.image
    pushed = result.image.split("@")[1]
    assert regs.config_of(owned.name, pushed) == regs.config_of(f"{SRC}/app", digest)


def test_docker_reuses_an_owned_copy_with_the_same_config_and_replaces_another() -> None:
    regs = Registries("docker")
    regs.image(f"{SRC}/app", "1", "s")
    regs.image(f"{SRC}/other", "1", "t")
    first = cloner(regs)
    _, owned, result = ensure(first, f"{SRC}/app:1")
    assert result.cloned
    # a fresh controller with no record: the copy is recognised by its config
    _, _, again = ensure(cloner(regs), f"{SRC}/app:1")
    assert not again.cloned and again.image == str(owned) and again.replaced is None
    # someone pushes other content under the owned tag
    regs.clone(parse_reference(f"{SRC}/other:1"), owned)
    _, _, fixed = ensure(cloner(regs), f"{SRC}/app:1")
    assert fixed.cloned and fixed.replaced is not None


# --- the source cannot be asked ---------------------------------------------------


def test_source_down_uses_the_copy_verified_earlier_without_asking_again() -> None:
    regs = Registries("skopeo")
    regs.image(f"{SRC}/app", "1", "s")
    book = StateBook()
    wall = Wall()
    _, _owned, first = ensure(cloner(regs, book=book, wall=wall), f"{SRC}/app:1")
    regs.down[SRC] = RegistryError("network", "connection refused", SRC)
    wall.now += 10**6  # refresh due: the source is asked, and is down
    _, _, result = ensure(cloner(regs, book=book, wall=wall), f"{SRC}/app:1")
    assert result.image == first.image and not result.cloned


def test_source_down_and_never_verified_owned_name_is_not_used() -> None:
    regs = Registries("skopeo")
    source = parse_reference(f"{SRC}/app:1")
    owned = TARGET.owned_name(source)
    regs.image(owned.name, owned.tag, "whatever")
    regs.down[SRC] = RegistryError("network", "connection refused", SRC)
    result = cloner(regs).ensure_all([(source, owned)])[str(source)]
    assert result.image is None and result.reason == "source_unverified"


def test_source_deleted_upstream_and_owned_copy_verified_keeps_workloads_served() -> None:
    regs = Registries("skopeo")
    regs.image(f"{SRC}/app", "1", "s")
    book, wall = StateBook(), Wall()
    _, _, first = ensure(cloner(regs, book=book, wall=wall), f"{SRC}/app:1")
    del regs.repos[f"{SRC}/app"]  # upstream deleted it: the case we protect against
    wall.now += 10**6
    _, _, result = ensure(cloner(regs, book=book, wall=wall), f"{SRC}/app:1")
    assert result.image == first.image


# --- durable state and refresh ------------------------------------------------------


def test_restart_with_the_durable_record_makes_no_registry_request() -> None:
    regs = Registries("skopeo")
    regs.image(f"{SRC}/app", "1", "s")
    book = StateBook()
    ensure(cloner(regs, book=book), f"{SRC}/app:1")
    shards = book.dirty_shards()
    restored = StateBook()
    restored.load(shards)
    regs.requests.clear()
    _, _, result = ensure(cloner(regs, book=restored), f"{SRC}/app:1")
    assert result.image is not None and sum(regs.requests.values()) == 0


def test_backoff_survives_a_restart() -> None:
    regs = Registries("skopeo")
    book = StateBook()
    _, _, failed = ensure(cloner(regs, book=book), f"{SRC}/ghost:1")
    assert failed.reason == "not_found"
    restored = StateBook()
    restored.load(book.dirty_shards())
    regs.requests.clear()
    _, _, waiting = ensure(cloner(regs, book=restored), f"{SRC}/ghost:1")
    assert waiting.retry_in is not None and waiting.retry_in > 0
    assert sum(regs.requests.values()) == 0


def test_moved_tag_is_copied_again_after_refresh_interval_and_pins_keep_theirs() -> None:
    regs = Registries("skopeo")
    old = regs.image(f"{SRC}/app", "1", "old")
    book, wall = StateBook(), Wall()
    c = cloner(regs, book=book, wall=wall, pin_digest=True, refresh_interval=600)
    _source, owned, first = ensure(c, f"{SRC}/app:1")
    assert first.image == f"{owned}@{old}"
    new = regs.image(f"{SRC}/app", "1", "new")
    regs.requests.clear()
    wall.now += 100
    _, _, same = ensure(c, f"{SRC}/app:1")
    assert same.image == first.image and sum(regs.requests.values()) == 0  # not due yet
    wall.now += 600
    _, _, moved = ensure(c, f"{SRC}/app:1")
    assert moved.moved == (old, new) and moved.cloned
    assert moved.image == f"{owned}@{new}"
    assert regs.head(owned).digest == new
    assert regs.head(owned.with_digest(old)) is not None  # the old pin still resolves


# --- concurrency ----------------------------------------------------------------------


class Gated(Registries):
    """Copies wait at a gate per source name; records how many run at once."""

    def __init__(self, backend: str = "skopeo") -> None:
        super().__init__(backend)
        self.gates: dict[str, threading.Event] = {}
        self.active: set[str] = set()
        self.max_active = 0
        self.overlaps: list[tuple[str, str]] = []
        self._guard = threading.Lock()

    def clone(self, source: Reference, owned: Reference) -> Copied:
        with self._guard:
            for other in self.active:
                self.overlaps.append((other, source.name))
            self.active.add(source.name)
            self.max_active = max(self.max_active, len(self.active))
        gate = self.gates.get(source.name)
        if gate is not None:
            assert gate.wait(10), f"{source.name} was never released"
        else:
            time.sleep(0.05)
        with self._guard:
            self.active.discard(source.name)
        return super().clone(source, owned)


def pairs_of(*texts: str) -> list[tuple[Reference, Reference]]:
    return [(parse_reference(t), TARGET.owned_name(parse_reference(t))) for t in texts]


@pytest.mark.parametrize(
    ("names", "concurrency", "registry_concurrency"),
    [
        # one source registry: its limit binds
        ([f"{SRC}/app{i}" for i in range(6)], 8, 2),
        # six registries: only the total limit binds, not the per-registry one
        ([f"registry-{i}.example.com/app" for i in range(6)], 2, 3),
    ],
    ids=["registry_concurrency", "clone_concurrency"],
)
def test_copies_at_once_never_exceed_the_binding_limit(
    names: list[str], concurrency: int, registry_concurrency: int
) -> None:
    regs = Gated()
    for name in names:
        regs.image(name, "1", name)
    c = cloner(regs, concurrency=concurrency, registry_concurrency=registry_concurrency)
    results = c.ensure_all(pairs_of(*(f"{n}:1" for n in names)))
    assert all(r.image for r in results.values())
    assert regs.max_active == 2


def gated(names: list[str], backend: str = "skopeo") -> Gated:
    """Registries holding one image per name, each copy waiting at its own gate."""
    regs = Gated(backend)
    for name in names:
        regs.image(name, "1", name)
        regs.gates[name] = threading.Event()
    return regs


def test_the_next_images_are_asked_while_every_copy_slot_is_busy() -> None:
    names = [f"registry-{i}.example.com/app" for i in range(3)]
    regs = gated(names)
    c = cloner(regs, concurrency=2, registry_concurrency=3)
    futures = c.submit(pairs_of(*(f"{n}:1" for n in names)))
    # Two copies hold both slots; the third image's source is asked meanwhile.
    wait_for(lambda: regs.requests["registry-2.example.com"], 5, interval=0.01)
    assert regs.requests["registry-2.example.com"] >= 1
    assert regs.max_active == 2 and len(regs.clones) == 0
    for gate in regs.gates.values():
        gate.set()
    results = {key: c.collect(key, f) for key, f in futures.items()}
    assert all(r.cloned for r in results.values())
    assert regs.max_active == 2


def test_a_source_in_flight_is_never_copied_twice_and_a_later_cycle_collects_it() -> None:
    regs = Gated()
    regs.image(f"{SRC}/slow", "1", "slow")
    regs.gates[f"{SRC}/slow"] = threading.Event()
    c = cloner(regs, concurrency=4)
    first = c.submit(pairs_of(f"{SRC}/slow:1"))
    second = c.submit(pairs_of(f"{SRC}/slow:1"))  # the next cycle, the clone still running
    assert first[f"{SRC}/slow:1"] is second[f"{SRC}/slow:1"]
    regs.gates[f"{SRC}/slow"].set()
    result = c.collect(f"{SRC}/slow:1", second[f"{SRC}/slow:1"])
    assert result.cloned and len(regs.clones) == 1
    # collected: the next cycle answers from the record, with no copy
    again = c.ensure_all(pairs_of(f"{SRC}/slow:1"))
    assert not again[f"{SRC}/slow:1"].cloned and len(regs.clones) == 1


def test_sources_sharing_an_owned_repository_are_decided_one_at_a_time() -> None:
    regs = Gated()
    digest = regs.image(f"{SRC}/app", "1", "s")
    c = cloner(regs, concurrency=4, registry_concurrency=3)
    results = c.ensure_all(pairs_of(f"{SRC}/app:1", f"{SRC}/app@{digest}", f"{SRC}/app:1@{digest}"))
    assert all(r.image for r in results.values())
    assert regs.max_active == 1  # never two copies into one repository at once


def test_copy_slots_go_to_the_waiting_images_in_submission_order() -> None:
    from cloner.ops.cloning import _Slots

    slots = _Slots(1)
    order: list[int] = []
    release = threading.Event()
    holding = threading.Event()

    def first() -> None:
        with slots.take(0, "r"):
            holding.set()
            release.wait(5)

    def later(ticket: int) -> None:
        with slots.take(ticket, "r"):
            order.append(ticket)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(5)
    for ticket in (3, 1, 2):  # their questions finished in this order
        thread = threading.Thread(target=later, args=(ticket,))
        thread.start()
        threads.append(thread)
        time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == [1, 2, 3]


@pytest.mark.parametrize("ramp", [True, False])
def test_with_the_ramp_a_registry_starts_with_one_copy_and_adds_one_per_copy_ended(
    ramp: bool,
) -> None:
    from cloner.ops.cloning import _Slots

    slots = _Slots(4, ramp=ramp)
    running: set[str] = set()
    gates = {name: threading.Event() for name in ("r0", "r1", "r2", "r3", "o0")}
    guard = threading.Lock()

    def copy(ticket: int, registry: str, name: str) -> None:
        with slots.take(ticket, registry):
            with guard:
                running.add(name)
            assert gates[name].wait(5)
            with guard:
                running.discard(name)

    threads = [threading.Thread(target=copy, args=(i, "r", f"r{i}")) for i in range(4)] + [
        threading.Thread(target=copy, args=(9, "other", "o0"))
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    if not ramp:
        wait_for(lambda: running == {"r0", "r1", "r2", "r3"}, 5.0, interval=0.01)  # 4 slots in all
    else:
        # the first copy of each registry runs alone; other registries do not wait
        wait_for(lambda: running == {"r0", "o0"}, 5.0, interval=0.01)
        time.sleep(0.1)
        assert running == {"r0", "o0"}
        gates["r0"].set()  # one copy ended: two may run at once
        wait_for(lambda: running == {"r1", "r2", "o0"}, 5.0, interval=0.01)
        time.sleep(0.1)
        assert running == {"r1", "r2", "o0"}
        gates["r1"].set()  # two ended: three may, and r3 is the only one left
        wait_for(lambda: running == {"r2", "r3", "o0"}, 5.0, interval=0.01)
    for gate in gates.values():
        gate.set()
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)


def test_the_ramp_also_lets_one_more_copy_start_per_step_while_a_long_copy_runs() -> None:
    from cloner.ops.cloning import _Slots

    slots = _Slots(4, ramp=True, ramp_step=0.3)
    started: dict[int, float] = {}
    release = threading.Event()

    def copy(ticket: int) -> None:
        with slots.take(ticket, "r"):
            started[ticket] = time.monotonic()
            assert release.wait(5)  # every copy runs long: none ends

    threads = [threading.Thread(target=copy, args=(i,)) for i in range(3)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    wait_for(lambda: len(started) == 3, 5.0, interval=0.01)
    release.set()
    for thread in threads:
        thread.join(5)
    offsets = [started[i] - began for i in range(3)]
    assert offsets[0] < 0.2  # the first at once
    assert 0.3 <= offsets[1] < 0.6  # one more after one step
    assert 0.6 <= offsets[2] < 1.2  # and one more after two


@pytest.mark.parametrize(("backend", "first_alone"), [("skopeo", True), ("docker", False)])
def test_only_the_skopeo_backend_ramps_up_a_registrys_first_copies(
    backend: str, first_alone: bool
) -> None:
    names = [f"{SRC}/app{i}" for i in range(3)]
    regs = gated(names, backend)
    c = cloner(regs, concurrency=4, registry_concurrency=3)
    futures = c.submit(pairs_of(*(f"{n}:1" for n in names)))
    wait_for(lambda: len(regs.active) >= 1, 5.0, interval=0.01)
    time.sleep(0.2)  # time for the others to start too, if they may
    assert len(regs.active) == (1 if first_alone else 3)
    regs.gates[names[0]].set()
    if first_alone:
        wait_for(lambda: regs.active == {f"{SRC}/app1", f"{SRC}/app2"}, 5.0, interval=0.01)
    for gate in regs.gates.values():
        gate.set()
    results = {key: c.collect(key, f) for key, f in futures.items()}
    assert all(r.cloned for r in results.values())


def test_a_later_image_waits_for_an_earlier_one_still_being_asked_about() -> None:
    """Strict submission order per source registry, as a loop copies; other registries go on."""
    from cloner.ops.cloning import _Slots

    slots = _Slots(2)  # slots are free throughout: only the order holds images back
    order: list[str] = []
    asked = threading.Event()

    def earlier(leave_without_copy: bool) -> None:
        with slots.turn(1, "r"):
            asked.wait(5)  # its questions are still running
            if not leave_without_copy:
                with slots.take(1, "r"):
                    order.append("1")

    def copy(ticket: int, registry: str) -> None:
        with slots.turn(ticket, registry), slots.take(ticket, registry):
            order.append(str(ticket))

    for leave_without_copy in (False, True):
        order.clear()
        asked.clear()
        threads = [threading.Thread(target=earlier, args=(leave_without_copy,))]
        threads[0].start()
        time.sleep(0.05)
        threads += [
            threading.Thread(target=copy, args=(2, "r")),
            threading.Thread(target=copy, args=(3, "other")),
        ]
        for thread in threads[1:]:
            thread.start()
        time.sleep(0.2)
        assert order == ["3"]  # ticket 2 waits for 1; the other registry does not
        asked.set()
        for thread in threads:
            thread.join(5)
        assert order == (["3", "2"] if leave_without_copy else ["3", "1", "2"])
    assert slots._lines == {}  # every place in line was given up


# --- signatures and referrers (issue 28) ------------------------------------------


class StubCopier:
    """Stands in for ``ops.artifacts.ArtifactCopier``: answers what the test sets."""

    def __init__(self, status: object) -> None:
        from cloner.model.artifacts import ArtifactStatus

        self.status: ArtifactStatus = status  # type: ignore[assignment]
        self.syncs = 0
        self.found: list[object] = []

    def sync(
        self, source: Reference, owned: Reference, subjects: list[str], known: tuple[str, ...] = ()
    ) -> object:
        from cloner.ops.artifacts import Synced

        self.syncs += 1
        return Synced(self.status, known=("tag=digest",) if not self.status.error else ())

    def discover(self, source: Reference, subjects: list[str]) -> list[object]:
        self.syncs += 1
        return self.found


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_copy_mode_switches_despite_a_failed_artifact_sync_and_retries_after_backoff() -> None:
    from cloner.model.artifacts import ArtifactStatus, SignatureMode

    regs = Registries("skopeo")
    regs.index(f"{SRC}/app", "1", "s", AMD_ARM)
    stub = StubCopier(ArtifactStatus(3, 0, "auth"))
    clock = Clock()
    c = cloner(regs, artifacts=stub, signatures=SignatureMode.COPY, clock=clock)

    _source, owned, result = ensure(c, f"{SRC}/app:1")
    assert result.image == str(owned)  # switched anyway
    assert result.artifacts is not None and result.artifacts.status.error == "auth"

    before = sum(regs.requests.values())
    _s, _o, again = ensure(c, f"{SRC}/app:1")
    assert again.image == str(owned) and again.artifacts is None
    assert sum(regs.requests.values()) == before and stub.syncs == 1  # backing off: no call

    stub.status = ArtifactStatus(3, 3, "")
    clock.now += 3600 * 2  # past the backoff
    _s, _o, third = ensure(c, f"{SRC}/app:1")
    assert stub.syncs == 2 and third.artifacts is not None
    assert third.artifacts.status == ArtifactStatus(3, 3, "")
    with c.state.locked() as book:
        record = book.records[f"{SRC}/app:1"]
    assert (record.artifacts_found, record.artifacts_owned, record.artifacts_error) == (3, 3, "")


def test_require_mode_holds_the_switch_until_every_artifact_is_in_the_owned_registry() -> None:
    from cloner.model.artifacts import ArtifactStatus, SignatureMode

    regs = Registries("skopeo")
    regs.index(f"{SRC}/app", "1", "s", AMD_ARM)
    stub = StubCopier(ArtifactStatus(3, 0, "auth"))
    clock = Clock()
    c = cloner(regs, artifacts=stub, signatures=SignatureMode.REQUIRE, clock=clock)

    _source, owned, held = ensure(c, f"{SRC}/app:1")
    assert held.image is None and held.reason == "signatures_not_copied"
    assert len(regs.clones) == 1  # the image itself was copied and recorded

    _s, _o, waiting = ensure(c, f"{SRC}/app:1")
    assert waiting.image is None and waiting.retry_in is not None  # backing off, not switched

    stub.status = ArtifactStatus(3, 3, "")
    clock.now += 3600 * 2
    _s, _o, switched = ensure(c, f"{SRC}/app:1")
    assert switched.image == str(owned)
    assert len(regs.clones) == 1  # reused, not copied again


def test_require_mode_refuses_a_signed_source_with_the_docker_backend() -> None:
    from cloner.model.artifacts import ArtifactStatus, SignatureMode

    regs = Registries("docker")
    regs.image(f"{SRC}/app", "1", "s")
    stub = StubCopier(ArtifactStatus())
    stub.found = ["signature", "attestation"]
    _source, _owned, result = ensure(
        cloner(regs, artifacts=stub, signatures=SignatureMode.REQUIRE), f"{SRC}/app:1"
    )
    assert result.image is None and result.reason == "signatures_lost"

    reporting = StubCopier(ArtifactStatus())
    reporting.found = ["signature"]
    copy = cloner(regs, artifacts=reporting, signatures=SignatureMode.COPY)
    _source, _owned, lost = ensure(copy, f"{SRC}/app:1")
    assert lost.image is not None  # copy mode switches and reports
    assert lost.artifacts is not None and lost.artifacts.status.found == 1


def test_a_digest_only_copy_under_the_old_reserved_tag_is_copied_again_under_the_new_one() -> None:
    regs = Registries("skopeo")
    digest = regs.index(f"{SRC}/app", None, "s", AMD_ARM)
    source = parse_reference(f"{SRC}/app@{digest}")
    owned = TARGET.owned_name(source)
    assert owned.tag == "sha256_" + digest[7:]
    # The copy an older version made, under sha256-<hex>.
    regs.clone(source, owned.with_tag("sha256-" + digest[7:]))
    regs.clones.clear()

    result = cloner(regs).ensure_all([(source, owned)])[str(source)]

    assert result.image == f"{owned.name}@{digest}" and result.replaced is None
    assert regs.clones == [(str(source.with_tag(None).with_digest(digest)), str(owned))]
    assert regs.head(owned).digest == digest


def test_an_unreachable_source_does_not_ask_again_every_cycle_for_its_artifacts() -> None:
    from cloner.model.artifacts import ArtifactStatus, SignatureMode

    regs = Registries("skopeo")
    regs.index(f"{SRC}/app", "1", "s", AMD_ARM)
    c = cloner(regs)  # verified without artifacts, as an older version would have
    ensure(c, f"{SRC}/app:1")
    stub = StubCopier(ArtifactStatus(0, 0, ""))
    clock = Clock()
    later = cloner(
        regs,
        artifacts=stub,
        signatures=SignatureMode.COPY,
        clock=clock,
        book=None,
    )
    with c.state.locked() as book, later.state.locked() as into:
        into.records.update(book.records)
    regs.down[SRC] = RegistryError("network", "down", SRC)

    _s, owned, first = ensure(later, f"{SRC}/app:1")
    asked = regs.requests[SRC]
    _s, _o, second = ensure(later, f"{SRC}/app:1")

    assert first.image == second.image == str(owned)
    assert regs.requests[SRC] == asked  # backing off: the source is not asked again
    assert stub.syncs == 0
