"""Registry credentials as a docker ``config.json`` holds them. Pure: no I/O.

Parsed by ``adapters.credential_store.CredentialStore`` (which reads the file
and runs credential helpers) and read by the copy backends and pull secret
provisioning through ``DockerConfig.for_registry``. Credentials are held in
``Credential`` objects whose ``repr`` hides the password, so they never reach
a log line by accident.

Format (docker/cli ``cli/config/configfile``): ``{"auths": {"<host>": {"auth":
base64("user:password")}}}`` or ``{"username": ..., "password": ...}``; keys
may be full URLs such as ``https://index.docker.io/v1/``, which Docker reduces
to the host name. ``credHelpers`` / ``credsStore`` name helpers
(``DockerConfig.helper_for``); see ``adapters.credential_store``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloner.errors import ConfigError

log = logging.getLogger(__name__)

_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

#: The server URL docker and docker-py ask a helper for Docker Hub's credentials.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"

#: The ``Username`` a helper answers for an identity token (docker/cli
#: ``credentials/native_store.go`` ``tokenUsername``).
TOKEN_USERNAME = "<token>"

#: Seconds a helper may take to answer ``get`` before it is killed.
HELPER_TIMEOUT = 10.0

#: A helper name is the suffix of ``docker-credential-NAME``, never a path.
_HELPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class Credential:
    """A user name and password (or identity token) for one registry.

    Attributes:
        registry: the normalized host the entry is for (``docker.io`` for Docker Hub).
        username, password: the credentials; ``password`` is hidden from ``repr``.
            For an identity token, ``password`` is the token.
        key: the entry's key as written in the file, or the server URL a
            helper was asked for (kept when copying entries).
        entry: the entry as written in the file (kept when copying entries);
            for an identity token from a helper ``{"identitytoken": token}``.
    """

    registry: str
    username: str
    password: str = field(repr=False)
    key: str = ""
    entry: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def identity_token(self) -> str | None:
        """The identity token (OAuth2 refresh token) of the entry, or None."""
        token = self.entry.get("identitytoken") if self.entry else None
        return str(token) if token else None

    def docker_auth_config(self) -> dict[str, str]:
        """The ``auth_config`` dict the docker SDK takes for pull and push.

        An identity token is passed as ``identitytoken``, as the docker CLI
        does (Engine API ``AuthConfig``); otherwise ``username``/``password``.
        """
        token = self.identity_token
        if token:
            return {"identitytoken": token}
        return {"username": self.username, "password": self.password}


def normalize_registry_key(key: str) -> str:
    """Reduce a config.json ``auths`` key to a registry host, as docker/cli does.

    ``https://index.docker.io/v1/`` -> ``docker.io``; ``http://host:5000/v2`` ->
    ``host:5000``; ``registry.example.com`` stays as it is.
    """
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


@dataclass(frozen=True, slots=True)
class HelperRef:
    """Which credential helper answers for a registry, and what it is asked.

    Attributes:
        name: the helper's suffix (``ecr-login`` for ``docker-credential-ecr-login``).
        server: the server URL written to the helper's stdin: the
            ``credHelpers`` key as written, or for ``credsStore`` the host
            (``https://index.docker.io/v1/`` for Docker Hub, as docker does).
        source: ``credHelpers`` or ``credsStore``, for messages.
    """

    name: str
    server: str
    source: str

    @property
    def program(self) -> str:
        """The executable's name, ``docker-credential-NAME``."""
        return f"docker-credential-{self.name}"


#: ``resolve(host)``: the effective credential of a normalized host (helpers included).
Resolver = Callable[[str], "Credential | None"]


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """The parsed credentials of a docker ``config.json``.

    Attributes:
        credentials: normalized registry host -> ``Credential`` (the ``auths`` entries).
        cred_helpers: normalized registry host -> its ``credHelpers`` helper.
        creds_store: the ``credsStore`` helper name, ``""`` when none.
        logged_in: every normalized ``auths`` key, empty entries included
            (with a ``credsStore``, ``docker login`` leaves ``{}`` there).
        resolver: set by ``CredentialStore``: answers ``for_registry`` with
            the helpers' answers of the current cycle. Without it (a parsed
            file only), helpers are not run and ``for_registry`` answers
            from ``auths``.
    """

    credentials: Mapping[str, Credential]
    cred_helpers: Mapping[str, HelperRef] = field(default_factory=dict)
    creds_store: str = ""
    logged_in: frozenset[str] = frozenset()
    resolver: Resolver | None = field(default=None, repr=False, compare=False)

    def for_registry(self, registry: str) -> Credential | None:
        """The credential for a registry host (``docker.io`` for Docker Hub), or None."""
        host = normalize_registry_key(registry)
        if self.resolver is not None:
            return self.resolver(host)
        return self.credentials.get(host)

    def helper_for(self, registry: str) -> HelperRef | None:
        """The helper that answers for a registry, or None (``auths`` only). Pure.

        Precedence (docker/cli ``getConfiguredCredentialStore``):
        ``credHelpers[host]``, then ``credsStore``.
        """
        host = normalize_registry_key(registry)
        if host in self.cred_helpers:
            return self.cred_helpers[host]
        if self.creds_store:
            server = DOCKER_HUB_SERVER if host == "docker.io" else host
            return HelperRef(self.creds_store, server, "credsStore")
        return None

    @property
    def uses_helpers(self) -> bool:
        """True when the file names any credential helper."""
        return bool(self.cred_helpers or self.creds_store)

    @classmethod
    def parse(cls, text: str, source: str = "config.json") -> DockerConfig:
        """Parse the text of a docker ``config.json``. Pure: no helper is run.

        Args:
            text: the file content.
            source: the file name, used in error messages.

        Returns:
            The parsed credentials and helper settings.

        Raises:
            ConfigError: not JSON, not an object, an ``auths`` entry that is not
                an object or whose ``auth`` is not base64 of ``user:password``,
                a ``credHelpers`` that is not an object of host -> name, or a
                helper name that is not a plain ``docker-credential-NAME``
                suffix. The message names the file and the entry, never a secret.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(source, f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(source, "must be a JSON object with an 'auths' entry")
        auths = data.get("auths", {})
        if not isinstance(auths, dict):
            raise ConfigError(f"{source}: auths", "must be an object of registry -> credentials")
        credentials: dict[str, Credential] = {}
        for key, entry in auths.items():
            credential = _parse_entry(source, key, entry)
            if credential is not None:
                credentials[credential.registry] = credential
        store = data.get("credsStore") or ""
        if not isinstance(store, str) or (store and not _HELPER_NAME.match(store)):
            raise ConfigError(
                f"{source}: credsStore",
                "must be the NAME of a docker-credential-NAME program on PATH",
            )
        helpers_data = data.get("credHelpers") or {}
        if not isinstance(helpers_data, dict):
            raise ConfigError(f"{source}: credHelpers", "must be an object of registry -> helper")
        helpers: dict[str, HelperRef] = {}
        for key, name in helpers_data.items():
            if not isinstance(name, str) or not _HELPER_NAME.match(name):
                raise ConfigError(
                    f"{source}: credHelpers.{key}",
                    "must be the NAME of a docker-credential-NAME program on PATH",
                )
            helpers[normalize_registry_key(key)] = HelperRef(name, key, "credHelpers")
        logged_in = frozenset(normalize_registry_key(key) for key in auths)
        return cls(credentials, helpers, store, logged_in)


def _parse_entry(source: str, key: str, entry: Any) -> Credential | None:
    where = f"{source}: auths.{key}"
    if not isinstance(entry, dict):
        raise ConfigError(where, "must be an object with 'auth' or 'username'/'password'")
    registry = normalize_registry_key(key)
    username = entry.get("username")
    password = entry.get("password") or entry.get("identitytoken")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(where, "'auth' is not base64 of 'user:password'") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(where, "'auth' is not base64 of 'user:password'")
    if not username and not password:
        return None  # an empty entry, as `docker logout` (or a credsStore login) leaves behind
    if not isinstance(username, str) or not isinstance(password, str):
        raise ConfigError(where, "'username' and 'password' must be strings")
    return Credential(registry, username, password, key, dict(entry))
