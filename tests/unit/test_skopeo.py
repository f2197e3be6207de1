"""The skopeo copy backend: argv, auth file, environment and errors.

The fake ``skopeo`` below is a stand-in for the tool's command line only: it
records what it was given (argv, environment, a copy of the auth file and its
mode) and then writes a digest file or prints a fatal line recorded from real
skopeo 1.9.3 runs against loopback registries (TESTBED; the lines in
``RECORDED`` were produced by running skopeo against stopped, absent,
auth-failing, plain-HTTP and 429/503-answering registries on 127.0.0.1).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloner.adapters import skopeo
from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.skopeo import (
    BLOB_INFO_CACHE,
    CACHE_MAX_BYTES,
    SkopeoBackend,
    copy_argv,
    copy_error,
    failing_side,
    fatal_message,
)
from cloner.errors import RegistryError
from cloner.model.proxy import ProxyConfig
from cloner.model.reference import Reference, parse_reference

PUBLIC = "127.0.0.1:48191"
OWNED = "127.0.0.1:58411"
DIGEST = "sha256:a01cc519a4e1f73ef53b4a7f60f392b70d279a5d36d5fec827252e0e5793598a"
BLOB = "sha256:85df998cfbaac8f944744b6d297a2440263b2a1d875f211a06c5140d8f331f8b"
PASSWORD = "s3cret-Pa55word"

# (name, stderr line as skopeo 1.9.3 printed it, source, owned, reason, side)
RECORDED: list[tuple[str, str, str, str, str, str]] = [
    (
        "source tag absent",
        'time="2026-12-01T21:14:53Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:48191/src/app:nope: reading manifest nope in "
        '127.0.0.1:48191/src/app: manifest unknown: manifest unknown"',
        f"{PUBLIC}/src/app:nope",
        f"{OWNED}/dst/app:1",
        "not_found",
        "source",
    ),
    (
        "source digest absent",
        'time="2026-12-01T21:14:53Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:48191/src/app@sha256:" + "0" * 64 + ": reading manifest sha256:"
        "" + "0" * 64 + ' in 127.0.0.1:48191/src/app: manifest unknown: manifest unknown"',
        f"{PUBLIC}/src/app@sha256:" + "0" * 64,
        f"{OWNED}/dst/app:sha256-" + "0" * 64,
        "not_found",
        "source",
    ),
    (
        "wrong owned credentials",
        'time="2026-12-01T21:14:53Z" level=fatal msg="copying image 1/2 from manifest list: '
        f"trying to reuse blob {BLOB} at destination: checking whether a blob {BLOB} exists "
        'in 127.0.0.1:58411/dst/bad: unauthorized: authentication required"',
        f"{PUBLIC}/src/app:1",
        f"{OWNED}/dst/bad:1",
        "auth",
        "owned",
    ),
    (
        "source needs credentials",
        'time="2026-12-01T21:15:16Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:58411/dst/app:1: reading manifest 1 in 127.0.0.1:58411/dst/app: "
        'unauthorized: authentication required"',
        f"{OWNED}/dst/app:1",
        f"{PUBLIC}/back/app:1",
        "auth",
        "source",
    ),
    (
        "source stopped",
        'time="2026-12-01T21:15:16Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:48191/src/app:1: pinging container registry 127.0.0.1:48191: "
        'Get \\"http://127.0.0.1:48191/v2/\\": dial tcp 127.0.0.1:48191: connect: '
        'connection refused"',
        f"{PUBLIC}/src/app:1",
        f"{OWNED}/dst/app:2",
        "network",
        "source",
    ),
    (
        "owned stopped",
        'time="2026-12-01T21:15:16Z" level=fatal msg="copying image 1/2 from manifest list: '
        f"trying to reuse blob {BLOB} at destination: pinging container registry "
        '127.0.0.1:58411: Get \\"http://127.0.0.1:58411/v2/\\": dial tcp 127.0.0.1:58411: '
        'connect: connection refused"',
        f"{PUBLIC}/src/app:1",
        f"{OWNED}/dst/app:2",
        "network",
        "owned",
    ),
    (
        "source TLS verified, plain HTTP",
        'time="2026-12-01T21:14:54Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:48191/src/app:1: pinging container registry 127.0.0.1:48191: "
        'Get \\"https://127.0.0.1:48191/v2/\\": http: server gave HTTP response to HTTPS '
        'client"',
        f"{PUBLIC}/src/app:1",
        f"{OWNED}/dst/app:1",
        "insecure_registry",
        "source",
    ),
    (
        "owned TLS verified, plain HTTP",
        'time="2026-12-01T21:14:54Z" level=fatal msg="copying image 1/2 from manifest list: '
        f"trying to reuse blob {BLOB} at destination: pinging container registry "
        '127.0.0.1:58411: Get \\"https://127.0.0.1:58411/v2/\\": http: server gave HTTP '
        'response to HTTPS client"',
        f"{PUBLIC}/src/app:1",
        f"{OWNED}/dst/app:1",
        "insecure_registry",
        "owned",
    ),
    (
        "source never answers (--command-timeout 2s)",
        'time="2026-12-01T21:14:56Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:46867/src/app:1: pinging container registry 127.0.0.1:46867: "
        'Get \\"http://127.0.0.1:46867/v2/\\": context deadline exceeded"',
        "127.0.0.1:46867/src/app:1",
        f"{OWNED}/dst/app:1",
        "network",
        "source",
    ),
    (
        "source 429 with Retry-After 7, skopeo waits past --command-timeout 20s",
        'time="2026-12-01T21:15:16Z" level=fatal msg="initializing source '
        'docker://127.0.0.1:34045/too/app:1: context deadline exceeded"',
        "127.0.0.1:34045/too/app:1",
        f"{OWNED}/dst/app:1",
        "network",
        "source",
    ),
    (
        "source 429",
        'time="2026-12-01T21:15:36Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:35771/too/app:1: reading manifest 1 in 127.0.0.1:35771/too/app: "
        'toomanyrequests: retry after 30 seconds"',
        "127.0.0.1:35771/too/app:1",
        f"{PUBLIC}/x/y:1",
        "rate_limited",
        "source",
    ),
    (
        "owned 429",
        'time="2026-12-01T21:15:36Z" level=fatal msg="copying image 1/2 from manifest list: '
        f"trying to reuse blob {BLOB} at destination: failed to read from destination "
        'repository dst/app: 429 (Too Many Requests)"',
        f"{PUBLIC}/src/app:1",
        "127.0.0.1:35771/dst/app:1",
        "rate_limited",
        "owned",
    ),
    (
        "source 503",
        'time="2026-12-01T21:15:16Z" level=fatal msg="initializing source '
        "docker://127.0.0.1:34045/five/app:1: reading manifest 1 in "
        '127.0.0.1:34045/five/app: received unexpected HTTP status: 503 Service Unavailable"',
        "127.0.0.1:34045/five/app:1",
        f"{OWNED}/dst/app:1",
        "registry_error",
        "source",
    ),
    (
        "conversion refused by --preserve-digests",
        'time="2026-12-01T21:17:42Z" level=fatal msg="Manifest list must be converted to type '
        '\\"application/vnd.oci.image.index.v1+json\\" to be written to destination, but we '
        'cannot modify it: \\"Instructed to preserve digests\\""',
        f"{PUBLIC}/src/app:1",
        f"{PUBLIC}/dst/app:1",
        "unsupported",
        "owned",
    ),
]


def _ref(text: str) -> Reference:
    return parse_reference(text)


@pytest.mark.parametrize(
    ("stderr", "source", "owned", "reason", "side"),
    [pytest.param(*row[1:], id=row[0]) for row in RECORDED],
)
def test_recorded_skopeo_failures_are_classified_and_attributed(
    stderr: str, source: str, owned: str, reason: str, side: str
) -> None:
    src, dst = _ref(source), _ref(owned)
    error = copy_error(stderr + "\n", 1, src, dst)
    assert error.reason == reason
    assert error.registry == (src.registry if side == "source" else dst.registry)
    assert str(error).startswith(f"skopeo copy {src} -> {dst}: ")
    assert "level=fatal" not in str(error)


def test_fatal_message_unquotes_go_escapes() -> None:
    line = RECORDED[-1][1]
    assert fatal_message(line) == (
        'Manifest list must be converted to type "application/vnd.oci.image.index.v1+json" '
        'to be written to destination, but we cannot modify it: "Instructed to preserve digests"'
    )
    assert fatal_message('time="x" level=fatal msg=denied\n') == "denied"
    warning = 'time="x" level=warning msg="Not using TLS"\n'
    assert fatal_message(warning + RECORDED[0][1] + "\n").startswith("initializing source ")
    assert fatal_message("Error: something else\n") == "something else"
    assert fatal_message("\n\n") is None


def test_retry_after_in_the_message_is_kept() -> None:
    row = next(r for r in RECORDED if r[0] == "source 429")
    error = copy_error(row[1], 1, _ref(row[2]), _ref(row[3]))
    assert error.retry_after == 30.0
    assert error.temporary


def test_marker_words_in_repository_names_do_not_decide_the_side() -> None:
    source, owned = _ref(f"{PUBLIC}/writing/destination:1"), _ref(f"{OWNED}/reading/blob:1")
    message = (
        "initializing source docker://127.0.0.1:48191/writing/destination:1: reading manifest 1 "
        "in 127.0.0.1:48191/writing/destination: manifest unknown"
    )
    assert failing_side(message, source, owned) == "source"
    # No operation named: the registry host named decides.
    assert failing_side("Get http://127.0.0.1:58411/v2/: EOF", source, owned) == "owned"
    assert failing_side("Get http://127.0.0.1:48191/v2/: EOF", source, owned) == "source"
    assert failing_side("something odd", source, owned) == "source"
    # 127.0.0.1:5841 is not 127.0.0.1:58411.
    assert failing_side("dial tcp 127.0.0.1:58411: EOF", _ref("127.0.0.1:5841/a:1"), owned) == (
        "owned"
    )


@pytest.mark.parametrize(
    ("patterns", "src_flag", "dest_flag"),
    [
        ((), "--src-tls-verify=true", "--dest-tls-verify=true"),
        (("127.0.0.1:48191",), "--src-tls-verify=false", "--dest-tls-verify=true"),
        (("127.0.0.1:58411",), "--src-tls-verify=true", "--dest-tls-verify=false"),
        (("127.0.0.1:*",), "--src-tls-verify=false", "--dest-tls-verify=false"),
        (("127.0.0.1",), "--src-tls-verify=true", "--dest-tls-verify=true"),
    ],
)
def test_tls_verification_is_off_only_for_listed_registries(
    patterns: tuple[str, ...], src_flag: str, dest_flag: str
) -> None:
    argv = copy_argv(
        "skopeo",
        _ref(f"{PUBLIC}/src/app:1"),
        _ref(f"{OWNED}/dst/app:1"),
        digest_file=Path("/w/digest"),
        auth_file=Path("/w/auth.json"),
        command_timeout=600,
        insecure_registries=patterns,
    )
    assert argv == [
        "skopeo",
        "--command-timeout",
        "600s",
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        "--retry-times",
        "0",
        "--digestfile",
        "/w/digest",
        "--authfile",
        "/w/auth.json",
        src_flag,
        dest_flag,
        f"docker://{PUBLIC}/src/app:1",
        f"docker://{OWNED}/dst/app:1",
    ]


def test_source_with_digest_is_copied_by_digest_and_fractional_timeouts_are_go_durations() -> None:
    argv = copy_argv(
        "/usr/bin/skopeo",
        _ref(f"docker.io/library/nginx:1.27@{DIGEST}"),
        _ref(f"{OWNED}/dst/nginx:sha256-{DIGEST[7:]}"),
        digest_file=Path("d"),
        auth_file=Path("a"),
        command_timeout=2.5,
        insecure_registries=("127.0.0.1:*",),
    )
    assert argv[1:3] == ["--command-timeout", "2.5s"]
    assert argv[-2:] == [
        f"docker://docker.io/library/nginx@{DIGEST}",
        f"docker://{OWNED}/dst/nginx:sha256-{DIGEST[7:]}",
    ]
    assert "--src-tls-verify=true" in argv


# --- through a fake skopeo executable ------------------------------------------------

FAKE = """#!{python}
import json, os, shutil, stat, sys, time
here = os.path.dirname(os.path.abspath(__file__))
plan = json.load(open(os.path.join(here, "plan.json")))
argv = sys.argv[1:]
record = {{"argv": argv, "env": dict(os.environ)}}
if "--authfile" in argv:
    auth = argv[argv.index("--authfile") + 1]
    record["auth_path"] = auth
    record["auth_mode"] = stat.S_IMODE(os.stat(auth).st_mode)
    record["auth"] = json.load(open(auth))
    record["home_entries"] = sorted(os.listdir(os.environ["HOME"]))
