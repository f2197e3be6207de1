"""docker config.json and credential helpers: registries normalized, errors clear, secrets hidden.

The helper tests run a real ``docker-credential-test`` script (devenv/credhelper.py) from PATH.
"""

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from cloner.adapters.credential_store import CredentialStore, HelperFailed, run_helper
from cloner.errors import ConfigError
from cloner.model.credentials import Credential, DockerConfig, HelperRef, normalize_registry_key
from cloner.model.pullsecrets import dockerconfigjson
from devenv.credhelper import FakeHelper


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("Registry.Example.com", "registry.example.com"),
        ("quay.io", "quay.io"),
    ],
)
def test_registry_keys_are_normalized(key: str, host: str) -> None:
    assert normalize_registry_key(key) == host


def test_auth_and_username_password_entries() -> None:
    config = DockerConfig.parse(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5000": {"auth": auth("cloner", "s3cr:et")},
                    "https://index.docker.io/v1/": {"username": "u", "password": "p"},
                    "empty.example.com": {},
                }
            }
        )
    )
    owned = config.for_registry("127.0.0.1:5000")
    assert owned is not None
    assert (owned.username, owned.password) == ("cloner", "s3cr:et")
    assert owned.docker_auth_config() == {"username": "cloner", "password": "s3cr:et"}
    hub = config.for_registry("docker.io")
    assert hub is not None and hub.username == "u"
    assert config.for_registry("empty.example.com") is None
    assert config.for_registry("other.example.com") is None


