"""The auth config: its msgspec schema, validation, and role → permission resolution.

Parsing runs in two steps.  msgspec checks the shape (types, unknown and missing fields), one
mapping entry at a time so that every error names its full path (msgspec itself elides mapping
keys as ``[...]``); then the meaning is checked (roles and permissions exist, hashes look like
bcrypt, key ids are unique).  Every failure is a ``ConfigError`` whose message starts with the
source and the field path, e.g. ``auth.yaml: auth.api_keys.alice.roles[0]: unknown role 'x'``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from typing import Any, Final, NoReturn, TypeVar

import msgspec

from fetchml.errors import ConfigError

from ._keys import bcrypt_hash_problem, is_key_id
from ._permissions import ALL_PERMISSIONS, BUILTIN_ROLES, ROLE_ADMIN
from ._principal import Principal

__all__ = [
    "NAME_RULE",
    "AuthConfig",
    "KeyEntry",
    "UserEntry",
    "derived_key_id",
    "is_valid_name",
    "parse_auth_config",
]

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAME_RULE: Final = "1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_MSGSPEC_ERROR_RE: Final = re.compile(
    r"(?P<msg>.*?)(?: - at (?P<in_key>`key` in )?`\$(?P<path>[^`]*)`)?", re.DOTALL
)
_FIELD_RE: Final = re.compile(
    r"Object (?P<what>contains unknown|missing required) field `(?P<f>.*)`"
)


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One API key of a user: its bcrypt hash, its public key id, and when it was made and expires.

    ``key_id`` is ``None`` for a hand-written key that is not of our format; :attr:`ref` then
    derives an id from the hash, so that every key can be listed and revoked by an id.
    """

    hash: str
    key_id: str | None = None
    created: datetime.datetime | None = None
    expires: datetime.datetime | None = None

    @property
    def ref(self) -> str:
        """The key's id: its own key id, else ``h-`` and 10 hex digits of its hash's SHA-256."""
        return self.key_id if self.key_id is not None else derived_key_id(self.hash)

    @property
    def expires_at(self) -> float | None:
        """The expiry as Unix time, or ``None`` for a key that never expires."""
        return None if self.expires is None else self.expires.timestamp()

    def expired(self, now: float) -> bool:
        """Return whether the key has expired at Unix time ``now``."""
        expires_at = self.expires_at
        return expires_at is not None and now >= expires_at


class UserEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One user's entry under ``auth.api_keys``: keys, roles, extras.  Treat it as read-only.

    A user may hold several keys (rotation) or none (every key revoked; the user keeps its roles).
    """

    keys: tuple[KeyEntry, ...] = ()
    admin: bool = False
    roles: tuple[str, ...] = ()
    permissions: dict[str, bool] = {}


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``auth:`` section.  Build it with :func:`parse_auth_config`, which validates it."""

    enabled: bool = True
    api_keys: dict[str, UserEntry] = {}
    roles: dict[str, tuple[str, ...]] = {}
    ip_whitelist: tuple[str, ...] = ()  # CIDRs, checked by parse_auth_config; empty: allow all

    def networks(self) -> tuple[IPNetwork, ...]:
        """The allow-list as parsed networks (empty: every address is allowed)."""
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in self.ip_whitelist)

    def has_role(self, role: str) -> bool:
        """Return whether ``role`` is built in or defined under ``roles``."""
        return role in BUILTIN_ROLES or role in self.roles

    def principal_for(self, user: str, key: KeyEntry | None = None) -> Principal:
        """Resolve ``user``'s roles and extra permissions into a :class:`Principal`.

        ``key`` is the key that authenticated (it names the principal's key id and expiry).
        An admin (``admin: true`` or the ``admin`` role) holds every permission.  Otherwise the
        permissions are the union of the roles', plus extras set ``true``, minus extras set
        ``false``.  Raises ``KeyError`` for an unknown user and ``ConfigError`` for an unknown role
        (only possible in a config that did not come through :func:`parse_auth_config`).
        """
        entry = self.api_keys[user]
        admin = entry.admin or ROLE_ADMIN in entry.roles
        key_id, expires_at = ("", None) if key is None else (key.ref, key.expires_at)
        permissions = ALL_PERMISSIONS if admin else self._granted(user, entry)
        return Principal(
            user=user,
            roles=entry.roles,
            permissions=permissions,
            admin=admin,
            key_id=key_id,
            expires_at=expires_at,
        )

    def _granted(self, user: str, entry: UserEntry) -> frozenset[str]:
        """A non-admin's permissions: its roles', plus extras set true, minus extras set false."""
        granted: set[str] = set()
        for role in entry.roles:
            if role in BUILTIN_ROLES:
                granted |= BUILTIN_ROLES[role]
            elif role in self.roles:
                granted.update(self.roles[role])
            else:
                raise ConfigError(f"user {user!r} has unknown role {role!r}")
        for permission, on in entry.permissions.items():
            if on:
                granted.add(permission)
            else:
                granted.discard(permission)
        return frozenset(granted)

    def all_keys(self) -> Iterator[tuple[str, KeyEntry]]:
        """Every ``(user, key)`` pair, users in file order."""
        for user, entry in self.api_keys.items():
            for key in entry.keys:
                yield user, key


