"""Settings: loaded from YAML and the environment, validated in this one place.

Called once by ``controller.py`` at start-up. A bad value raises ``ConfigError``
naming the field, so start-up stops with a clear message. Keys are camelCase
in YAML, as in Kubernetes manifests; unknown keys are rejected so a typo does
not silently fall back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cloner.errors import ConfigError, InvalidReference
from cloner.model.identity import BACKENDS
from cloner.model.lease import validate_timing
from cloner.model.pullsecrets import ATTACH_MODES
from cloner.model.reference import NAMING_STRATEGIES, Policy, Target

# Kubernetes object names: RFC 1123 DNS subdomain (apimachinery validation).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

GITOPS_MODES = ("report", "skip", "patch")

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

#: Environment variables that override a setting: variable -> YAML key.
ENV_OVERRIDES = {
    "IMAGE_CLONER_TARGET": "target",
    "IMAGE_CLONER_POLL_INTERVAL": "pollInterval",
    "IMAGE_CLONER_COPY_BACKEND": "copyBackend",
    "DOCKER_HOST": "dockerHost",
    "IMAGE_CLONER_DOCKER_CONFIG": "dockerConfig",
    "IMAGE_CLONER_METRICS_PORT": "metricsPort",
    "POD_NAMESPACE": "controllerNamespace",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the controller, with its default and unit.

    Attributes:
        target: owned registry host with an optional path prefix, for example
            ``registry.example.com/mirror`` (YAML ``target``; required).
        poll_interval: seconds between the starts of two reconcile cycles
            (``pollInterval``; default 60; > 0).
        docker_host: Docker engine address, ``unix://`` or ``tcp://``
            (``dockerHost``; default ``unix:///var/run/docker.sock``).
        docker_config: path of the docker ``config.json`` with the registry
            credentials (``dockerConfig``).
        docker_timeout: seconds one Docker engine API call may take
            (``dockerTimeout``; default 600: pulls of large images are slow).
        metrics_port: TCP port of the Prometheus endpoint, 0 to disable
            (``metricsPort``; default 9090).
        metrics_address: address the metrics endpoint binds
            (``metricsAddress``; default ``0.0.0.0``).
        include_namespaces: glob patterns (``fnmatch``) of the namespaces
            reconciled; empty means all (``namespaces.include``; default ``[]``).
        exclude_namespaces: glob patterns of namespaces never reconciled; an
            exclusion wins over an inclusion (``namespaces.exclude``; default
            ``kube-system``, ``kube-public``, ``kube-node-lease``).
        controller_namespace: the controller's own namespace, also excluded
            (``controllerNamespace``, usually from ``POD_NAMESPACE``).
        list_page_size: items per list call, the ``limit`` parameter
            (``listPageSize``; default 500; 1..5000).
        naming: how owned names are formed, ``nested`` or ``flat``
            (``naming``; default ``nested``; see ``reference.Target.owned_name``).
        flat_separator: what ``flat`` joins the source path with
            (``flatSeparator``; default ``_``; ``_``, ``.``, ``__`` or ``-`` runs).
        pin_digest: patch workloads to ``owned:tag@digest`` so a later tag
            move in the owned registry cannot change what runs (``pinDigest``;
            default false).
        owned_registries: other registries (``host[/prefix]``) the team
            controls; their images are never cloned (``ownedRegistries``).
        include_images: image globs to clone, empty for all (``images.include``).
        exclude_images: image globs never cloned; exclusion wins (``images.exclude``).
        pull_secret_name: name of the pull Secret created in each patched
            namespace (``pullSecret.name``; default ``image-cloner-pull-secret``;
            a DNS subdomain name).
        pull_secret_attach: ``serviceaccount`` (add the Secret to the
            ServiceAccount the pods run as) or ``workload`` (add it to the pod
            template in the image patch) (``pullSecret.attach``).
        pull_secret_provision: create and attach pull Secrets at all
            (``pullSecret.provision``; default true; false where node
            credentials or another tool handle pulls).
        backoff_initial: seconds to wait before retrying an image whose clone
            failed; doubles per consecutive failure (``backoff.initial``; default 30).
        backoff_max: cap of that wait in seconds (``backoff.max``; default 3600).
        backoff_jitter: random spread of each wait, as a fraction of it
            (``backoff.jitter``; default 0.2; 0..1).
        rate_limit_pause: seconds a registry that answered "too many requests"
            is paused when it gave no Retry-After (``rateLimitPause``; default 300).
        clone_concurrency: clones run at once in total
            (``cloneConcurrency``; default 4; 1..32).
        registry_concurrency: clones at once from one source registry
            (``registryConcurrency``; default 3; 1..16).
        patch_concurrency: workload patches and Events sent at once
            (``patchConcurrency``; default 8; 1..64).
        engine_cache_bytes: bytes of image layers the Docker engine keeps
            after their push, so shared base layers are pulled once; beyond
            it the least recently used images not in use by a clone are
            removed (``engineCacheBytes``; default 16106127360, 15 GiB, for
            the sidecar's 20Gi ``emptyDir``; 0 removes every image after its
            push).
        shutdown_timeout: seconds from SIGTERM to exit at the latest
            (``shutdownTimeout``; default 30).
        verify_interval: seconds between checks that the owned copies patched
            workloads use still exist (``verifyInterval``; default 3600; 0 disables).
        gitops: what to do with a workload whose pod template an owner would
            undo (Argo CD, Flux, an owner reference): ``report`` (leave it, log and
            count), ``skip`` (leave it quietly) or ``patch`` (``gitops``; default report).
        fight_limit: patches of one workload per hour after which the
            controller stops patching it and reports a fight (``fightLimit``; default 3).
        insecure_registries: registries (``host[:port]``) the controller may
            push to or pull from although the Docker engine reaches them without
            TLS verification (``insecureRegistries``; default none).
        leader_election: act only while holding the Lease (``leaderElection.enabled``;
            default true).
        lease_name: the Lease's name, in the controller's namespace
            (``leaderElection.leaseName``; default ``image-cloner``).
        lease_duration, renew_deadline, retry_period: seconds
            (``leaderElection.leaseDuration`` 15, ``.renewDeadline`` 10,
            ``.retryPeriod`` 2), as client-go's leader election.
        copy_backend: how images are copied: ``docker`` (pull, tag, push
            through the Docker engine; one platform, new manifest digest) or
            ``skopeo`` (registry to registry, every platform, the same
            digests) (``copyBackend``; default ``docker``).
        refresh_interval: seconds after which a verified tagged source in
            use is asked again whether its tag moved, spread over the last
            20% of the interval (``refreshInterval``; default 21600; 0 never).
        registry_timeout: seconds one manifest request to a registry may
            take (``registryTimeout``; default 30).
        state_config_map: name prefix of the ConfigMaps, in the controller's
            namespace, that keep verified copies and backoff across restarts
            (``state.configMap``; default ``image-cloner-state``; 16 shards
            ``-0`` .. ``-15``; kept only when ``controllerNamespace`` is set).
        state_ttl: seconds after its last use that the record of a source
            expires (``state.ttl``; default 604800, 7 days).
        owned: the parsed ``target`` (derived, not a YAML key).
        policy: ownership, naming and image scope (derived, not a YAML key).
    """

    target: str
    poll_interval: float = 60.0
    docker_host: str = "unix:///var/run/docker.sock"
    docker_config: Path = Path("/etc/image-cloner/docker/config.json")
    docker_timeout: float = 600.0
    metrics_port: int = 9090
    metrics_address: str = "0.0.0.0"
    include_namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES
    controller_namespace: str | None = None
    list_page_size: int = 500
    naming: str = "nested"
    flat_separator: str = "_"
    pin_digest: bool = False
    owned_registries: tuple[str, ...] = ()
    include_images: tuple[str, ...] = ()
    exclude_images: tuple[str, ...] = ()
    pull_secret_name: str = "image-cloner-pull-secret"
    pull_secret_attach: str = "serviceaccount"
    pull_secret_provision: bool = True
    backoff_initial: float = 30.0
    backoff_max: float = 3600.0
    backoff_jitter: float = 0.2
    rate_limit_pause: float = 300.0
    clone_concurrency: int = 4
    registry_concurrency: int = 3
    patch_concurrency: int = 8
    engine_cache_bytes: int = 15 * 1024**3
    shutdown_timeout: float = 30.0
    verify_interval: float = 3600.0
    gitops: str = "report"
    fight_limit: int = 3
    insecure_registries: tuple[str, ...] = ()
    leader_election: bool = True
    lease_name: str = "image-cloner"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    copy_backend: str = "docker"
    refresh_interval: float = 21600.0
    registry_timeout: float = 30.0
    state_config_map: str = "image-cloner-state"
    state_ttl: float = 7 * 86400.0
    owned: Target = field(init=False, default=Target("invalid.invalid"))
    policy: Policy = field(init=False, default=Policy(Target("invalid.invalid")))

    def __post_init__(self) -> None:
        if self.gitops not in GITOPS_MODES:
            raise ConfigError("gitops", f"must be one of {', '.join(GITOPS_MODES)}")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("backoff.max", "must not be less than backoff.initial")
        if not 0 <= self.backoff_jitter <= 1:
            raise ConfigError("backoff.jitter", "must be between 0 and 1")
        try:
            validate_timing(self.lease_duration, self.renew_deadline, self.retry_period)
        except ValueError as exc:
            raise ConfigError("leaderElection", str(exc)) from None
        if self.copy_backend not in BACKENDS:
            raise ConfigError("copyBackend", f"must be one of {', '.join(BACKENDS)}")
        if len(self.state_config_map) > 60 or not _DNS_SUBDOMAIN.fullmatch(self.state_config_map):
            raise ConfigError(
                "state.configMap", "must be a DNS subdomain name of at most 60 characters"
            )
        if self.pull_secret_attach not in ATTACH_MODES:
            raise ConfigError("pullSecret.attach", f"must be one of {', '.join(ATTACH_MODES)}")
        if len(self.pull_secret_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(self.pull_secret_name):
            raise ConfigError(
                "pullSecret.name", "must be a DNS subdomain name (lowercase, digits, '-', '.')"
            )
        if self.naming not in NAMING_STRATEGIES:
            raise ConfigError("naming", f"must be one of {', '.join(NAMING_STRATEGIES)}")
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
    def excluded_namespaces(self) -> tuple[str, ...]:
        """Configured exclusion patterns plus the controller's own namespace."""
        names = list(self.exclude_namespaces)
        if self.controller_namespace and self.controller_namespace not in names:
            names.append(self.controller_namespace)
        return tuple(names)


#: YAML key (dotted for nested sections) -> Settings field.
_KEYS = {
    "target": "target",
    "pollInterval": "poll_interval",
    "dockerHost": "docker_host",
    "dockerConfig": "docker_config",
    "dockerTimeout": "docker_timeout",
    "metricsPort": "metrics_port",
    "metricsAddress": "metrics_address",
    "namespaces.include": "include_namespaces",
    "namespaces.exclude": "exclude_namespaces",
    "controllerNamespace": "controller_namespace",
    "listPageSize": "list_page_size",
    "naming": "naming",
    "flatSeparator": "flat_separator",
    "pinDigest": "pin_digest",
    "ownedRegistries": "owned_registries",
    "images.include": "include_images",
    "images.exclude": "exclude_images",
    "pullSecret.name": "pull_secret_name",
    "pullSecret.attach": "pull_secret_attach",
    "pullSecret.provision": "pull_secret_provision",
    "backoff.initial": "backoff_initial",
    "backoff.max": "backoff_max",
    "backoff.jitter": "backoff_jitter",
    "rateLimitPause": "rate_limit_pause",
    "cloneConcurrency": "clone_concurrency",
    "registryConcurrency": "registry_concurrency",
    "patchConcurrency": "patch_concurrency",
    "engineCacheBytes": "engine_cache_bytes",
    "shutdownTimeout": "shutdown_timeout",
    "verifyInterval": "verify_interval",
    "gitops": "gitops",
    "fightLimit": "fight_limit",
    "insecureRegistries": "insecure_registries",
    "leaderElection.enabled": "leader_election",
    "leaderElection.leaseName": "lease_name",
    "leaderElection.leaseDuration": "lease_duration",
    "leaderElection.renewDeadline": "renew_deadline",
    "leaderElection.retryPeriod": "retry_period",
    "copyBackend": "copy_backend",
    "refreshInterval": "refresh_interval",
    "registryTimeout": "registry_timeout",
    "state.configMap": "state_config_map",
    "state.ttl": "state_ttl",
}
_SECTIONS = frozenset(key.split(".")[0] for key in _KEYS if "." in key)
assert set(_KEYS.values()) == {f.name for f in fields(Settings) if f.init}


def _flatten(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"namespaces": {"include": x}}`` -> ``{"namespaces.include": x}``."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(str(key), f"must be a mapping, got {value!r}")
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[str(key)] = value
    return flat


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(key, f"must be a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(key, f"must be greater than 0, got {value!r}")
    return number


def _non_negative_number(key: str, value: Any) -> float:
    if not isinstance(value, bool):
        try:
            if float(value) == 0:
                return 0.0
        except (TypeError, ValueError):
            pass
    return _positive_number(key, value)


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if not low <= number <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got {number}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return tuple(_string(f"{key}[{i}]", v) for i, v in enumerate(value))


def _convert(key: str, value: Any) -> Any:
    if key in (
        "pollInterval",
        "dockerTimeout",
        "backoff.initial",
        "backoff.max",
        "rateLimitPause",
        "shutdownTimeout",
        "leaderElection.leaseDuration",
        "leaderElection.renewDeadline",
        "leaderElection.retryPeriod",
        "registryTimeout",
        "state.ttl",
    ):
        return _positive_number(key, value)
    if key in ("backoff.jitter", "verifyInterval", "refreshInterval"):
        return _non_negative_number(key, value)
    if key == "cloneConcurrency":
        return _integer(key, value, 1, 32)
    if key == "registryConcurrency":
        return _integer(key, value, 1, 16)
    if key == "patchConcurrency":
        return _integer(key, value, 1, 64)
    if key == "engineCacheBytes":
        return _integer(key, value, 0, 2**50)
    if key == "fightLimit":
        return _integer(key, value, 1, 1000)
    if key == "metricsPort":
        return _integer(key, value, 0, 65535)
    if key == "listPageSize":
        return _integer(key, value, 1, 5000)
    if key in ("pinDigest", "pullSecret.provision", "leaderElection.enabled"):
        return _boolean(key, value)
    if key in (
        "namespaces.include",
        "namespaces.exclude",
        "images.include",
        "images.exclude",
        "ownedRegistries",
        "insecureRegistries",
    ):
        return _string_list(key, value)
    if key == "dockerConfig":
        return Path(_string(key, value))
    if key == "dockerHost":
        host = _string(key, value)
        if not host.startswith(("unix://", "tcp://", "http://", "https://", "ssh://")):
            raise ConfigError(key, f"must be a unix://, tcp:// or ssh:// address, got {host!r}")
        return host
    return _string(key, value)


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
            names the field (or the file).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(str(path), "must be a mapping of settings")
        raw.update(_flatten(loaded))
    for variable, key in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value not in (None, ""):
            raw[key] = value
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _KEYS:
            raise ConfigError(str(key), f"unknown setting; known: {', '.join(sorted(_KEYS))}")
        if value is None:
            continue
        values[_KEYS[key]] = _convert(key, value)
    if "target" not in values:
        raise ConfigError(
            "target", "required: the owned registry, e.g. registry.example.com/mirror"
        )
    return Settings(**values)