def test_password_never_in_repr() -> None:
    config = DockerConfig.parse(
        json.dumps({"auths": {"r.example.com": {"auth": auth("u", "hunter2")}}})
    )
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(config.for_registry("r.example.com"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"auths": []}', "must be an object"),
        ('{"auths": {"r.example.com": "x"}}', "must be an object"),
        ('{"auths": {"r.example.com": {"auth": "!!!"}}}', "not base64"),
        (
            '{"auths": {"r.example.com": {"auth": "'
            + base64.b64encode(b"nocolon").decode()
            + '"}}}',
            "not base64",
        ),
        ('{"credsStore": "../../bin/sh"}', "docker-credential-NAME"),
        ('{"credsStore": 5}', "docker-credential-NAME"),
        ('{"credHelpers": ["r.example.com"]}', "registry -> helper"),
        ('{"credHelpers": {"r.example.com": "/usr/bin/env"}}', "credHelpers.r.example.com"),
        ('{"credHelpers": {"r.example.com": ""}}', "docker-credential-NAME"),
    ],
)
def test_malformed_config_is_refused_with_a_clear_message(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        DockerConfig.parse(text, "/etc/docker/config.json")
    assert "/etc/docker/config.json" in str(caught.value)


# --- credential helpers (credHelpers, credsStore) -----------------------------------------

OWNED = "127.0.0.1:5000"


def test_helper_precedence_cred_helpers_then_creds_store() -> None:
    """docker/cli getConfiguredCredentialStore: credHelpers[host], else credsStore."""
    config = DockerConfig.parse(
        json.dumps(
            {
                "credsStore": "desktop",
                "credHelpers": {
                    "https://123.dkr.ecr.eu-west-1.amazonaws.com": "ecr-login",
                    "gcr.io": "gcr",
                },
                "auths": {"quay.io": {"auth": auth("u", "p")}},
            }
        )
    )
    ecr = config.helper_for("123.dkr.ecr.eu-west-1.amazonaws.com")
    assert ecr == HelperRef(
        "ecr-login", "https://123.dkr.ecr.eu-west-1.amazonaws.com", "credHelpers"
    )
    assert ecr.program == "docker-credential-ecr-login"
    assert config.helper_for("GCR.io") == HelperRef("gcr", "gcr.io", "credHelpers")
    assert config.helper_for("quay.io") == HelperRef("desktop", "quay.io", "credsStore")
    # Docker Hub is asked for by the URL docker and docker-py use.
    assert config.helper_for("docker.io") == HelperRef(
        "desktop", "https://index.docker.io/v1/", "credsStore"
    )
    # Without helpers, auths only.
    plain = DockerConfig.parse(json.dumps({"auths": {"quay.io": {"auth": auth("u", "p")}}}))
    assert plain.helper_for("quay.io") is None and not plain.uses_helpers
    only_helpers = DockerConfig.parse(json.dumps({"credHelpers": {"gcr.io": "gcr"}}))
    assert only_helpers.helper_for("quay.io") is None
    assert only_helpers.credentials == {}


def store_for(tmp_path: Path, document: dict[str, Any], **kwargs: Any) -> CredentialStore:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    store = CredentialStore(path, **kwargs)
    store.reload()
    return store


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHelper:
    """docker-credential-test on PATH, answering for the owned registry."""
    fake = FakeHelper.write(tmp_path / "helper", "test", OWNED, "robot", "first-s3cret")
    monkeypatch.setenv("PATH", fake.path_with())
    return fake


def test_cred_helper_answers_for_its_registry_others_keep_auths(
    tmp_path: Path, helper: FakeHelper, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = store_for(
        tmp_path,
        {
            "credHelpers": {OWNED: "test"},
            "auths": {"quay.io": {"auth": auth("q", "quay-pass")}},
        },
    )
    owned = store.current.for_registry(OWNED)
    assert owned is not None
    assert (owned.registry, owned.username, owned.password) == (OWNED, "robot", "first-s3cret")
    assert owned.key == OWNED  # the pull Secret's auths key
    assert owned.docker_auth_config() == {"username": "robot", "password": "first-s3cret"}
    assert (
        dockerconfigjson(owned)
        == json.dumps(
            {"auths": {OWNED: {"auth": auth("robot", "first-s3cret")}}}, separators=(",", ":")
        ).encode()
    )
    quay = store.current.for_registry("quay.io")
    assert quay is not None and quay.password == "quay-pass"
    assert store.current.for_registry("ghcr.io") is None
    assert helper.asked() == [OWNED]  # asked once at reload, not per lookup
    # no secret in reprs, the version or the log
    for text in (repr(store.current), repr(owned), store.version, caplog.text):
        assert "first-s3cret" not in text and "quay-pass" not in text
    assert "credential helpers for: 127.0.0.1:5000 (docker-credential-test)" in caplog.text


def test_every_reload_asks_again_and_the_version_follows_the_answer(
    tmp_path: Path, helper: FakeHelper
) -> None:
    store = store_for(tmp_path, {"credHelpers": {OWNED: "test"}})
    first = store.version
    assert store.reload() is False  # same answer: same version
    assert store.version == first
    assert helper.asked() == [OWNED, OWNED]
    helper.answer("robot", "second-s3cret")
    assert store.reload() is True
    assert store.version != first
    assert "second-s3cret" not in store.version
    credential = store.current.for_registry(OWNED)
    assert credential is not None and credential.password == "second-s3cret"
    helper.answer("robot", "first-s3cret")
    assert store.reload() is True
    assert store.version == first  # the version is a function of the answers


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", "docker-credential-test exited with status 1: the credential backend is unre"),
        ("badjson", 'docker-credential-test printed an answer that is not the JSON {"ServerURL"'),
    ],
)
def test_a_failing_helper_makes_only_its_registry_unavailable(
    tmp_path: Path,
    helper: FakeHelper,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    message: str,
) -> None:
    store = store_for(
        tmp_path,
        {
            "credHelpers": {OWNED: "test"},
            # ignored for OWNED while its helper fails: no silent fallback
            "auths": {
                OWNED: {"auth": auth("old", "old-pass")},
                "quay.io": {"auth": auth("q", "p")},
            },
        },
    )
    before = store.version
    helper.set_mode(mode)
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert store.reload() is True
    assert store.current.for_registry(OWNED) is None
    assert store.current.for_registry("quay.io") is not None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert (
        f"credential helper docker-credential-test (credHelpers) failed for registry {OWNED}"
        in (errors[0])
    )
    assert message in errors[0]
    assert "first-s3cret" not in caplog.text and "old-pass" not in caplog.text
    # the same failure again is not logged again; a recovery is
    caplog.clear()
    store.reload()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    helper.set_mode("ok")
    assert store.reload() is True
    assert store.version == before
    assert "answers for registry 127.0.0.1:5000 again" in caplog.text
    recovered = store.current.for_registry(OWNED)
    assert recovered is not None and recovered.password == "first-s3cret"


def test_a_helper_that_hangs_is_killed_after_the_timeout(
    tmp_path: Path, helper: FakeHelper, caplog: pytest.LogCaptureFixture
) -> None:
    helper.set_mode("hang")
    started = time.monotonic()
    store = store_for(tmp_path, {"credHelpers": {OWNED: "test"}}, helper_timeout=0.5)
    took = time.monotonic() - started
    assert took < 5, took
    assert store.current.for_registry(OWNED) is None
    assert "docker-credential-test did not answer within 0.5 s (killed)" in caplog.text


