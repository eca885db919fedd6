"""``fetchml keys``: create, list and revoke API keys, and hash keys for the auth file.

``keys new`` generates a key, adds its bcrypt hash to a user's keys in the auth file (rotation:
the user's other keys stay valid unless ``--replace``) and prints the key once; ``keys list``
shows users, roles, key ids and expiry (never a secret or a hash); ``keys revoke`` removes keys by
id; ``keys hash`` prints the bcrypt hash of a key read from stdin, for hand-written entries.
A running server picks changes of the file up within a second (it watches it) or on SIGHUP.
Errors are one line on stderr and exit code 2; a new key is the only secret ever printed.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import re
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from fetchml.auth import (
    DEFAULT_ROUNDS,
    MAX_ROUNDS,
    MIN_ROUNDS,
    NAME_RULE,
    ROLE_ADMIN,
    AuthConfig,
    KeyEntry,
    UserEntry,
    generate_key,
    hash_key,
    is_valid_name,
    load_auth_file,
    with_user,
    write_auth_file,
)
from fetchml.errors import FetchMLError

__all__ = ["DEFAULT_AUTH_FILE", "register"]

DEFAULT_AUTH_FILE: Final = "configs/auth.yaml"
EXIT_ERROR: Final = 2
APPLIED: Final = "a running server applies it within a second, or at once on SIGHUP"
_DURATION_RE: Final = re.compile(r"(?P<n>[1-9][0-9]{0,5})(?P<unit>[hdw])")
_UNITS: Final = {"h": 3600, "d": 86400, "w": 7 * 86400}


class _UsageError(Exception):
    """A problem with the command's input, reported as one line on stderr."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` command (``keys new``, ``keys hash``) to a parser's subcommands."""
    keys = subparsers.add_parser("keys", help="create API keys and hashes for the auth file")
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    new = commands.add_parser(
        "new",
        help="generate a key for a user and store its hash in the auth file",
        description="Generate a new API key for USER, add or replace USER's entry in the auth "
        "file (other users are kept) and print the key once on stdout.",
    )
    new.add_argument("--user", required=True, help="user name (added, or replaced if present)")
    new.add_argument(
        "--role",
        action="append",
        dest="roles",
        metavar="ROLE",
        help="role to give the user (repeatable); built in: admin, researcher, analyst",
    )
    new.add_argument("--admin", action="store_true", help="give the user every permission")
    new.add_argument(
        "--expires",
        metavar="WHEN",
        help="when the key stops working: a duration (90d, 12h, 4w), a date (2027-01-31, "
        "midnight UTC) or an ISO 8601 time; default: never",
    )
    new.add_argument(
        "--replace", action="store_true", help="revoke the user's other keys (default: keep them)"
    )
    _add_auth_file(new)
    _add_rounds(new)
    new.set_defaults(func=_run_new)

    listing = commands.add_parser(
        "list",
        help="list users, roles, key ids and expiry (no secrets)",
        description="List every user of the auth file with roles, key ids, creation and expiry "
        "times. No key or hash is ever shown.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_auth_file(listing)
    listing.set_defaults(func=_run_list)

    revoke = commands.add_parser(
        "revoke",
        help="revoke keys by key id (or every key of a user)",
        description="Remove keys from the auth file by key id (see `fetchml keys list`), or every "
        "key of --user. The user keeps its roles and can be given a new key. " + APPLIED + ".",
    )
    revoke.add_argument("key_ids", nargs="*", metavar="KEY_ID", help="key ids to revoke")
    revoke.add_argument("--user", help="revoke every key of this user")
    _add_auth_file(revoke)
    revoke.set_defaults(func=_run_revoke)

    hashing = commands.add_parser(
        "hash",
        help="print the bcrypt hash of a key read from stdin",
        description="Read one API key from stdin (prompting without echo on a terminal) and "
        "print its bcrypt hash, for a hand-written auth file entry.",
    )
    _add_rounds(hashing)
    hashing.set_defaults(func=_run_hash)


def _add_auth_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth-file",
        default=DEFAULT_AUTH_FILE,
        metavar="PATH",
        help=f"the auth file (default: {DEFAULT_AUTH_FILE})",
    )


def _add_rounds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"bcrypt cost factor, {MIN_ROUNDS} to {MAX_ROUNDS} (default: {DEFAULT_ROUNDS})",
    )


def _run_new(args: argparse.Namespace) -> int:
    """Handle ``keys new``; blocks on bcrypt and file I/O; returns 0, or 2 after one error line."""
    try:
        path = Path(args.auth_file)
        config = load_auth_file(path) if path.exists() else AuthConfig()
        user: str = args.user
        old = config.api_keys.get(user)
        roles = _chosen_roles(config, user, args.roles, admin=args.admin, existing=old)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        expires = _expiry(args.expires, now) if args.expires else None
        key_id, key = generate_key()
        new_key = KeyEntry(
            hash=hash_key(key, args.rounds), key_id=key_id, created=now, expires=expires
        )
        kept = () if old is None or args.replace else old.keys
        entry = UserEntry(
            keys=(*kept, new_key),
            admin=args.admin or (old is not None and old.admin and not args.roles),
            roles=roles,
            permissions=old.permissions if old is not None else {},
        )
        write_auth_file(path, with_user(config, user, entry, source=str(path)))
    except (FetchMLError, ValueError, _UsageError) as exc:
        return _fail("keys new", exc)
    if old is None:
        what = "new user"
    elif args.replace:
        what = f"replaces {len(old.keys)} old key(s)"
    else:
        what = f"added; {len(kept)} other key(s) still valid"
    until = f", expires {_show_time(expires)}" if expires else ""
    print(
        f"API key {key_id} for {user!r} ({what}{until}) stored as a hash in {path}; "
        f"{APPLIED}. The key is shown once below and will not be shown again",
        file=sys.stderr,
    )
    print(key)
    return 0


def _expiry(text: str, now: datetime.datetime) -> datetime.datetime:
    """``--expires``: a duration from now, a date (midnight UTC) or an ISO 8601 time (UTC if
    no zone).  Raises ``_UsageError`` for anything else or a time already past."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match:
        return now + datetime.timedelta(seconds=int(match["n"]) * _UNITS[match["unit"]])
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _UsageError(
            f"--expires: {text!r} is not a duration (90d, 12h, 4w), a date or an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    if when <= now:
        raise _UsageError(f"--expires: {text!r} is in the past")
    return when


def _chosen_roles(
    config: AuthConfig,
    user: str,
    roles: list[str] | None,
    *,
    admin: bool,
    existing: UserEntry | None,
) -> tuple[str, ...]:
    """Check the user name and roles before paying for bcrypt; raise ``_UsageError`` if wrong.

    An existing user keeps its roles unless new ones are given.
    """
    if not is_valid_name(user):
        raise _UsageError(f"invalid user name {user!r}: use {NAME_RULE}")
    if not roles:
        if existing is not None and not admin:
            return existing.roles
        if not admin:
            raise _UsageError("give the user a role with --role ROLE (or --admin)")
        return (ROLE_ADMIN,)
    for role in roles:
        if not config.has_role(role):
            raise _UsageError(f"unknown role {role!r}")
    return tuple(dict.fromkeys(roles))


def _run_list(args: argparse.Namespace) -> int:
    """Handle ``keys list``; blocks on file I/O; returns 0, or 2 after one error line."""
    try:
        config = load_auth_file(args.auth_file)
    except FetchMLError as exc:
        return _fail("keys list", exc)
    now = datetime.datetime.now(datetime.UTC)
    rows = [_key_row(user, entry, key, now) for user, entry, key in _listing(config)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption="times in UTC")
    for column in ("USER", "ROLES", "KEY ID", "CREATED", "EXPIRES", "STATUS"):
        if column == "ROLES":
            table.add_column(column, overflow="fold", min_width=10)
        else:
            table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row["user"],
            ", ".join(row["roles"]),
            row["key_id"] or "-",
            _short_time(row["created"]) or "-",
            _short_time(row["expires"]) or "never",
            row["status"],
        )
    Console(highlight=False).print(table)
    return 0


