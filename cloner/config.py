"""Settings: loaded from YAML and the environment, validated in this one place.

Called once by ``controller.py`` at start-up. A bad value raises ``ConfigError``
naming the YAML key, so start-up stops with a clear message. Keys are
camelCase in YAML, as in Kubernetes manifests; unknown keys are rejected so a
typo does not silently fall back to a default.

Every key is described once, by a ``Key`` record in ``KEYS``: its YAML key,
the settings group and field it fills, its type, range or choices, unit,
environment override and meaning (the default is the field's default in its
group). That table drives the conversion of YAML and environment values, the
range checks and their messages, and the configuration reference in
docs/configuration.md (``reference_table()``; ``python -m cloner.config
--markdown`` prints it; a unit test compares the two). Rules between several
keys (``backoff.max`` against ``backoff.initial``, the lease timing, parsing
``target`` with ``naming`` and ``flatSeparator``) are in ``Settings``, after
the per-key checks.

Adding a key: a field with its default in its group (or ``Settings``), a
``Key`` in ``KEYS``, then ``python -m cloner.config --markdown`` into
docs/configuration.md (tests/unit/test_docs.py fails until then) and a sample
in tests/unit/test_config.py ``SAMPLES``.

The settings are grouped; a collaborator takes its group::

    settings.copy.backend              # copyBackend
    settings.backoff.initial           # backoff.initial
    settings.pull_secrets.name         # pullSecret.name
    settings.leader_election.lease_duration  # leaderElection.leaseDuration
    settings.metrics.port              # metricsPort
    settings.refresh.interval          # refreshInterval
    settings.state.config_map          # state.configMap
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml

from cloner.errors import ConfigError, InvalidReference
from cloner.model.artifacts import SignatureMode
from cloner.model.backoff import BackoffPolicy
from cloner.model.identity import BackendName
from cloner.model.lease import validate_timing
from cloner.model.pullsecrets import AttachMode
from cloner.model.reference import NamingStrategy, Policy, Target
from cloner.model.workloads import GitopsMode, NamespaceScope

# Kubernetes object names: RFC 1123 DNS subdomain (apimachinery validation).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

#: Schemes ``dockerHost`` may use (the docker SDK's ``base_url``).
_DOCKER_SCHEMES = ("unix://", "tcp://", "http://", "https://", "ssh://")


GITOPS_MODES = tuple(GitopsMode)

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def _convert_and_check(obj: object) -> None:
    """Convert and check every field of a settings group as ``KEYS`` says (in place)."""
    for key in _KEYS_OF[type(obj).__name__]:
        object.__setattr__(obj, key.field, key.parse(getattr(obj, key.field)))


class _Checked:
    """Base of the settings groups: made, each field is converted and checked (``KEYS``).

    Raises:
        ConfigError: a field is of the wrong type or out of its range; the
            message names the YAML key.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        _convert_and_check(self)


@dataclass(frozen=True, slots=True)
class CopySettings(_Checked):
    """How images are copied: the backend, its limits and its connections.

    Fields (YAML key; type, default, range and meaning in ``KEYS`` and
    docs/configuration.md): ``backend`` (``copyBackend``), ``concurrency``
    (``cloneConcurrency``), ``registry_concurrency`` (``registryConcurrency``),
    ``engine_cache_bytes`` (``engineCacheBytes``, bytes), ``docker_host``
    (``dockerHost``), ``docker_timeout`` (``dockerTimeout``, seconds),
    ``registry_timeout`` (``registryTimeout``, seconds),
    ``insecure_registries`` (``insecureRegistries``).

    Raises:
        ConfigError: see ``_Checked``.
    """

    backend: BackendName = BackendName.DOCKER
    concurrency: int = 4
    registry_concurrency: int = 3
    engine_cache_bytes: int = 15 * 1024**3
    docker_host: str = "unix:///var/run/docker.sock"
    docker_timeout: float = 600.0
    registry_timeout: float = 30.0
    insecure_registries: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BackoffSettings(_Checked):
    """Retry timing after failed clones and "too many requests".

    Fields: ``initial`` (``backoff.initial``, seconds), ``maximum``
    (``backoff.max``, seconds), ``jitter`` (``backoff.jitter``, fraction 0..1),
    ``rate_limit_pause`` (``rateLimitPause``, seconds).

    Raises:
        ConfigError: see ``_Checked``.
    """

    initial: float = 30.0
    maximum: float = 3600.0
    jitter: float = 0.2
    rate_limit_pause: float = 300.0

    @property
    def policy(self) -> BackoffPolicy:
        """The timing as ``cloner.model.backoff`` uses it."""
        return BackoffPolicy(self.initial, self.maximum, self.jitter)


