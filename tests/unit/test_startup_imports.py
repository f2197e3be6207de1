"""``controller.py`` imports only what its command and copy backend need (start-up time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(result.stdout.split())


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
