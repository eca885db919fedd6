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
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from .._faults import report_internal_error
from .._models import Job, JobEvent, JobMatch, JobSpec, JobState
from ..errors import StoreError
from ._schema import MIGRATIONS
from ._sqlite import connect, migrate

__all__ = ["Batch", "Store", "Unreadable", "unreadable_job"]

log = logging.getLogger("fetchml.store")

T = TypeVar("T")

_job_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(Job)
# Rows decoded at a time while a listing filters on what is inside the records.
_SCAN_PAGE = 2000
# One commit or one query at a time per connection: sqlite3 connections are not concurrent.
_CONNECTION_THREADS = 1
DB_NAME = "fetchml.db"


_JobRow = tuple[int, str, str, int, bytes]
_EventRow = tuple[int, int, str, float, bytes]


@dataclass
class Batch:
    """The state changes of one scheduler pass: its events, and the latest version of each job.

    Each event is encoded once, as it is added (its job's row and its event row hold the same
    bytes), so a value that cannot be stored fails in :meth:`add`, while the one message that
    made it is handled, not in the commit of the whole pass.
    """

    events: list[JobEvent] = field(default_factory=list)
    # Active jobs whose stored record could not be read, by id: why.  The commit copies the
    # record into the quarantine table before the job's new version replaces it.
    set_aside: dict[int, str] = field(default_factory=dict)
    _jobs: dict[int, _JobRow] = field(default_factory=dict)
    _events: list[_EventRow] = field(default_factory=list)

    def add(self, event: JobEvent) -> None:
        """Record ``event`` and its job's new version.  Raises what encoding raises (a string
        that is not valid Unicode); nothing is recorded then."""
        job = event.job
        data = _job_encoder.encode(job)
        self._jobs[job.id] = (job.id, job.user, job.state.value, job.seq, data)
        self._events.append((event.seq, job.id, job.user, event.ts, data))
        self.events.append(event)

    def __bool__(self) -> bool:
        return bool(self._jobs or self.set_aside)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored job record that could not be decoded: its id, its owner, and why."""

    job_id: int
    user: str
    error: str


def unreadable_job(job_id: int, user: str, error: str, *, seq: int = 0) -> Job:
    """The stand-in for a job whose stored record cannot be read: ``lost``, saying why."""
    return Job(
        id=job_id,
        user=user,
        spec=JobSpec(command=["<unreadable>"]),
        state=JobState.LOST,
        seq=seq,
        created_at=0.0,
        reason=f"its stored record could not be read ({error}); it was set aside",
    )


def _decode(data: object, job_id: object) -> Job | str:
    """The job stored as ``data`` under ``job_id``, or why it cannot be read."""
    if not isinstance(data, bytes):
        return f"not a record: {type(data).__name__}"
    try:
        job = _job_decoder.decode(data)
    except msgspec.DecodeError as exc:
        return str(exc)
    if job.id != job_id:
        return f"the record of job {job.id} is stored as job {job_id}"
    return job


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
        self._reported: set[int] = set()  # unreadable jobs already logged by this process

    @classmethod
    async def open(cls, data_dir: Path, *, synchronous: str = "full") -> Store:
        """Open (creating and migrating as needed) ``data_dir/fetchml.db``.

        Waits on a worker thread.  Raises :class:`StoreError` if the file cannot be opened or
        migrated.
        """

        def _open() -> Store:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / DB_NAME
            writer = connect(path, synchronous)
            try:
                migrate(writer, MIGRATIONS, what="store")
                return cls(writer, connect(path, synchronous))
            except BaseException:
                writer.close()
                raise

        try:
            return await trio.to_thread.run_sync(_open)
        except (sqlite3.Error, OSError) as exc:
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
        jobs = list(batch._jobs.values())
        events = batch._events
        aside = [(error, now(), job_id) for job_id, error in batch.set_aside.items()]

        def _commit() -> None:
            conn = self._writer
            conn.execute("BEGIN")
            try:
                if aside:  # rare; each statement costs the thread a GIL hand-over
                    conn.executemany(
                        "INSERT INTO quarantine(job_id, seq, data, error, ts) "
                        "SELECT id, seq, data, ?, ? FROM jobs WHERE id = ?",
                        aside,
                    )
                conn.executemany(
                    "INSERT INTO jobs(id, user, state, seq, data) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET user=excluded.user, state=excluded.state, "
                    "seq=excluded.seq, data=excluded.data",
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

    def _job_of(self, job_id: object, user: object, data: object) -> Job:
        """The job of one stored row, or, for a record that cannot be read, its lost stand-in
        (reported once per job as an internal error of the store)."""
        job = _decode(data, job_id)
        if isinstance(job, Job):
            return job
        number = int(job_id)  # type: ignore[call-overload]
        if number not in self._reported:
            self._reported.add(number)
            report_internal_error(
                "store", StoreError(f"unreadable record: {job}"), f"job {number}", logger=log
            )
        return unreadable_job(number, str(user), job)

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
        rows = await self._query("SELECT id, user, data FROM jobs WHERE id = ?", (job_id,))
        return self._job_of(*rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        user: str | None = None,
        states: Iterable[JobState] | None = None,
        before_id: int | None = None,
        limit: int = 100,
        match: JobMatch | None = None,
    ) -> list[Job]:
        """Jobs newest first, filtered by owner and state (in SQL) and by ``match`` (on the
        decoded jobs, scanning newest first until ``limit`` match), ``limit`` at most."""
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
        if match is not None:
            return await self._scan_jobs(
                f"SELECT id, user, data FROM jobs {clause}", params, match, limit
            )
        sql = f"SELECT id, user, data FROM jobs {clause} ORDER BY id DESC LIMIT ?"
        rows = await self._query(sql, [*params, limit])
        return [self._job_of(*row) for row in rows]

    async def _scan_jobs(
        self, select: str, params: list[object], match: JobMatch, limit: int
    ) -> list[Job]:
        """The first ``limit`` jobs of ``select`` (newest first) that ``match`` keeps.

        Experiment, tags and name live inside the encoded record, so rows are read in pages and
        decoded on the reader thread until enough match (100,000 jobs: well under a second).
        """

        def _scan() -> list[Job]:
            found: list[Job] = []
            cursor = self._reader.execute(f"{select} ORDER BY id DESC", params)
            while len(found) < limit and (rows := cursor.fetchmany(_SCAN_PAGE)):
                found.extend(job for job in (self._job_of(*row) for row in rows) if match(job))
            cursor.close()
            return found[:limit]

        return await self._in_thread(self._read_limiter, _scan)

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
        sql = (
            f"SELECT seq, ts, job_id, user, data FROM events WHERE {' AND '.join(where)} "
            "ORDER BY seq LIMIT ?"
        )
        rows = await self._query(sql, [*params, limit])
        return [
            JobEvent(seq=seq, ts=ts, job=self._job_of(job_id, user, data))  # type: ignore[arg-type]
            for seq, ts, job_id, user, data in rows
        ]

    async def load_active(self) -> list[Job]:
        """Every queued or running job whose record can be read, in id (submission) order."""
        jobs, _ = await self.load_active_records()
        return jobs

    async def load_active_records(self) -> tuple[list[Job], list[Unreadable]]:
        """Every queued or running job, in id (submission) order, and the active rows whose
        record cannot be read (for the scheduler to set aside).  Used once, at start."""

        def _load() -> tuple[list[Job], list[Unreadable]]:
            rows = self._reader.execute(
                "SELECT id, user, data FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
            )
            jobs: list[Job] = []
            unreadable: list[Unreadable] = []
            # Decoding creates several container objects per job, none of them in a cycle; left
            # on, the cyclic GC rescans the growing list again and again (100,000 jobs: 0.8 s of
            # decoding becomes 0.1 s; one full pass is still paid later, when it resumes).
            collecting = gc.isenabled()
            gc.disable()
            try:
                for job_id, user, data in rows:
                    job = _decode(data, job_id)
                    if isinstance(job, str):
                        unreadable.append(Unreadable(int(job_id), str(user), job))
                    elif job.terminal:
                        log.warning("job %d: its record says %s, not active", job.id, job.state)
                    else:
                        jobs.append(job)
            finally:
                if collecting:
                    gc.enable()
            return jobs, unreadable

        return await self._in_thread(self._read_limiter, _load)

    async def states_of(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        """The state of each listed job that exists."""
        return {job_id: state for job_id, (state, _) in (await self.facts_of(job_ids)).items()}

    async def facts_of(self, job_ids: Iterable[int]) -> dict[int, tuple[JobState, str]]:
        """(state, owner) of each listed job that exists.  Waits on the reader thread."""
        ids = list(job_ids)
        found: dict[int, tuple[JobState, str]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._query(
                f"SELECT id, state, user FROM jobs WHERE id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for job_id, state, user in rows:
                found[int(job_id)] = (_state(state), str(user))  # type: ignore[call-overload]
        return found


def _state(value: object) -> JobState:
    """A stored state; one this version does not know counts as ``lost`` (it is terminal, and
    not a success: what depends on it is cancelled)."""
    try:
        return JobState(str(value))
    except ValueError:
        return JobState.LOST


def now() -> float:
    """Wall-clock time for job and event timestamps."""
    return time.time()
