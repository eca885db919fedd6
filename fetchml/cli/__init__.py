"""Command-line entry points: ``fetchml`` (server and admin tools) and ``ml`` (the client).

Both import their implementation on call, so neither command pays for the other's imports (the
server side pulls in trio, bcrypt and the actors; ``ml --help`` needs none of that).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main", "ml_main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fetchml`` command; returns the exit status."""
    from ._server import main as run_fetchml

    return run_fetchml(argv)


def ml_main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ml`` command; returns the exit status."""
    from ._ml import main as run_ml

    return run_ml(argv)
