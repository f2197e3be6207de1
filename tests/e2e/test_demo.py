"""`make demo` (hack/demo.py) works: it starts its own components and switches 5 images."""

from devenv.support import REPO, run_python


def test_demo_switches_the_sample_workloads() -> None:
    result = run_python(str(REPO / "hack" / "demo.py"), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo: 5 container images switched to owned copies" in result.stdout
    assert "namespace shop: Secret image-cloner-pull-secret (kubernetes.io/dockerconfigjson)" in (
        result.stdout
    )
    assert "Deployment kube-system/dns" in result.stdout and "(unchanged)" in result.stdout