json.dump(record, open(os.path.join(here, "record.json"), "w"))
time.sleep(plan.get("sleep", 0))
if plan.get("stderr_hex"):
    sys.stderr.buffer.write(bytes.fromhex(plan["stderr_hex"]))
    sys.exit(plan.get("rc", 1))
if plan.get("stderr"):
    sys.stderr.write(plan["stderr"])
    sys.exit(plan.get("rc", 1))
if plan.get("digest") is not None:
    open(argv[argv.index("--digestfile") + 1], "w").write(plan["digest"])
sys.exit(0)
"""


class Fake:
    """The fake skopeo of one test: set its plan, read what it recorded."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.path = directory / "skopeo"
        self.path.write_text(FAKE.format(python=sys.executable))
        self.path.chmod(0o755)
        self.plan()

    def plan(self, **plan: Any) -> None:
        (self.directory / "plan.json").write_text(json.dumps(plan))

    @property
    def record(self) -> dict[str, Any]:
        return json.loads((self.directory / "record.json").read_text())


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path / "bin")


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "auths": {
                    OWNED: {"auth": _auth("cloner", PASSWORD)},
                    "https://index.docker.io/v1/": {"username": "hubuser", "password": "hubpw"},
                    "other.example.com": {"auth": _auth("other", "otherpw")},
                }
            }
        )
    )
    credentials = CredentialStore(config)
    credentials.reload()
    return credentials


