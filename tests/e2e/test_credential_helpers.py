"""Issue 13 on real components: docker credential helpers (``credHelpers``).

A real helper executable written for the test (devenv/credhelper.py, a shell
script implementing ``get``) serves the owned registry's credentials; the
docker ``config.json`` names it in ``credHelpers`` and has no ``auths`` entry
for the owned registry. The controller runs as a real process with the
helper's directory on its PATH, as the image-cloner ServiceAccount.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from devenv.credhelper import FakeHelper
from devenv.harness import Environment, Registry, free_port
from devenv.support import (
    REPO,
    Scope,
    controller_command,
    controller_loop,
    create,
    create_namespace,
    images,
    read,
)
from devenv.waiting import seconds_until, wait_for
from tests.e2e.test_pull_secrets import auths, pull_as_kubelet, secret_of

pytestmark = pytest.mark.e2e

#: The controller's PATH in run_controller, with the helper's directory added.
BASE_PATH = "/usr/bin:/bin"


def run_once(
    scope: Scope, config: Path, helpers: list[FakeHelper]
) -> subprocess.CompletedProcess[str]:
    """``controller.py --once`` as a real process with only PATH set (helpers first)."""
    path = BASE_PATH
    for helper in helpers:
        path = helper.path_with(path)
    return subprocess.run(
        controller_command(scope.kubeconfig, config, "--once"),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"PATH": path},
    )


def owned_helper(env: Environment, directory: Path) -> FakeHelper:
    """docker-credential-owned answering the owned registry's current credentials."""
    assert env.owned.username is not None and env.owned.password is not None
    return FakeHelper.write(
        directory, "owned", env.owned.host, env.owned.username, env.owned.password
    )


def secret_auth(api: kubernetes.client.ApiClient, namespace: str, host: str) -> str:
    """``user:password`` of the managed pull Secret's entry for ``host``."""
    secret = secret_of(api, namespace)
    assert secret is not None, namespace
    entries = auths(secret)
    assert list(entries) == [host], entries
    return base64.b64decode(entries[host]["auth"]).decode()


