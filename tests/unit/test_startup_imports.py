"""``controller.py`` imports only what its command and copy backend need (start-up time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(script: str) -> str:
    """What ``script`` prints in a fresh interpreter started in the repository."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    return set(_run(f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))").split())


def test_a_skopeo_controller_never_imports_the_docker_sdk() -> None:
    loaded = modules_after(
        "import controller\n"
        "from cloner.adapters.credential_store import CredentialStore\n"
        "from cloner.config import CopySettings, Settings\n"
        "settings = Settings(target='127.0.0.1:5000/m', copy=CopySettings(backend='skopeo'))\n"
        "backend = controller.build_backend(settings, CredentialStore(settings.docker_config))\n"
        "assert type(backend).__name__ == 'SkopeoBackend', backend"
    )
    assert "cloner.adapters.skopeo" in loaded
    assert not {name for name in loaded if name == "docker" or name.startswith("docker.")}
    assert "cloner.adapters.engine" not in loaded


def test_leader_election_plan_and_revert_load_only_when_used() -> None:
    loaded = modules_after("import controller")
    assert {"cloner.adapters.leader", "cloner.ops.plan", "cloner.ops.revert"}.isdisjoint(loaded)
    assert {"cloner.adapters.kube", "cloner.ops.reconcile"} <= loaded


def test_a_docker_controller_gets_the_engine_backend() -> None:
    loaded = modules_after(
        "import controller\n"
        "from cloner.adapters.credential_store import CredentialStore\n"
        "from cloner.config import CopySettings, Settings\n"
        "settings = Settings(target='127.0.0.1:5000/m', copy=CopySettings(backend='docker'))\n"
        "backend = controller.build_backend(settings, CredentialStore(settings.docker_config))\n"
        "assert type(backend).__name__ == 'DockerRegistry', backend"
    )
    assert {"docker", "cloner.adapters.engine"} <= loaded


def _collector_after(code: str) -> tuple[bool, int]:
    """``(gc.isenabled(), gc.get_freeze_count())`` after ``code`` in a fresh interpreter."""
    printed = _run(f"import gc\n{code}\nprint(gc.isenabled(), gc.get_freeze_count())")
    enabled, frozen = printed.splitlines()[-1].split()  # after what code printed
    return enabled == "True", int(frozen)


def test_importing_the_controller_leaves_the_collector_alone() -> None:
    # Only the script turns the collector off for its start-up; a program
    # (or a test) that imports it keeps collecting.
    assert _collector_after("import controller") == (True, 0)


def test_the_script_collects_again_with_its_start_up_frozen() -> None:
    # runpy runs controller.py as __main__, as `python controller.py` does;
    # `--help` ends in main() (SystemExit), after the start-up objects were
    # frozen and the collector turned back on.
    enabled, frozen = _collector_after(
        "import runpy, sys\n"
        "sys.argv = ['controller.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('controller.py', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert enabled
    assert frozen > 100_000  # the objects of the kubernetes client's modules, among others