class _RawKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hash: str
    key_id: str | None = None
    created: Any = None
    expires: Any = None


class _RawSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    api_keys: dict[str, Any] = {}
    roles: dict[str, Any] = {}
    ip_whitelist: tuple[str, ...] = ()


class _RawUser(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hash: str | None = None
    key_id: str | None = None
    expires: Any = None
    keys: list[Any] | None = None
    admin: bool = False
    roles: tuple[str, ...] = ()
    permissions: dict[str, Any] = {}


def is_valid_name(name: str) -> bool:
    """Return whether ``name`` is acceptable as a user or role name (see ``NAME_RULE``)."""
    return _NAME_RE.fullmatch(name) is not None


def parse_auth_config(data: object, *, source: str) -> AuthConfig:
    """Validate an already-loaded ``auth:`` section and return it as an :class:`AuthConfig`.

    ``source`` names where the data came from (a file name) and starts every error message.
    Waits on nothing.  Raises ``ConfigError`` naming the source and the field path for a wrong
    type, an unknown or missing field, an unknown role or permission, a value that is not a
    bcrypt hash, a malformed or duplicate key id, or an invalid user or role name.
    """
    section = convert_checked(data, _RawSection, source=source, path="auth")
    roles = {
        name: _parse_role(name, perms, source=source)
        for name, perms in _checked_names(section.roles, source=source, path="auth.roles")
    }
    whitelist = _parse_whitelist(section.ip_whitelist, source=source)
    config = AuthConfig(enabled=section.enabled, roles=roles)
    users = {
        name: _parse_user(config, f"auth.api_keys.{name}", raw, source=source)
        for name, raw in _checked_names(section.api_keys, source=source, path="auth.api_keys")
    }
    _check_unique_key_ids(users, source=source)
    return AuthConfig(enabled=section.enabled, api_keys=users, roles=roles, ip_whitelist=whitelist)


def with_user(config: AuthConfig, user: str, entry: UserEntry, *, source: str) -> AuthConfig:
    """Return a checked copy of ``config`` where ``user``'s entry is ``entry`` (new or replaced).

    Raises ``ConfigError`` as :func:`parse_auth_config` does when the result would not be valid.
    """
    section = to_builtins(config)
    section["api_keys"][user] = entry_to_builtins(entry)
    return parse_auth_config(section, source=source)


def to_builtins(config: AuthConfig) -> dict[str, Any]:
    """Return ``config`` as plain dicts and lists, the shape of an ``auth:`` section in YAML."""
    return {
        "enabled": config.enabled,
        "api_keys": {user: entry_to_builtins(entry) for user, entry in config.api_keys.items()},
        "roles": {name: list(perms) for name, perms in config.roles.items()},
        **({"ip_whitelist": list(config.ip_whitelist)} if config.ip_whitelist else {}),
    }


def entry_to_builtins(entry: UserEntry) -> dict[str, Any]:
    """Return one user entry as a plain dict, in the shape a person would write.

    One hand-written key (no ``created`` time) keeps the short form (``hash``, ``key_id``,
    ``expires`` on the user); otherwise the keys are a ``keys:`` list.  Absent values are left out.
    """
    out: dict[str, Any] = {}
    if len(entry.keys) == 1 and entry.keys[0].created is None:
        out.update(_key_to_builtins(entry.keys[0]))
    else:
        out["keys"] = [_key_to_builtins(key) for key in entry.keys]
    out["admin"] = entry.admin
    out["roles"] = list(entry.roles)
    if entry.permissions:
        out["permissions"] = dict(entry.permissions)
    return out


def _key_to_builtins(key: KeyEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"hash": key.hash}
    if key.key_id is not None:
        out["key_id"] = key.key_id
    for name in ("created", "expires"):
        value: datetime.datetime | None = getattr(key, name)
        if value is not None:
            out[name] = value.astimezone(datetime.UTC).isoformat(timespec="seconds")
    return out


def derived_key_id(hashed: str) -> str:
    """The id of a key that has none of its own: ``h-`` and 10 hex digits of SHA-256(hash).

    bcrypt hashes carry a random salt, so two keys never share it; it reveals nothing usable.
    """
    return "h-" + hashlib.sha256(hashed.encode()).hexdigest()[:10]


def _parse_whitelist(entries: tuple[str, ...], *, source: str) -> tuple[str, ...]:
    """Check every entry is an IPv4 or IPv6 address or network; return them normalised."""
    out = []
    for index, entry in enumerate(entries):
        try:
            network = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError as exc:
            _fail(source, f"auth.ip_whitelist[{index}]", f"{entry!r} is not a valid CIDR: {exc}")
        out.append(str(network))
    return tuple(out)


def _parse_role(name: str, perms: object, *, source: str) -> tuple[str, ...]:
    path = f"auth.roles.{name}"
    if name in BUILTIN_ROLES:
        _fail(source, path, f"role {name!r} is built in and cannot be redefined")
    permissions = convert_checked(perms, tuple[str, ...], source=source, path=path)
    for index, permission in enumerate(permissions):
        if permission not in ALL_PERMISSIONS:
            _fail(source, f"{path}[{index}]", f"unknown permission {permission!r}")
    return permissions


def _parse_user(config: AuthConfig, path: str, data: object, *, source: str) -> UserEntry:
    raw = convert_checked(data, _RawUser, source=source, path=path)
    keys = _parse_user_keys(raw, path, source=source)
    for index, role in enumerate(raw.roles):
        if not config.has_role(role):
            _fail(source, f"{path}.roles[{index}]", f"unknown role {role!r}")
    admin = raw.admin or ROLE_ADMIN in raw.roles
    permissions: dict[str, bool] = {}
    for permission, value in raw.permissions.items():
        where = f"{path}.permissions.{permission}"
        if permission not in ALL_PERMISSIONS:
            _fail(source, where, f"unknown permission {permission!r}")
        on = convert_checked(value, bool, source=source, path=where)
        if admin and not on:
            _fail(source, where, "an admin holds every permission; none can be removed")
        permissions[permission] = on
    return UserEntry(keys=keys, admin=raw.admin, roles=raw.roles, permissions=permissions)


def _parse_user_keys(raw: _RawUser, path: str, *, source: str) -> tuple[KeyEntry, ...]:
    """A user's keys: the short form (``hash`` on the user) or the ``keys:`` list, not both."""
    if raw.keys is not None:
        for name in ("hash", "key_id", "expires"):
            if getattr(raw, name) is not None:
                _fail(source, f"{path}.{name}", "give either 'keys' (a list) or 'hash', not both")
        return tuple(
            _parse_key(item, f"{path}.keys[{index}]", source=source)
            for index, item in enumerate(raw.keys)
        )
    if raw.hash is None:
        _fail(source, f"{path}.hash", "missing field (or 'keys', a list of keys)")
    short = {"hash": raw.hash, "key_id": raw.key_id, "expires": raw.expires}
    return (_parse_key(short, path, source=source),)


def _parse_key(data: object, path: str, *, source: str) -> KeyEntry:
    raw = convert_checked(data, _RawKey, source=source, path=path)
    hash_problem = bcrypt_hash_problem(raw.hash)
    if hash_problem is not None:
        _fail(source, f"{path}.hash", hash_problem)
    if raw.key_id is not None and not is_key_id(raw.key_id):
        _fail(source, f"{path}.key_id", "a key id is 12 characters of a-z and 2-7")
    return KeyEntry(
        hash=raw.hash,
        key_id=raw.key_id,
        created=_parse_time(raw.created, f"{path}.created", source=source),
        expires=_parse_time(raw.expires, f"{path}.expires", source=source),
    )


def _parse_time(value: object, path: str, *, source: str) -> datetime.datetime | None:
    """A time from YAML: a timestamp, a date (its midnight, UTC) or an ISO 8601 string.

    A time without a zone is taken as UTC, so a file means the same on every server.
    """
    if value is None:
        return None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time(), datetime.UTC)
    elif isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            _fail(source, path, f"{value!r} is not a date or an ISO 8601 time")
    if not isinstance(value, datetime.datetime):
        _fail(source, path, "expected a date or an ISO 8601 time")
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def _checked_names(mapping: dict[str, Any], *, source: str, path: str) -> list[tuple[str, Any]]:
    for name in mapping:
        if not is_valid_name(name):
            _fail(source, f"{path}.{name}", f"invalid name {name!r}: use {NAME_RULE}")
    return list(mapping.items())