@dataclass(frozen=True, slots=True)
class PullSecretSettings(_Checked):
    """The managed pull Secret of the owned registry in each patched namespace.

    Fields: ``name`` (``pullSecret.name``), ``attach`` (``pullSecret.attach``,
    ``AttachMode``), ``provision`` (``pullSecret.provision``), ``docker_config``
    (``pullSecret.dockerConfig``: the read-only pull credentials' docker
    ``config.json``, or None to use the push credentials' entry).

    Raises:
        ConfigError: see ``_Checked``.
    """

    name: str = "image-cloner-pull-secret"
    attach: AttachMode = AttachMode.SERVICEACCOUNT
    provision: bool = True
    docker_config: Path | None = None


@dataclass(frozen=True, slots=True)
class LeaderElectionSettings(_Checked):
    """Leader election on a ``coordination.k8s.io/v1`` Lease (client-go's rules).

    Fields: ``enabled`` (``leaderElection.enabled``), ``lease_name``
    (``leaderElection.leaseName``), ``lease_duration``, ``renew_deadline``,
    ``retry_period`` (``leaderElection.leaseDuration``, ``.renewDeadline``,
    ``.retryPeriod``; seconds). Their consistency
    (``cloner.model.lease.validate_timing``) is checked by ``Settings`` and
    by ``LeaderElector``.

    Raises:
        ConfigError: see ``_Checked``.
    """

    enabled: bool = True
    lease_name: str = "image-cloner"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True, slots=True)
