"""The job store: one SQLite file in WAL mode, written by the scheduler alone, in group commits.

The scheduler collects every state change of one pass over its inbox into a :class:`Batch` and
commits it in a single transaction (group commit), so many submits share one fsync.  Job ids and
event ``seq`` numbers are assigned here, from counters loaded at open; the scheduler is the only
writer, so they need no locking.

SQLite calls block, so they run in worker threads (``trio.to_thread``), one at a time per
connection: a writer connection for commits and a reader connection for queries.  WAL lets the
reader see the last committed state while a commit is in flight.
"""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from .._models import Job, JobEvent, JobState
from ..errors import StoreError
from ._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Batch", "Store"]

T = TypeVar("T")

_job_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(Job)
# One commit or one query at a time per connection: sqlite3 connections are not concurrent.
_CONNECTION_THREADS = 1
DB_NAME = "fetchml.db"


@dataclass
class Batch:
    """The state changes of one scheduler pass: the latest version of each job and its events."""

    jobs: dict[int, Job] = field(default_factory=dict)
    events: list[JobEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.events)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {version} is newer than this Fetch ML understands "
            f"({SCHEMA_VERSION}); upgrade Fetch ML"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class Store:
    """The SQLite job store.  Open it with :meth:`open`; close it with :meth:`aclose`."""

    def __init__(self, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._write_limiter = trio.CapacityLimiter(_CONNECTION_THREADS)
        self._read_limiter = trio.CapacityLimiter(_CONNECTION_THREADS)
        self.next_job_id = 1 + (writer.execute("SELECT max(id) FROM jobs").fetchone()[0] or 0)
        self.next_seq = 1 + (writer.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
        self._committed_seq = self.next_seq - 1
        self.closed = False

    @classmethod
    async def open(cls, data_dir: Path, *, synchronous: str = "full") -> Store:
        """Open (creating and migrating as needed) ``data_dir/fetchml.db``.

        Waits on a worker thread.  Raises :class:`StoreError` if the file cannot be opened or
        migrated.
        """

        def _open() -> Store:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / DB_NAME
            writer = _connect(path, synchronous)
            try:
                _migrate(writer)
                return cls(writer, _connect(path, synchronous))
            except BaseException:
                writer.close()
                raise

        try:
            return await trio.to_thread.run_sync(_open)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job store in {data_dir}: {exc}") from None

    async def aclose(self) -> None:
        """Close both connections, after any commit or query in flight.  Safe to call twice."""
        self.closed = True
        async with self._write_limiter, self._read_limiter:
            self._writer.close()
            self._reader.close()

    @property
    def last_seq(self) -> int:
        """The newest committed seq: every event up to it can be read from the store.

        Seqs handed out for a commit still in flight are not counted, so "from now on" (a
        subscription's default start) never skips an event that is not yet readable.
        """
        return self._committed_seq

    def allocate_job_id(self) -> int:
        job_id = self.next_job_id
        self.next_job_id += 1
        return job_id

    def allocate_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    async def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one durable transaction.  Waits on the writer thread.

        Raises :class:`StoreError` if the transaction fails; nothing of the batch is then stored.
        """
        jobs = [
            (job.id, job.user, job.state.value, job.seq, _job_encoder.encode(job))
            for job in batch.jobs.values()
        ]
        events = [
            (ev.seq, ev.job.id, ev.job.user, ev.ts, _job_encoder.encode(ev.job))
            for ev in batch.events
        ]

        def _commit() -> None:
            conn = self._writer
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    "INSERT INTO jobs(id, user, state, seq, data) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET state=excluded.state, seq=excluded.seq, "
                    "data=excluded.data",
                    jobs,
                )
                conn.executemany(
                    "INSERT INTO events(seq, job_id, user, ts, data) VALUES (?, ?, ?, ?, ?)",
                    events,
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._in_thread(self._write_limiter, _commit)
        if batch.events:
            self._committed_seq = max(self._committed_seq, batch.events[-1].seq)

    @staticmethod
    async def _in_thread(limiter: trio.CapacityLimiter, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a worker thread of ``limiter``; translate sqlite3 errors to StoreError."""
        try:
            return await trio.to_thread.run_sync(fn, limiter=limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"job store error: {exc}") from None

    async def _query(self, sql: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        def _fetch() -> list[tuple[object, ...]]:
            return self._reader.execute(sql, params).fetchall()

        return await self._in_thread(self._read_limiter, _fetch)

    async def get(self, job_id: int) -> Job | None:
        """The job with ``job_id``, or None.  Waits on the reader thread."""
        rows = await self._query("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return _job_decoder.decode(rows[0][0]) if rows else None  # type: ignore[arg-type]

    async def list_jobs(
        self,
        *,
        user: str | None = None,
        states: Iterable[JobState] | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs newest first, filtered by owner and state, ``limit`` at most."""
        where: list[str] = []
        params: list[object] = []
        if user is not None:
            where.append("user = ?")
            params.append(user)
        if states is not None:
            wanted = [JobState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT data FROM jobs {clause} ORDER BY id DESC LIMIT ?"
        rows = await self._query(sql, [*params, limit])
        return [_job_decoder.decode(row[0]) for row in rows]  # type: ignore[arg-type]

    async def events_after(
        self,
        since: int,
        *,
        job_id: int | None = None,
        user: str | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> list[JobEvent]:
        """Stored events with ``since < seq <= until``, oldest first, ``limit`` at most."""
        where = ["seq > ?"]
        params: list[object] = [since]
        if until is not None:
            where.append("seq <= ?")
            params.append(until)
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        if user is not None:
            where.append("user = ?")
            params.append(user)
        sql = f"SELECT seq, ts, data FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        rows = await self._query(sql, [*params, limit])
        return [
            JobEvent(seq=seq, ts=ts, job=_job_decoder.decode(data))  # type: ignore[arg-type]
            for seq, ts, data in rows
        ]

    async def load_active(self) -> list[Job]:
        """Every queued or running job, in id (submission) order.  Used once, at start."""

        def _load() -> list[Job]:
            rows = self._reader.execute(
                "SELECT data FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
            )
            decode = _job_decoder.decode
            # Decoding creates several container objects per job, none of them in a cycle; left
            # on, the cyclic GC rescans the growing list again and again (100,000 jobs: 0.8 s of
            # decoding becomes 0.1 s; one full pass is still paid later, when it resumes).
            collecting = gc.isenabled()
            gc.disable()
            try:
                return [decode(row[0]) for row in rows]
            finally:
                if collecting:
                    gc.enable()

        return await self._in_thread(self._read_limiter, _load)

    async def states_of(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        """The state of each listed job that exists."""
        ids = list(job_ids)
        found: dict[int, JobState] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._query(
                f"SELECT id, state FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((int(i), JobState(str(s))) for i, s in rows)  # type: ignore[call-overload]
        return found


def now() -> float:
    """Wall-clock time for job and event timestamps."""
    return time.time()
