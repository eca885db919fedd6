"""Command-line entry points: ``fetchml`` (server and admin tools)."""

from ._server import main

__all__ = ["main"]