class MetricsSettings(_Checked):
    """The HTTP endpoint of ``/metrics``, ``/healthz``, ``/readyz`` and ``/state/backoff``.

    Fields: ``port`` (``metricsPort``; TCP port, 0 disables the endpoint),
    ``address`` (``metricsAddress``).

    Raises:
        ConfigError: see ``_Checked``.
    """

    port: int = 9090
    address: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class RefreshSettings(_Checked):
    """When what is known is asked again.

    Fields: ``interval`` (``refreshInterval``, seconds; 0 never), ``verify_interval``
    (``verifyInterval``, seconds; 0 never).

    Raises:
        ConfigError: see ``_Checked``.
    """

    interval: float = 21600.0
    verify_interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class StateSettings(_Checked):
    """The durable state: verified copies and backoff across restarts.

    Fields: ``config_map`` (``state.configMap``, name prefix of 16 ConfigMaps),
    ``ttl`` (``state.ttl``, seconds).

    Raises:
        ConfigError: see ``_Checked``.
    """

    config_map: str = "image-cloner-state"
    ttl: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class RolloutSettings(_Checked):
    """The rollout guard: follow each switch, undo one that broke, canary per namespace.

    Fields: ``enabled`` (``rollout.enabled``), ``canary`` (``rollout.canary``),
    ``timeout`` (``rollout.timeout``, seconds), ``pull_failure_grace``
    (``rollout.pullFailureGrace``, seconds).

    Raises:
        ConfigError: see ``_Checked``.
    """

    enabled: bool = True
    canary: bool = True
    timeout: float = 600.0
    pull_failure_grace: float = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the controller: top-level scalars and the groups.

    Build it with ``load_settings``, or directly in tests, e.g.
    ``Settings(target="r.example/m", copy=CopySettings(backend="skopeo"))``:
    each value is converted and checked as its ``Key`` in ``KEYS`` says
    (choices become their ``StrEnum``), then the rules between keys run.

    Top-level fields (YAML key): ``target`` (required), ``poll_interval``
    (``pollInterval``, seconds), ``docker_config`` (``dockerConfig``),
    ``include_namespaces`` / ``exclude_namespaces`` (``namespaces.include`` /
    ``.exclude``), ``controller_namespace`` (``controllerNamespace``),
    ``list_page_size`` (``listPageSize``), ``naming`` (``NamingStrategy``),
    ``flat_separator`` (``flatSeparator``), ``pin_digest`` (``pinDigest``),
    ``signatures`` (``SignatureMode``),
    ``owned_registries`` (``ownedRegistries``), ``include_images`` /
    ``exclude_images`` (``images.include`` / ``.exclude``), ``gitops``
    (``GitopsMode``), ``fight_limit`` (``fightLimit``), ``patch_concurrency``
    (``patchConcurrency``), ``shutdown_timeout`` (``shutdownTimeout``, seconds).

    Groups: ``copy``, ``backoff``, ``pull_secrets``, ``leader_election``,
    ``metrics``, ``refresh``, ``state``, ``rollout`` (see their classes).

    Derived (not YAML keys): ``owned``, the parsed ``target``; ``policy``,
    ownership, naming and image scope.

    Raises:
        ConfigError: a value of the wrong type or range, ``backoff.max`` below
            ``backoff.initial``, inconsistent lease timing (``leaderElection``),
            an unparsable ``target``, ``flatSeparator`` or ``ownedRegistries``
            entry. The message names the YAML key.
    """

    target: str
    poll_interval: float = 60.0
    docker_config: Path = Path("/etc/image-cloner/docker/config.json")
    include_namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES
    controller_namespace: str | None = None
    list_page_size: int = 500
    naming: NamingStrategy = NamingStrategy.NESTED
    flat_separator: str = "_"
    pin_digest: bool = False
    signatures: SignatureMode = SignatureMode.COPY
    owned_registries: tuple[str, ...] = ()
    include_images: tuple[str, ...] = ()
    exclude_images: tuple[str, ...] = ()
    gitops: GitopsMode = GitopsMode.REPORT
    fight_limit: int = 3
    patch_concurrency: int = 8
    shutdown_timeout: float = 30.0
    copy: CopySettings = field(default_factory=CopySettings)
    backoff: BackoffSettings = field(default_factory=BackoffSettings)
    pull_secrets: PullSecretSettings = field(default_factory=PullSecretSettings)
    leader_election: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    state: StateSettings = field(default_factory=StateSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    owned: Target = field(init=False, default=Target("invalid.invalid"))
    policy: Policy = field(init=False, default=Policy(Target("invalid.invalid")))

    def __post_init__(self) -> None:
        _convert_and_check(self)
        # The rules between keys, all here.
        if self.backoff.maximum < self.backoff.initial:
            raise ConfigError("backoff.max", "must not be less than backoff.initial")
        election = self.leader_election
        try:
            validate_timing(election.lease_duration, election.renew_deadline, election.retry_period)
        except ValueError as exc:
            raise ConfigError("leaderElection", str(exc)) from None
        try:
            owned = Target.parse(self.target, self.naming, self.flat_separator)
        except InvalidReference as exc:
            raise ConfigError("target", exc.problem) from None
        except ValueError as exc:
            raise ConfigError("flatSeparator", str(exc)) from None
        others = []
        for i, text in enumerate(self.owned_registries):
            try:
                others.append(Target.parse(text))
            except InvalidReference as exc:
                raise ConfigError(f"ownedRegistries[{i}]", exc.problem) from None
        object.__setattr__(self, "owned", owned)
        object.__setattr__(
            self,
            "policy",
            Policy(owned, tuple(others), self.include_images, self.exclude_images),
        )

    @property
    def namespace_scope(self) -> NamespaceScope:
        """``namespaces.include``, ``.exclude`` and ``controllerNamespace``: one decision."""
        return NamespaceScope(
            self.include_namespaces, self.exclude_namespaces, self.controller_namespace
        )

    @property
    def excluded_namespaces(self) -> tuple[str, ...]:
        """Configured exclusion patterns plus the controller's own namespace."""
        names = list(self.exclude_namespaces)
        if self.controller_namespace and self.controller_namespace not in names:
            names.append(self.controller_namespace)
        return tuple(names)