def _check_unique_key_ids(users: dict[str, UserEntry], *, source: str) -> None:
    owners: dict[str, str] = {}
    for user, entry in users.items():
        for index, key in enumerate(entry.keys):
            if key.ref in owners:
                where = f"auth.api_keys.{user}" + (f".keys[{index}]" if len(entry.keys) > 1 else "")
                field, what = ("key_id", "key id") if key.key_id is not None else ("hash", "hash")
                _fail(
                    source, f"{where}.{field}", f"{what} already used by user {owners[key.ref]!r}"
                )
            owners[key.ref] = user


def convert_checked(data: object, type_: type[T], *, source: str, path: str) -> T:
    """Return ``msgspec.convert(data, type_)``; raise ``ConfigError`` naming ``source`` and path."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(str(exc), source=source, path=path)) from None


def _describe(error: str, *, source: str, path: str) -> str:
    """Rewrite a msgspec validation message into ``source: field.path: what is wrong``."""
    match = _MSGSPEC_ERROR_RE.fullmatch(error)
    message, sub = (match["msg"], match["path"] or "") if match else (error, "")
    where = path + sub
    field = _FIELD_RE.fullmatch(message)
    if field:
        where = f"{where}.{field['f']}"
        message = "unknown field" if field["what"] == "contains unknown" else "missing field"
    else:
        message = message.replace("`object`", "a mapping").replace("`array`", "a list")
        message = message[:1].lower() + message[1:]
        if match and match["in_key"]:
            message = f"{message} (in a mapping key)"
    where = where.lstrip(".")
    return f"{source}: {where}: {message}" if where else f"{source}: {message}"


def _fail(source: str, path: str, message: str) -> NoReturn:
    raise ConfigError(f"{source}: {path}: {message}")
