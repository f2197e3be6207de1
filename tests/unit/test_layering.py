"""Pure modules must not import the Kubernetes or Docker libraries."""

import subprocess
import sys


def test_pure_modules_import_no_io_library() -> None:
    code = (
        "import sys\n"
        "import cloner.reference, cloner.workloads, cloner.reconcile, cloner.revert\n"
        "import cloner.config, cloner.credentials, cloner.errors, cloner.tls\n"
        "bad = [m for m in ('kubernetes', 'docker') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_distribution_client_imports_neither_kubernetes_nor_docker() -> None:
    code = (
        "import sys\n"
        "import cloner.distribution\n"
        "print(','.join(m for m in ('kubernetes', 'docker') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
