"""Hot reload of the auth file: noticing a change, reading it safely, and what changed.

The file is polled with ``stat`` (about once a second) rather than watched through inotify: the
tools and editors that change it replace it by rename, which a stat notices on every platform,
and one stat a second costs nothing.  A change of the stat is confirmed by the SHA-256 of the
content, so touching the file reloads nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from fetchml.errors import ConfigError

from ._config import AuthConfig, KeyEntry
from ._file import check_private, parse_auth_bytes, read_auth_bytes

__all__ = ["POLL_INTERVAL_S", "AuthChange", "AuthFile", "ReloadReport", "diff_configs"]

# How often the auth file is checked for a change: a revoked key loses its connections within
# about this long (plus the close itself).
POLL_INTERVAL_S: Final = 1.0

_Stat = tuple[int, int, int, int, int]


class AuthChange(msgspec.Struct, frozen=True):
    """One change a reload made: ``action`` is ``user.add``, ``user.remove``, ``user.update``
    (roles, admin or permissions), ``key.add``, ``key.revoke``, ``key.update`` (expiry) or
    ``auth.update`` (enabled, custom roles or the allow-list).  Never carries key material."""

    action: str
    user: str | None = None
    key_id: str | None = None


class ReloadReport(msgspec.Struct, frozen=True):
    """The outcome of one reload: applied (``ok``) with its changes, or refused with ``error``.

    ``trigger`` is ``"signal"`` (SIGHUP or an explicit request) or ``"file"`` (a change seen).
    """

    ok: bool
    trigger: str
    changes: tuple[AuthChange, ...] = ()
    error: str | None = None


class AuthFile:
    """The auth file as last read: notices changes and parses new content.

    ``validate`` runs on every newly parsed config (the server's rules beyond the file's own,
    e.g. auth may only be disabled on a loopback bind) and raises ``ConfigError`` to refuse it.
    """

    def __init__(self, path: Path, validate: Callable[[AuthConfig], None] | None = None) -> None:
        self.path = path
        self._validate = validate
        self._stat: _Stat | None = None
        self._digest: bytes | None = None
        self._last_error: str | None = None

    def load(self) -> AuthConfig:
        """Read the file now, whether or not it changed (the first load).  Blocks on file I/O.

        Raises ``ConfigError`` as :meth:`read_if_changed` does.
        """
        config = self.read_if_changed(force=True)
        assert config is not None  # a forced read returns the config or raises
        return config

    def read_if_changed(self, *, force: bool) -> AuthConfig | None:
        """Return the file's config if its content changed since the last call (or ``force``).

        Blocks on file I/O: run it in a worker thread.  Returns ``None`` when nothing changed.
        Raises ``ConfigError`` naming the file and the field for a missing, unreadable, invalid
        or group/world-writable file; the same problem is reported once, not on every poll.
        """
        try:
            config = self._read(force=force)
        except ConfigError as exc:
            if exc.message == self._last_error and not force:
                return None
            self._last_error = exc.message
            raise
        if config is not None:
            self._last_error = None
        return config

    def _read(self, *, force: bool) -> AuthConfig | None:
        """:meth:`read_if_changed` without the suppression of repeated errors."""
        stat = _stat(self.path)
        if stat == self._stat and not force:
            return None
        self._stat = stat
        if stat is None:
            self._digest = None
        data = read_auth_bytes(self.path)  # "file not found" when it is missing
        digest = hashlib.sha256(data).digest()
        if digest == self._digest and not force:
            return None
        self._digest = digest
        config = parse_auth_bytes(data, source=str(self.path))
        if self._validate is not None:
            self._validate(config)
        return config


def _stat(path: Path) -> _Stat | None:
    """The file's identity and version, ``None`` if it is missing.  Raises ConfigError for a
    file that cannot be looked at (a directory on the way, no permission)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    check_private(path, st.st_mode)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


def diff_configs(old: AuthConfig, new: AuthConfig) -> tuple[AuthChange, ...]:
    """What changed from ``old`` to ``new``, user by user and key by key (keys by id and hash)."""
    changes: list[AuthChange] = []
    if (old.enabled, old.roles, old.ip_whitelist) != (new.enabled, new.roles, new.ip_whitelist):
        changes.append(AuthChange("auth.update"))
    for user in old.api_keys.keys() - new.api_keys.keys():
        changes.extend(AuthChange("key.revoke", user, key.ref) for key in old.api_keys[user].keys)
        changes.append(AuthChange("user.remove", user))
    for user, entry in new.api_keys.items():
        before = old.api_keys.get(user)
        if before is None:
            changes.append(AuthChange("user.add", user))
            changes.extend(AuthChange("key.add", user, key.ref) for key in entry.keys)
            continue
        if (before.admin, before.roles, before.permissions) != (
            entry.admin,
            entry.roles,
            entry.permissions,
        ):
            changes.append(AuthChange("user.update", user))
        changes.extend(_key_changes(user, before.keys, entry.keys))
    return tuple(changes)


def _key_changes(
    user: str, before: tuple[KeyEntry, ...], after: tuple[KeyEntry, ...]
) -> list[AuthChange]:
    old = {(key.ref, key.hash): key for key in before}
    new = {(key.ref, key.hash): key for key in after}
    changes = [AuthChange("key.revoke", user, ref) for ref, h in old.keys() - new.keys()]
    changes += [AuthChange("key.add", user, ref) for ref, h in new.keys() - old.keys()]
    changes += [
        AuthChange("key.update", user, ident[0])
        for ident in old.keys() & new.keys()
        if old[ident].expires != new[ident].expires
    ]
    return changes