def test_helper_serves_the_owned_registry_and_a_changed_answer_reaches_every_secret(
    scope: Scope, env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = scope.namespace
    api = env.api_client()
    ns_b, ns_c = f"{ns}-b", f"{ns}-c"
    for name in (ns_b, ns_c):
        create_namespace(env, name)
    env.build_image(scope.source("app:1"), layers=2, seed=f"{ns}-app")
    workloads = [("Deployment", ns, "a"), ("StatefulSet", ns_b, "b"), ("DaemonSet", ns_c, "c")]
    for kind, namespace, name in workloads:
        create(api, kind, namespace, name, {"main": scope.source("app:1")})

    helper = owned_helper(env, tmp_path / "helper")
    credentials = tmp_path / "config.json"
    unrelated = base64.b64encode(b"someone:else-entirely").decode()
    credentials.write_text(
        json.dumps(
            {
                "credHelpers": {env.owned.host: helper.name},
                "auths": {"other.example.com": {"auth": unrelated}},
            }
        )
    )
    config = scope.write_config(
        "c.yaml", namespaces={"include": [f"{ns}*"]}, dockerConfig=str(credentials)
    )
    file_before = credentials.read_text()
    monkeypatch.setenv("PATH", helper.path_with())  # the controller process inherits it
    old_password = env.owned.password or ""
    with controller_loop(scope.kubeconfig, config) as lines:
        owned_image = f"{scope.owned('app')}:1"
        wait_for(
            lambda: all(images(read(api, *w))["main"] == owned_image for w in workloads),
            90,
            "patched",
        )
        user = env.owned.username
        for namespace in (ns, ns_b, ns_c):
            assert secret_auth(api, namespace, env.owned.host) == f"{user}:{old_password}"
        first = secret_of(api, ns)
        assert first is not None
        pull_as_kubelet(env, first, owned_image)  # the resolved credential really pulls
        assert env.owned.host in helper.asked()

        # The helper's answer changes (a token refresh): the file does not.
        new_password = secrets.token_urlsafe(12)
        env.owned.set_password(new_password)
        helper.answer(user or "", new_password)

        def rotated() -> bool:
            return all(
                secret_auth(api, n, env.owned.host) == f"{user}:{new_password}"
                for n in (ns, ns_b, ns_c)
            )

        took = seconds_until(rotated, 10, "rotated in every namespace")
        print(f"\nmanaged secrets follow the helper's new answer {took:.1f}s after it changed")
        assert took < 5, f"{took:.1f}s is more than a cycle or two of pollInterval 1"
        rotated_secret = secret_of(api, ns_c)
        assert rotated_secret is not None
        pull_as_kubelet(env, rotated_secret, owned_image)
        with pytest.raises(AssertionError, match="pull of"):
            pull_as_kubelet(env, first, owned_image)  # the old password no longer works
        asked = len(helper.asked())
        wait_for(lambda: len(helper.asked()) >= asked + 2, 10, "asked again each cycle")
    assert credentials.read_text() == file_before
    output = "".join(lines)
    assert f"credential helpers for: {env.owned.host} (docker-credential-owned)" in output
    assert "a credential helper's answer changed" in output
    for password in (old_password, new_password):
        assert password not in output
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert pair not in output


@pytest.fixture
def private(env: Environment, tmp_path: Path) -> Iterator[Registry]:
    """A second registry that needs credentials (htpasswd), as a source of images."""
    registry = Registry(
        "private",
        f"127.0.0.1:{free_port()}",
        "reader",
        secrets.token_urlsafe(15),
        root=tmp_path / "private" / "root",
    )
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


def push_private(env: Environment, registry: Registry, public: str, private: str) -> None:
    """Copy ``public`` (pushed with env.build_image) into the private registry."""
    repository, tag = private.rsplit(":", 1)
    with closing(env.docker_client()) as client:
        image = client.images.pull(public)
        image.tag(repository, tag)
        auth: dict[str, Any] = {"username": registry.username, "password": registry.password}
        for line in client.images.push(
            repository, tag=tag, stream=True, decode=True, auth_config=auth
        ):
            assert "error" not in line, line
    assert registry.tags(repository.split("/", 1)[1]) == [tag]


def test_a_failing_helper_fails_its_registry_with_auth_and_nothing_else(
    scope: Scope, env: Environment, private: Registry, tmp_path: Path
) -> None:
    """The private source's helper fails or prints bad JSON: reason ``auth`` for it alone.

    The owned registry's helper keeps working, so the workload from the public
    registry is cloned and patched in the same run, with its pull Secret.
    """
    ns = scope.namespace
    api = env.api_client()
    env.build_image(scope.source("pub:1"), layers=1, seed=f"{ns}-pub")
    env.build_image(scope.source("priv:1"), layers=1, seed=f"{ns}-priv")
    private_image = f"{private.host}/{ns}/priv:1"
    push_private(env, private, scope.source("priv:1"), private_image)
    create(api, "Deployment", ns, "public-app", {"main": scope.source("pub:1")})
    create(api, "Deployment", ns, "private-app", {"main": private_image})

    owned = owned_helper(env, tmp_path / "owned-helper")
    assert private.username is not None and private.password is not None
    broken = FakeHelper.write(
        tmp_path / "private-helper", "private", private.host, private.username, private.password
    )
    credentials = tmp_path / "config.json"
    credentials.write_text(
        json.dumps({"credHelpers": {env.owned.host: owned.name, private.host: broken.name}})
    )
    config = scope.write_config("f.yaml", dockerConfig=str(credentials))
    owned_public = f"{scope.owned('pub')}:1"
    outputs = []
    for mode, message in (
        ("fail", "docker-credential-private exited with status 1: the credential backend is"),
        ("badjson", "docker-credential-private printed an answer that is not the JSON"),
    ):
        broken.set_mode(mode)
        result = run_once(scope, config, [owned, broken])
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 1, result.stderr
        assert (
            f"credential helper docker-credential-private (credHelpers) failed for registry "
            f"{private.host}: {message}"
        ) in result.stderr
        assert f"no credentials are used for {private.host} until it answers" in result.stderr
        failures = [line for line in result.stderr.splitlines() if private_image in line]
        assert any("(auth)" in line for line in failures), result.stderr
        assert images(read(api, "Deployment", ns, "private-app")) == {"main": private_image}
        # Nothing else broke: the public workload is patched with the owned helper's
        # credential, and its pull Secret carries it.
        assert images(read(api, "Deployment", ns, "public-app")) == {"main": owned_public}
        user = env.owned.username
        assert secret_auth(api, ns, env.owned.host) == f"{user}:{env.owned.password}"

    broken.set_mode("ok")
    result = run_once(scope, config, [owned, broken])
    outputs.append(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr
    owned_private = f"{env.owned.host}/{scope.target.split('/', 1)[1]}/"
    patched = images(read(api, "Deployment", ns, "private-app"))["main"]
    assert patched.startswith(owned_private) and patched.endswith("/priv:1"), patched
    assert private.host in broken.asked()
    text = "\n".join(outputs)
    for password in (private.password, env.owned.password or ""):
        assert password not in text
