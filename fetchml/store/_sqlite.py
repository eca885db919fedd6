"""SQLite connections the way Fetch ML opens them, and versioned schema migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError

__all__ = ["connect", "migrate", "transaction"]


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, with ``synchronous``
    (``full`` survives power loss, ``normal`` a process crash) and a busy timeout.  Usable from
    one thread at a time, any thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[str], *, what: str) -> None:
    """Bring the schema to ``len(migrations)``: migration N takes ``PRAGMA user_version`` from
    N-1 to N, each in its own transaction.  Raises :class:`StoreError` for a file newer than
    this version of Fetch ML (``what`` names it), sqlite3 errors for one that is not a
    database."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise StoreError(
            f"{what} schema version {version} is newer than this Fetch ML understands "
            f"({len(migrations)}); upgrade Fetch ML"
        )
    for number in range(version + 1, len(migrations) + 1):
        with transaction(conn):
            for statement in migrations[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``conn`` (autocommit mode, as :func:`connect` opens it): taken
    at once (``BEGIN IMMEDIATE``), committed when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
