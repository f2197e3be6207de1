"""The distribution client: header parsing, endpoints, token auth and error translation.

The real test registries (tests/e2e) have no token service, so the Bearer
flow and ``Retry-After`` are checked against ``StandIn``: a tiny loopback
``http.server`` that plays a registry wanting tokens and its token realm. It
also plays what no real registry does on purpose: a HEAD without
``Docker-Content-Digest`` and a body that does not match its digest.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3

from cloner.adapters import distribution
from cloner.adapters.credential_store import CredentialStore
from cloner.adapters.distribution import (
    MANIFEST_MEDIA_TYPES,
    Challenge,
    DistributionClient,
    parse_retry_after,
    parse_www_authenticate,
    registry_endpoint,
    registry_error_text,
)
from cloner.errors import RegistryError
from cloner.model.reference import Reference, parse_reference

# --- pure parts ----------------------------------------------------------------------


def test_accept_lists_oci_then_docker_media_types() -> None:
    assert MANIFEST_MEDIA_TYPES == (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )


@pytest.mark.parametrize(
    ("registry", "endpoint"),
    [
        ("docker.io", "registry-1.docker.io"),
        ("index.docker.io", "registry-1.docker.io"),
        ("quay.io", "quay.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_docker_hub_is_served_by_registry_1(registry: str, endpoint: str) -> None:
    assert registry_endpoint(registry) == endpoint


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull",
                    },
                )
            ],
        ),
        ('Basic realm="owned-registry"', [Challenge("basic", {"realm": "owned-registry"})]),
        # scheme and parameter names are case-insensitive; spaces around "=" are allowed
        ("BASIC Realm = plain", [Challenge("basic", {"realm": "plain"})]),
        # two challenges in one header (several headers arrive joined with ", ")
        (
            'Basic realm="a", Bearer realm="https://t.example/token", service=reg',
            [
                Challenge("basic", {"realm": "a"}),
                Challenge("bearer", {"realm": "https://t.example/token", "service": "reg"}),
            ],
        ),
        # commas and escaped quotes inside a quoted string
        (
            r'Bearer realm="https://t.example/token?a=1,b=2",error="say \"no\""',
            [
                Challenge(
                    "bearer", {"realm": "https://t.example/token?a=1,b=2", "error": 'say "no"'}
                )
            ],
        ),
        ("Bearer", [Challenge("bearer", {})]),
        ("", []),
        (None, []),
        ('="broken"', []),
    ],
)
def test_www_authenticate_is_parsed(header: str | None, expected: list[Challenge]) -> None:
    assert list(parse_www_authenticate(header)) == expected


NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:30:00 GMT", 120.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:30 GMT", 30.0),  # obsolete RFC 850 form
        ("Wed Oct 21 07:29:00 2015", 60.0),  # obsolete asctime form (GMT)
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past: no wait
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}',
            "MANIFEST_UNKNOWN: manifest unknown",
        ),
        (
            b'{"errors":[{"code":"DENIED","message":"no"},{"code":"UNAUTHORIZED"}]}',
            "DENIED: no; UNAUTHORIZED",
        ),
        (b"<html>502 Bad Gateway</html>", ""),
        (b'{"errors": "nope"}', ""),
        (b"", ""),
    ],
)
def test_registry_error_json_is_quoted(body: bytes, text: str) -> None:
    assert registry_error_text(body) == text


# --- a token-wanting registry on loopback ----------------------------------------------

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2},
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
REPOSITORY = "team/app"
MANIFEST_PATH_RE = re.compile(r"/v2/(?P<repository>.+)/manifests/(?P<reference>[^/]+)")


@dataclass
class StandIn:
    """What the stand-in serves and what it was asked (set by tests, read by the handler)."""

    users: dict[str, str] = field(default_factory=dict)  # realm refuses anyone else when set
    token_field: str = "token"
    expires_in: int | None = 300
    send_digest: bool = True
    body: bytes = MANIFEST
    status: int | None = None  # answer every manifest request with this status
    headers: dict[str, str] = field(default_factory=dict)  # extra headers with ``status``
    error_body: bytes = b""
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    manifest_requests: list[tuple[str, str | None]] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)
    realm_scheme: str = "http"
    realm_host: str = ""  # where the challenge sends clients for tokens; default this server
    port: int = 0
    connections: int = 0  # TCP connections accepted (HTTP/1.1 keeps them open)
    tls_hellos: int = 0  # connections that began with a TLS ClientHello

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, reference: str = "1") -> Reference:
        sep = "@" if reference.startswith("sha256:") else ":"
        return parse_reference(f"{self.host}/{REPOSITORY}{sep}{reference}")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as registries do

    def setup(self) -> None:
        super().setup()
        self.server.state.connections += 1

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle(self) -> None:
        # A TLS ClientHello (first byte 0x16): answer in plain HTTP as Go's
        # server does, so the client's handshake fails at once instead of
        # waiting for a line end that may never come.
        if self.rfile.peek(1)[:1] == b"\x16":
            self.server.state.tls_hellos += 1
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return
        super().handle()

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            self._token()
        else:
            self._manifest(body=True)

    def do_HEAD(self) -> None:
        self._manifest(body=False)

    def _send(self, status: int, headers: dict[str, str], body: bytes, send_body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _token(self) -> None:
        state = self.server.state
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        authorization = self.headers.get("Authorization")
        state.token_requests.append({"query": query, "authorization": authorization})
        if state.users:
            accepted = {
                "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()
                for u, p in state.users.items()
            }
            if authorization not in accepted:
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                self._send(401, {"Content-Type": "application/json"}, body, True)
                return
        token = f"token-{len(state.token_requests)}"
        state.issued.add(token)
        answer: dict[str, Any] = {state.token_field: token}
        if state.expires_in is not None:
            answer["expires_in"] = state.expires_in
        self._send(200, {"Content-Type": "application/json"}, json.dumps(answer).encode(), True)

    def _manifest(self, body: bool) -> None:
        state = self.server.state
        authorization = self.headers.get("Authorization")
        state.manifest_requests.append((self.command, authorization))
        match = MANIFEST_PATH_RE.fullmatch(self.path)
        if state.status is not None:
            self._send(state.status, state.headers, state.error_body, body)
            return
        if match is None or match["repository"] != REPOSITORY:
            self._send(404, {}, b'{"errors":[{"code":"NAME_UNKNOWN"}]}', body)
            return
        if not authorization or authorization.removeprefix("Bearer ") not in state.issued:
            challenge = (
                f'Bearer realm="{state.realm_scheme}://{state.realm_host or state.host}/token",'
                f'service="stand-in",'
                f'scope="repository:{REPOSITORY}:pull"'
            )
            self._send(401, {"WWW-Authenticate": challenge}, b"", body)
            return
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if state.send_digest:
            headers["Docker-Content-Digest"] = MANIFEST_DIGEST
        self._send(200, headers, state.body, body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops concurrent connects (1 s SYN retry)

    def __init__(self, state: StandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with serving() as state:
        yield state


@contextlib.contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[StandIn]:
    """A stand-in registry on a loopback port, over https when ``tls`` is given."""
    state = StandIn()
    server = _Server(state)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        state.realm_scheme = "https"
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def store_with(tmp_path: Path, auths: dict[str, tuple[str, str]] | None = None) -> CredentialStore:
    path = tmp_path / "config.json"
    entries = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
        for host, (u, p) in (auths or {}).items()
    }
    path.write_text(json.dumps({"auths": entries}))
    store = CredentialStore(path)
    store.reload()
    return store


def client_for(
    tmp_path: Path, auths: dict[str, tuple[str, str]] | None = None
) -> DistributionClient:
    return DistributionClient(store_with(tmp_path, auths), insecure_registries=["127.0.0.1:*"])


def test_anonymous_bearer_token_is_fetched_once_and_reused(
    standin: StandIn, tmp_path: Path
) -> None:
    client = client_for(tmp_path)
    first = client.head(standin.ref())
    second = client.head(standin.ref())

    expected = distribution.Descriptor(
        MANIFEST_DIGEST, "application/vnd.oci.image.manifest.v1+json", len(MANIFEST)
    )
    assert first == second == expected
    assert standin.token_requests == [
        {
            "query": {"scope": f"repository:{REPOSITORY}:pull", "service": "stand-in"},
            "authorization": None,
        }
    ]
    # anonymous, 401, with the token; then straight with the cached token
    assert standin.manifest_requests == [
        ("HEAD", None),
        ("HEAD", "Bearer token-1"),
        ("HEAD", "Bearer token-1"),
    ]
    assert client.requests == {
        (standin.host, "HEAD", "success"): 2,
        (standin.host, "token", "success"): 1,
    }


def test_heads_reuse_one_connection(standin: StandIn, tmp_path: Path) -> None:
    client = client_for(tmp_path)
    client.head(standin.ref())  # finds the scheme (https fails, plain http answers) and a token
    before = standin.connections
    for _ in range(5):
        client.head(standin.ref())
    # An unread HEAD answer used to close its connection: a new TCP (and,
    # for a TLS registry, a new handshake) per manifest lookup.
    assert standin.connections - before == 0


def test_token_realm_gets_the_registry_credential(standin: StandIn, tmp_path: Path) -> None:
    standin.users = {"cloner": "s3cret"}
    standin.token_field = "access_token"  # the OAuth2 name some realms use
    client = client_for(tmp_path, {standin.host: ("cloner", "s3cret")})

    descriptor, body = client.get(standin.ref())

    assert (descriptor.digest, body) == (MANIFEST_DIGEST, MANIFEST)
    expected = "Basic " + base64.b64encode(b"cloner:s3cret").decode()
    assert [r["authorization"] for r in standin.token_requests] == [expected]


def test_token_realm_refusing_the_credential_is_auth_without_the_password(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.users = {"cloner": "right"}
    client = client_for(tmp_path, {standin.host: ("cloner", "wrong-password")})

    with pytest.raises(RegistryError) as caught:
        client.head(standin.ref())

    assert caught.value.reason == "auth"
    assert caught.value.registry == standin.host
    assert "wrong-password" not in str(caught.value)
    assert "UNAUTHORIZED: bad credentials" in str(caught.value)
    assert client.requests == {
        (standin.host, "token", "auth"): 1,
        (standin.host, "HEAD", "auth"): 1,
    }


def test_credentials_are_not_sent_to_an_unlisted_plain_http_realm(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.realm_host = f"localhost:{standin.port}"  # same server, but not 127.0.0.1:*
    client = client_for(tmp_path, {standin.host: ("cloner", "s3cret")})

    with pytest.raises(RegistryError) as caught:
        client.head(standin.ref())

    assert caught.value.reason == "auth"
    assert f"the token service localhost:{standin.port} is plain http" in str(caught.value)
    assert standin.token_requests == []


def test_expired_token_is_fetched_again(standin: StandIn, tmp_path: Path) -> None:
    standin.expires_in = 1  # cached for half of it (the renewal margin is at most half)
    client = client_for(tmp_path)
    client.head(standin.ref())
    client.head(standin.ref())
    assert len(standin.token_requests) == 1
    time.sleep(0.6)
    client.head(standin.ref())
    assert len(standin.token_requests) == 2


def test_token_refused_by_the_registry_is_dropped_and_replaced(
    standin: StandIn, tmp_path: Path
) -> None:
    client = client_for(tmp_path)
    client.head(standin.ref())
    standin.issued.clear()  # the registry no longer accepts token-1

    assert client.head(standin.ref()) is not None
    assert len(standin.token_requests) == 2
    assert standin.manifest_requests[-2:] == [
        ("HEAD", "Bearer token-1"),
        ("HEAD", "Bearer token-2"),
    ]


def test_rate_limit_carries_retry_after_in_seconds(standin: StandIn, tmp_path: Path) -> None:
    standin.status = 429
    standin.headers = {"Retry-After": "7", "Content-Type": "application/json"}
    standin.error_body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
    client = client_for(tmp_path)

    with pytest.raises(RegistryError) as caught:
        client.get(standin.ref())

    assert caught.value.reason == "rate_limited"
    assert caught.value.temporary
    assert caught.value.retry_after == 7.0
    assert caught.value.registry == standin.host
    assert str(caught.value) == (
        f"GET {standin.ref().pull_reference}: 429 Too Many Requests: TOOMANYREQUESTS: slow down"
    )


def test_rate_limit_with_an_http_date(standin: StandIn, tmp_path: Path) -> None:
    standin.status = 429
    later = datetime.fromtimestamp(time.time() + 90, UTC)
    standin.headers = {"Retry-After": later.strftime("%a, %d %b %Y %H:%M:%S GMT")}

    with pytest.raises(RegistryError) as caught:
        client_for(tmp_path).head(standin.ref())

    assert caught.value.reason == "rate_limited"
    assert caught.value.retry_after is not None
    assert 85 <= caught.value.retry_after <= 90


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "registry_error"), (503, "registry_error"), (403, "auth")]
)
def test_other_statuses_are_translated(
    standin: StandIn, tmp_path: Path, status: int, reason: str
) -> None:
    standin.status = status
    standin.error_body = b'{"errors":[{"code":"UNKNOWN","message":"storage is down"}]}'
    with pytest.raises(RegistryError) as caught:
        client_for(tmp_path).get(standin.ref())
    assert caught.value.reason == reason
    assert "UNKNOWN: storage is down" in str(caught.value)


def test_head_without_docker_content_digest_falls_back_to_get(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.send_digest = False
    client = client_for(tmp_path)

    descriptor = client.head(standin.ref())

    assert descriptor is not None
    assert descriptor.digest == MANIFEST_DIGEST
    assert descriptor.size == len(MANIFEST)
    assert [method for method, _ in standin.manifest_requests] == ["HEAD", "HEAD", "GET"]


def test_get_by_digest_refuses_a_body_that_does_not_match(standin: StandIn, tmp_path: Path) -> None:
    standin.body = MANIFEST + b" "
    with pytest.raises(RegistryError) as caught:
        client_for(tmp_path).get(standin.ref(MANIFEST_DIGEST))
    assert caught.value.reason == "verify_failed"
    assert caught.value.registry == standin.host


def test_unknown_repository_is_none_for_head_and_not_found_for_get(
    standin: StandIn, tmp_path: Path
) -> None:
    client = client_for(tmp_path)
    missing = parse_reference(f"{standin.host}/other/app:1")
    assert client.head(missing) is None
    with pytest.raises(RegistryError) as caught:
        client.get(missing)
    assert caught.value.reason == "not_found"
    assert "NAME_UNKNOWN" in str(caught.value)


def test_unlisted_plain_http_registry_fails_tls_with_a_hint(
    standin: StandIn, tmp_path: Path
) -> None:
    client = DistributionClient(store_with(tmp_path))  # nothing listed as insecure

    with pytest.raises(RegistryError) as caught:
        client.head(standin.ref())

    assert caught.value.reason == "insecure_registry"  # final, like skopeo's
    assert caught.value.registry == standin.host
    assert f"TLS verification of {standin.host} failed" in str(caught.value)
    assert "insecureRegistries" in str(caught.value)
    assert standin.manifest_requests == []  # no HTTP request got through


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate for 127.0.0.1 (openssl)."""
    pki = tmp_path_factory.mktemp("pki")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(pki / "key.pem"), "-out", str(pki / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "cert.pem", pki / "key.pem")
    return context


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # expected here
def test_listed_https_registry_is_not_verified_and_loads_no_roots(
    self_signed: ssl.SSLContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unverified https reuses one TLS context; verified https still refuses the certificate."""
    loaded: list[object] = []
    original = ssl.SSLContext.load_default_certs

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", counting)
    with serving(self_signed) as state:
        listed = client_for(tmp_path)
        for _ in range(3):
            assert listed.head(state.ref()).digest == MANIFEST_DIGEST
            listed.close()  # the next HEAD opens a new connection and handshake
        assert state.connections >= 3
        assert loaded == []

        unlisted = DistributionClient(store_with(tmp_path))  # verifies, after the one above
        with pytest.raises(RegistryError) as caught:
            unlisted.head(state.ref())
    assert caught.value.reason == "insecure_registry"
    assert f"TLS verification of {state.host} failed" in str(caught.value)


def in_threads(count: int, work: Callable[[], None]) -> None:
    """Run ``work`` in ``count`` threads at once and wait for them (30 s each at most)."""
    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_concurrent_heads_from_several_threads(standin: StandIn, tmp_path: Path) -> None:
    client = client_for(tmp_path)
    results: list[Any] = []

    def work() -> None:
        for _ in range(5):
            results.append(client.head(standin.ref()))

    in_threads(8, work)

    assert len(results) == 40
    assert {r.digest for r in results} == {MANIFEST_DIGEST}
    assert client.requests[standin.host, "HEAD", "success"] == 40


def test_first_requests_from_many_threads_probe_https_once(
    standin: StandIn, tmp_path: Path
) -> None:
    """A plain-http insecure registry: one https attempt, not one per thread."""
    client = client_for(tmp_path)
    start = threading.Barrier(8)
    results: list[Any] = []

    def work() -> None:
        start.wait(10)
        results.append(client.head(standin.ref()))

    in_threads(8, work)

    assert [r.digest for r in results] == [MANIFEST_DIGEST] * 8
    assert standin.tls_hellos == 1
    client.head(standin.ref())
    assert standin.tls_hellos == 1  # the scheme is remembered


def test_threads_waiting_on_a_failed_probe_fail_with_it_at_once(tmp_path: Path) -> None:
    """A registry that accepts connections and never answers: one timeout, not one per thread."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connects succeed; nothing is ever read or answered
        port = silent.getsockname()[1]
        client = DistributionClient(
            store_with(tmp_path), insecure_registries=["127.0.0.1:*"], timeout=1.0
        )
        start = threading.Barrier(4)
        errors: list[RegistryError] = []

        def work() -> None:
            start.wait(10)
            try:
                client.head(parse_reference(f"127.0.0.1:{port}/team/app:1"))
            except RegistryError as exc:
                errors.append(exc)

        began = time.monotonic()
        in_threads(4, work)
        elapsed = time.monotonic() - began

    assert len(errors) == 4
    assert {e.reason for e in errors} == {"network"}
    assert {e.registry for e in errors} == {f"127.0.0.1:{port}"}
    # one 1 s timeout for the probe; taking turns would be about 4 s
    assert elapsed < 2.5


# --- no requests exception leaves the module (kopf's test_aiohttp_is_not_leaked_outside) ---


def _library_exceptions() -> list[type[BaseException]]:
    found = {
        obj
        for module in (requests.exceptions, urllib3.exceptions)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and not issubclass(obj, Warning)
        and obj.__module__ == module.__name__
    }
    return sorted(found, key=lambda cls: (cls.__module__, cls.__name__))


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls``, whatever its signature (one that can also be printed)."""
    response = SimpleNamespace(tell=lambda: 0, length_remaining=0)  # for InvalidChunkLength
    signatures = (
        (),
        ("boom",),
        (0, 0),
        (response, b"zz"),
        ("boom", "doc", 0),
        (None, None, "boom"),
    )
    for args in signatures:
        try:
            instance = cls(*args)
            str(instance)
        except (TypeError, AttributeError):  # another signature
            continue
        return instance
    raise AssertionError(f"cannot build {cls}")


@pytest.mark.parametrize("exception", [*_library_exceptions(), ConnectionResetError, TimeoutError])
@pytest.mark.parametrize("operation", ["head", "get"])
def test_library_exceptions_are_not_leaked_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exception: type[BaseException], operation: str
) -> None:
    client = DistributionClient(store_with(tmp_path))

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise _instance(exception)

    monkeypatch.setattr(client._session, "request", fail)
    with pytest.raises(RegistryError) as caught:
        getattr(client, operation)(parse_reference("registry.example.com/team/app:1"))
    assert caught.value.registry == "registry.example.com"
    # a TLS verification failure is final (insecure_registry); the rest network or registry_error
    assert caught.value.reason in ("network", "registry_error", "insecure_registry")


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_closed_port_is_network(tmp_path: Path) -> None:
    with closed_port() as port:
        client = client_for(tmp_path)
        with pytest.raises(RegistryError) as caught:
            client.head(parse_reference(f"127.0.0.1:{port}/team/app:1"))
    assert caught.value.reason == "network"
    assert caught.value.temporary
    assert "Connection refused" in str(caught.value)
    assert "object at 0x" not in str(caught.value)  # urllib3's connection repr is cut off
