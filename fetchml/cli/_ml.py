"""``ml``: the command-line client of a Fetch ML server.

This module parses the command line, resolves the settings, runs one command and turns every
error into one line on stderr and a distinct exit status (see ``ml --help``).  The commands live
in ``_ml_jobs`` (queue, cancel), ``_ml_view`` (status, logs, whoami), ``_ml_watch`` (status
--watch, watch), ``_ml_files``, ``_ml_tracking`` (metrics, experiments, runs, compare, export,
outcome) and ``_ml_config``; they are imported only when run, so ``ml --help`` stays fast.
One-shot commands run over HTTP without an event loop (``_ONE_SHOT``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fetchml import __version__
from fetchml.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FetchMLError,
    InvalidRequestError,
    JobNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)

from ._ml_args import build_parser, command_word

if TYPE_CHECKING:
    from fetchml.client import Client, HttpClient, Settings

    from ._ml_output import Output

    # What a handler that can run one-shot gets: the WebSocket client or the HTTP one.
    AnyClient = Client | HttpClient

__all__ = ["EXIT_CODES", "UsageError", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_PERMISSION = 5
EXIT_NOT_FOUND = 6
EXIT_CONFLICT = 7
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_CODES: dict[str, int] = {
    "unreachable": EXIT_UNREACHABLE,
    "connection_lost": EXIT_UNREACHABLE,
    "too_slow": EXIT_UNREACHABLE,  # the server dropped this connection: it could not keep up
    AuthError.code: EXIT_AUTH,
    PermissionDeniedError.code: EXIT_PERMISSION,
    JobNotFoundError.code: EXIT_NOT_FOUND,
    ConflictError.code: EXIT_CONFLICT,
}

Handler = Callable[["AnyClient", argparse.Namespace, "Output"], Awaitable[int]]

# command → (module, function) of its handler, imported on use
_HANDLERS = {
    "queue": ("_ml_jobs", "queue"),
    "requeue": ("_ml_jobs", "requeue"),
    "pull": ("_ml_files", "pull"),
    "validate": ("_ml_files", "validate"),
    "prune": ("_ml_files", "prune"),
    "metrics": ("_ml_tracking", "metrics"),
    "experiments": ("_ml_tracking", "experiments"),
    "runs": ("_ml_tracking", "runs"),
    "compare": ("_ml_tracking", "compare"),
    "export": ("_ml_tracking", "export"),
    "outcome": ("_ml_tracking", "outcome"),
    "dataset_register": ("_ml_datasets", "register"),
    "dataset_list": ("_ml_datasets", "listing"),
    "dataset_info": ("_ml_datasets", "info"),
    "cancel": ("_ml_jobs", "cancel"),
    "status": ("_ml_view", "status"),
    "logs": ("_ml_view", "logs"),
    "watch": ("_ml_watch", "watch"),
    "whoami": ("_ml_view", "whoami"),
    "config_init": ("_ml_config", "config_init"),
    "config_show": ("_ml_config", "config_show"),
}

# Commands that make a few requests and exit: they run over plain HTTP without an event loop
# (see fetchml.client._oneshot), unless the option named here is given, which streams events
# over the WebSocket.  The others (and these with that option) connect the WebSocket client.
_ONE_SHOT: dict[str, str | None] = {
    "status": "watch",
    "whoami": None,
    "queue": "wait",
    "requeue": "wait",
    "cancel": None,
    "logs": "follow",
}


class UsageError(InvalidRequestError):
    """A bad argument that argparse could not catch (exit status 2)."""

    code = "usage"


def exit_code_for(exc: FetchMLError) -> int:
    """The exit status for an error (documented in ``ml --help``)."""
    if isinstance(exc, InvalidRequestError | ConfigError):
        return EXIT_USAGE
    return EXIT_CODES.get(exc.code, EXIT_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ml`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    at = command_word(words)
    parser = build_parser(__version__, None if at is None else words[at])
    # ``ml requeue JOB [OPTIONS] [-- COMMAND]``: the new command is what follows ``--`` (an
    # argparse remainder after JOB would swallow the options too).
    new_command: list[str] = []
    if at is not None and words[at] == "requeue" and "--" in words[at:]:
        split = words.index("--", at)
        words, new_command = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    if args.handler == "requeue":
        args.command = new_command
    if args.handler in ("queue", "requeue"):
        command = list(args.command)
        args.command = command[1:] if command[:1] == ["--"] else command
        if not args.command and args.handler == "queue":
            parser.error("queue: give the command to run after --, e.g. ml queue -- python x.py")
    try:
        return _run(args)
    except BaseException as exc:  # every error ends here as one line and an exit status
        return _fail(exc, args)


def _run(args: argparse.Namespace) -> int:
    import importlib

    from ._ml_output import Output

    out = Output(json=args.json)
    module_name, function = _HANDLERS[args.handler]
    module = importlib.import_module(f"fetchml.cli.{module_name}")
    handler = getattr(module, function)
    if args.handler.startswith("config_"):
        code: int = handler(args, out)
        return code
    settings = resolve_settings(args)
    if one_shot(args):
        from fetchml.client import HttpClient, run_blocking

        code = run_blocking(handler(HttpClient(settings), args, out))
        return code
    import trio

    code = trio.run(_connected, handler, args, out, settings)
    return code


def one_shot(args: argparse.Namespace) -> bool:
    """Whether the command runs over plain HTTP (see ``_ONE_SHOT``)."""
    if args.handler not in _ONE_SHOT:
        return False
    streams = _ONE_SHOT[args.handler]
    return streams is None or not getattr(args, streams)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The settings from the flags, environment and config file; remembered on ``args``."""
    from fetchml.client import load_settings

    key = read_key_file(args.key_file) if args.key_file else None
    settings = load_settings(url=args.url, key=key, ca_file=args.ca_file, config_path=args.config)
    args.settings = settings
    return settings


