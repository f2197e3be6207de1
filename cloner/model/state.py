"""What must survive a restart: verified copies, backoff, pending switches and holds.

Pure: no I/O, no clock.

Held by ``ops.state.StateStore`` alone, which owns its lock, reads every
shard at start and writes the changed ones once per cycle (through the
Kubernetes adapter); ``cloning.ImageCloner`` (verifications and failures)
and ``reconcile`` read and change it through that store. The records
live in ConfigMaps in the controller's namespace, ``SHARDS`` of them named
``<prefix>-<n>`` at first; an entry's shard is fixed by a hash of its key
(``shard_of``), so a change rewrites one small object, not the whole state.
When a shard would pass ``SHARD_BYTES`` the count doubles, up to
``MAX_SHARDS`` (shard 0 records it), so the state of 50,000 switched
workloads still fits under the API server's 1 MiB object limit.

Bounds (documented in docs and README): at most ``MAX_RECORDS`` verified
copies in all (least recently used dropped first), about 500 bytes each, so a
shard stays far below the 1 MiB object limit of etcd. A record of a source no
workload has used for ``ttl`` seconds (``stateTtl``, default 7 days) expires.
"Used" is kept with a resolution of ``USE_RESOLUTION`` seconds, so a warm
cycle writes nothing. Pending switches and holds of the rollout guard
(``ops.guard``) are kept in the shard of their workload key; there are only
as many as switches still rolling out and workloads held back, which after a
first cycle over a large cluster is every switched workload until its rollout
completes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from cloner.model.identity import refresh_due
from cloner.model.rollout import Hold, PendingSwitch

#: ConfigMaps the state is spread over at first (``<configMap>-<n>``); the
#: count doubles while a shard would pass ``SHARD_BYTES`` (``StateBook.dirty_shards``).
SHARDS = 16
#: The most shards the state may grow to: the RBAC Role names each one
#: (``manifests/base/state-rbac.yaml``, the chart's ``state-rbac.yaml``). A
#: shard past ``SHARD_BYTES`` at this count is written as it is (the API
#: server refuses one past 1 MiB, and the refusal is logged).
MAX_SHARDS = 128
#: Bytes of ``data`` a shard may hold before the count doubles: half of the
#: API server's 1 MiB (1,048,576 bytes) object limit, so the entries added
#: until the next save cannot push a shard past it.
SHARD_BYTES = 512 * 1024
#: Verified copies remembered at most; the least recently used go first.
MAX_RECORDS = 16000
#: Seconds: a record's ``used`` time is rewritten at most this often, so a
#: warm cycle writes nothing.
USE_RESOLUTION = 86400.0
#: The data keys of each state ConfigMap: the verified copies (``Record``) and
#: the failures (``Failure``) by canonical source; in shard 0 only,
#: ``{"at": epoch seconds}`` of the last ``verifyInterval`` check; the switches
#: whose rollout is still followed (``rollout.PendingSwitch``) and the
#: workloads and namespaces held back after a failed switch (``rollout.Hold``),
#: by workload key.
#: In shard 0 only, once the state has grown past ``SHARDS``: ``{"shards": n}``.
RECORDS_KEY, BACKOFF_KEY, VERIFIED_KEY, SWITCHES_KEY, HOLDS_KEY, LAYOUT_KEY = (
    "records.json",
    "backoff.json",
    "verified.json",
    "switches.json",
    "holds.json",
    "layout.json",
)


@dataclass(frozen=True, slots=True)
class Record:
    """One verified owned copy.

    Attributes:
        source: the canonical source reference.
        source_digest: the manifest digest the source named when verified.
        owned: the owned reference with its tag (no digest).
        owned_digest: the manifest digest the owned registry served.
        image: the reference workloads are patched to.
        platforms: the platforms the owned copy serves (``os/arch``), () for
            a single-platform image.
        backend: ``docker`` or ``skopeo``, the backend that verified it.
        verified: epoch seconds of the verification.
        used: epoch seconds a workload last used the source (``USE_RESOLUTION``).
        artifacts: what of the source's signatures and referrers the owned
            registry serves, as ``ops.artifacts.Synced.known`` says
            (``tag=digest`` or ``digest``), so a refresh writes only what
            changed upstream.
        artifacts_found: how many artifacts the source had at the last sync.
        artifacts_owned: how many of them the owned registry served then.
        artifacts_error: the reason the last sync failed, "" if it did not.
        artifacts_synced: epoch seconds of the last sync that succeeded, 0
            when the artifacts were never synced (or ``signatures: off``).
    """

    source: str
    source_digest: str
    owned: str
    owned_digest: str
    image: str
    platforms: tuple[str, ...]
    backend: str
    verified: float
    used: float
    artifacts: tuple[str, ...] = ()
    artifacts_found: int = 0
    artifacts_owned: int = 0
    artifacts_error: str = ""
    artifacts_synced: float = 0.0

    def answers(self, owned: str, backend: str, now: float, interval: float, pinned: bool) -> bool:
        """True when this record answers for ``owned`` with no registry call.

        It does when it was verified for that owned name by that backend and
        no refresh is due (``identity.refresh_due``): a cycle then patches to
        ``image`` as recorded (``cloning.ImageCloner``), and ``plan`` shows
        that reference.

        Args:
            owned: the owned reference with its tag (``Target.owned_name``).
            backend: ``copyBackend`` now; a record of the other one is redone.
            now: epoch seconds.
            interval: ``refreshInterval`` in seconds.
            pinned: the source has a digest (never refreshed).
        """
        return (
            self.backend == backend
            and self.owned == owned
            and not refresh_due(self.source, self.verified, now, interval, pinned)
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """A source backing off: ``failures`` in a row, next try at ``until`` (epoch seconds).

    ``inputs``: for a permanent failure, the fingerprint of the config and
    credentials it happened with (``backoff.Backoff.failed``); None otherwise.
    """

    failures: int
    until: float
    reason: str
    inputs: str | None = None


def shard_of(key: str, count: int = SHARDS) -> int:
    """The shard (0..count-1) of a key: a canonical source, or a workload key.

    ``blake2b(key) mod count``: with a power-of-two ``count``, doubling it
    moves an entry of shard ``n`` only to ``n`` or ``n + count`` (a new
    shard), which is what makes growing safe to interrupt
    (``StateBook.dirty_shards``).
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_names(prefix: str, count: int = SHARDS) -> list[str]:
    """ConfigMap names of every shard: ``<prefix>-0`` .. ``<prefix>-<count - 1>``."""
    return [f"{prefix}-{n}" for n in range(count)]