def test_a_helper_that_is_not_on_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = store_for(tmp_path, {"credHelpers": {OWNED: "absent"}})
    assert store.current.for_registry(OWNED) is None
    assert "docker-credential-absent not installed or not available in PATH" in caplog.text


def test_unknown_server_falls_back_to_auths(tmp_path: Path, helper: FakeHelper) -> None:
    """ "credentials not found" is not a failure: the auths entry applies (docker-py)."""
    store = store_for(
        tmp_path,
        {
            "credHelpers": {"other.example.com": "test", "third.example.com": "test"},
            "auths": {"other.example.com": {"auth": auth("file", "file-pass")}},
        },
    )
    other = store.current.for_registry("other.example.com")
    assert other is not None and other.username == "file"
    assert store.current.for_registry("third.example.com") is None
    assert sorted(helper.asked()) == ["other.example.com", "third.example.com"]


def test_creds_store_asks_each_registry_looked_up_and_again_each_cycle(
    tmp_path: Path, helper: FakeHelper
) -> None:
    (helper.state / "server").write_text("https://index.docker.io/v1/")
    store = store_for(tmp_path, {"credsStore": "test", "auths": {"quay.io": {}}})
    assert helper.asked() == ["quay.io"]  # auths keys are the registries logged in to
    version = store.version
    hub = store.current.for_registry("index.docker.io")
    assert hub is not None and (hub.username, hub.password) == ("robot", "first-s3cret")
    assert hub.key == "https://index.docker.io/v1/"
    assert store.version != version  # a newly resolved registry counts
    assert store.current.for_registry("docker.io") == hub  # cached for the cycle
    assert helper.asked() == ["quay.io", "https://index.docker.io/v1/"]
    store.reload()
    assert sorted(helper.asked()[2:]) == ["https://index.docker.io/v1/", "quay.io"]


def test_identity_token_answer_is_passed_as_identitytoken(
    tmp_path: Path, helper: FakeHelper
) -> None:
    """Username ``<token>``: Secret is an identity token (docker/cli native_store.go)."""
    helper.answer("<token>", "refresh-t0ken")
    store = store_for(tmp_path, {"credHelpers": {OWNED: "test"}})
    credential = store.current.for_registry(OWNED)
    assert credential is not None
    assert credential.identity_token == "refresh-t0ken"
    assert credential.username == ""
    assert credential.docker_auth_config() == {"identitytoken": "refresh-t0ken"}
    assert "refresh-t0ken" not in repr(credential)


def test_run_helper_without_store(helper: FakeHelper) -> None:
    ref = HelperRef("test", OWNED, "credHelpers")
    credential = run_helper(ref, OWNED)
    assert credential == Credential(OWNED, "robot", "first-s3cret", OWNED)
    assert run_helper(HelperRef("test", "elsewhere", "credsStore"), "elsewhere") is None
    helper.set_mode("fail")
    with pytest.raises(HelperFailed, match=r"asked for 127\.0\.0\.1:5000") as caught:
        run_helper(ref, OWNED)
    assert "first-s3cret" not in str(caught.value)


def test_malformed_file_keeps_the_last_good_one_and_its_helpers_run_again(
    tmp_path: Path, helper: FakeHelper
) -> None:
    store = store_for(tmp_path, {"credHelpers": {OWNED: "test"}})
    store.path.write_text('{"credHelpers": ')
    helper.answer("robot", "rotated-s3cret")
    with pytest.raises(ConfigError, match="not valid JSON"):
        store.reload()
    credential = store.current.for_registry(OWNED)
    assert credential is not None and credential.password == "rotated-s3cret"


def test_a_plain_auths_file_runs_no_helper_and_keeps_its_version(tmp_path: Path) -> None:
    store = store_for(tmp_path, {"auths": {OWNED: {"auth": auth("u", "p")}}})
    version = store.version
    assert version and store.reload() is False and store.version == version
    assert isinstance(store.current, DockerConfig) and store.current.resolver is None
    store.path.write_text(json.dumps({"auths": {OWNED: {"auth": auth("u", "p2")}}}))
    assert store.reload() is True and store.version != version