def _backend(store: CredentialStore, fake: Fake, **kwargs: Any) -> SkopeoBackend:
    return SkopeoBackend(store, skopeo=str(fake.path), **kwargs)


def test_clone_returns_the_written_digest_and_the_auth_file_holds_only_the_two_registries(
    store: CredentialStore, fake: Fake
) -> None:
    fake.plan(digest=DIGEST + "\n")
    backend = _backend(store, fake, insecure_registries=["127.0.0.1:*"])
    source = _ref(f"docker.io/library/nginx@{DIGEST}")
    owned = _ref(f"{OWNED}/mirror/nginx:sha256-{DIGEST[7:]}")

    assert backend.clone(source, owned).digest == DIGEST

    record = fake.record
    assert record["auth_mode"] == 0o600
    assert record["auth"] == {
        "auths": {
            "docker.io": {"auth": _auth("hubuser", "hubpw")},
            OWNED: {"auth": _auth("cloner", PASSWORD)},
        }
    }
    assert not Path(record["auth_path"]).exists()  # removed afterwards
    argv = " ".join(record["argv"])
    for secret in (PASSWORD, _auth("cloner", PASSWORD), "hubpw", _auth("hubuser", "hubpw")):
        assert secret not in argv
    assert record["argv"][-2:] == [
        f"docker://docker.io/library/nginx@{DIGEST}",
        f"docker://{owned}",
    ]
    assert "--src-tls-verify=true" in record["argv"]
    assert "--dest-tls-verify=false" in record["argv"]
    assert backend.requests == {("copy", "success"): 1}


