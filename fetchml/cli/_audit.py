"""``fetchml audit verify FILE``: check the hash chain of an audit log."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command (``audit verify``) to a parser's subcommands."""
    audit = subparsers.add_parser("audit", help="check the tamper-evident audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="check an audit log's hash chain",
        description="Check the hash chain of an audit log: print OK with the number of entries, "
        "or name the first line that was edited, removed or reordered (exit status 1).",
    )
    verify.add_argument("file", metavar="FILE", help="the audit log (default <data_dir>/audit.log)")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from ..audit import verify_chain

    try:
        with open(args.file, "rb") as f:
            result = verify_chain(f)
    except OSError as exc:
        print(f"fetchml: error: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    if result.ok:
        print(f"OK: {result.count} entries, chain intact")
        return 0
    print(f"TAMPERED: {args.file}: line {result.bad_line}: {result.reason}")
    return 1
