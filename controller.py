"""image-cloner entry point: arguments, logging, settings, adapters, metrics, loop.

    python controller.py [--config PATH] [--kubeconfig PATH] [--once]
    python controller.py revert [--namespace NS] [--dry-run] [--config PATH] [--kubeconfig PATH]

Without ``--once`` it reconciles every ``pollInterval`` seconds until SIGTERM
and exits 0. With ``--once`` it runs a single cycle and exits 0 when nothing
failed, 1 otherwise. A bad setting or docker ``config.json`` stops start-up
with exit code 2 and a message that names the field or file. ``revert``
undoes the controller's patches (``cloner.revert``) and exits 0 when
everything was reverted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cloner import metrics
from cloner.config import load_settings
from cloner.credentials import CredentialStore
from cloner.errors import ConfigError
from cloner.kube import KubeClient, load_api_client
from cloner.leader import LeaderElector
from cloner.loop import Loop
from cloner.reconcile import Reconciler
from cloner.registry import DockerRegistry
from cloner.revert import run_revert

log = logging.getLogger("image_cloner")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config" / "config.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="controller.py",
        description="Clone public images used by workloads into an owned registry "
        "and patch the workloads to use the copies.",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="settings YAML")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: in-cluster, then KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument("--once", action="store_true", help="run one cycle and exit")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    add_revert_arguments(parser)
    args = parser.parse_args(argv)
    if args.command != "revert" and (args.namespace or args.dry_run):
        parser.error("--namespace and --dry-run go with the revert command")
    if args.command == "revert" and args.once:
        parser.error("--once does not go with the revert command")
    return args


def add_revert_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``revert`` command: an optional positional plus its two options."""
    parser.add_argument(
        "command",
        nargs="?",
        choices=["revert"],
        help="revert: restore every workload and ServiceAccount the controller patched",
    )
    parser.add_argument("--namespace", help="revert: only this namespace (default: all)")
    parser.add_argument(
        "--dry-run", action="store_true", help="revert: print what would change, write nothing"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the controller; returns the process exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("urllib3", "docker", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
        if args.command == "revert":
            return run_revert(args, settings)
        credentials = CredentialStore(settings.docker_config)
        credentials.reload()
        registry = DockerRegistry(
            settings.docker_host,
            credentials,
            settings.docker_timeout,
            insecure_registries=settings.insecure_registries,
        )
        api_client = load_api_client(args.kubeconfig)
        kube = KubeClient(api_client, settings.list_page_size)
    except ConfigError as exc:
        log.error("start-up failed: %s", exc)
        return 2
    log.info(
        "starting: target=%s pollInterval=%ss excluded namespaces=%s",
        settings.owned,
        settings.poll_interval,
        ",".join(settings.excluded_namespaces),
    )
    if settings.metrics_port:
        try:
            metrics.serve(settings.metrics_port, settings.metrics_address)
        except OSError as exc:
            log.error("start-up failed: metricsPort %s: %s", settings.metrics_port, exc)
            return 2
    reconciler = Reconciler(kube, registry, settings, credentials)
    elector: LeaderElector | None = None
    if settings.leader_election and not args.once:
        if not settings.controller_namespace:
            log.error(
                "start-up failed: config: controllerNamespace: leader election needs the "
                "controller's namespace (POD_NAMESPACE), or set leaderElection.enabled: false"
            )
            return 2
        elector = LeaderElector(
            api_client,
            settings.controller_namespace,
            name=settings.lease_name,
            lease_duration=settings.lease_duration,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
        )
        elector.start()
        log.info(
            "leader election: Lease %s/%s as %s",
            settings.controller_namespace,
            settings.lease_name,
            elector.identity,
        )

    def reload_credentials() -> None:
        try:
            credentials.reload()
        except ConfigError as exc:
            log.error("keeping the previous registry credentials: %s", exc)

    loop = Loop(
        reconciler.reconcile_once,
        settings.poll_interval,
        reload_credentials,
        on_stop=reconciler.stop,
        shutdown_timeout=settings.shutdown_timeout,
        is_leader=elector.is_leader if elector is not None else None,
    )
    if args.once:
        summary = loop.tick()
        return 0 if summary is not None and summary.ok else 1
    try:
        loop.run()
    finally:
        if elector is not None:
            elector.stop(release=True)  # another replica takes over at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
