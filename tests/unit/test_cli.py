"""The command line: run (the default), plan and revert, each with its own options."""

from __future__ import annotations

from pathlib import Path

import pytest

import controller


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


@pytest.mark.parametrize(
    "argv", [["plan", "--once"], ["revert", "--output", "json"], ["run", "--dry-run"]]
)
def test_an_option_of_another_command_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        controller.parse_args(argv)
    assert caught.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
