"""Fault injection: the controller loop while real components fail under it.

Each scenario runs ``controller.py`` as a real process (the loop, or ``--once``)
against the session's etcd, kube-apiserver, dockerd and registries, breaks
one of them at a chosen moment (stops a registry, the API server or the
engine, edits a workload, SIGKILLs the controller) and then asserts what the
API server and the registries hold: a workload never points at an image the
owned registry does not hold, nothing is patched while what it needs is down,
and everything converges once it is back, without restarting the controller.

Moments inside a cycle are found from the controller's own log lines
("pulling <source>", "pushing <owned>"), read from its piped output in a
thread. To make a push last long enough to be interrupted, the image has one
layer of random bytes (uncompressible, tens of MB), built per test so no
layer can be mounted from another repository of the owned registry. Every
component that is stopped is started again in a ``finally``, and every
controller process is ended in a ``finally``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from devenv.harness import ComponentError, Environment
from devenv.support import (
    REPO,
    Scope,
    controller_command,
    create,
    images,
    read,
)
from devenv.waiting import wait_for

#: The line that ends every reconcile cycle.
SUMMARY = "reconcile: workloads="
#: What the loop logs when a cycle raised instead of returning its summary.
CYCLE_RAISED = "reconcile cycle failed"
#: The start of a log record (anything else is a continuation, e.g. a traceback).
_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
#: Layer sizes: a push of LARGE_MB takes about 1.5-2 s on loopback, long enough
#: to be interrupted while its layer streams; MEDIUM_MB keeps a cycle busy for
#: about a second (the API server outage).
LARGE_MB = 48
MEDIUM_MB = 24


# --- helpers ------------------------------------------------------------------


def build_large_image(env: Environment, reference: str, size_mb: int) -> str:
    """Build a ``FROM scratch`` image with one layer of ``size_mb`` MB of random bytes.

    Pushes it anonymously to ``reference`` (on the public registry), removes it
    from the engine so the controller's pull really downloads it, and returns
    the manifest digest the registry reports.
    """
    repository, tag = reference.rsplit(":", 1)
    with tempfile.TemporaryDirectory(prefix="ic-big-", dir=env.workdir) as context:
        Path(context, "blob").write_bytes(os.urandom(size_mb << 20))
        Path(context, "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
        with contextlib.closing(env.docker_client()) as client:
            client.images.build(path=context, tag=reference, rm=True, forcerm=True)
            for line in client.images.push(repository, tag=tag, stream=True, decode=True):
                if "error" in line or "errorDetail" in line:
                    raise ComponentError(f"push of {reference} failed: {line}")
            client.images.remove(reference, force=True)
    digest = env.public.manifest_digest(repository.split("/", 1)[1], tag)
    if digest is None:
        raise ComponentError(f"{reference} pushed but the public registry has no manifest")
    return digest


def _owned_repository_dir(env: Environment, repository: str) -> Path:
    root = env.owned.root / "storage" / "docker" / "registry" / "v2" / "repositories"
    return root / repository


def owned_manifests_on_disk(env: Environment, repository: str) -> list[str]:
    """Files of ``repository``'s manifests and tags in the owned registry's storage.

    Read from the filesystem, so it works while the registry is stopped.
    """
    manifests = _owned_repository_dir(env, repository) / "_manifests"
    return sorted(str(f.relative_to(manifests)) for f in manifests.rglob("*") if f.is_file())


def wait_for_upload(env: Environment, repository: str, timeout: float = 30) -> None:
    """Wait until the owned registry is receiving a blob for ``repository``.

    That is, until a blob upload of it holds some bytes on disk: the push is
    then certainly in flight (the engine connected, the layer is streaming).
    """
    uploads = _owned_repository_dir(env, repository) / "_uploads"

    def receiving() -> bool:
        for data in uploads.glob("*/data"):
            with contextlib.suppress(FileNotFoundError):  # the upload just completed
                if data.stat().st_size > 0:
                    return True
        return False

    wait_for(receiving, timeout, f"a blob upload to {repository} to begin", interval=0.01)


def missing_owned_copy(env: Environment, image: str) -> str | None:
    """For an image on the owned registry: a problem if the registry lacks its manifest.

    Returns None for images elsewhere and for owned images whose tag (or
    digest) the owned registry answers for.
    """
    prefix = env.owned.host + "/"
    if not image.startswith(prefix):
        return None
    rest = image[len(prefix) :]
    if "@" in rest:
        path, reference = rest.split("@", 1)
        head, _, last = path.rpartition("/")
        repository = f"{head}/{last.split(':', 1)[0]}"
    else:
        repository, reference = rest.rsplit(":", 1)
    if env.owned.manifest_digest(repository, reference) is None:
        return f"{image} while the owned registry has no manifest {repository}@{reference}"
    return None


class Controller:
    """``controller.py`` running as a real process, its output read line by line in a thread."""

    def __init__(self, argv: list[str], log: Path | None = None) -> None:
        self.log = log
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            cwd=REPO,
            # Only PATH: no DOCKER_HOST or KUBECONFIG of the caller overrides the config.
            env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="controller-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def tail(self, count: int = 40) -> str:
        with self._changed:
            return "\n".join(self.lines[-count:])

    def mark(self) -> int:
        """The index the next output line will have."""
        with self._changed:
            return len(self.lines)

    def wait_for(self, text: str, start: int = 0, timeout: float = 60) -> int:
        """Index of the first line at or after ``start`` containing ``text``; waits for it."""
        deadline = time.monotonic() + timeout
        checked = start
        with self._changed:
            while True:
                for index in range(checked, len(self.lines)):
                    if text in self.lines[index]:
                        return index
                checked = max(checked, len(self.lines))
                if self._eof:
                    code = self.popen.wait(timeout=10)
                    raise AssertionError(
                        f"controller exited with {code} before logging {text!r}; output:\n"
                        + "\n".join(self.lines[-40:])
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"controller did not log {text!r} within {timeout:.0f}s; output:\n"
                        + "\n".join(self.lines[-40:])
                    )
                self._changed.wait(remaining)

    def wait_cycles(self, count: int, start: int, timeout: float = 60) -> int:
        """Wait until ``count`` cycles ended after line ``start``; return the index after them."""
        deadline = time.monotonic() + timeout
        index = start
        for _ in range(count):
            index = self.wait_for(SUMMARY, index, max(0.1, deadline - time.monotonic())) + 1
        return index

    def assert_alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"controller exited with {code}; output:\n{self.tail()}"

    def assert_no_cycle_raised(self) -> None:
        """Every fault was handled as a failure of one image, workload or call.

        The README promises that a failing image or call is logged with its
        reason and retried while "the other images and workloads go on"; a
        cycle that raises (logged by the loop's guard) drops the rest of it.
        """
        with self._changed:
            lines = list(self.lines)
        for index, line in enumerate(lines):
            if CYCLE_RAISED in line:
                end = index + 1
                while end < len(lines) and not _LOG_RECORD.match(lines[end]):
                    end += 1
                trace = lines[index + 1 : end]
                # The controller's own frames (file line + code line), then the exception.
                ours = [
                    f"{frame}\n{trace[i + 1] if i + 1 < len(trace) else ''}"
                    for i, frame in enumerate(trace)
                    if frame.lstrip().startswith(f'File "{REPO}/') and "/.venv/" not in frame
                ]
                pytest.fail(
                    "a reconcile cycle raised instead of recording the failure and going on:\n"
                    + "\n".join([line, *ours, *trace[-1:]]),
                    pytrace=False,
                )

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the exit; return the exit code."""
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> int:
        """SIGKILL, wait for the exit; return the exit code (``-9``)."""
        self.popen.kill()
        code = self.popen.wait(timeout=30)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        """End the process if it still runs (for ``finally``)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)
        self._reader.join(timeout=10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        if self.log is not None:
            self.log.write_text(self.output + "\n")


@contextlib.contextmanager
def controller_loop(scope: Scope, config: Path | None = None) -> Iterator[Controller]:
    """Run the controller loop (no ``--once``) as the image-cloner ServiceAccount.

    Its whole output is kept next to the config, in ``controller-N.log``.
    """
    config = config or scope.config
    logs = len(list(config.parent.glob("controller-*.log")))
    log = config.parent / f"controller-{logs + 1}.log"
    controller = Controller(controller_command(scope.kubeconfig, config), log)
    try:
        yield controller
    finally:
        controller.close()


@contextlib.contextmanager
def outage(env: Environment, name: str) -> Iterator[Callable[[], None]]:
    """Stop component ``name``; yield a function that starts it again.

    Whatever happens in the block, the component is running again after it.
    """
    env.stop_component(name)
    restored = False

    def restore() -> None:
        nonlocal restored
        if not restored:
            env.start_component(name)
            restored = True

    try:
        yield restore
    finally:
        restore()


class ImageWatch:
    """Samples one container's image every 50 ms in a thread and checks each value seen.

    ``history`` holds every distinct value in the order seen. Every owned
    image seen is looked up in the owned registry at once; ``violations``
    lists those it did not hold (or could not be asked about). Reads that
    fail (the API server is down) are skipped.
    """

    def __init__(self, env: Environment, kind: str, namespace: str, name: str, container: str):
        self.env = env
        self.target = (kind, namespace, name)
        self.container = container
        self.history: list[str] = []
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-watch", daemon=True)

    def _run(self) -> None:
        with contextlib.closing(self.env.api_client()) as api:
            while True:
                stopping = self._stop.is_set()  # one last sample after the stop request
                self._sample(api)
                if stopping:
                    return
                self._stop.wait(0.05)

    def _sample(self, api: kubernetes.client.ApiClient) -> None:
        try:
            image = images(read(api, *self.target))[self.container]
        except Exception:  # the API server is down: nothing to observe
            return
        if not self.history or self.history[-1] != image:
            self.history.append(image)
            try:
                problem = missing_owned_copy(self.env, image)
            except Exception as exc:  # the owned registry is down
                problem = f"{image} seen but could not be checked: {exc!r}"
            if problem:
                self.violations.append(problem)

    def __enter__(self) -> ImageWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def api(env: Environment) -> Iterator[kubernetes.client.ApiClient]:
    with contextlib.closing(env.api_client()) as client:
        yield client


def image_of(api: kubernetes.client.ApiClient, ns: str, name: str, container: str) -> str:
    return images(read(api, "Deployment", ns, name))[container]


# --- scenarios ----------------------------------------------------------------


def test_owned_registry_down_during_push_then_back(
    scope: Scope, env: Environment, api: kubernetes.client.ApiClient
) -> None:
    """The owned registry stops while the controller pushes; the loop converges once it is back.

    Timing: ``owned`` is stopped during the push itself: once the controller
    has logged "pushing" and the registry holds the first bytes of the layer
    upload (a LARGE_MB uncompressible layer takes about 1.5 s to push here).
    It stays down for several seconds, then is started again.
    """
    ns = scope.namespace
    source = scope.source("big:1")
    owned_repo, owned_image = scope.owned_repository("big"), f"{scope.owned('big')}:1"
    digest = build_large_image(env, source, LARGE_MB)
    create(api, "Deployment", ns, "web", {"app": source})

    with (
        ImageWatch(env, "Deployment", ns, "web", "app") as watch,
        controller_loop(scope) as controller,
    ):
        controller.wait_for(f"pushing {owned_image}", timeout=60)
        wait_for_upload(env, owned_repo)
        with outage(env, "owned") as restore:
            # While it is down, over several seconds (several cycles, or the
            # engine's push retries): the workload keeps its image and the
            # registry's storage holds no manifest or tag for the owned name.
            down_until = time.monotonic() + 4
            while time.monotonic() < down_until:
                assert image_of(api, ns, "web", "app") == source
                assert owned_manifests_on_disk(env, owned_repo) == [], (
                    "the owned registry holds a manifest although it stopped during the push"
                )
                controller.assert_alive()
                time.sleep(0.2)
            restore()
        wait_for(
            lambda: image_of(api, ns, "web", "app") == owned_image,
            60,
            lambda: (
                f"web patched after the owned registry came back; "
                f"it holds {image_of(api, ns, 'web', 'app')}; output:\n{controller.tail()}"
            ),
        )
        controller.assert_alive()
        controller.assert_no_cycle_raised()
    assert env.owned.manifest_digest(owned_repo, "1") == digest
    assert env.owned.tags(owned_repo) == ["1"]
    assert watch.history == [source, owned_image]
    assert watch.violations == []


def test_apiserver_restart_mid_cycle(
    scope: Scope, env: Environment, api: kubernetes.client.ApiClient
) -> None:
    """kube-apiserver stops during a cycle (while an image is pushed) and comes back.

    The controller keeps running through the outage, the interrupted workload
    is patched after the restart, and so is one created after the restart.
    """
    ns = scope.namespace
    early_source, late_source = scope.source("early:1"), scope.source("late:1")
    early_digest = build_large_image(env, early_source, MEDIUM_MB)
    late_digest = env.build_image(late_source, layers=1, seed=f"{ns}-late")
    create(api, "Deployment", ns, "early", {"app": early_source})
    expected = {"early": f"{scope.owned('early')}:1", "late": f"{scope.owned('late')}:1"}

    with (
        ImageWatch(env, "Deployment", ns, "early", "app") as watch,
        controller_loop(scope) as controller,
    ):
        # Stopped while the cycle pushes: it has listed and will want to patch.
        controller.wait_for(f"pushing {scope.owned('early')}:1", timeout=60)
        with outage(env, "apiserver") as restore:
            # Cycles go on against the stopped API server; the process stays up.
            controller.wait_cycles(2, controller.mark(), timeout=60)
            controller.assert_alive()
            restore()
        create(api, "Deployment", ns, "late", {"app": late_source})
        wait_for(
            lambda: {n: image_of(api, ns, n, "app") for n in expected} == expected,
            60,
            lambda: (
                "convergence after the API server restart: "
                f"{ {n: image_of(api, ns, n, 'app') for n in expected} }; output:\n"
                f"{controller.tail()}"
            ),
        )
        controller.assert_alive()
        controller.assert_no_cycle_raised()
        code = controller.terminate()
        assert code == 0, controller.tail()
    assert env.owned.manifest_digest(scope.owned_repository("early"), "1") == early_digest
    assert env.owned.manifest_digest(scope.owned_repository("late"), "1") == late_digest
    assert watch.history == [early_source, expected["early"]]
    assert watch.violations == []


def test_dockerd_restart_while_loop_runs(
    scope: Scope, env: Environment, api: kubernetes.client.ApiClient
) -> None:
    """dockerd stops during a push and comes back: nothing patched meanwhile, then converges.

    The engine is stopped while it streams a layer to the owned registry; a
    second workload is created once it is down. Neither is patched until the
    engine is back (an owned copy counts only once verified through it), and
    throughout, whenever the first points at the owned registry, the owned
    registry holds that manifest.
    """
    ns = scope.namespace
    early_source, late_source = scope.source("early:1"), scope.source("late:1")
    early_digest = build_large_image(env, early_source, LARGE_MB)
    late_digest = env.build_image(late_source, layers=1, seed=f"{ns}-late")
    create(api, "Deployment", ns, "early", {"app": early_source})
    late_repo = scope.owned_repository("late")

    with (
        ImageWatch(env, "Deployment", ns, "early", "app") as watch,
        controller_loop(scope) as controller,
    ):
        controller.wait_for(f"pushing {scope.owned('early')}:1", timeout=60)
        wait_for_upload(env, scope.owned_repository("early"))
        with outage(env, "dockerd") as restore:
            create(api, "Deployment", ns, "late", {"app": late_source})
            # Two full cycles after the creation: the second listed "late".
            controller.wait_cycles(2, controller.mark(), timeout=60)
            controller.assert_alive()
            assert image_of(api, ns, "early", "app") == early_source
            assert image_of(api, ns, "late", "app") == late_source
            assert env.owned.tags(late_repo) == []
            restore()
        expected = {"early": f"{scope.owned('early')}:1", "late": f"{scope.owned('late')}:1"}
        wait_for(
            lambda: {n: image_of(api, ns, n, "app") for n in expected} == expected,
            60,
            lambda: (
                "convergence after dockerd came back: "
                f"{ {n: image_of(api, ns, n, 'app') for n in expected} }; output:\n"
                f"{controller.tail()}"
            ),
        )
        controller.assert_alive()
        controller.assert_no_cycle_raised()
        code = controller.terminate()
        assert code == 0, controller.tail()
    assert watch.violations == []
    assert watch.history == [early_source, expected["early"]]
    assert env.owned.manifest_digest(scope.owned_repository("early"), "1") == early_digest
    assert env.owned.manifest_digest(late_repo, "1") == late_digest


def test_user_edit_between_read_and_patch_wins(
    scope: Scope, env: Environment, api: kubernetes.client.ApiClient
) -> None:
    """A user changes the image while the controller clones the old one: the user's value stands.

    Once the controller logs "pulling <old image>" it has read the Deployment
    and is busy for seconds (a LARGE_MB pull and push); the user's patch lands
    then. The controller's patch, planned from the old image, must be refused;
    the container ends with the user's image or, in a later cycle, the owned
    copy of the user's image, and never with the owned copy of the old one.
    """
    ns = scope.namespace
    old_source, user_source = scope.source("old:1"), scope.source("user:2")
    build_large_image(env, old_source, LARGE_MB)
    user_digest = env.build_image(user_source, layers=1, seed=f"{ns}-user")
    old_owned, user_owned = f"{scope.owned('old')}:1", f"{scope.owned('user')}:2"
    create(api, "Deployment", ns, "web", {"app": old_source})
    apps = kubernetes.client.AppsV1Api(api)

    with (
        ImageWatch(env, "Deployment", ns, "web", "app") as watch,
        controller_loop(scope) as controller,
    ):
        # The copy is made from the digest the source answered (name@sha256:...).
        pulling = controller.wait_for(f"pulling {old_source.rsplit(':', 1)[0]}@sha256:", timeout=60)
        # The user's edit, made only if the container still holds the old
        # image (otherwise the controller was faster and the test proves nothing).
        image_path = "/spec/template/spec/containers/0/image"
        try:
            apps.patch_namespaced_deployment(
                "web",
                ns,
                [
                    {"op": "test", "path": image_path, "value": old_source},
                    {"op": "replace", "path": image_path, "value": user_source},
                ],
            )
        except kubernetes.client.ApiException as exc:
            raise AssertionError(
                f"the user's edit came too late: the container no longer held {old_source}: "
                f"{exc.status} {exc.body}"
            ) from None
        controller.wait_for(SUMMARY, pulling, timeout=60)  # the end of that cycle
        after_cycle = image_of(api, ns, "web", "app")
        assert after_cycle in {user_source, user_owned}, (
            f"after the cycle the container holds {after_cycle}, not the user's "
            f"{user_source} (or its owned copy {user_owned})"
        )
        wait_for(
            lambda: image_of(api, ns, "web", "app") == user_owned,
            60,
            lambda: (
                f"the user's image cloned and patched in a later cycle: "
                f"{image_of(api, ns, 'web', 'app')}; output:\n{controller.tail()}"
            ),
        )
        controller.assert_alive()
        controller.assert_no_cycle_raised()
    assert old_owned not in watch.history, watch.history
    assert set(watch.history) <= {old_source, user_source, user_owned}, watch.history
    assert watch.violations == []
    assert env.owned.manifest_digest(scope.owned_repository("user"), "2") == user_digest


def test_sigkill_during_push_then_restart_converges(
    scope: Scope, env: Environment, api: kubernetes.client.ApiClient
) -> None:
    """The controller is SIGKILLed while it pushes (a layer is streaming); a new one finishes.

    Throughout (sampled every 50 ms), whenever the workload points at the
    owned registry, that registry holds the manifest it points at.
    """
    ns = scope.namespace
    source = scope.source("big:1")
    owned_repo, owned_image = scope.owned_repository("big"), f"{scope.owned('big')}:1"
    digest = build_large_image(env, source, LARGE_MB)
    create(api, "Deployment", ns, "web", {"app": source})

    with ImageWatch(env, "Deployment", ns, "web", "app") as watch:
        with controller_loop(scope) as first:
            first.wait_for(f"pushing {owned_image}", timeout=60)
            wait_for_upload(env, owned_repo)
            assert first.kill() == -signal.SIGKILL
        assert image_of(api, ns, "web", "app") == source

        with controller_loop(scope) as second:
            wait_for(
                lambda: image_of(api, ns, "web", "app") == owned_image,
                60,
                lambda: (
                    f"web patched by the restarted controller: "
                    f"{image_of(api, ns, 'web', 'app')}; output:\n{second.tail()}"
                ),
            )
            second.assert_alive()
            second.assert_no_cycle_raised()
            assert second.terminate() == 0, second.tail()
    assert env.owned.manifest_digest(owned_repo, "1") == digest
    assert watch.violations == []
    assert watch.history == [source, owned_image]


_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def _decoded_tokens(text: str) -> Iterator[bytes]:
    """Every run of base64 (standard or URL-safe) characters in ``text``, decoded."""
    for match in _BASE64_TOKEN.finditer(text):
        token = match.group(0).rstrip("=")
        for start in range(4):  # the token may start mid-quantum
            chunk = token[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            if not chunk:
                continue
            for altchars in (b"+/", b"-_"):
                decoded = _b64decode(chunk, altchars)
                if decoded is not None:
                    yield decoded


def _b64decode(chunk: str, altchars: bytes) -> bytes | None:
    try:
        return base64.b64decode(chunk.encode(), altchars=altchars)
    except ValueError:
        return None


def test_credentials_never_appear_in_output(
    scope: Scope, env: Environment, api: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    """With DEBUG logging, neither a wrong nor the right password shows in any output.

    Checked: the passwords themselves, ``user:password`` in base64 (standard
    and URL-safe), and any base64 run in the output that decodes to text
    containing a password (e.g. an ``X-Registry-Auth`` header).
    """
    ns = scope.namespace
    assert env.owned.username is not None and env.owned.password is not None
    user, right = env.owned.username, env.owned.password
    wrong = f"wrong-{secrets.token_urlsafe(15)}"
    source = scope.source("cred:1")
    env.build_image(source, layers=1, seed=f"{ns}-cred")
    # An excluded image: the controller says why at DEBUG, which proves the level.
    skipped = scope.source("skipped:1")
    create(api, "Deployment", ns, "web", {"app": source, "side": skipped})

    wrong_config = tmp_path / "wrong-docker-config.json"
    token = base64.b64encode(f"{user}:{wrong}".encode()).decode()
    wrong_config.write_text(json.dumps({"auths": {env.owned.host: {"auth": token}}}))
    settings: dict[str, Any] = {
        "namespaces": {"include": [ns]},
        "images": {"exclude": [f"{env.public.host}/{ns}/skipped"]},
    }
    wrong_settings = scope.write_config("wrong.yaml", dockerConfig=str(wrong_config), **settings)
    right_settings = scope.write_config("right.yaml", **settings)
    failed = scope.run(wrong_settings, "--log-level", "DEBUG")
    (tmp_path / "controller-wrong.log").write_text(failed.stdout + failed.stderr)
    assert failed.returncode == 1, failed.stderr
    assert "(auth)" in failed.stderr, failed.stderr  # the wrong password was really tried
    assert images(read(api, "Deployment", ns, "web"))["app"] == source
    assert env.owned.tags(scope.owned_repository("cred")) == []

    worked = scope.run(right_settings, "--log-level", "DEBUG")
    (tmp_path / "controller-right.log").write_text(worked.stdout + worked.stderr)
    assert worked.returncode == 0, worked.stderr
    assert images(read(api, "Deployment", ns, "web")) == {
        "app": f"{scope.owned('cred')}:1",
        "side": skipped,
    }

    output = "\n".join([failed.stdout, failed.stderr, worked.stdout, worked.stderr])
    assert " DEBUG " in output, "DEBUG logging was not on"
    forbidden = {"wrong password": wrong, "right password": right}
    for password in (wrong, right):
        pair = f"{user}:{password}".encode()
        forbidden[f"base64 of {user}:<password>"] = base64.b64encode(pair).decode()
        forbidden[f"url-safe base64 of {user}:<password>"] = base64.urlsafe_b64encode(pair).decode()
    for what, value in forbidden.items():
        for variant in {value, value.rstrip("=")}:
            assert variant not in output, f"the {what} appears in the controller's output"
    for decoded in _decoded_tokens(output):
        for name, password in (("wrong", wrong), ("right", right)):
            assert password.encode() not in decoded, (
                f"the {name} password appears base64-encoded in the controller's output"
            )
