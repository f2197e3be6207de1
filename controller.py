"""image-cloner entry point: arguments, logging, settings, adapters, metrics, loop.

    python controller.py [run] [--once] [--config PATH] [--kubeconfig PATH]
    python controller.py revert [--namespace NS] [--dry-run] [--config PATH] [--kubeconfig PATH]
    python controller.py plan [--output table|json] [--all] [--config PATH] [--kubeconfig PATH]

Without ``--once`` it reconciles every ``pollInterval`` seconds until SIGTERM
and exits 0. With ``--once`` it runs a single cycle and exits 0 when nothing
failed, 1 otherwise. A bad setting or docker ``config.json`` stops start-up
with exit code 2 and a message that names the field or file. ``revert``
undoes the controller's patches (``cloner.ops.revert``) and exits 0 when
everything was reverted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloner import metrics
from cloner.adapters import http
from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.distribution import DistributionClient
from cloner.adapters.kube import KubeClient, load_api_client
from cloner.config import Settings, load_settings
from cloner.errors import ConfigError, KubeError
from cloner.model.identity import SKOPEO
from cloner.model.proxy import ProxyConfig
from cloner.model.pullsecrets import carries_push_credentials
from cloner.ops.events import EventRecorder
from cloner.ops.loop import Loop
from cloner.ops.reconcile import Reconciler
from cloner.ops.writes import WritePool

# Imported where they are used, so a process imports only what its command
# and copyBackend need (``python -X importtime controller.py``): the docker
# SDK only for copyBackend docker, skopeo's adapter only for skopeo, the
# leader elector only with leader election, plan and revert only for them.
if TYPE_CHECKING:
    from cloner.adapters.engine import DockerRegistry
    from cloner.adapters.leader import LeaderElector
    from cloner.adapters.skopeo import SkopeoBackend

log = logging.getLogger("image_cloner")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config" / "config.yaml"


class Readiness:
    """``/readyz``: config loaded (true once serving), API server reachable, leader or standby.

    The API check is cached for ``ttl`` seconds so probes do not load the API server.
    """

    def __init__(self, kube: KubeClient, elector: LeaderElector | None, ttl: float = 5.0) -> None:
        self._kube = kube
        self._elector = elector
        self._ttl = ttl
        self._checked = -ttl
        self._reachable = False

    def __call__(self) -> tuple[bool, str]:
        """``(ready, reason)``."""
        now = time.monotonic()
        if now - self._checked >= self._ttl:
            self._reachable = self._kube.reachable()
            self._checked = now
        if not self._reachable:
            return False, "API server unreachable"
        role = "standalone"
        if self._elector is not None:
            role = "leader" if self._elector.is_leader() else "standby"
        return True, f"ok: config loaded, API server reachable, {role}"


COMMANDS = ("run", "plan", "revert")


def _common(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command word.

    Args:
        suppress: for a command's own parser: absent options leave the
            values parsed before the command word in place.
    """
    default = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=default if suppress else DEFAULT_CONFIG,
        help="settings YAML",
    )
    common.add_argument(
        "--kubeconfig",
        type=Path,
        default=default,
        help="kubeconfig file (default: in-cluster, then KUBECONFIG or ~/.kube/config)",
    )
    common.add_argument(
        "--log-level", default=default if suppress else "INFO", help="DEBUG, INFO, WARNING, ERROR"
    )
    common.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=default if suppress else "text",
        help="log line format",
    )
    return common


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments: ``run`` (the default), ``plan`` or ``revert``, each with its options.

    ``python controller.py`` and ``python controller.py --once`` mean ``run``;
    the common options may stand before or after the command word.

    Returns:
        The namespace with ``command`` and the command's options.
    """
    parser = argparse.ArgumentParser(
        prog="controller.py",
        description="Clone public images used by workloads into an owned registry "
        "and patch the workloads to use the copies.",
        parents=[_common(suppress=False)],
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,plan,revert}")
    run = commands.add_parser(
        "run", parents=[_common(suppress=True)], help="reconcile every pollInterval (default)"
    )
    run.add_argument("--once", action="store_true", help="run one cycle and exit")
    plan = commands.add_parser(
        "plan",
        parents=[_common(suppress=True)],
        help="print what a cycle would do (no pull, push or patch)",
    )
    plan.add_argument("--output", choices=["table", "json"], default="table", help="format")
    plan.add_argument(
        "--controller",
        default=None,
        help="URL of a running controller's metrics port, for its backoff state "
        "(default http://127.0.0.1:<metricsPort>)",
    )
    plan.add_argument(
        "--all",
        action="store_true",
        dest="out_of_scope",
        help="also list the workloads of namespaces out of scope, each with the rule that "
        "leaves it out, e.g. 'excluded by namespaces.exclude (kube-system)'",
    )
    revert = commands.add_parser(
        "revert",
        parents=[_common(suppress=True)],
        help="restore every workload and ServiceAccount the controller patched",
    )
    revert.add_argument("--namespace", help="only this namespace (default: all)")
    revert.add_argument(
        "--dry-run", action="store_true", help="print what would change, write nothing"
    )
    args = parser.parse_args(_with_command(argv))
    args.once = getattr(args, "once", False)
    return args


def _with_command(argv: list[str]) -> list[str]:
    """``argv`` with ``run`` inserted where the command word is missing (after common options)."""
    takes_value = {"--config", "--kubeconfig", "--log-level", "--log-format"}
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in COMMANDS or word in ("-h", "--help"):
            return argv
        if word in takes_value:
            index += 2
        elif word.split("=", 1)[0] in takes_value:
            index += 1
        else:
            break
    return [*argv[:index], "run", *argv[index:]]


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    """Root logging: ``text`` (human) or ``json`` (log pipelines), at ``level``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("urllib3", "docker", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_backend(
    settings: Settings, credentials: CredentialStore, proxy: ProxyConfig | None = None
) -> DockerRegistry | SkopeoBackend:
    """The copy backend ``copyBackend`` names: the Docker engine, or skopeo.

    ``proxy`` goes to skopeo's environment; the Docker engine reaches
    registries through its own (the dind sidecar's) environment.
    """
    if settings.copy.backend == SKOPEO:
        from cloner.adapters.skopeo import SkopeoBackend

        return SkopeoBackend(
            credentials,
            insecure_registries=settings.copy.insecure_registries,
            command_timeout=settings.copy.docker_timeout,
            proxy=proxy,
        )
    from cloner.adapters.engine import DockerRegistry

    return DockerRegistry(
        settings.copy.docker_host,
        credentials,
        settings.copy.docker_timeout,
        insecure_registries=settings.copy.insecure_registries,
        cache_bytes=settings.copy.engine_cache_bytes,
        proxy=proxy,
    )


def registry_requests(
    manifests: DistributionClient, backend: DockerRegistry | SkopeoBackend
) -> Counter[tuple[str, str]]:
    """Registry requests so far by (operation, outcome): manifest lookups and copies."""
    # dict() copies in one step: clone threads may add keys while Prometheus scrapes.
    total: Counter[tuple[str, str]] = Counter(dict(backend.requests))
    for (_registry, method, outcome), count in dict(manifests.requests).items():
        total[method.lower(), outcome] += count
    return total


def run_plan(
    kube: KubeClient,
    registry: DistributionClient,
    settings: Settings,
    output: str,
    controller: str | None,
    out_of_scope: bool = False,
) -> int:
    """``plan``: print the table (or JSON) of what a cycle would do; exit 0, 1 if listing failed.

    Args:
        controller: base URL of a running controller's metrics port, asked
            for its backoff state (``/state/backoff``); default
            ``http://127.0.0.1:<metricsPort>``, which is the running
            controller when ``plan`` runs in its container. Unreachable: no
            backoff is shown.
        out_of_scope: ``--all``: also the workloads of namespaces out of
            scope, ``excluded by <rule> (<namespace>)``.
    """
    from cloner.ops.artifacts import ArtifactCopier
    from cloner.ops.plan import build_plan, fetch_backoff, format_json, format_table, read_state

    if controller is None and settings.metrics.port:
        controller = f"http://127.0.0.1:{settings.metrics.port}"
    state = read_state(kube, settings)
    try:
        rows = build_plan(
            kube,
            registry,
            settings,
            fetch_backoff(controller),
            dict(state.holds),
            records=dict(state.records),
            artifacts=ArtifactCopier(registry),
            out_of_scope=out_of_scope,
        )
    except KubeError as exc:
        log.error("plan failed: %s", exc)
        return 1
    print(format_json(rows) if output == "json" else format_table(rows))
    return 0


@dataclass(frozen=True, slots=True)
class Adapters:
    """The clients a ``run`` or ``plan`` works with, built once at start-up."""

    api_client: Any
    kube: KubeClient
    credentials: CredentialStore
    manifests: DistributionClient
    backend: DockerRegistry | SkopeoBackend
    pull_credentials: CredentialStore | None = None  # pullSecret.dockerConfig, when set

    @property
    def stores(self) -> tuple[CredentialStore, ...]:
        """Every docker config in use, re-read before each cycle."""
        pull = () if self.pull_credentials is None else (self.pull_credentials,)
        return (self.credentials, *pull)


def build_adapters(args: argparse.Namespace, settings: Settings) -> Adapters:
    """Read the credentials and build every client the settings name.

    Raises:
        ConfigError: a docker config (``dockerConfig``, or
            ``pullSecret.dockerConfig`` when set) cannot be read or is malformed.
    """
    credentials = CredentialStore(settings.docker_config)
    credentials.reload()
    pull_credentials = None
    if settings.pull_secrets.docker_config is not None:
        pull_credentials = CredentialStore(settings.pull_secrets.docker_config)
        pull_credentials.reload()
    # One proxy rule for every path to the network (model.proxy), read once.
    proxy = ProxyConfig.from_environ(os.environ)
    if proxy.enabled:
        log.info("proxy: %s", proxy.describe())
    manifests = DistributionClient(
        credentials,
        insecure_registries=settings.copy.insecure_registries,
        timeout=settings.copy.registry_timeout,
        proxy=proxy,
    )
    backend = build_backend(settings, credentials, proxy)
    api_client = load_api_client(args.kubeconfig, proxy)
    kube = KubeClient(api_client, settings.list_page_size)
    return Adapters(api_client, kube, credentials, manifests, backend, pull_credentials)


def start_elector(api_client: Any, settings: Settings) -> LeaderElector:
    """Start Lease leader election in the controller's namespace.

    Raises:
        ConfigError: no ``controllerNamespace`` to hold the Lease in.
    """
    if not settings.controller_namespace:
        raise ConfigError(
            "controllerNamespace",
            "leader election needs the controller's namespace (POD_NAMESPACE), or set "
            "leaderElection.enabled: false",
        )
    from cloner.adapters.leader import LeaderElector

    elector = LeaderElector(api_client, settings.leader_election, settings.controller_namespace)
    elector.start()
    log.info(
        "leader election: Lease %s/%s as %s",
        settings.controller_namespace,
        settings.leader_election.lease_name,
        elector.identity,
    )
    return elector


def serve_metrics(
    settings: Settings,
    adapters: Adapters,
    reconciler: Reconciler,
    elector: LeaderElector | None,
    writes: WritePool,
) -> None:
    """Export the adapters' counters; serve metrics, health and backoff when ``metricsPort`` is set.

    Raises:
        ConfigError: the port cannot be bound (``metricsPort``).
    """
    metrics.watch_adapters(
        lambda: adapters.kube.requests,
        lambda: registry_requests(adapters.manifests, adapters.backend),
        lambda: getattr(adapters.backend, "pushed_bytes", 0),
        lambda: writes.dropped,
    )
    if not settings.metrics.port:
        return
    readiness = Readiness(adapters.kube, elector)
    try:
        http.serve(settings.metrics, metrics.exposition, readiness, reconciler.waiting_images)
    except OSError as exc:
        raise ConfigError("metricsPort", f"{settings.metrics.port}: {exc}") from None


def run(args: argparse.Namespace, settings: Settings, adapters: Adapters) -> int:
    """``controller.py run``: the loop (or one pass with ``--once``); returns the exit code.

    Raises:
        ConfigError: leader election or the metrics endpoint cannot start.
    """
    log.info(
        "starting: target=%s pollInterval=%ss excluded namespaces=%s",
        settings.owned,
        settings.poll_interval,
        ",".join(settings.excluded_namespaces),
    )
    report_pull_credentials(settings)
    backend = adapters.backend
    # Patches and Events share one bounded pool; Events wait behind patches.
    writes = WritePool(settings.patch_concurrency)
    events = EventRecorder(adapters.kube, dispatch=writes.defer)
    reconciler = Reconciler(
        adapters.kube,
        adapters.manifests,
        backend,
        settings,
        adapters.credentials,
        events=events,
        writes=writes,
        engine_platform=None if settings.copy.backend == SKOPEO else backend.engine_platform,
        # The loop keeps ticking while long clones run: a cycle waits for
        # clones until shortly before the next one starts; --once waits for all.
        clone_wait=None if args.once else 0.9 * settings.poll_interval,
        artifacts=adapters.manifests,
        pull_credentials=adapters.pull_credentials,
    )
    elector = None
    if settings.leader_election.enabled and not args.once:
        elector = start_elector(adapters.api_client, settings)
    try:
        serve_metrics(settings, adapters, reconciler, elector, writes)
        loop = Loop(
            reconciler.reconcile_once,
            settings.poll_interval,
            lambda: reload_credentials(*adapters.stores),
            on_stop=reconciler.stop,
            shutdown_timeout=settings.shutdown_timeout,
            is_leader=elector.is_leader if elector is not None else None,
        )
        if args.once:
            summary = loop.tick()
            return 0 if summary is not None and summary.ok else 1
        loop.run()
    finally:
        # Every patch was sent; the Events behind them get until the deadline.
        writes.close(timeout=settings.shutdown_timeout)
        if elector is not None:
            elector.stop(release=True)  # another replica takes over at once
    abandoned = reconciler.clones_in_flight()
    if abandoned:
        exit_abandoning(0, abandoned)
    return 0


def reload_credentials(*stores: CredentialStore) -> None:
    """Before each cycle: re-read each docker config; a bad one keeps its last good one."""
    for credentials in stores:
        try:
            credentials.reload()
        except ConfigError as exc:
            log.error("keeping the previous registry credentials: %s", exc)


def report_pull_credentials(settings: Settings) -> None:
    """At start-up: say whether the pull Secrets carry the push credentials (issue 28).

    Sets the gauge ``image_cloner_pull_secret_has_push_credentials`` and, when
    they do (``pullSecret.dockerConfig`` unset while Secrets are provisioned),
    logs one Warning naming the way out.
    """
    carried = carries_push_credentials(
        settings.pull_secrets.provision, settings.pull_secrets.docker_config
    )
    metrics.set_pull_secret_push_credentials(carried)
    if carried:
        log.warning(
            "pullSecret.dockerConfig is not set: the managed pull Secrets carry the owned "
            "registry's entry of dockerConfig (%s), the credentials the controller pushes "
            "with, into every patched namespace; set pullSecret.dockerConfig to a docker "
            "config.json with a read-only account for the nodes (docs/credentials.md)",
            settings.docker_config,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the command the arguments name; returns the process exit code.

    2 when start-up fails (a message names the setting), else the command's code.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level, args.log_format)
    try:
        settings = load_settings(args.config)
        if args.command == "revert":
            from cloner.ops.revert import run_revert

            kube = KubeClient(load_api_client(args.kubeconfig), settings.list_page_size)
            return run_revert(
                kube, settings, args.namespace, args.dry_run, events=EventRecorder(kube)
            )
        adapters = build_adapters(args, settings)
        if args.command == "plan":
            return run_plan(
                adapters.kube,
                adapters.manifests,
                settings,
                args.output,
                args.controller,
                args.out_of_scope,
            )
        return run(args, settings, adapters)
    except ConfigError as exc:
        log.error("start-up failed: %s", exc)
        return 2


def exit_process(code: int) -> None:
    """End the process with ``code``; never returns (raises ``SystemExit``).

    The collector is frozen first (``gc.freeze``): while the interpreter
    tears down its ~1,500 modules it would otherwise walk every object they
    hold, about 0.13 s of CPU on the test machine, for cycles nothing needs
    collected any more. Everything that matters at exit still happens: the
    threads the standard library waits for are joined, the ``atexit``
    handlers run (logging is flushed, skopeo's cache directory and the
    kubernetes client's temporary certificate files are removed), and
    standard output and error are flushed.
    """
    gc.freeze()
    sys.exit(code)


def exit_abandoning(code: int, abandoned: int) -> None:
    """End the process with ``code`` at once although clone threads still run; never returns.

    After a stop, a clone can still be blocked in a copy, for example on a
    registry that stopped answering mid-pull. Its result is never used
    (nothing is patched for it), but the interpreter's own exit would join
    its thread and so wait for it, up to ``shutdownTimeout``. Here the
    ``atexit`` handlers run (logging is flushed, temporary files are
    removed), standard output and error are flushed, and ``os._exit`` ends
    the process without joining. skopeo's processes were already killed
    (``SkopeoBackend.abandon``); the engine ends a pull whose connection
    closes.

    Args:
        code: the exit status.
        abandoned: how many clones were still in flight (logged).
    """
    log.warning(
        "exiting with %d clones abandoned in flight (nothing was patched for them)", abandoned
    )
    atexit._run_exitfuncs()  # the handlers sys.exit would have run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
