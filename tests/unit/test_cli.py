"""The command line: run (the default), plan and revert, each with its own options."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import controller
from cloner.config import PullSecretSettings, Settings
from cloner.metrics import REGISTRY


@pytest.mark.parametrize(
    ("argv", "command", "once"),
    [
        ([], "run", False),
        (["--once"], "run", True),
        (["--config", "c.yaml", "--once"], "run", True),
        (["run", "--once"], "run", True),
        (["plan", "--output", "json"], "plan", False),
        (["--config=c.yaml", "revert", "--dry-run"], "revert", False),
    ],
)
def test_run_is_the_default_command(argv: list[str], command: str, once: bool) -> None:
    args = controller.parse_args(argv)
    assert (args.command, args.once) == (command, once)


def test_common_options_go_before_or_after_the_command() -> None:
    before = controller.parse_args(["--config", "a.yaml", "revert", "--namespace", "shop"])
    after = controller.parse_args(["revert", "--namespace", "shop", "--config", "a.yaml"])
    for args in (before, after):
        assert args.config == Path("a.yaml") and args.namespace == "shop" and not args.dry_run
    assert controller.parse_args(["plan"]).config == controller.DEFAULT_CONFIG


def test_plan_all_lists_out_of_scope_namespaces_only_when_asked() -> None:
    assert controller.parse_args(["plan", "--all"]).out_of_scope is True
    assert controller.parse_args(["plan", "--output", "json"]).out_of_scope is False


@pytest.mark.parametrize(
    "argv",
    [["plan", "--once"], ["revert", "--output", "json"], ["run", "--dry-run"], ["run", "--all"]],
)
def test_an_option_of_another_command_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        controller.parse_args(argv)
    assert caught.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pull_secret", "gauge", "warnings"),
    [
        ({}, 1.0, 1),
        ({"docker_config": "/etc/image-cloner/pull-docker/config.json"}, 0.0, 0),
        ({"provision": False}, 0.0, 0),
    ],
)
def test_start_up_says_whether_pull_secrets_carry_the_push_credentials(
    pull_secret: dict[str, Any],
    gauge: float,
    warnings: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(
        target="owned.example.com/m", pull_secrets=PullSecretSettings(**pull_secret)
    )
    with caplog.at_level(logging.WARNING, logger="image_cloner"):
        controller.report_pull_credentials(settings)
    value = REGISTRY.get_sample_value("image_cloner_pull_secret_has_push_credentials")
    assert value == gauge
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == warnings
    if warnings:
        assert messages[0].startswith("pullSecret.dockerConfig is not set: the managed pull")
