"""The durable job store (SQLite, WAL, group commit, versioned schema)."""

from ._sqlite import connect, migrate, transaction
from ._store import DB_NAME, Batch, Store, Unreadable, now, unreadable_job

__all__ = [
    "DB_NAME",
    "Batch",
    "Store",
    "Unreadable",
    "connect",
    "migrate",
    "now",
    "transaction",
    "unreadable_job",
]
