"""Reading and writing the auth file (``{auth: {...}}`` in YAML), and creating it on first start.

Writes are atomic (a private temp file in the same directory, fsync, then rename) and the file is
always mode 0600: it holds only hashes, but a leaked hash is still an offline brute-force target.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import stat
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml

from fetchml._files import write_atomic
from fetchml.errors import ConfigError

from ._config import (
    AuthConfig,
    KeyEntry,
    UserEntry,
    convert_checked,
    parse_auth_config,
    to_builtins,
)
from ._keys import DEFAULT_ROUNDS, generate_key, hash_key
from ._permissions import ROLE_ADMIN

__all__ = [
    "check_private",
    "ensure_auth_file",
    "load_auth_file",
    "parse_auth_bytes",
    "parse_auth_text",
    "read_auth_bytes",
    "write_auth_file",
]

FILE_MODE: Final = 0o600
_HEADER: Final = (
    "# Fetch ML auth config. Only bcrypt hashes of API keys are stored here.\n"
    "# Add a key: fetchml keys new --user NAME [--role ROLE]; see them: fetchml keys list;\n"
    "# revoke one: fetchml keys revoke KEY_ID.  A running server reloads this file on change.\n"
)
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    auth: Any


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys instead of keeping the last one.

    A second entry for the same user would otherwise silently replace the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            with contextlib.suppress(TypeError):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def check_private(path: str | os.PathLike[str], mode: int) -> None:
    """Refuse an auth file that others may write: whoever can write it can make themselves an
    admin (and the server applies a change within a second).  Raises ``ConfigError``."""
    if mode & 0o022:
        raise ConfigError(
            f"{os.fspath(path)}: writable by group or others (mode {stat.S_IMODE(mode):o}); "
            f"anyone who can write it can make themselves an admin: chmod 600 {os.fspath(path)}"
        )


def load_auth_file(path: str | os.PathLike[str]) -> AuthConfig:
    """Read and validate an auth file whose top level is ``{auth: {...}}``.

    Blocks on file I/O.  Raises ``ConfigError`` (its message starts with the path) when the file
    cannot be read, is not valid YAML, has a duplicate key, or fails :func:`parse_auth_config`.
    """
    return parse_auth_bytes(read_auth_bytes(path), source=os.fspath(path))


def read_auth_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an auth file.  Blocks on file I/O.  Raises ``ConfigError`` (``file not
    found`` or ``cannot read``) naming the path."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{os.fspath(path)}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read: {_reason(exc)}") from None


def parse_auth_bytes(data: bytes, *, source: str) -> AuthConfig:
    """Decode (UTF-8) and parse the content of an auth file, as :func:`parse_auth_text` does.

    Raises ``ConfigError`` naming ``source``.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    return parse_auth_text(text, source=source)


def parse_auth_text(text: str, *, source: str) -> AuthConfig:
    """Parse and validate the text of an auth file; ``source`` starts every error message.

    Waits on nothing.  Raises ``ConfigError`` as :func:`load_auth_file` does.
    """
    try:
        # _StrictLoader is a SafeLoader: no arbitrary Python objects are constructed.
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected an 'auth:' section")
    top = convert_checked(data, _File, source=source, path="")
    return parse_auth_config(top.auth, source=source)


def write_auth_file(path: str | os.PathLike[str], config: AuthConfig) -> None:
    """Write ``config`` to ``path`` atomically with mode 0600, creating parent directories.

    Blocks on file I/O (with fsync).  Replaces an existing file.  Raises ``ConfigError`` when the
    file or its directory cannot be written.
    """
    _write_private(Path(path), _render(config), replace=True)


def ensure_auth_file(path: str | os.PathLike[str], *, rounds: int = DEFAULT_ROUNDS) -> str | None:
    """Create the auth file on first start, with one admin user, and return that user's new key.

    If ``path`` already exists, return ``None`` and touch nothing.  Otherwise write a file (mode
    0600, atomically, parent directories created) with user ``admin`` (``admin: true``, role
    ``admin``) and return the generated key: the caller shows it once; it is stored nowhere.
    If another process creates the file at the same moment, its file is kept and ``None`` is
    returned.  Blocks on bcrypt (about 200 ms at cost 12) and file I/O.  Raises ``ConfigError``
    when the file cannot be written.
    """
    target = Path(path)
    if target.exists():
        return None
    key_id, key = generate_key()
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    first = KeyEntry(hash=hash_key(key, rounds), key_id=key_id, created=created)
    entry = UserEntry(keys=(first,), admin=True, roles=(ROLE_ADMIN,))
    config = AuthConfig(enabled=True, api_keys={ROLE_ADMIN: entry})
    return key if _write_private(target, _render(config), replace=False) else None


def _render(config: AuthConfig) -> str:
    body = yaml.safe_dump({"auth": to_builtins(config)}, sort_keys=False, default_flow_style=False)
    return _HEADER + body


def _write_private(path: Path, text: str, *, replace: bool) -> bool:
    """Write ``text`` to ``path`` (mode 0600, atomically, parent folders created); return False
    if not ``replace`` and the path is taken.  Raises ``ConfigError`` when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, text.encode("utf-8"), mode=FILE_MODE, replace=replace)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
