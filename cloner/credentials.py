"""Registry credentials from a docker ``config.json``. Pure apart from reading the file.

Called by ``registry`` (to authenticate pulls and pushes) and later by pull
secret provisioning (to copy only the owned registry's entry). Credentials are
held in ``Credential`` objects whose ``repr`` hides the password, so they never
reach a log line by accident.

Format (docker/cli ``cli/config/configfile``): ``{"auths": {"<host>": {"auth":
base64("user:password")}}}`` or ``{"username": ..., "password": ...}``; keys
may be full URLs such as ``https://index.docker.io/v1/``, which Docker reduces
to the host name. Credential helpers (``credsStore``, ``credHelpers``) need
programs that a controller image does not ship and are refused with a clear
error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloner.errors import ConfigError

log = logging.getLogger(__name__)

_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True, slots=True)
class Credential:
    """A user name and password (or identity token) for one registry.

    Attributes:
        registry: the normalized host the entry is for (``docker.io`` for Docker Hub).
        username, password: the credentials; ``password`` is hidden from ``repr``.
        key: the entry's key as written in the file (kept when copying entries).
        entry: the entry as written in the file (kept when copying entries).
    """

    registry: str
    username: str
    password: str = field(repr=False)
    key: str = ""
    entry: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def docker_auth_config(self) -> dict[str, str]:
        """The ``auth_config`` dict the docker SDK takes for pull and push."""
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
class DockerConfig:
    """The parsed credentials of a docker ``config.json``.

    Attributes:
        credentials: normalized registry host -> ``Credential``.
    """

    credentials: Mapping[str, Credential]

    def for_registry(self, registry: str) -> Credential | None:
        """The credential for a registry host (``docker.io`` for Docker Hub), or None."""
        return self.credentials.get(normalize_registry_key(registry))

    @classmethod
    def parse(cls, text: str, source: str = "config.json") -> DockerConfig:
        """Parse the text of a docker ``config.json``.

        Args:
            text: the file content.
            source: the file name, used in error messages.

        Returns:
            The parsed credentials.

        Raises:
            ConfigError: not JSON, not an object, an ``auths`` entry that is not
                an object or whose ``auth`` is not base64 of ``user:password``,
                or credential helpers that cannot run here. The message names
                the file and the entry, never a secret.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(source, f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(source, "must be a JSON object with an 'auths' entry")
        for helper in ("credsStore", "credHelpers"):
            if data.get(helper):
                raise ConfigError(
                    f"{source}: {helper}",
                    "credential helpers are not supported; put the registry's "
                    "'auth' in 'auths' instead",
                )
        auths = data.get("auths", {})
        if not isinstance(auths, dict):
            raise ConfigError(f"{source}: auths", "must be an object of registry -> credentials")
        credentials: dict[str, Credential] = {}
        for key, entry in auths.items():
            credential = _parse_entry(source, key, entry)
            if credential is not None:
                credentials[credential.registry] = credential
        return cls(credentials)


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
        return None  # an empty entry, as `docker logout` leaves behind
    if not isinstance(username, str) or not isinstance(password, str):
        raise ConfigError(where, "'username' and 'password' must be strings")
    return Credential(registry, username, password, key, dict(entry))


class CredentialStore:
    """The docker ``config.json`` in force, re-read when the file changes.

    A ConfigMap or Secret volume updates the file in place, so the file is
    read again before every cycle; a malformed new file is reported and the
    last good credentials stay in use.

    Args:
        path: the file (``dockerConfig``).

    Attributes:
        current: the credentials in use (empty until the first ``reload``).
        version: SHA-256 hex of the file text in use, ``""`` before the first load.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.current = DockerConfig({})
        self.version = ""

    def reload(self) -> bool:
        """Read the file again; adopt it if it changed and parses.

        Returns:
            True when new credentials were adopted, False when unchanged.

        Raises:
            ConfigError: the file cannot be read or is malformed (names the
                file and the problem, never a secret); ``current`` is kept.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                str(self.path), f"cannot read docker config: {exc.strerror}"
            ) from None
        version = hashlib.sha256(text.encode()).hexdigest()
        if version == self.version:
            return False
        self.current = DockerConfig.parse(text, str(self.path))
        self.version = version
        log.info(
            "loaded registry credentials from %s for: %s",
            self.path,
            ", ".join(sorted(self.current.credentials)) or "(none)",
        )
        return True
