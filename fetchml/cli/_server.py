"""``fetchml``: run the server (``serve``), manage API keys (``keys``), check a config, make a
self-signed TLS certificate (``certs``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import FetchMLError
from . import _audit, _certs, _keys

__all__ = ["main"]

DEFAULT_CONFIG = "configs/server.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetchml", description="Fetch ML server and administration tools."
    )
    parser.add_argument("--version", action="version", version=f"fetchml {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the server (HTTP and WebSocket)")
    _config_args(serve)
    serve.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default from config: 9103)")
    serve.add_argument("--data-dir", help="where the job store and job logs live")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check-config", help="validate the server and auth config")
    _config_args(check)
    check.set_defaults(func=_check)
    _keys.register(commands)
    _audit.register(commands)
    _certs.register(commands)
    return parser


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("FETCHML_CONFIG", DEFAULT_CONFIG),
        help=f"server config file (default: $FETCHML_CONFIG or {DEFAULT_CONFIG}; "
        "built-in defaults if it does not exist)",
    )


def _load(args: argparse.Namespace) -> Any:
    from .._config import make_config

    overrides = {
        key: value
        for key, value in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
        )
        if value is not None
    }
    path = Path(args.config)
    explicit = args.config != DEFAULT_CONFIG or "FETCHML_CONFIG" in os.environ
    source = path if path.exists() or explicit else None
    return make_config(source, **overrides)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from .._logging import setup_logging
    from ..server import run_server

    config = _load(args)
    setup_logging(config.logging.level, config.logging.format)
    trio.run(run_server, config)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..server import load_auth, server_ssl_context

    config = _load(args)
    tls = config.server.tls
    if tls.enabled:
        server_ssl_context(tls)
    auth = (
        load_auth(config, announce=False)[0]
        if config.auth is not None or Path(config.auth_file).exists()
        else None
    )
    users = (
        "no auth file yet (created on first start)"
        if auth is None
        else (f"{len(auth.api_keys)} user(s), auth {'enabled' if auth.enabled else 'DISABLED'}")
    )
    where = f"{config.server.host}:{config.server.port}{' (TLS)' if tls.enabled else ''}"
    print(f"config OK: {where}, data in {config.data_dir}, {users}")
    return 0


def _leaf(exc: BaseException) -> BaseException:
    """Unwrap single-exception groups (trio nurseries are strict) to the error inside."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fetchml`` command; returns the exit status (2 for a configuration error)."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        leaf = _leaf(exc)
        if isinstance(leaf, FetchMLError):
            print(f"fetchml: error: {leaf.message}", file=sys.stderr)
            return 2
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        raise
    return code