def read_key_file(path: str) -> str:
    """The API key in ``path`` (``-``: stdin): its first line, stripped."""
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--key-file {path}: cannot read: {exc}") from None
    key = text.strip()
    if not key:
        raise UsageError(f"--key-file {path}: no key in it")
    return key


async def _connected(
    handler: Handler, args: argparse.Namespace, out: Output, settings: Settings
) -> int:
    from fetchml.client import connect

    async with connect(
        settings.url,
        settings.key,
        ca_file=settings.ca_file,
        config_path=str(settings.config_path),
    ) as c:
        return await handler(c, args, out)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _fail(exc: BaseException, args: argparse.Namespace) -> int:
    leaf = _leaf(exc)
    if isinstance(leaf, SystemExit):
        return leaf.code if isinstance(leaf.code, int) else EXIT_ERROR
    if isinstance(leaf, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(leaf, BrokenPipeError):
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if args.debug:
        import traceback

        traceback.print_exception(exc)
    if isinstance(leaf, FetchMLError):
        print(f"ml: error: {_explain(leaf, args)}", file=sys.stderr)
        return exit_code_for(leaf)
    print(
        f"ml: internal error: {type(leaf).__name__}: {leaf} (--debug shows the traceback)",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _explain(exc: FetchMLError, args: argparse.Namespace) -> str:
    """The error message, with where the key came from when the server refused it (or, for a
    rate limit, how long to wait)."""
    if isinstance(exc, RateLimitedError):
        return f"rate limited: retry in {max(1, math.ceil(exc.retry_after_s))} s ({exc.message})"
    settings: Any = getattr(args, "settings", None)
    if isinstance(exc, AuthError) and settings is not None and settings.key is not None:
        source = {
            "flag": f"--key-file {args.key_file}",
            "env": "FETCHML_API_KEY",
            "config": str(settings.config_path),
        }.get(settings.key_source, settings.key_source)
        return f"{exc.message} (the key from {source}; server {settings.url})"
    return exc.message


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
