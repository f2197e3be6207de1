"""StateStore: the one owner of the durable state, its lock, its load and its save.

The race it closes: a clone thread records a verification (or a failure)
in a shard while the cycle's thread is writing that shard. The old save
(``dirty_shards()``; the writes; ``written()``, without the lock the clone
threads take) then marked the shard written without that change, and a
restart lost it. Both the old sequence and the store are driven through the
same interleaving with a ``threading.Barrier``: the fake API server stops in
the middle of the write until the other thread has made its change.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cloner.errors import KubeError
from cloner.model import state
from cloner.model.rollout import PendingSwitch, SwitchedContainer
from cloner.model.state import (
    SHARD_BYTES,
    Failure,
    Record,
    StateBook,
    shard_count,
    shard_names,
    shard_of,
)
from cloner.ops.state import StateStore, read_shards
from tests.unit.fakes import FakeKube, workload
from tests.unit.test_reconcile import SETTINGS, FakeRegistry, make

NS = "image-cloner"
DIGEST = "sha256:" + "a" * 64
FIRST = "docker.io/library/app0:1"
#: Bytes of ``data`` the API server accepts in one ConfigMap (etcd's object limit).
OBJECT_LIMIT = 1024 * 1024
#: Seconds a barrier waits before it breaks: a broken interleaving fails, never hangs.
STUCK = 10.0


def record(source: str) -> Record:
    return Record(
        source=source,
        source_digest=DIGEST,
        owned=f"owned.example/m/{source}",
        owned_digest=DIGEST,
        image=f"owned.example/m/{source}",
        platforms=(),
        backend="skopeo",
        verified=1000.0,
        used=1000.0,
    )


def same_shard_as(key: str) -> str:
    """Another source whose record lives in the same shard as ``key``."""
    return next(
        other
        for other in (f"docker.io/library/app{i}:1" for i in range(1, 1000))
        if shard_of(other) == shard_of(key)
    )


class StateKube:
    """ConfigMaps in memory (``StateAPI``), with failures and a pause to inject.

    Attributes:
        config_maps: ConfigMap name -> the body last written (a copy).
        fail_get: names whose next read raises the given error (once).
        fail_write: names whose next create or replace raises the given error (once).
        pause: ``(name, barrier)``: the next write of ``name`` waits at the
            barrier twice, after its body is built and before it is stored:
            once to say it is in the middle of the write, once to go on.
        writes: ``create <name>`` / ``replace <name>`` of every write tried.
        refused: the status of every write refused for existence (409, 404).
    """

    def __init__(self) -> None:
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.fail_get: dict[str, KubeError] = {}
        self.fail_write: dict[str, KubeError] = {}
        self.pause: tuple[str, threading.Barrier] | None = None
        self.writes: list[str] = []
        self.refused: list[int] = []

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        assert namespace == NS
        error = self.fail_get.pop(name, None)
        if error is not None:
            raise error
        return copy.deepcopy(self.config_maps.get(name))

    def create_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        name = self._write("create", namespace, body)
        if name in self.config_maps:
            self.refused.append(409)
            raise KubeError(409, f"configmaps {name!r} already exists")
        self.config_maps[name] = copy.deepcopy(body)

    def replace_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        name = self._write("replace", namespace, body)
        if name not in self.config_maps:
            self.refused.append(404)
            raise KubeError(404, f"configmaps {name!r} not found")
        self.config_maps[name] = copy.deepcopy(body)

    def _write(self, verb: str, namespace: str, body: dict[str, Any]) -> str:
        assert namespace == NS
        name = body["metadata"]["name"]
        self.writes.append(f"{verb} {name}")
        error = self.fail_write.pop(name, None)
        if error is not None:
            raise error
        size = sum(len(k) + len(v) for k, v in body["data"].items())
        if size > OBJECT_LIMIT:  # as the API server: an object's data stays under 1 MiB
            raise KubeError(422, f"ConfigMap {name!r} is invalid: Too long: {size} bytes")
        if self.pause is not None and self.pause[0] == name:
            barrier = self.pause[1]
            self.pause = None
            barrier.wait()  # in the middle of the write: the other thread changes the state
            barrier.wait()  # its change is made: the write goes on
        return name

    def stored(self) -> StateBook:
        """What a restarted controller would read."""
        book = StateBook()
        assert book.load(read_shards(self, NS, book.prefix)) == []
        return book


def loaded_store(kube: StateKube) -> StateStore[StateBook]:
    store = StateStore(StateBook(), kube, NS)
    assert store.load()
    return store


# --- the lost write -----------------------------------------------------------------


def old_save(book: StateBook, kube: StateKube) -> None:
    """The save as it was before the StateStore: dirty_shards(); writes; written()."""
    written = []
    for name, data in book.dirty_shards().items():
        body = {"metadata": {"name": name, "namespace": NS}, "data": data}
        try:
            if name in kube.config_maps:
                kube.replace_config_map(NS, body)
            else:
                kube.create_config_map(NS, body)
        except KubeError:
            continue
        written.append(name)
    book.written(written)


def test_old_save_sequence_loses_a_verification_made_during_its_write() -> None:
    """Documents the bug the StateStore fixes: the old sequence drops the change for good."""
    kube = StateKube()
    book = StateBook()
    book.verified(record(FIRST))
    later = same_shard_as(FIRST)
    barrier = threading.Barrier(2, timeout=STUCK)
    kube.pause = (f"image-cloner-state-{shard_of(FIRST)}", barrier)
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(old_save, book, kube)
        barrier.wait()  # the save is writing the shard
        book.verified(record(later))  # a clone thread (which held only its own lock)
        barrier.wait()
        saving.result(timeout=STUCK)
    old_save(book, kube)  # the next cycle's save
    assert book.dirty_shards() == {}  # marked written...
    assert set(kube.stored().records) == {FIRST}  # ...but never written: lost at a restart


def test_a_verification_made_during_the_write_of_its_shard_is_written_by_the_next_save() -> None:
    kube = StateKube()
    store = loaded_store(kube)
    with store.locked() as book:
        book.verified(record(FIRST))
    later = same_shard_as(FIRST)
    name = f"image-cloner-state-{shard_of(FIRST)}"
    barrier = threading.Barrier(2, timeout=STUCK)
    kube.pause = (name, barrier)
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(store.save)
        barrier.wait()  # the save is writing the shard, outside the lock
        with store.locked() as book:  # a clone thread records its verification
            book.verified(record(later))
        barrier.wait()
        assert saving.result(timeout=STUCK) == [name]
    assert set(kube.stored().records) == {FIRST}  # the snapshot taken before the change
    assert store.save() == [name]
    assert set(kube.stored().records) == {FIRST, later}
    assert store.save() == []  # and then nothing is left to write


def test_a_failure_recorded_during_the_write_of_its_shard_is_written_by_the_next_save() -> None:
    kube = StateKube()
    store = loaded_store(kube)
    with store.locked() as book:
        book.verified(record(FIRST))
    ghost = same_shard_as(FIRST)
    barrier = threading.Barrier(2, timeout=STUCK)
    kube.pause = (f"image-cloner-state-{shard_of(FIRST)}", barrier)
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(store.save)
        barrier.wait()
        with store.locked() as book:
            book.failed(ghost, Failure(2, 9000.0, "not_found", "cfg"))
        barrier.wait()
        saving.result(timeout=STUCK)
    store.save()
    assert kube.stored().failures == {ghost: Failure(2, 9000.0, "not_found", "cfg")}


# --- failed writes, create and replace ---------------------------------------------------


def test_a_failed_write_keeps_the_shard_dirty_and_the_next_save_writes_it() -> None:
    kube = StateKube()
    store = loaded_store(kube)
    other = next(
        f"quay.io/x/app{i}:1"
        for i in range(1000)
        if shard_of(f"quay.io/x/app{i}:1") != shard_of(FIRST)
    )
    with store.locked() as book:
        book.verified(record(FIRST))
        book.verified(record(other))
    failing = f"image-cloner-state-{shard_of(FIRST)}"
    kube.fail_write[failing] = KubeError(503, "etcd leader changed")
    assert store.save() == [f"image-cloner-state-{shard_of(other)}"]
    assert set(kube.stored().records) == {other}
    assert store.save() == [failing]
    assert set(kube.stored().records) == {FIRST, other}
    assert store.save() == []


@pytest.mark.parametrize(
    ("meanwhile", "error", "writes"),
    [
        # another writer created it after we read it absent: replaced next time
        ("created", 409, ["create", "replace"]),
        # someone deleted it after we read it: created next time
        ("deleted", 404, ["replace", "create"]),
    ],
)
def test_create_or_replace_follows_what_the_api_server_says_exists(
    meanwhile: str, error: int, writes: list[str]
) -> None:
    kube = StateKube()
    name = f"image-cloner-state-{shard_of(FIRST)}"
    if meanwhile == "deleted":
        kube.config_maps[name] = {"metadata": {"name": name}, "data": {}}
    store = loaded_store(kube)
    if meanwhile == "created":
        kube.config_maps[name] = {"metadata": {"name": name}, "data": {}}
    else:
        del kube.config_maps[name]
    with store.locked() as book:
        book.verified(record(FIRST))
    assert store.save() == []  # refused with ``error``
    assert kube.refused == [error]
    assert store.save() == [name]
    assert [w.split()[0] for w in kube.writes] == writes
    assert set(kube.stored().records) == {FIRST}


def test_shards_are_configmaps_in_the_controller_namespace_with_the_state_labels() -> None:
    kube = StateKube()
    store = loaded_store(kube)
    with store.locked() as book:
        book.verified(record(FIRST))
    [name] = store.save()
    assert kube.config_maps[name]["metadata"] == {
        "name": name,
        "namespace": NS,
        "labels": {
            "app.kubernetes.io/name": "image-cloner",
            "app.kubernetes.io/component": "state",
        },
    }
    assert kube.config_maps[name]["apiVersion"] == "v1"
    assert kube.config_maps[name]["kind"] == "ConfigMap"


# --- load before save ---------------------------------------------------------------


def test_nothing_is_written_until_every_shard_is_read_and_nothing_read_is_overwritten() -> None:
    kube = StateKube()
    earlier = StateBook()
    earlier.verified(record(FIRST))
    for name, data in earlier.dirty_shards().items():
        kube.config_maps[name] = {"metadata": {"name": name}, "data": data}
    unreadable = next(n for n in shard_names("image-cloner-state") if n not in kube.config_maps)
    kube.fail_get[unreadable] = KubeError(0, "connection refused")
    store = StateStore(StateBook(), kube, NS)
    assert not store.load() and not store.loaded
    later = same_shard_as(FIRST)
    with store.locked() as book:  # a change before the state could be read
        book.verified(record(later))
    assert store.save() == []
    assert kube.writes == []  # FIRST's shard was not overwritten unseen
    assert store.load() and store.loaded  # the next cycle reads them all
    assert store.save() == [f"image-cloner-state-{shard_of(FIRST)}"]
    assert set(kube.stored().records) == {FIRST, later}


def test_a_store_without_a_namespace_keeps_the_state_in_memory() -> None:
    store = StateStore(StateBook())
    with store.locked() as book:
        book.verified(record(FIRST))
    assert not store.load() and store.save() == []
    with store.locked() as book:
        assert set(book.records) == {FIRST}


# --- changes racing with the snapshot -------------------------------------------------


class ProbedBook(StateBook):
    """A book that, while its dirty shards are taken, asks another thread to take the lock."""

    def __init__(self) -> None:
        super().__init__()
        self.store: StateStore[ProbedBook] | None = None
        self.others_could_lock: list[bool] = []

    def dirty_shards(self) -> dict[str, dict[str, str]]:
        assert self.store is not None
        lock = self.store._lock

        def probe() -> None:
            took = lock.acquire(blocking=False)
            if took:
                lock.release()
            self.others_could_lock.append(took)

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()
        return super().dirty_shards()


def test_the_dirty_shards_are_taken_under_the_lock_every_change_takes() -> None:
    kube = StateKube()
    book = ProbedBook()
    store = StateStore(book, kube, NS)
    book.store = store
    assert store.load()
    with store.locked() as held:
        held.verified(record(FIRST))
    store.save()
    assert book.others_could_lock == [False]


def test_changes_racing_with_saves_never_raise_and_all_are_written() -> None:
    kube = StateKube()
    store = loaded_store(kube)
    start = threading.Barrier(5, timeout=STUCK)

    def clone_thread(n: int) -> None:
        start.wait()
        for i in range(300):
            key = f"quay.io/t{n}/app{i}:1"
            with store.locked() as book:
                if i % 3:
                    book.verified(record(key))
                else:
                    book.failed(key, Failure(1, 9000.0, "network"))

    threads = [threading.Thread(target=clone_thread, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in threads):
        store.save()  # iterates the book while the clone threads insert
    for thread in threads:
        thread.join()
    store.save()
    stored = kube.stored()
    assert len(stored.records) == 4 * 200 and len(stored.failures) == 4 * 100
    assert store.save() == []


# --- one store for the cycle and its clones ----------------------------------------------


def test_the_cycle_and_its_clones_share_one_store_and_a_restart_reads_it() -> None:
    kube = FakeKube([workload("Deployment", "a", "web", "nginx:1.25")])
    registry = FakeRegistry()
    first = make(kube, registry, SETTINGS)
    assert first._images.state is first._state
    assert first.reconcile_once().cloned == 1
    names = {name for (ns, name) in kube.config_maps if ns == SETTINGS.controller_namespace}
    assert f"image-cloner-state-{shard_of('docker.io/library/nginx:1.25')}" in names
    registry.lookups = 0
    restarted = make(kube, registry, SETTINGS)
    summary = restarted.reconcile_once()
    assert summary.cloned == 0 and registry.lookups == 0  # answered from the record read back


# --- past the 1 MiB object limit: the shards grow ---------------------------------------


def switch(i: int) -> PendingSwitch:
    """A pending switch of one of many Deployments, the size a real one has."""
    original = f"docker.io/library/app{i % 400}:1.{i % 7}"
    owned = f"registry.example.com/mirror/library/app{i % 400}:1.{i % 7}@{DIGEST}"
    return PendingSwitch(
        kind="Deployment",
        namespace=f"team-{i % 100:03d}",
        name=f"service-{i:06d}",
        uid=f"{i:08x}-1111-2222-3333-444455556666",
        generation=2,
        containers=(
            SwitchedContainer("app", original, owned),
            SwitchedContainer("sidecar", original, owned),
        ),
        started=1_700_000_000.0 + i,
    )


def test_fifty_thousand_pending_switches_are_saved_and_read_back() -> None:
    """At 50,000 switched Deployments 16 shards would each pass 1 MiB (422 Too long)."""
    kube = StateKube()
    store = loaded_store(kube)
    with store.locked() as book:
        for i in range(50_000):
            book.switch_started(switch(i))
        for i in range(300):
            book.verified(record(f"docker.io/library/app{i}:1"))
    written = store.save()
    assert kube.refused == [] and len(written) == len(kube.config_maps) > 16
    assert all(
        sum(len(k) + len(v) for k, v in body["data"].items()) <= SHARD_BYTES
        for body in kube.config_maps.values()
    )
    again = kube.stored()
    assert again.shards == len(written)
    assert len(again.switches) == 50_000 and len(again.records) == 300
    assert again.switches["Deployment team-007/service-012307"] == switch(12307)
    assert store.save() == []  # nothing changed: nothing written


def test_a_growth_cut_short_at_any_write_loses_no_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doubling rewrites every shard; a restart after any prefix of those writes has it all."""
    monkeypatch.setattr(state, "SHARD_BYTES", 6000)
    book = StateBook()
    for i in range(60):
        book.switch_started(switch(i))
    before = book._shard_data(list(range(16)))
    book.written(before)
    assert book.shards == 16
    for i in range(60, 400):
        book.switch_started(switch(i))
    writes = book.dirty_shards()
    assert book.shards > 16 and len(writes) == book.shards
    names = list(writes)
    assert names.index(f"{book.prefix}-0") == book.shards - 16  # the new shards, then 0
    assert all(int(name.rsplit("-", 1)[1]) >= 16 for name in names[: book.shards - 16])
    for cut in range(len(names) + 1):
        kube = StateKube()
        kube.config_maps = {
            name: {"data": data}
            for name, data in {**before, **{n: writes[n] for n in names[:cut]}}.items()
        }
        restarted = kube.stored()
        saved = {switch(i).key for i in range(60)}
        assert saved <= set(restarted.switches), f"entries lost after {cut} writes"
    assert len(restarted.switches) == 400 and restarted.shards == book.shards


def test_an_entry_outside_its_shard_is_read_and_moved_home() -> None:
    """An entry written by the old layout (or a cut-short growth) is kept and rewritten home."""
    source = FIRST
    home = shard_of(source)
    away = (home + 1) % 16
    stray = StateBook()
    stray.verified(record(source))
    data = stray._shard_data([home])[f"image-cloner-state-{home}"]
    kube = StateKube()
    kube.config_maps[f"image-cloner-state-{away}"] = {"data": data}
    store = loaded_store(kube)
    with store.locked() as book:
        assert book.records == {source: record(source)}
    written = store.save()
    assert sorted(written) == sorted([f"image-cloner-state-{home}", f"image-cloner-state-{away}"])
    assert source in kube.config_maps[f"image-cloner-state-{home}"]["data"]["records.json"]
    assert source not in kube.config_maps[f"image-cloner-state-{away}"]["data"]["records.json"]


@pytest.mark.parametrize(
    "layout", ['{"shards": 24}', '{"shards": 8}', "[]", "x", '{"shards": "64"}']
)
def test_a_damaged_layout_reads_as_sixteen_shards(layout: str) -> None:
    assert shard_count({"layout.json": layout}) == 16
    assert shard_count({"layout.json": '{"shards": 64}'}) == 64