def shard_count(data: Mapping[str, str] | None) -> int:
    """How many shards the state has, from shard 0's ``data`` (``SHARDS`` when it does not say).

    A damaged or out-of-range layout reads as ``SHARDS``: the shards past it
    are then not read, and their entries are verified or followed again.
    """
    try:
        count = json.loads((data or {}).get(LAYOUT_KEY) or "{}").get("shards", SHARDS)
    except (json.JSONDecodeError, AttributeError):
        return SHARDS
    if not isinstance(count, int) or not SHARDS <= count <= MAX_SHARDS or count & (count - 1):
        return SHARDS
    return count


class StateBook:
    """Verified copies and failures in memory, with the shards changed since the last write.

    Not thread-safe: ``ops.state.StateStore`` holds its lock around every
    call, and its save marks shards written before it writes them
    (``written``) and changed again when a write fails (``unwritten``).

    Args:
        prefix: ConfigMap name prefix (``stateConfigMap``).
        ttl: seconds after its last use that a record expires.
    """

    def __init__(self, prefix: str = "image-cloner-state", ttl: float = 7 * 86400.0) -> None:
        self.prefix = prefix
        self.ttl = ttl
        self.records: dict[str, Record] = {}
        self.failures: dict[str, Failure] = {}
        #: epoch seconds of the last check that the owned copies in use exist
        self.last_verify: float | None = None
        #: workload key (``Kind ns/name``) -> its switch still rolling out
        self.switches: dict[str, PendingSwitch] = {}
        #: workload key or ``Namespace <name>`` -> its hold after a failed switch
        self.holds: dict[str, Hold] = {}
        #: shards the entries are spread over now (a power of two, ``SHARDS`` or more)
        self.shards = SHARDS
        #: the count shard 0 says in the API server (as read, or last marked written)
        self._stored_shards = SHARDS
        #: (count in the shard 0 last handed out, the stored count before it)
        self._layout_out: tuple[int, int] | None = None
        self._dirty: set[int] = set()

    # Reading and writing shards -------------------------------------------

    def load(self, shards: Mapping[str, Mapping[str, str] | None]) -> list[str]:
        """Fill the book from ConfigMap ``data`` by name; returns problems found (entries dropped).

        ``shards`` holds ``shard_names(prefix, shard_count(data of shard 0))``
        (``ops.state.read_shards`` reads them). A shard that is absent (None)
        is empty; an entry that cannot be read is dropped and named in the
        result, never raised: a damaged record costs one re-verification,
        not the controller. An entry found outside its own shard (written
        by an older layout, or left by a save that stopped half way) loses
        to the one in its own shard, and both shards are written again.
        """
        problems: list[str] = []
        self.shards = self._stored_shards = shard_count(shards.get(f"{self.prefix}-0"))
        tables: list[tuple[str, str, dict[str, Any], Callable[[str, Mapping[str, Any]], Any]]] = [
            (RECORDS_KEY, "record", self.records, _record_of),
            (SWITCHES_KEY, "switch", self.switches, _switch_of),
            (HOLDS_KEY, "hold", self.holds, _hold_of),
            (BACKOFF_KEY, "backoff", self.failures, _failure_of),
        ]
        strays: list[tuple[dict[str, Any], str, Any]] = []
        for name, data in shards.items():
            if not data:
                continue
            n = self._index(name)
            for data_key, what, into, parse in tables:
                entries: dict[str, Any] = {}
                _read(data, data_key, what, name, problems, entries, parse)
                for key, value in entries.items():
                    home = shard_of(key, self.shards)
                    if home == n:
                        into[key] = value
                    else:  # rewrite both shards: the stray goes, the entry is at home
                        strays.append((into, key, value))
                        self._dirty.update((n, home))
            if n == 0:
                verified = _json_object(data.get(VERIFIED_KEY), name, problems, flat=True)
                if isinstance(verified.get("at"), (int, float)):
                    self.last_verify = float(verified["at"])
        for into, key, value in strays:
            into.setdefault(key, value)
        self._dirty = {n for n in self._dirty if n < self.shards}
        return problems

    def dirty_shards(self) -> dict[str, dict[str, str]]:
        """ConfigMap ``data`` of every shard changed since the last ``written()``, in write order.

        While a shard's ``data`` would pass ``SHARD_BYTES``, the count
        doubles, as often as the largest shard needs (up to ``MAX_SHARDS``),
        and every shard is changed; shard 0 then records the count
        (``LAYOUT_KEY``). The order makes a save
        that stops half way lose nothing: the new shards first, then shard
        0 (the count), then the others. Until shard 0 is written a restart
        reads the old shards, still whole; after it, every entry is in its
        new shard or still in its old one (``load`` keeps the first).
        """
        while True:
            out = self._shard_data(sorted(self._dirty))
            largest = max(
                (sum(len(k) + len(v) for k, v in data.items()) for data in out.values()),
                default=0,
            )
            if largest <= SHARD_BYTES or self.shards >= MAX_SHARDS:
                break
            # Doubling about halves a shard: grow as many times as the largest needs.
            while largest > SHARD_BYTES and self.shards < MAX_SHARDS:
                self.shards *= 2
                largest //= 2
            self._dirty = set(range(self.shards))
        stored = self._stored_shards
        order = sorted(out, key=lambda name: _write_rank(self._index(name), stored))
        return {name: out[name] for name in order}

    def _shard_data(self, numbers: list[int]) -> dict[str, dict[str, str]]:
        """The ``data`` of the shards ``numbers``: each table read once, not once per shard."""
        wanted = set(numbers)
        buckets: dict[int, list[dict[str, Any]]] = {n: [{}, {}, {}, {}] for n in numbers}
        tables = (self.records, self.failures, self.switches, self.holds)
        writers: tuple[Callable[[Any], Any], ...] = (
            _record_json,
            asdict,
            PendingSwitch.to_json,
            Hold.to_json,
        )
        for position, (table, write) in enumerate(zip(tables, writers, strict=True)):
            for key, value in table.items():
                n = shard_of(key, self.shards)
                if n in wanted:
                    buckets[n][position][key] = write(value)
        out: dict[str, dict[str, str]] = {}
        for n in numbers:
            records, failures, switches, holds = buckets[n]
            data = {RECORDS_KEY: _compact(records), BACKOFF_KEY: _compact(failures)}
            if switches:
                data[SWITCHES_KEY] = _compact(switches)
            if holds:
                data[HOLDS_KEY] = _compact(holds)
            if n == 0:
                if self.last_verify is not None:
                    data[VERIFIED_KEY] = json.dumps({"at": self.last_verify})
                if self.shards != SHARDS:
                    data[LAYOUT_KEY] = json.dumps({"shards": self.shards})
                self._layout_out = (self.shards, self._stored_shards)
            out[f"{self.prefix}-{n}"] = data
        return out

    def written(self, names: Iterable[str]) -> None:
        """Mark shards (ConfigMap names) as stored; a later change marks them again."""
        for name in names:
            n = self._index(name)
            self._dirty.discard(n)
            if n == 0 and self._layout_out is not None:
                self._stored_shards = self._layout_out[0]

    def unwritten(self, names: Iterable[str]) -> None:
        """Mark shards (ConfigMap names) as changed again: their write failed after ``written``."""
        for name in names:
            n = self._index(name)
            self._dirty.add(n)
            if n == 0 and self._layout_out is not None:
                self._stored_shards = self._layout_out[1]

    def _index(self, name: str) -> int:
        return int(name.rsplit("-", 1)[1])

    # Changes ---------------------------------------------------------------

    def verified(self, record: Record) -> None:
        """Record a verification (replacing an earlier record of the source)."""
        self.records[record.source] = record
        self._touch(record.source)
        if len(self.records) > MAX_RECORDS:
            oldest = min(self.records.values(), key=lambda r: (r.used, r.verified))
            self.forget(oldest.source)

    def forget(self, key: str) -> None:
        """Drop the record of a source (its owned copy must be verified again)."""
        self._drop(self.records, key)

    def verify_done(self, now: float) -> None:
        """Record the time (epoch seconds) of a ``verifyInterval`` check, so a restart waits."""
        self.last_verify = now
        self._dirty.add(0)

    def failed(self, key: str, failure: Failure) -> None:
        """Record a failure of a source."""
        self._put(self.failures, key, failure)

    def succeeded(self, key: str) -> None:
        """Forget the failures of a source."""
        self._drop(self.failures, key)

    def used(self, keys: Iterable[str], now: float) -> None:
        """Note the sources workloads use at ``now`` (epoch seconds); expire unused records.

        A record unused for ``ttl`` seconds is dropped. A record's ``used``
        is rewritten only when it is ``USE_RESOLUTION`` older than ``now``,
        so a warm cycle changes nothing.
        """
        for key in keys:
            record = self.records.get(key)
            if record is not None and now - record.used >= USE_RESOLUTION:
                self.records[key] = replace(record, used=now)
                self._touch(key)
        for key in [k for k, r in self.records.items() if now - r.used > self.ttl]:
            self.forget(key)

    def switch_started(self, switch: PendingSwitch) -> None:
        """Follow a switch (replacing an earlier one of the same workload)."""
        self._put(self.switches, switch.key, switch)

    def switch_ended(self, key: str) -> None:
        """Stop following the switch of workload ``key`` (complete, undone or gone)."""
        self._drop(self.switches, key)

    def hold(self, key: str, hold: Hold) -> None:
        """Hold a workload (``Kind ns/name``) or a namespace (``Namespace <name>``) back."""
        self._put(self.holds, key, hold)

    def release(self, key: str) -> None:
        """End the hold of ``key``."""
        self._drop(self.holds, key)

    def _put(self, table: dict[str, Any], key: str, value: object) -> None:
        """Set ``table[key]`` and mark its shard as changed."""
        table[key] = value
        self._touch(key)

    def _drop(self, table: dict[str, Any], key: str) -> None:
        """Remove ``key`` from ``table``; its shard is changed only when it was there."""
        if table.pop(key, None) is not None:
            self._touch(key)

    def _touch(self, key: str) -> None:
        self._dirty.add(shard_of(key, self.shards))


