"""The one owner of the durable state: its lock, its load, its save, its ConfigMaps.

``reconcile.Reconciler`` builds one ``StateStore`` around the
``state.StateBook`` and hands the same store to ``cloning.ImageCloner``.
The Reconciler calls ``load`` before a cycle decides anything and ``save``
after the cycle's changes; ImageCloner's clone threads, which outlive a
cycle, and the cycle's own thread change or read the book only inside
``locked()``. Nothing else holds the book.

The store does not know what a shard holds: it asks the book for the
``data`` of the shards changed since the last save, writes each one as a
ConfigMap ``<prefix>-<n>`` in the controller's namespace, and hands what it
reads at start back to the book. Its kube side is the ``StateAPI`` protocol
(``reconcile.KubeAPI`` has it), never an adapter.

It must not hold its lock while it calls the API server: a save takes the
changed shards' data and clears their marks under the lock, writes outside
it, and marks a shard whose write failed changed again. A change made while
a write is in flight marks its shard again, so the next save writes it:
no change is ever marked written without having been written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

from cloner.errors import KubeError
from cloner.model.state import shard_count, shard_names

log = logging.getLogger(__name__)

#: Labels of every state ConfigMap.
LABELS = {"app.kubernetes.io/name": "image-cloner", "app.kubernetes.io/component": "state"}


class StateAPI(Protocol):
    """The ConfigMap calls the store makes (``reconcile.KubeAPI`` has them)."""

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap as JSON, None if absent; raises ``KubeError``."""
        ...

    def create_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a ConfigMap; raises ``KubeError`` (409 when it exists)."""
        ...

    def replace_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        """Update a ConfigMap; raises ``KubeError`` (404 when it does not exist)."""
        ...


class ShardedBook(Protocol):
    """What the store needs of a book (``state.StateBook`` is one); what a shard holds is its own.

    Attributes:
        prefix: ConfigMap name prefix; the shards are ``state.shard_names(prefix)``.
    """

    prefix: str

    def load(self, shards: Mapping[str, Mapping[str, str] | None]) -> list[str]:
        """Fill the book from ConfigMap ``data`` by name (None: absent); returns problems found."""
        ...

    def dirty_shards(self) -> dict[str, dict[str, str]]:
        """ConfigMap name -> ``data`` of every shard changed since it was last marked written."""
        ...

    def written(self, names: Iterable[str]) -> None:
        """Mark shards as written."""
        ...

    def unwritten(self, names: Iterable[str]) -> None:
        """Mark shards as changed again (their write failed)."""
        ...


B = TypeVar("B", bound=ShardedBook)


def read_shards(kube: StateAPI, namespace: str, prefix: str) -> dict[str, Mapping[str, str] | None]:
    """Every state ConfigMap's ``data`` by name: shard 0 first, then as many as it says.

    Args:
        kube: the API server.
        namespace: the controller's namespace.
        prefix: ``stateConfigMap``; the names are ``state.shard_names``.

    Returns:
        ConfigMap name -> its ``data`` ({} when it has none), None when it
        does not exist.

    Raises:
        KubeError: a shard could not be read.
    """

    def data(name: str) -> Mapping[str, str] | None:
        obj = kube.get_config_map(namespace, name)
        return None if obj is None else (obj.get("data") or {})

    first = data(f"{prefix}-0")
    shards: dict[str, Mapping[str, str] | None] = {f"{prefix}-0": first}
    for name in shard_names(prefix, shard_count(first))[1:]:
        shards[name] = data(name)
    return shards


class StateStore(Generic[B]):
    """A book of durable state, its lock, and its ConfigMaps.

    Args:
        book: the state in memory (``state.StateBook``); from here on only
            the store holds it: read and change it inside ``locked()``.
        kube: reads and writes the ConfigMaps (``StateAPI``); None keeps the
            state in memory only.
        namespace: the controller's namespace, where the ConfigMaps live;
            None keeps the state in memory only (``load`` and ``save`` do
            nothing).
    """

    def __init__(self, book: B, kube: StateAPI | None = None, namespace: str | None = None) -> None:
        self._book = book
        self._kube = kube
        self._namespace = namespace
        self._lock = threading.RLock()
        self._saving = threading.Lock()  # one save at a time: writes of a shard stay in order
        self._loaded = False
        self._exists: set[str] = set()  # ConfigMaps known to exist (replace, not create)

    @property
    def namespace(self) -> str | None:
        """Where the ConfigMaps live; None when the state is kept in memory only."""
        return self._namespace

    @property
    def loaded(self) -> bool:
        """True once every shard has been read (never without a namespace)."""
        return self._loaded

    @contextmanager
    def locked(self) -> Iterator[B]:
        """The book, with the store's lock held inside; every read and change goes here.

        Reentrant. Hold it for in-memory work only, never across a registry
        or API server call.
        """
        with self._lock:
            yield self._book

    def load(self) -> bool:
        """Read every shard, once, before the first cycle decides anything.

        A shard that cannot be read now leaves the book untouched and is
        tried again at the next call; until all are read, ``save`` writes
        nothing, so no shard is overwritten unseen. A damaged entry is
        dropped by the book and logged, never raised.

        Returns:
            True when the shards are loaded (by this call or an earlier
            one); False when they could not all be read, or there is no
            namespace.
        """
        if self._loaded:
            return True
        if self._kube is None or self._namespace is None:
            return False
        with self._lock:
            prefix = self._book.prefix
        try:
            shards = read_shards(self._kube, self._namespace, prefix)
        except KubeError as exc:
            log.warning("cannot read the state ConfigMaps yet (%s); trying next cycle", exc)
            return False
        self._exists.update(name for name, data in shards.items() if data is not None)
        with self._lock:
            problems = self._book.load(shards)
        for problem in problems:
            log.warning("state: %s", problem)
        self._loaded = True
        return True

    def save(self) -> list[str]:
        """Write the shards changed since the last save (create the ones that do not exist yet).

        Under the lock: the changed shards' data is taken and their marks
        cleared. Outside it: each is written (replace when it exists, else
        create; a 404 or 409 flips what is known of its existence). A shard
        whose write failed, and one changed meanwhile, is written by the
        next save. Nothing is written before ``load`` has read every shard.

        Returns:
            The names of the ConfigMaps written. A failed write is logged,
            never raised.
        """
        if self._kube is None or self._namespace is None or not self._loaded:
            return []
        with self._saving:
            with self._lock:
                shards = self._book.dirty_shards()
                self._book.written(shards)
            written: list[str] = []
            try:
                for name, data in shards.items():
                    if self._write(self._kube, self._namespace, name, data):
                        written.append(name)
            finally:
                # Failed or not reached (an unexpected error): changed again.
                failed = [name for name in shards if name not in written]
                if failed:
                    with self._lock:
                        self._book.unwritten(failed)
            return written

    def _write(self, kube: StateAPI, namespace: str, name: str, data: dict[str, str]) -> bool:
        """Create or replace one shard's ConfigMap; False (logged) when it failed."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
            "data": data,
        }
        try:
            if name in self._exists:
                kube.replace_config_map(namespace, body)
            else:
                kube.create_config_map(namespace, body)
                self._exists.add(name)
        except KubeError as exc:
            if exc.status in (404, 409):  # deleted, or created by another writer
                self._exists ^= {name}
            log.warning("writing state %s/%s failed (%s); retried next cycle", namespace, name, exc)
            return False
        return True
