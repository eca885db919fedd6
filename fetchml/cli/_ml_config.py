"""``ml config init`` (write the client config file, mode 0600) and ``ml config show``."""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
from pathlib import Path

from fetchml.client import (
    DEFAULT_URL,
    ENV_CA_FILE,
    ENV_URL,
    Identity,
    client_ssl_context,
    default_config_path,
    load_settings,
    mask_key,
    normalize_url,
    write_config,
)

from ._ml import UsageError, read_key_file
from ._ml_output import Output, print_pairs

__all__ = ["config_init", "config_show"]


def _path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else default_config_path()


def config_init(args: argparse.Namespace, out: Output) -> int:
    """Ask for (or read) the URL and key, try them against the server, write the file.

    The CA file (``--ca-file``, else ``FETCHML_CA_FILE``) is checked and stored as an absolute
    path.  Raises :class:`UsageError`, :class:`ConfigError` for a bad CA file, and the
    connection's errors unless ``--no-check``.
    """
    path = _path(args)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; use --force to replace it")
    url = normalize_url(_ask_url(args))
    ca_file = _ca_file(args)
    key = _ask_key(args)
    user = None
    if not args.no_check:
        import trio

        identity: Identity = trio.run(_check, url, key, ca_file)
        user = identity.user
    write_config(path, url=url, key=key, ca_file=ca_file)
    if out.json:
        out.emit({"config_path": str(path), "url": url, "user": user, "ca_file": ca_file})
    else:
        who = f" as {user}" if user else ""
        trust = f", trusting {ca_file}" if ca_file else ""
        out.line(f"wrote {path} (mode 0600): {url}{who}{trust}")
    return 0


def _ca_file(args: argparse.Namespace) -> str | None:
    """The CA file to store, absolute (a relative path in the file would be read relative to
    the config file's directory); loaded once to check it.  Raises ConfigError."""
    given = args.ca_file or os.environ.get(ENV_CA_FILE)
    if not given:
        return None
    ca_file = os.path.abspath(os.path.expanduser(given))
    client_ssl_context(ca_file)
    return ca_file


def _ask_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    default = os.environ.get(ENV_URL) or DEFAULT_URL
    if args.key_stdin or args.key_file or not sys.stdin.isatty():
        return default
    answer = input(f"Server URL [{default}]: ").strip()
    return answer or default


def _ask_key(args: argparse.Namespace) -> str:
    if args.key_file:
        return read_key_file(args.key_file)
    if args.key_stdin:
        return read_key_file("-")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the API key on; use --key-stdin")
    key = getpass.getpass("API key (input hidden): ").strip()
    if not key:
        raise UsageError("no API key given")
    return key


async def _check(url: str, key: str, ca_file: str | None) -> Identity:
    from fetchml.client import connect

    async with connect(url, key, ca_file=ca_file) as client:
        return await client.whoami()


def config_show(args: argparse.Namespace, out: Output) -> int:
    """The settings in effect and where each comes from; the key is always masked."""
    key = read_key_file(args.key_file) if args.key_file else None
    settings = load_settings(url=args.url, key=key, ca_file=args.ca_file, config_path=_path(args))
    path = settings.config_path
    exists = path.exists()
    mode = stat.S_IMODE(path.stat().st_mode) if exists else None
    if out.json:
        out.emit(
            {
                "config_path": str(path),
                "config_exists": exists,
                "config_mode": None if mode is None else f"{mode:04o}",
                "url": settings.url,
                "url_source": settings.url_source,
                "key": mask_key(settings.key),
                "key_source": settings.key_source,
                "ca_file": settings.ca_file,
                "ca_file_source": settings.ca_file_source,
            }
        )
        return 0
    where = f"mode {mode:04o}" if mode is not None else "not found"
    print_pairs(
        out,
        [
            ("config file", f"{path} ({where})"),
            ("url", f"{settings.url} (from {settings.url_source})"),
            ("api key", f"{mask_key(settings.key)} (from {settings.key_source})"),
            ("ca file", _describe_ca_file(settings.ca_file, settings.ca_file_source)),
        ],
    )
    if mode is not None and mode & 0o077:
        out.note(f"warning: {path} is readable by others; run: chmod 600 {path}")
    return 0


def _describe_ca_file(ca_file: str | None, source: str) -> str:
    if ca_file is None:
        return "none (https servers are checked against the system's CAs)"
    missing = "" if os.path.isfile(ca_file) else ", NOT FOUND"
    return f"{ca_file} (from {source}{missing})"
