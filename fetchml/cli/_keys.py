"""``fetchml keys``: create API keys and hash keys for the auth file.

``keys new`` generates a key, stores its bcrypt hash for a user in the auth file and prints the key
once; ``keys hash`` prints the bcrypt hash of a key read from stdin, for hand-written entries.
Errors are one line on stderr and exit code 2; a new key is the only secret ever printed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Final

from fetchml.auth import (
    DEFAULT_ROUNDS,
    MAX_ROUNDS,
    MIN_ROUNDS,
    NAME_RULE,
    ROLE_ADMIN,
    AuthConfig,
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
        "--auth-file",
        default=DEFAULT_AUTH_FILE,
        metavar="PATH",
        help=f"auth file to update or create (default: {DEFAULT_AUTH_FILE})",
    )
    _add_rounds(new)
    new.set_defaults(func=_run_new)

    hashing = commands.add_parser(
        "hash",
        help="print the bcrypt hash of a key read from stdin",
        description="Read one API key from stdin (prompting without echo on a terminal) and "
        "print its bcrypt hash, for a hand-written auth file entry.",
    )
    _add_rounds(hashing)
    hashing.set_defaults(func=_run_hash)


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
        roles = _chosen_roles(config, user, args.roles, admin=args.admin)
        key_id, key = generate_key()
        entry = UserEntry(
            hash=hash_key(key, args.rounds), key_id=key_id, admin=args.admin, roles=roles
        )
        replacing = user in config.api_keys
        write_auth_file(path, with_user(config, user, entry, source=str(path)))
    except (FetchMLError, ValueError, _UsageError) as exc:
        return _fail("keys new", exc)
    what = "replaces the old key" if replacing else "new user"
    print(
        f"API key for {user!r} ({what}) stored as a hash in {path}; "
        "it is shown once below and will not be shown again",
        file=sys.stderr,
    )
    print(key)
    return 0


def _chosen_roles(
    config: AuthConfig, user: str, roles: list[str] | None, *, admin: bool
) -> tuple[str, ...]:
    """Check the user name and roles before paying for bcrypt; raise ``_UsageError`` if wrong."""
    if not is_valid_name(user):
        raise _UsageError(f"invalid user name {user!r}: use {NAME_RULE}")
    if not roles:
        if not admin:
            raise _UsageError("give the user a role with --role ROLE (or --admin)")
        return (ROLE_ADMIN,)
    for role in roles:
        if not config.has_role(role):
            raise _UsageError(f"unknown role {role!r}")
    return tuple(dict.fromkeys(roles))


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