def test_anonymous_source_gets_no_entry(store: CredentialStore, fake: Fake) -> None:
    fake.plan(digest=DIGEST)
    _backend(store, fake).clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    assert fake.record["auth"] == {"auths": {OWNED: {"auth": _auth("cloner", PASSWORD)}}}


def test_skopeo_gets_no_other_credential_source(
    store: CredentialStore, fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # skopeo 1.9 falls back to these even with --authfile (seen on the test bed).
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("no_proxy", ".svc")
    fake.plan(digest=DIGEST)
    proxy = ProxyConfig.from_environ(os.environ)
    _backend(store, fake, proxy=proxy).clone(
        _ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1")
    )
    env = fake.record["env"]
    for name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME"):
        assert name not in env
    # The proxy settings the controller decided, in both spellings Go reads.
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == ".svc"
    assert env["HOME"] != os.environ.get("HOME")
    assert fake.record["home_entries"] == []
    assert not Path(env["HOME"]).exists()


def test_skopeo_reads_no_proxy_variable_the_backend_was_not_given(
    store: CredentialStore, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    fake.plan(digest=DIGEST)
    _backend(store, fake).clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    assert not {"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"} & set(fake.record["env"])


def test_every_copy_shares_one_private_blob_info_cache_until_close(
    store: CredentialStore, fake: Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A caller's own XDG_DATA_HOME is not skopeo's: the backend's directory is.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    fake.plan(digest=DIGEST)
    backend = _backend(store, fake)
    seen = []
    for name in ("a", "b"):
        backend.clone(_ref(f"{PUBLIC}/src/{name}:1"), _ref(f"{OWNED}/dst/{name}:1"))
        env = fake.record["env"]
        seen.append((env["XDG_DATA_HOME"], env["HOME"]))
    (cache, first_home), (again, second_home) = seen
    assert cache == again != str(tmp_path)
    assert first_home != second_home  # HOME stays private to each copy
    assert not cache.startswith(first_home) and not cache.startswith(second_home)
    assert Path(cache).is_dir() and Path(cache).stat().st_mode & 0o777 == 0o700

    backend.close()
    assert not Path(cache).exists()
    backend.clone(_ref(f"{PUBLIC}/src/c:1"), _ref(f"{OWNED}/dst/c:1"))
    fresh = fake.record["env"]["XDG_DATA_HOME"]
    assert fresh != cache and Path(fresh).is_dir()
    backend.close()


def test_a_blob_info_cache_grown_past_its_bound_is_started_again(
    store: CredentialStore, fake: Fake
) -> None:
    fake.plan(digest=DIGEST)
    backend = _backend(store, fake)
    first = backend.blob_info_cache()
    cache_file = first / BLOB_INFO_CACHE
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"\0" * CACHE_MAX_BYTES)
    assert backend.blob_info_cache() == first  # at the bound: kept

    with cache_file.open("ab") as handle:
        handle.write(b"\0")
    backend.clone(_ref(f"{PUBLIC}/src/a:1"), _ref(f"{OWNED}/dst/a:1"))
    second = Path(fake.record["env"]["XDG_DATA_HOME"])
    assert second != first and not first.exists()
    backend.close()


def test_identity_tokens_are_written_as_docker_login_stores_them(
    tmp_path: Path, fake: Fake
) -> None:
    config = tmp_path / "token.json"
    config.write_text(
        json.dumps({"auths": {OWNED: {"auth": _auth("oauth", ""), "identitytoken": "tok-123"}}})
    )
    credentials = CredentialStore(config)
    credentials.reload()
    fake.plan(digest=DIGEST)
    _backend(credentials, fake).clone(_ref(f"{PUBLIC}/a:1"), _ref(f"{OWNED}/a:1"))
    assert fake.record["auth"]["auths"][OWNED] == {
        "auth": _auth("oauth", ""),
        "identitytoken": "tok-123",
    }


@pytest.mark.parametrize(("name", "stderr", "source", "owned", "reason", "side"), RECORDED[:6])
def test_fatal_lines_of_the_tool_become_registry_errors(
    store: CredentialStore,
    fake: Fake,
    name: str,
    stderr: str,
    source: str,
    owned: str,
    reason: str,
    side: str,
) -> None:
    fake.plan(stderr=stderr + "\n", rc=1)
    backend = _backend(store, fake)
    src, dst = _ref(source), _ref(owned)
    with pytest.raises(RegistryError) as caught:
        backend.clone(src, dst)
    assert caught.value.reason == reason, name
    assert caught.value.registry == (src.registry if side == "source" else dst.registry)
    assert backend.requests == {("copy", reason): 1}
    assert not Path(fake.record["auth_path"]).exists()


def test_a_digest_other_than_the_source_digest_fails_verification(
    store: CredentialStore, fake: Fake
) -> None:
    other = "sha256:" + "1" * 64
    fake.plan(digest=other)
    with pytest.raises(RegistryError) as caught:
        _backend(store, fake).clone(
            _ref(f"{PUBLIC}/src/app@{DIGEST}"), _ref(f"{OWNED}/dst/app:sha256-{DIGEST[7:]}")
        )
    assert caught.value.reason == "verify_failed"
    assert caught.value.registry == OWNED
    assert other in str(caught.value) and DIGEST in str(caught.value)


def test_no_digest_written_fails_verification(store: CredentialStore, fake: Fake) -> None:
    fake.plan()  # exits 0, writes nothing
    with pytest.raises(RegistryError) as caught:
        _backend(store, fake).clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    assert caught.value.reason == "verify_failed"


def test_missing_binary_is_a_registry_error(store: CredentialStore, tmp_path: Path) -> None:
    backend = SkopeoBackend(store, skopeo=str(tmp_path / "no-such-skopeo"))
    with pytest.raises(RegistryError) as caught:
        backend.clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    assert caught.value.reason == "registry_error"
    assert "no-such-skopeo" in str(caught.value)
    assert backend.requests == {("copy", "registry_error"): 1}


def test_a_process_past_its_deadline_is_killed_as_a_network_error(
    store: CredentialStore, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skopeo, "PROCESS_TIMEOUT_MARGIN", 0.5)
    fake.plan(sleep=30)
    backend = _backend(store, fake, command_timeout=0.5)
    with pytest.raises(RegistryError) as caught:
        backend.clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    assert caught.value.reason == "network"
    assert "did not finish within 1s" in str(caught.value)
    assert backend.last_duration < 10
    assert fake.record["argv"][:3] == ["--command-timeout", "0.5s", "copy"]


def test_undecodable_stderr_and_a_signal_still_give_a_registry_error(
    store: CredentialStore, fake: Fake
) -> None:
    fake.plan(stderr_hex=b"\xff\xfe garbage\n".hex(), rc=2)
    with pytest.raises(RegistryError) as caught:
        _backend(store, fake).clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    assert caught.value.reason == "registry_error"
    error = copy_error("", -9, _ref(f"{PUBLIC}/a:1"), _ref(f"{OWNED}/a:1"))
    assert "status -9" in str(error)


@pytest.mark.parametrize("owned", [f"{OWNED}/dst/app", f"{OWNED}/dst/app:1@{DIGEST}"])
def test_owned_must_be_a_tag_without_digest(store: CredentialStore, owned: str) -> None:
    reference = _ref(owned)
    with pytest.raises(ValueError, match="tag without digest"):
        SkopeoBackend(store).clone(_ref(f"{PUBLIC}/src/app:1"), reference)


def test_command_timeout_must_be_positive(store: CredentialStore) -> None:
    with pytest.raises(ValueError):
        SkopeoBackend(store, command_timeout=0)


def test_the_auth_file_mode_is_0600_whatever_the_umask(store: CredentialStore, fake: Fake) -> None:
    previous = os.umask(0)
    try:
        fake.plan(digest=DIGEST)
        _backend(store, fake).clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(fake.record["auth_mode"]) == 0o600


def test_the_backend_imports_neither_docker_nor_kubernetes() -> None:
    import subprocess

    code = (
        "import sys, cloner.adapters.skopeo\n"
        "print(','.join(m for m in ('kubernetes', 'docker') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_abandon_kills_the_copy_in_flight_and_refuses_new_ones(
    store: CredentialStore, fake: Fake
) -> None:
    fake.plan(sleep=30)
    backend = _backend(store, fake)
    raised: list[RegistryError] = []

    def copy() -> None:
        try:
            backend.clone(_ref(f"{PUBLIC}/src/app:1"), _ref(f"{OWNED}/dst/app:1"))
        except RegistryError as exc:
            raised.append(exc)

    thread = threading.Thread(target=copy)
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 10
    while not (fake.directory / "record.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    backend.abandon()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10  # not the 30 s the process would sleep
    assert len(raised) == 1 and "status -9" in str(raised[0])
    with pytest.raises(RegistryError, match="not started, shutting down"):
        backend.clone(_ref(f"{PUBLIC}/src/app:2"), _ref(f"{OWNED}/dst/app:2"))