#: How a key's value is read (see ``Key.parse``):
#: ``seconds`` / ``number``: a finite number (YAML number or numeric string);
#: ``integer``; ``boolean`` (``true``/``false``, also as strings);
#: ``string``: non-empty, stripped; ``strings``: a list of those (or one
#: comma-separated string, as from the environment); ``path``; ``address``:
#: a Docker engine URL; ``name``: a DNS subdomain name; ``choice``: one of
#: ``Key.choices``.
Kind = Literal[
    "seconds",
    "number",
    "integer",
    "boolean",
    "string",
    "strings",
    "path",
    "address",
    "name",
    "choice",
]

#: The ``type`` column of the reference, per kind.
_KIND_TEXT: dict[str, str] = {
    "seconds": "number, seconds",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "string": "string",
    "strings": "list of strings",
    "path": "path",
    "address": "URL",
    "name": "name",
    "choice": "choice",
}


@dataclass(frozen=True, slots=True)
class Key:
    """One YAML key: where it goes, how it is read and checked, what it means.

    Attributes:
        yaml: the key, dotted for a nested section (``backoff.initial``).
        group: the ``Settings`` attribute of its group (``backoff``), ``""``
            for a field of ``Settings`` itself.
        field: the field in that group (``initial``).
        kind: how the value is read (``Kind``).
        meaning: one line for the reference (Markdown).
        low: smallest allowed value (numbers), or None.
        high: largest allowed value (numbers), or None.
        above: ``low`` itself is not allowed (``> 0`` rather than ``>= 0``).
        choices: the ``StrEnum`` of the allowed values (``choice``).
        max_length: longest allowed name in characters (``name``).
        unit: shown after the type in the reference (``bytes``).
        env: the environment variable overriding it, ``""`` for none.
        rule: a rule between keys, shown in the range column (checked in
            ``Settings``).
    """

    yaml: str
    group: str
    field: str
    kind: Kind
    meaning: str
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: type[StrEnum] | None = None
    max_length: int | None = None
    unit: str = ""
    env: str = ""
    rule: str = ""

    @property
    def attribute(self) -> str:
        """Where the value is read: ``backoff.initial`` for ``settings.backoff.initial``."""
        return f"{self.group}.{self.field}" if self.group else self.field

    @property
    def default(self) -> Any:
        """The default: the field's default in its group class; ``MISSING`` when required."""
        owner = _GROUP_CLASSES[self.group]
        spec = next(f for f in fields(owner) if f.name == self.field)
        if spec.default_factory is not MISSING:
            return spec.default_factory()
        return spec.default

    def parse(self, value: Any) -> Any:
        """Convert a YAML, environment or Python value and check it.

        Args:
            value: as read (a YAML scalar or list, an environment string) or
                already typed (a default, a test's argument). None passes
                through for a field whose default is None.

        Returns:
            The typed value: float, int, bool, str, ``tuple[str, ...]``,
            ``Path`` or the member of ``choices``.

        Raises:
            ConfigError: wrong type, outside ``low``..``high``, not one of the
                choices, not a DNS subdomain name; ``field`` is the YAML key.
        """
        if value is None and self.default is None:
            return None
        kind = self.kind
        if kind in ("seconds", "number"):
            return self._in_range(self._number(value))
        if kind == "integer":
            return self._in_range(self._integer(value))
        if kind == "boolean":
            return self._boolean(value)
        if kind == "strings":
            return self._strings(value)
        if kind == "path":
            return value if isinstance(value, Path) else Path(_string(self.yaml, value))
        return self._text(_string(self.yaml, value))

    def _text(self, text: str) -> Any:
        """Check a ``string``, ``address``, ``name`` or ``choice`` value."""
        kind = self.kind
        if kind == "address" and not text.startswith(_DOCKER_SCHEMES):
            raise ConfigError(
                self.yaml, f"must be a unix://, tcp:// or ssh:// address, got {text!r}"
            )
        if kind == "name" and (
            len(text) > (self.max_length or 0) or not _DNS_SUBDOMAIN.fullmatch(text)
        ):
            raise ConfigError(
                self.yaml,
                f"must be a DNS subdomain name (lowercase, digits, '-', '.') of at most "
                f"{self.max_length} characters, got {text!r}",
            )
        if kind == "choice":
            assert self.choices is not None
            if text not in set(self.choices):
                raise ConfigError(self.yaml, f"must be one of {', '.join(self.choices)}")
            return self.choices(text)
        return text

    def _number(self, value: Any) -> float:
        what = "a number of seconds" if self.kind == "seconds" else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(self.yaml, f"must be {what}, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(self.yaml, f"must be {what}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(self.yaml, f"must be a finite number, got {value!r}")
        return number

    def _integer(self, value: Any) -> int:
        if isinstance(value, bool):
            raise ConfigError(self.yaml, f"must be an integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(self.yaml, f"must be an integer, got {value!r}") from None
        if isinstance(value, float) and value != number:
            raise ConfigError(self.yaml, f"must be an integer, got {value!r}")
        return number

    def _in_range(self, number: float) -> Any:
        low, high = self.low, self.high
        got = number if isinstance(number, int) else f"{number:g}"
        if low is not None and high is not None and not low <= number <= high:
            raise ConfigError(
                self.yaml, f"must be between {_number(low)} and {_number(high)}, got {got}"
            )
        if low is not None and self.above and not number > low:
            raise ConfigError(self.yaml, f"must be greater than {_number(low)}, got {got}")
        if low is not None and not number >= low:
            raise ConfigError(self.yaml, f"must be at least {_number(low)}, got {got}")
        return number

    def _boolean(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ConfigError(self.yaml, f"must be true or false, got {value!r}")

    def _strings(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(self.yaml, f"must be a list of strings, got {value!r}")
        return tuple(_string(f"{self.yaml}[{i}]", v) for i, v in enumerate(value))

    def range_text(self) -> str:
        """The range column of the reference: bounds, choices, name rules, rules between keys."""
        parts = []
        low, high = self.low, self.high
        if low is not None and high is not None:
            parts.append(f"{_number(low)}..{_number(high)}")
        elif low is not None:
            parts.append(f"{'>' if self.above else '≥'} {_number(low)}")
        if self.choices is not None:
            parts.append(", ".join(f"`{c}`" for c in self.choices))
        if self.kind == "name":
            parts.append(f"DNS subdomain name, at most {self.max_length} characters")
        if self.kind == "address":
            parts.append(", ".join(f"`{s}`" for s in _DOCKER_SCHEMES))
        if self.rule:
            parts.append(self.rule)
        return "; ".join(parts)

    def default_text(self) -> str:
        """The default column of the reference, in Markdown."""
        value = self.default
        if value is MISSING:
            return "(required)"
        if value is None:
            return ""
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, float):
            text = _number(value)
        elif isinstance(value, tuple):
            text = f"[{', '.join(value)}]"
        else:
            text = str(value)
        shown = f"`{text}`"
        if self.unit == "bytes" and value and value % 1024**3 == 0:
            shown += f" ({value // 1024**3} GiB)"
        return shown


def _number(value: float) -> str:
    """``60.0`` -> ``60``, ``0.2`` -> ``0.2``, ``2**50`` -> ``2^50``."""
    if value == int(value):
        whole = int(value)
        if whole >= 2**30 and whole & (whole - 1) == 0:
            return f"2^{whole.bit_length() - 1}"
        return str(whole)
    return f"{value:g}"


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


#: Where ``KEYS`` is described: one record per key (see the file's header).
KEYS_FILE = Path(__file__).with_name("settings_keys.yaml")

#: The StrEnums a ``choice`` key's ``choices`` may name.
_CHOICES: Mapping[str, type[StrEnum]] = {
    cls.__name__: cls
    for cls in (NamingStrategy, GitopsMode, AttachMode, BackendName, SignatureMode)
}


#: PyYAML's safe loader, the libyaml one when PyYAML was built with it (same
#: documents accepted, about ten times faster: the key table is read at import).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_keys(path: Path = KEYS_FILE) -> tuple[Key, ...]:
    """The key records of ``path``, in their order.

    Raises:
        ValueError: a record has an unknown field or names an unknown StrEnum
            (a packaging or editing mistake, not a user's config error).
    """
    keys = []
    for raw in yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER):
        try:
            entry = {**raw, "choices": _CHOICES[raw["choices"]]} if "choices" in raw else raw
            keys.append(Key(**entry))
        except (TypeError, KeyError) as exc:
            raise ValueError(f"{path}: {raw.get('yaml')!r}: {exc}") from None
    return tuple(keys)


#: Every YAML key, in the order of the reference in docs/configuration.md.
KEYS: tuple[Key, ...] = _load_keys()

#: Settings attribute of a group ("" for Settings) -> its class.
_GROUP_CLASSES: dict[str, type] = {
    "": Settings,
    "copy": CopySettings,
    "backoff": BackoffSettings,
    "pull_secrets": PullSecretSettings,
    "leader_election": LeaderElectionSettings,
    "metrics": MetricsSettings,
    "refresh": RefreshSettings,
    "state": StateSettings,
    "rollout": RolloutSettings,
}

#: Group class name -> its keys (what ``_convert_and_check`` checks).
_KEYS_OF: dict[str, tuple[Key, ...]] = {
    cls.__name__: tuple(k for k in KEYS if k.group == attr) for attr, cls in _GROUP_CLASSES.items()
}

#: YAML key -> its ``Key``.
KEYS_BY_YAML: dict[str, Key] = {k.yaml: k for k in KEYS}

#: YAML sections holding nested keys (``backoff`` of ``backoff.initial``).
SECTIONS = frozenset(k.yaml.split(".")[0] for k in KEYS if "." in k.yaml)

#: Environment variables that override a setting: variable -> YAML key.
ENV_OVERRIDES = {k.env: k.yaml for k in KEYS if k.env}


def _check_table() -> None:
    """Each init field of each group has exactly one key, and the table is consistent."""
    assert len(KEYS_BY_YAML) == len(KEYS), "a YAML key twice"
    for attr, cls in _GROUP_CLASSES.items():
        wanted = {f.name for f in fields(cls) if f.init and f.name not in _GROUP_CLASSES}
        have = [k.field for k in KEYS if k.group == attr]
        assert sorted(have) == sorted(wanted), (attr, sorted(set(have) ^ wanted))
    for k in KEYS:
        assert (k.kind == "choice") == (k.choices is not None), k.yaml
        assert (k.kind == "name") == (k.max_length is not None), k.yaml


_check_table()


def reference_table() -> str:
    """The configuration reference: one Markdown table row per key of ``KEYS``.

    Returns:
        The table (header, separator, rows; ends with a newline), as kept in
        docs/configuration.md between the ``settings-table`` marker comments.
    """
    lines = [
        "| key | type | default | range | env override | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k in KEYS:
        kind = _KIND_TEXT[k.kind] + (f", {k.unit}" if k.unit else "")
        env = f"`{k.env}`" if k.env else ""
        cells = [f"`{k.yaml}`", kind, k.default_text(), k.range_text(), env, k.meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _value_schema(key: Key) -> dict[str, Any]:
    """The JSON Schema (draft 7) of one key's value, as strict as ``Key.parse``."""
    kind = key.kind
    if kind == "choice":
        assert key.choices is not None
        return {"enum": [str(c) for c in key.choices]}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "strings":
        return {"type": "array", "items": {"type": "string", "minLength": 1}}
    if kind in ("seconds", "number", "integer"):
        schema: dict[str, Any] = {"type": "integer" if kind == "integer" else "number"}
        if key.low is not None:
            schema["exclusiveMinimum" if key.above else "minimum"] = _json_number(key.low)
        if key.high is not None:
            schema["maximum"] = _json_number(key.high)
        return schema
    schema = {"type": "string", "minLength": 1}
    if kind == "name":
        schema["maxLength"] = key.max_length
        schema["pattern"] = f"^{_DNS_SUBDOMAIN.pattern}$"
    return schema


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def chart_schema(chart_set: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config`` block of the Helm chart's ``values.schema.json``, from ``KEYS``.

    One property per key (sections as nested objects that refuse unknown
    keys), with the loader's own types, ranges (``exclusiveMinimum`` where
    ``Key.above``), choices and name rules, so the chart refuses what the
    controller would refuse at start-up.

    Args:
        chart_set: keys the chart sets itself (dotted YAML key -> the
            property to emit instead, e.g. a ``description``).

    Returns:
        The JSON Schema object of ``.Values.config``.
    """
    properties: dict[str, Any] = {}
    for key in KEYS:
        section, _, sub = key.yaml.rpartition(".")
        value = chart_set.get(key.yaml, _value_schema(key))
        if not section:
            properties[key.yaml] = value
            continue
        block = properties.setdefault(
            section, {"type": "object", "additionalProperties": False, "properties": {}}
        )
        block["properties"][sub] = value
    required = [k.yaml for k in KEYS if k.default is MISSING]
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"namespaces": {"include": x}}`` -> ``{"namespaces.include": x}``."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(str(key), f"must be a mapping, got {value!r}")
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[str(key)] = value
    return flat


def _read_yaml(path: Path) -> dict[str, Any]:
    """The settings file as a mapping ({} when empty); raises ``ConfigError`` naming the file."""
    try:
        loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(str(path), "must be a mapping of settings")
    return loaded


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from a YAML file, then apply environment overrides.

    Args:
        path: the YAML file, or None to use only the environment.
        environ: the environment (default ``os.environ``); see ``ENV_OVERRIDES``.

    Returns:
        Validated ``Settings``.

    Raises:
        ConfigError: the file cannot be read or parsed, has an unknown key, a
            value of the wrong type or range, or no ``target``. The message
            names the YAML key (or the file).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {} if path is None else _flatten(_read_yaml(path))
    for variable, key in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value not in (None, ""):
            raw[key] = value
    groups: dict[str, dict[str, Any]] = {attr: {} for attr in _GROUP_CLASSES}
    for name, value in raw.items():
        key = KEYS_BY_YAML.get(name)
        if key is None:
            known = ", ".join(sorted(KEYS_BY_YAML))
            raise ConfigError(str(name), f"unknown setting; known: {known}")
        if value is not None:  # converted and checked when its group is made
            groups[key.group][key.field] = value
    if "target" not in groups[""]:
        raise ConfigError(
            "target", "required: the owned registry, e.g. registry.example.com/mirror"
        )
    built = {attr: cls(**groups[attr]) for attr, cls in _GROUP_CLASSES.items() if attr}
    return Settings(**groups[""], **built)


def write_chart_schema(path: Path) -> None:
    """Rewrite the ``config`` block of a chart's ``values.schema.json`` from ``KEYS``.

    Properties the chart sets itself (their schema holds only a
    ``description``) are kept as they are (``chart_schema``).

    Raises:
        OSError: the file cannot be read or written.
        ValueError: it is not JSON with ``properties.config``.
    """
    schema = json.loads(path.read_text(encoding="utf-8"))
    config = schema["properties"]["config"]
    schema["properties"]["config"] = chart_schema(chart_set_properties(config))
    path.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")


def chart_set_properties(config: Mapping[str, Any]) -> dict[str, Any]:
    """The properties of a ``config`` block the chart owns: dotted key -> its schema.

    Two kinds: a key the chart sets itself (its schema holds only a
    ``description``), and a key the chart must hold tighter than the
    controller does, marked with a ``$comment`` that says why (the chart's
    probes need ``metricsPort`` above 0). Both are kept as they are by
    ``write_chart_schema``.
    """
    found: dict[str, Any] = {}
    for name, value in config.get("properties", {}).items():
        if set(value) == {"description"} or "$comment" in value:
            found[name] = value
        for sub, subvalue in value.get("properties", {}).items():
            if set(subvalue) == {"description"} or "$comment" in subvalue:
                found[f"{name}.{sub}"] = subvalue
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m cloner.config --markdown | --chart-schema FILE``.

    ``--markdown`` prints the configuration reference table;
    ``--chart-schema FILE`` rewrites the ``config`` block of the chart's
    ``values.schema.json`` (``write_chart_schema``).

    Returns:
        The exit code: 0, or 2 for other arguments.
    """
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(reference_table())
        return 0
    if len(args) == 2 and args[0] == "--chart-schema":
        write_chart_schema(Path(args[1]))
        return 0
    print("usage: python -m cloner.config --markdown | --chart-schema FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