def _listing(config: AuthConfig) -> list[tuple[str, UserEntry, KeyEntry | None]]:
    """One line per key, and one for each user without any key."""
    lines: list[tuple[str, UserEntry, KeyEntry | None]] = []
    for user, entry in config.api_keys.items():
        lines.extend((user, entry, key) for key in entry.keys or (None,))
    return lines


def _key_row(
    user: str, entry: UserEntry, key: KeyEntry | None, now: datetime.datetime
) -> dict[str, Any]:
    if key is None:
        status = "no key"
    elif key.expired(now.timestamp()):
        status = "expired"
    else:
        status = "active"
    return {
        "user": user,
        "roles": list(entry.roles),
        "admin": entry.admin,
        "key_id": key.ref if key is not None else None,
        "created": _show_time(key.created) if key is not None else None,
        "expires": _show_time(key.expires) if key is not None else None,
        "status": status,
    }


def _short_time(shown: str | None) -> str | None:
    """``2026-11-26T10:00:00Z`` as ``2026-11-26 10:00``, to fit a table in 80 columns."""
    return None if shown is None else shown[:16].replace("T", " ")


def _show_time(when: datetime.datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run_revoke(args: argparse.Namespace) -> int:
    """Handle ``keys revoke``; blocks on file I/O; returns 0, or 2 after one error line."""
    try:
        path = Path(args.auth_file)
        config = load_auth_file(path)
        targets = _revocations(config, args.key_ids, args.user)
        for user, refs in targets.items():
            entry = config.api_keys[user]
            kept = tuple(key for key in entry.keys if key.ref not in refs)
            replaced = msgspec.structs.replace(entry, keys=kept)
            config = with_user(config, user, replaced, source=str(path))
        write_auth_file(path, config)
    except (FetchMLError, _UsageError) as exc:
        return _fail("keys revoke", exc)
    for user, refs in targets.items():
        for ref in sorted(refs):
            print(f"revoked key {ref} of {user!r}")
    print(f"{path} updated; {APPLIED}", file=sys.stderr)
    return 0


def _revocations(config: AuthConfig, key_ids: list[str], user: str | None) -> dict[str, set[str]]:
    """The key ids to revoke, per user.  Raises ``_UsageError`` for an unknown user or key id."""
    if not key_ids and user is None:
        raise _UsageError("name the key ids to revoke, or --user NAME for all of a user's keys")
    owners = {key.ref: owner for owner, key in config.all_keys()}
    targets: dict[str, set[str]] = {}
    for ref in key_ids:
        if ref not in owners:
            raise _UsageError(f"no key with id {ref!r} (see `fetchml keys list`)")
        targets.setdefault(owners[ref], set()).add(ref)
    if user is not None:
        if user not in config.api_keys:
            raise _UsageError(f"no user {user!r}")
        refs = {key.ref for key in config.api_keys[user].keys}
        if not refs:
            raise _UsageError(f"user {user!r} has no key to revoke")
        targets.setdefault(user, set()).update(refs)
    return targets


def _run_hash(args: argparse.Namespace) -> int:
    """Handle ``keys hash``; waits on stdin and bcrypt; returns 0, or 2 after one error line."""
    try:
        key = _read_key()
        hashed = hash_key(key, args.rounds)
    except (ValueError, _UsageError, OSError, EOFError) as exc:
        return _fail("keys hash", exc)
    print(hashed)
    return 0


def _read_key() -> str:
    """Read one key: without echo from a terminal, else one line of stdin."""
    if sys.stdin.isatty():
        return getpass.getpass("API key: ")
    text = sys.stdin.read()
    key = text.removesuffix("\n").removesuffix("\r")
    if not key:
        raise _UsageError("no key on stdin")
    if "\n" in key or "\r" in key:
        raise _UsageError("expected exactly one key, on one line, on stdin")
    return key


def _fail(command: str, exc: BaseException) -> int:
    # Messages never include the key: hash_key's and the config's errors do not echo secrets.
    message = exc.message if isinstance(exc, FetchMLError) else str(exc)
    print(f"fetchml {command}: error: {message}", file=sys.stderr)
    return EXIT_ERROR
