"""What must survive a restart: verified copies, backoff, pending switches and holds.

Pure: no I/O, no clock.

Held by ``ops.state.StateStore`` alone, which owns its lock, reads every
shard at start and writes the changed ones once per cycle (through the
Kubernetes adapter); ``cloning.ImageCloner`` (verifications and failures)
and ``reconcile`` read and change it through that store. The records
live in ConfigMaps in the controller's namespace, ``SHARDS`` of them named
``<prefix>-<n>``; a source's shard is fixed by a hash of its canonical name,
so a change rewrites one small object, not the whole state.

Bounds (documented in docs and README): at most ``MAX_RECORDS`` verified
copies in all (least recently used dropped first), about 500 bytes each, so a
shard stays far below the 1 MiB object limit of etcd. A record of a source no
workload has used for ``ttl`` seconds (``stateTtl``, default 7 days) expires.
"Used" is kept with a resolution of ``USE_RESOLUTION`` seconds, so a warm
cycle writes nothing. Pending switches and holds of the rollout guard
(``ops.guard``) are kept in the shard of their workload key; there are only
as many as switches still rolling out and workloads held back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from cloner.model.identity import refresh_due, spread
from cloner.model.rollout import Hold, PendingSwitch

#: ConfigMaps the state is spread over (``<configMap>-<n>``), each under the
#: API server's 1 MiB object limit; a source always lands in the same one.
SHARDS = 16
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
RECORDS_KEY, BACKOFF_KEY, VERIFIED_KEY, SWITCHES_KEY, HOLDS_KEY = (
    "records.json",
    "backoff.json",
    "verified.json",
    "switches.json",
    "holds.json",
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


def shard_of(key: str) -> int:
    """The shard (0..SHARDS-1) of a canonical source reference."""
    return int(spread(key) * SHARDS)


def shard_names(prefix: str) -> list[str]:
    """ConfigMap names of every shard: ``<prefix>-0`` .. ``<prefix>-15``."""
    return [f"{prefix}-{n}" for n in range(SHARDS)]


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
        self._dirty: set[int] = set()

    # Reading and writing shards -------------------------------------------

    def load(self, shards: Mapping[str, Mapping[str, str] | None]) -> list[str]:
        """Fill the book from ConfigMap ``data`` by name; returns problems found (entries dropped).

        A shard that is absent (None) is empty; an entry that cannot be read
        is dropped and named in the result, never raised: a damaged record
        costs one re-verification, not the controller.
        """
        problems: list[str] = []
        for name, data in shards.items():
            if not data:
                continue
            _read(data, RECORDS_KEY, "record", name, problems, self.records, _record_of)
            verified = _json_object(data.get(VERIFIED_KEY), name, problems, flat=True)
            if isinstance(verified.get("at"), (int, float)):
                self.last_verify = float(verified["at"])
            _read(data, SWITCHES_KEY, "switch", name, problems, self.switches, _switch_of)
            _read(data, HOLDS_KEY, "hold", name, problems, self.holds, _hold_of)
            _read(data, BACKOFF_KEY, "backoff", name, problems, self.failures, _failure_of)
        return problems

    def dirty_shards(self) -> dict[str, dict[str, str]]:
        """ConfigMap ``data`` of every shard changed since the last ``written()``."""
        out: dict[str, dict[str, str]] = {}
        for n in sorted(self._dirty):
            records = {k: _record_json(r) for k, r in self.records.items() if shard_of(k) == n}
            failures = {k: asdict(f) for k, f in self.failures.items() if shard_of(k) == n}
            out[f"{self.prefix}-{n}"] = {
                RECORDS_KEY: json.dumps(records, sort_keys=True, separators=(",", ":")),
                BACKOFF_KEY: json.dumps(failures, sort_keys=True, separators=(",", ":")),
            }
            switches = {k: w.to_json() for k, w in self.switches.items() if shard_of(k) == n}
            holds = {k: h.to_json() for k, h in self.holds.items() if shard_of(k) == n}
            if switches:
                out[f"{self.prefix}-{n}"][SWITCHES_KEY] = _compact(switches)
            if holds:
                out[f"{self.prefix}-{n}"][HOLDS_KEY] = _compact(holds)
            if n == 0 and self.last_verify is not None:
                out[f"{self.prefix}-0"][VERIFIED_KEY] = json.dumps({"at": self.last_verify})
        return out

    def written(self, names: Iterable[str]) -> None:
        """Mark shards (ConfigMap names) as stored; a later change marks them again."""
        for name in names:
            self._dirty.discard(int(name.rsplit("-", 1)[1]))

    def unwritten(self, names: Iterable[str]) -> None:
        """Mark shards (ConfigMap names) as changed again: their write failed after ``written``."""
        for name in names:
            self._dirty.add(int(name.rsplit("-", 1)[1]))

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
        self._dirty.add(shard_of(key))


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
