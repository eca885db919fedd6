"""The durable job store (SQLite, WAL, group commit, versioned schema)."""

from ._store import DB_NAME, Batch, Store, now

__all__ = ["DB_NAME", "Batch", "Store", "now"]
