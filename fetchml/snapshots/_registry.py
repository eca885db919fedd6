"""The snapshot registry: which snapshots exist, who made each, and which blobs each needs.

One SQLite file, ``<data_dir>/snapshots.db``, next to the job store and apart from it (the
gateway registers snapshots while the scheduler commits jobs; neither waits on the other's
writes).  A snapshot is stored once whatever number of users make it; each maker is an owner,
and only owners (and who may read every job) may run it.  A user's usage is the bytes of the
distinct blobs their snapshots need: ``snapshots.max_user_bytes`` bounds it.

Every method blocks on SQLite: call it from a worker thread (:class:`Snapshots` does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..store import connect, migrate, transaction
from ._manifest import Manifest, SnapshotInfo, manifest_bytes, snapshot_id

__all__ = ["DB_NAME", "Registry"]

DB_NAME = "snapshots.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: snapshots, their owners, the blobs each needs.
    """
    CREATE TABLE snapshots (
        id        TEXT    PRIMARY KEY,
        files     INTEGER NOT NULL,
        bytes     INTEGER NOT NULL,
        created   REAL    NOT NULL,
        manifest  BLOB    NOT NULL
    );
    CREATE TABLE owners (
        snapshot_id TEXT NOT NULL,
        user        TEXT NOT NULL,
        created     REAL NOT NULL,
        PRIMARY KEY (snapshot_id, user)
    );
    CREATE INDEX owners_user ON owners(user);
    CREATE TABLE needs (
        snapshot_id TEXT    NOT NULL,
        sha256      TEXT    NOT NULL,
        size        INTEGER NOT NULL,
        PRIMARY KEY (snapshot_id, sha256)
    );
    CREATE INDEX needs_blob ON needs(sha256);
    """,
)

_decoder = msgspec.json.Decoder(Manifest)


class Registry:
    """The registry in ``data_dir``.  One connection, used by one thread at a time."""

    def __init__(self, data_dir: Path, *, synchronous: str = "full") -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._conn = connect(data_dir / DB_NAME, synchronous)
        self._lock = threading.Lock()
        migrate(self._conn, MIGRATIONS, what="snapshot registry")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def register(self, manifest: Manifest, user: str) -> SnapshotInfo:
        """Record ``manifest`` (canonical, checked) as made by ``user``; returns its info."""
        sid = snapshot_id(manifest)
        sizes = manifest.sizes()
        now = time.time()
        with self._lock, transaction(self._conn) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO snapshots(id, files, bytes, created, manifest) "
                "VALUES (?, ?, ?, ?, ?)",
                (sid, len(manifest.files), manifest.bytes, now, manifest_bytes(manifest)),
            )
            conn.execute(
                "INSERT OR IGNORE INTO owners(snapshot_id, user, created) VALUES (?, ?, ?)",
                (sid, user, now),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO needs(snapshot_id, sha256, size) VALUES (?, ?, ?)",
                [(sid, sha, size) for sha, size in sizes.items()],
            )
        return SnapshotInfo(id=sid, files=len(manifest.files), bytes=manifest.bytes)

    def manifest(self, sid: str) -> Manifest | None:
        rows = self._rows("SELECT manifest FROM snapshots WHERE id = ?", (sid,))
        return _decoder.decode(rows[0][0]) if rows else None  # type: ignore[arg-type]

    def info(self, sid: str) -> SnapshotInfo | None:
        rows = self._rows("SELECT files, bytes FROM snapshots WHERE id = ?", (sid,))
        if not rows:
            return None
        files, size = rows[0]
        return SnapshotInfo(id=sid, files=int(files), bytes=int(size))  # type: ignore[call-overload]

    def owns(self, sid: str, user: str) -> bool:
        return bool(
            self._rows("SELECT 1 FROM owners WHERE snapshot_id = ? AND user = ?", (sid, user))
        )

    def usage(self, user: str, extra: Manifest | None = None) -> int:
        """Bytes of the distinct blobs ``user``'s snapshots need, with ``extra``'s blobs counted
        in (what the user would use once it is registered)."""
        rows = self._rows(
            "SELECT DISTINCT n.sha256, n.size FROM needs n JOIN owners o "
            "ON o.snapshot_id = n.snapshot_id WHERE o.user = ?",
            (user,),
        )
        sizes = {str(sha): int(size) for sha, size in rows}  # type: ignore[call-overload]
        if extra is not None:
            sizes.update(extra.sizes())
        return sum(sizes.values())

    def needed_blobs(self, without: Iterable[str] = ()) -> set[str]:
        """Every blob some snapshot needs (but those in ``without``, about to be forgotten)."""
        gone = set(without)
        rows = self._rows("SELECT snapshot_id, sha256 FROM needs")
        return {str(sha) for sid, sha in rows if sid not in gone}

    def forget(self, keep: set[str], created_before: float, *, dry_run: bool = False) -> list[str]:
        """Remove the snapshots made before ``created_before`` that are not in ``keep``;
        returns their ids (with ``dry_run``, only returns them)."""
        rows = self._rows("SELECT id FROM snapshots WHERE created < ?", (created_before,))
        gone = [str(sid) for (sid,) in rows if sid not in keep]
        if dry_run or not gone:
            return gone
        with self._lock, transaction(self._conn) as conn:
            for table, column in (
                ("needs", "snapshot_id"),
                ("owners", "snapshot_id"),
                ("snapshots", "id"),
            ):
                conn.executemany(
                    f"DELETE FROM {table} WHERE {column} = ?", [(sid,) for sid in gone]
                )
        return gone