def _write_rank(n: int, stored: int) -> tuple[int, int]:
    """Write order of shard ``n`` (``dirty_shards``): shards past ``stored`` first, then 0."""
    if n >= stored:
        return (0, n)
    return (1, 0) if n == 0 else (2, n)


def _record_json(record: Record) -> dict[str, Any]:
    data = asdict(record)
    data["platforms"] = list(record.platforms)
    data["artifacts"] = list(record.artifacts)
    return data


def _json_object(
    text: str | None, name: str, problems: list[str], flat: bool = False
) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{name}: not JSON, ignored: {exc}")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{name}: not a JSON object, ignored")
        return {}
    return value if flat else {k: v for k, v in value.items() if isinstance(v, dict)}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _read(
    data: Mapping[str, str],
    data_key: str,
    what: str,
    name: str,
    problems: list[str],
    into: dict[str, Any],
    parse: Callable[[str, Mapping[str, Any]], Any],
) -> None:
    """Parse each entry of one ``data`` key into ``into``; a damaged one goes to ``problems``."""
    for key, raw in _json_object(data.get(data_key), name, problems).items():
        try:
            into[key] = parse(key, raw)
        except (TypeError, KeyError, ValueError) as exc:
            problems.append(f"{name}: {what} {key!r} dropped: {exc}")


def _record_of(key: str, raw: Mapping[str, Any]) -> Record:
    record = Record(
        **{
            **raw,
            "platforms": tuple(raw["platforms"]),
            "artifacts": tuple(raw.get("artifacts", ())),
        }
    )
    if record.source != key:
        raise ValueError("key differs from source")
    return record


def _switch_of(key: str, raw: Mapping[str, Any]) -> PendingSwitch:
    return PendingSwitch.from_json(raw)


def _hold_of(key: str, raw: Mapping[str, Any]) -> Hold:
    return Hold.from_json(raw)


def _failure_of(key: str, raw: Mapping[str, Any]) -> Failure:
    inputs = raw.get("inputs")
    return Failure(
        int(raw["failures"]),
        float(raw["until"]),
        str(raw["reason"]),
        None if inputs is None else str(inputs),
    )
