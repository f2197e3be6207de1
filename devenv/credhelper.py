"""A real docker credential helper for the tests: ``docker-credential-NAME`` as a shell script.

It implements ``get`` of the credential-helper protocol
(docker/docker-credential-helpers): the server URL on stdin, ``{"ServerURL",
"Username", "Secret"}`` on stdout, and "credentials not found in native
keychain" with exit status 1 for any other server. Its answers come from
files beside it, so a test changes them while the controller runs:
``mode`` (``ok``, ``fail``, ``badjson``, ``hang``), ``username``, ``secret``.
Every server it was asked for is appended to ``asked``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """#!/bin/sh
# docker-credential-{name}: test credential helper (devenv/credhelper.py).
state='{state}'
[ "$1" = get ] || {{ echo "unsupported command: $1" >&2; exit 1; }}
server=$(cat)
printf '%s\\n' "$server" >> "$state/asked"
case "$(cat "$state/mode")" in
  fail) echo "the credential backend is unreachable"; exit 1 ;;
  badjson) echo "this is not JSON"; exit 0 ;;
  hang) exec sleep 60 ;;
esac
if [ "$server" != "$(cat "$state/server")" ]; then
  echo "credentials not found in native keychain"
  exit 1
fi
printf '{{"ServerURL":"%s","Username":"%s","Secret":"%s"}}\\n' \\
  "$server" "$(cat "$state/username")" "$(cat "$state/secret")"
"""


@dataclass
class FakeHelper:
    """A helper script ``bin_dir/docker-credential-<name>`` answering for one server.

    Attributes:
        name: the helper name (the config's ``credHelpers``/``credsStore`` value).
        bin_dir: the directory to put on ``PATH``.
        state: the directory of its answer files.
    """

    name: str
    bin_dir: Path
    state: Path

    @classmethod
    def write(
        cls, directory: Path, name: str, server: str, username: str, secret: str
    ) -> FakeHelper:
        """Write the script and its answer files under ``directory``."""
        bin_dir, state = directory / "bin", directory / "state"
        bin_dir.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)
        helper = cls(name, bin_dir, state)
        (state / "server").write_text(server)
        (state / "asked").write_text("")
        helper.answer(username, secret)
        helper.set_mode("ok")
        script = bin_dir / f"docker-credential-{name}"
        script.write_text(_SCRIPT.format(name=name, state=state))
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return helper

    def answer(self, username: str, secret: str) -> None:
        """Change the credential it answers with (as a token refresh would)."""
        (self.state / "username").write_text(username)
        (self.state / "secret").write_text(secret)

    def set_mode(self, mode: str) -> None:
        """``ok``, ``fail`` (exit 1), ``badjson`` (exit 0, not JSON) or ``hang`` (sleep 60 s)."""
        (self.state / "mode").write_text(mode)

    def asked(self) -> list[str]:
        """The server URLs it was asked for, in order."""
        return (self.state / "asked").read_text().splitlines()

    def path_with(self, path: str | None = None) -> str:
        """``PATH`` with the helper's directory first."""
        return f"{self.bin_dir}{os.pathsep}{path if path is not None else os.environ['PATH']}"
