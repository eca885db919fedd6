"""The tracking store: ``<data_dir>/tracking.db``, apart from the job store (ingest never waits
on the scheduler's commits, nor they on it).

Per run (a job): who, which experiment, how much of its track file is ingested (``offset``,
committed with the points it held, so a restart neither loses nor repeats a point), its
params, tags, summary, narrative and outcome.  Per metric: a summary (count, last, min, max)
kept up to date at ingest, so listing or sorting many runs never reads a point; the points in
chunks (``_series``).

Every method blocks on SQLite: call it from a worker thread.  One connection, one thread at a
time (a lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..protocol import Buckets, MetricSummary, RawPage, RunInfo, RunRow
from ..store import connect, migrate, transaction
from ._cursor import RunsCursor, cursor_after
from ._lines import Batch, Columns, Point
from ._series import CHUNK_POINTS, Chunk, Stored, downsample

__all__ = ["DB_NAME", "TrackingStore"]

DB_NAME = "tracking.db"
MMAP_BYTES = 256 << 20

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        job_id     INTEGER PRIMARY KEY,
        user       TEXT    NOT NULL,
        experiment TEXT,
        name       TEXT,
        created    REAL    NOT NULL,
        track_file TEXT,
        offset     INTEGER NOT NULL DEFAULT 0,
        next_step  INTEGER NOT NULL DEFAULT 0,
        points     INTEGER NOT NULL DEFAULT 0,
        invalid    INTEGER NOT NULL DEFAULT 0,
        dropped    INTEGER NOT NULL DEFAULT 0,
        params     TEXT    NOT NULL DEFAULT '{}',
        tags       TEXT    NOT NULL DEFAULT '{}',
        summary    TEXT    NOT NULL DEFAULT '{}',
        narrative  TEXT    NOT NULL DEFAULT '{}',
        outcome    TEXT,
        ended      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX runs_experiment ON runs(experiment, job_id);
    CREATE TABLE metrics (
        id         INTEGER PRIMARY KEY,
        job_id     INTEGER NOT NULL,
        name       TEXT    NOT NULL,
        count      INTEGER NOT NULL,
        last       REAL    NOT NULL,
        last_step  INTEGER NOT NULL,
        min        REAL    NOT NULL,
        max        REAL    NOT NULL,
        first_time REAL    NOT NULL,
        last_time  REAL    NOT NULL,
        UNIQUE (job_id, name)
    );
    CREATE TABLE chunks (
        id         INTEGER PRIMARY KEY,
        metric_id  INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        first_step INTEGER NOT NULL,
        last_step  INTEGER NOT NULL,
        count      INTEGER NOT NULL,
        min        REAL    NOT NULL,
        max        REAL    NOT NULL,
        last       REAL    NOT NULL,
        steps      BLOB    NOT NULL,
        "values"   BLOB    NOT NULL,
        times      BLOB    NOT NULL,
        UNIQUE (metric_id, seq)
    );
    CREATE INDEX chunks_range ON chunks(metric_id, first_step);
    """,
    # 2: the min and max of each block of BLOCK_POINTS points of a chunk (NULL in chunks
    # written before: a downsampled read scans their values instead).
    """
    ALTER TABLE chunks ADD COLUMN blocks BLOB;
    """,
)


_SUMMARY = "name, count, last, last_step, min, max, first_time, last_time"


def _summary(row: tuple[Any, ...]) -> MetricSummary:
    name, count, last, last_step, low, high, first_time, last_time = row
    return MetricSummary(
        name=name,
        count=count,
        last=last,
        last_step=last_step,
        min=low,
        max=high,
        first_time=first_time,
        last_time=last_time,
    )


class _Metric:
    """A metric being ingested: its summary and its last chunk (while not full)."""

    __slots__ = ("chunk", "id", "seq", "summary")

    def __init__(self, metric_id: int, summary: list[Any], seq: int, chunk: Chunk) -> None:
        self.id, self.summary, self.seq, self.chunk = metric_id, summary, seq, chunk


class TrackingStore:
    """The tracking database in ``data_dir``."""

    def __init__(self, data_dir: Path, *, synchronous: str = "full") -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir, self.synchronous = data_dir, synchronous
        self._conn = connect(data_dir / DB_NAME, synchronous)
        # Downsampled reads go through megabytes of chunks: mapped, SQLite reads them without a
        # system call (and a copy) per page.
        self._conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        self._lock = threading.Lock()
        migrate(self._conn, MIGRATIONS, what="tracking store")
        self._open: dict[tuple[int, str], _Metric] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._conn) as conn:
            yield conn

    @contextmanager
    def _writing(self, job_id: int) -> Iterator[sqlite3.Connection]:
        """A transaction that writes points of ``job_id``: if it rolls back, what is cached of
        the run's metrics (open chunks, metric ids) may be ahead of the database, so it is
        dropped and read again on next use."""
        try:
            with self._transaction() as conn:
                yield conn
        except BaseException:
            self._open = {key: m for key, m in self._open.items() if key[0] != job_id}
            raise

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ---- runs ---------------------------------------------------------------------------------

    def register(
        self,
        job_id: int,
        user: str,
        *,
        experiment: str | None,
        name: str | None,
        narrative: dict[str, str | None],
        track_file: str | None,
        ended: bool = False,
    ) -> None:
        """Record a run (again, for a retry or an adopted run: it is open again, nothing else
        changes); ``ended`` records it closed at once (a run that logged nothing)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO runs(job_id, user, experiment, name, created, narrative, track_file, "
                "ended) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET ended = excluded.ended",
                (
                    job_id,
                    user,
                    experiment,
                    name,
                    time.time(),
                    json.dumps(narrative),
                    track_file,
                    int(ended),
                ),
            )

    def position(self, job_id: int) -> tuple[int, int, int] | None:
        """(offset into the track file, next default step, points stored), or None for a run
        never registered."""
        rows = self._rows("SELECT offset, next_step, points FROM runs WHERE job_id = ?", (job_id,))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def unfinished(self) -> list[tuple[int, str | None]]:
        """(job id, track file) of the runs not marked ended: their files may hold more than
        was ingested."""
        return [
            (row[0], row[1])
            for row in self._rows("SELECT job_id, track_file FROM runs WHERE ended = 0")
        ]

    def mark_ended(self, job_id: int) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET ended = 1 WHERE job_id = ?", (job_id,))
        self._open = {key: m for key, m in self._open.items() if key[0] != job_id}

    def set_outcome(self, job_id: int, outcome: str) -> bool:
        """Record the run's outcome; False if tracking has no such run."""
        with self._transaction() as conn:
            cursor = conn.execute("UPDATE runs SET outcome = ? WHERE job_id = ?", (outcome, job_id))
            return bool(cursor.rowcount > 0)

    # ---- ingest -------------------------------------------------------------------------------

    def ingest(
        self, job_id: int, batch: Batch, *, offset: int, next_step: int, max_points: int
    ) -> tuple[int, list[Point]]:
        """Store ``batch`` (read from the run's track file up to ``offset``) in one transaction,
        with the new offset.  Points past ``max_points`` for the run (its system samples
        included: they come from the file too) are counted as dropped.  Returns how many of
        the batch's points are stored (its first ones) and the system points stored, as
        ``(name, step, value, time)``, each at the next step of its metric.  Raises sqlite3
        errors (nothing is stored then)."""
        with self._writing(job_id) as conn:
            return self._ingest(conn, job_id, batch, offset, next_step, max_points)

    def _ingest(
        self, conn: Any, job_id: int, batch: Batch, offset: int, next_step: int, max_points: int
    ) -> tuple[int, list[Point]]:
        row = conn.execute(
            "SELECT points, params, tags, summary FROM runs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise LookupError(f"job {job_id} is not a registered run")
        stored, params, tags, summary = row
        room = max(0, max_points - stored)
        taken = min(int(room), batch.size)
        for name, (steps, values, times) in batch.columns(taken).items():
            self._append(conn, job_id, name, steps, values, times)
        system = self._append_system(conn, job_id, batch.system[: max(0, room - taken)])
        wanted = batch.size + len(batch.system)
        merged = [
            json.dumps({**json.loads(old), **new}) if new else old
            for old, new in ((params, batch.params), (tags, batch.tags), (summary, batch.summary))
        ]
        conn.execute(
            "UPDATE runs SET offset = ?, next_step = ?, points = points + ?, "
            "invalid = invalid + ?, dropped = dropped + ?, params = ?, tags = ?, summary = ? "
            "WHERE job_id = ?",
            (
                offset,
                next_step,
                taken + len(system),
                batch.invalid,
                wanted - taken - len(system),
                *merged,
                job_id,
            ),
        )
        return taken, system

    def _append_system(
        self, conn: Any, job_id: int, samples: list[tuple[str, float, float]]
    ) -> list[Point]:
        """Store system samples ``(name, value, time)``, each at the next step of its metric;
        the points stored."""
        columns: dict[str, Columns] = {}
        for name, value, when in samples:
            column = columns.get(name)
            if column is None:
                metric = self._metric(conn, job_id, name)
                step = metric.summary[2] + 1 if metric.summary[0] else 0
                column = columns[name] = ([], [], [])
            else:
                step = column[0][-1] + 1
            column[0].append(step)
            column[1].append(value)
            column[2].append(when)
        for name, (steps, values, times) in columns.items():
            self._append(conn, job_id, name, steps, values, times)
        return [(n, c[0][i], v, c[2][i]) for n, c in columns.items() for i, v in enumerate(c[1])]

    def add_points(self, job_id: int, points: dict[str, float], when: float) -> list[Point]:
        """Store one point of each metric of ``points`` at the next step of each (system
        metrics, sampled by the server); not counted against the run's cap.  Returns the points
        stored, as ``(name, step, value, time)``."""
        stored: list[Point] = []
        with self._writing(job_id) as conn:
            for name, value in points.items():
                metric = self._metric(conn, job_id, name)
                step = metric.summary[2] + 1 if metric.summary[0] else 0
                self._append(conn, job_id, name, [step], [value], [when])
                stored.append((name, step, value, when))
        return stored

    def _metric(self, conn: Any, job_id: int, name: str) -> _Metric:
        """The metric being ingested, created or loaded (with its last chunk, if not full)."""
        key = (job_id, name)
        metric = self._open.get(key)
        if metric is not None:
            return metric
        row = conn.execute(
            "SELECT id, count, last, last_step, min, max, first_time, last_time FROM metrics "
            "WHERE job_id = ? AND name = ?",
            key,
        ).fetchone()
        if row is None:
            cursor = conn.execute(
                "INSERT INTO metrics(job_id, name, count, last, last_step, min, max, first_time, "
                "last_time) VALUES (?, ?, 0, 0, 0, 0, 0, 0, 0)",
                key,
            )
            metric = _Metric(cursor.lastrowid, [0, 0.0, 0, 0.0, 0.0, 0.0, 0.0], 0, Chunk.empty())
        else:
            tail = conn.execute(
                'SELECT seq, count, steps, "values", times FROM chunks WHERE metric_id = ? '
                "ORDER BY seq DESC LIMIT 1",
                (row[0],),
            ).fetchone()
            seq, chunk = 0, Chunk.empty()
            if tail is not None:
                seq = tail[0] if tail[1] < CHUNK_POINTS else tail[0] + 1
                if tail[1] < CHUNK_POINTS:
                    chunk = Chunk.decode(tail[2], tail[3], tail[4])
            metric = _Metric(row[0], list(row[1:]), seq, chunk)
        self._open[key] = metric
        return metric

    def _append(
        self,
        conn: Any,
        job_id: int,
        name: str,
        steps: list[int],
        values: list[float],
        times: list[float],
    ) -> None:
        """Add points of one metric (as columns, in the order logged) to its summary and its
        chunks."""
        if not steps:
            return
        metric = self._metric(conn, job_id, name)
        summary = metric.summary  # count, last, last_step, min, max, first_time, last_time
        if summary[0] == 0:
            summary[:] = [0, values[0], steps[0], values[0], values[0], times[0], times[0]]
        # The last value is the one logged last at the highest step (as if taken one by one).
        top = max(steps)
        if top >= summary[2]:
            at = len(steps) - 1 if steps[-1] == top else len(steps) - 1 - steps[::-1].index(top)
            summary[1], summary[2] = values[at], top
        summary[0] += len(steps)
        summary[6] = times[-1]
        # Min and max from the chunks written: they hold these points (and maybe earlier ones,
        # already counted in the summary), and their blocks are computed anyway.
        low, high = summary[3], summary[4]
        start = 0
        while start < len(steps):
            room = CHUNK_POINTS - len(metric.chunk)
            if start == 0 and room >= len(steps):
                metric.chunk.extend_columns(steps, values, times)
            else:
                end = start + room
                metric.chunk.extend_columns(steps[start:end], values[start:end], times[start:end])
            start += room
            chunk_low, chunk_high = self._write_chunk(conn, metric)
            low, high = min(low, chunk_low), max(high, chunk_high)
            if len(metric.chunk) >= CHUNK_POINTS:
                metric.seq += 1
                metric.chunk = Chunk.empty()
        summary[3], summary[4] = low, high
        conn.execute(
            "UPDATE metrics SET count = ?, last = ?, last_step = ?, min = ?, max = ?, "
            "first_time = ?, last_time = ? WHERE id = ?",
            (*summary, metric.id),
        )

    @staticmethod
    def _write_chunk(conn: Any, metric: _Metric) -> tuple[float, float]:
        """Store the metric's current chunk; its min and max."""
        row = metric.chunk.row()
        conn.execute(
            "INSERT INTO chunks(metric_id, seq, first_step, last_step, count, min, max, last, "
            'steps, "values", times, blocks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) '
            "ON CONFLICT(metric_id, seq) DO UPDATE SET first_step = excluded.first_step, "
            "last_step = excluded.last_step, count = excluded.count, min = excluded.min, "
            'max = excluded.max, last = excluded.last, steps = excluded.steps, "values" = '
            'excluded."values", times = excluded.times, blocks = excluded.blocks',
            (metric.id, metric.seq, *row),
        )
        return row[3], row[4]

    # ---- queries ------------------------------------------------------------------------------

    def run(self, job_id: int) -> RunInfo | None:
        """Everything tracking holds of one run but its points, or None."""
        rows = self._rows(
            "SELECT user, experiment, name, params, tags, summary, narrative, outcome, points, "
            "invalid, dropped FROM runs WHERE job_id = ?",
            (job_id,),
        )
        if not rows:
            return None
        user, experiment, name, params, tags, summary, narrative, outcome, *counts = rows[0]
        metrics = self._rows(
            f"SELECT {_SUMMARY} FROM metrics WHERE job_id = ? AND count > 0 ORDER BY name",
            (job_id,),
        )
        return RunInfo(
            job_id=job_id,
            user=user,
            experiment=experiment,
            name=name,
            params=json.loads(params),
            tags=json.loads(tags),
            summary=json.loads(summary),
            narrative=json.loads(narrative),
            outcome=outcome,
            points=counts[0],
            invalid=counts[1],
            dropped=counts[2],
            metrics=[_summary(row) for row in metrics],
        )

    def _metric_row(self, job_id: int, name: str) -> tuple[int, int] | None:
        rows = self._rows(
            "SELECT id, count FROM metrics WHERE job_id = ? AND name = ?", (job_id, name)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def series(
        self, job_id: int, name: str, *, buckets: int, start: int | None, end: int | None
    ) -> Buckets | None:
        """The metric downsampled to at most ``buckets`` buckets over ``start..end`` (the
        whole series by default), or None if the run has no such metric."""
        found = self._metric_row(job_id, name)
        if found is None:
            return None
        metric_id, count = found
        low, high = self._rows(
            "SELECT MIN(first_step), MAX(last_step) FROM chunks WHERE metric_id = ?", (metric_id,)
        )[0]
        low = low if start is None else start
        high = high if end is None else end
        if low is None or high is None or low > high:
            return downsample(name, [], count, 0, 0, buckets)
        # A chunk's steps are read only if they have gaps (else they are first..last).
        rows = self._rows(
            "SELECT first_step, last_step, count, min, max, last, CASE WHEN "
            'last_step - first_step + 1 = count THEN NULL ELSE steps END, "values", blocks '
            "FROM chunks WHERE metric_id = ? AND first_step <= ? AND last_step >= ? "
            "ORDER BY first_step",  # the index's order: no sort of the blobs
            (metric_id, high, low),
        )
        return downsample(name, (Stored(*row) for row in rows), count, low, high, buckets)

    def raw(self, job_id: int, name: str, *, after: int | None, limit: int) -> RawPage | None:
        """Up to ``limit`` points with a step above ``after``, in step order, or None."""
        found = self._metric_row(job_id, name)
        if found is None:
            return None
        floor = -1 if after is None else after
        rows = self._rows(
            'SELECT steps, "values", times FROM chunks WHERE metric_id = ? AND last_step > ? '
            "ORDER BY first_step",
            (found[0], floor),
        )
        picked: list[tuple[int, float, float]] = []
        for steps, values, times in rows:
            chunk = Chunk.decode(steps, values, times)
            if len(picked) >= limit and chunk.steps[0] > picked[limit - 1][0]:
                break
            picked += [
                point
                for point in zip(chunk.steps, chunk.values, chunk.times, strict=True)
                if point[0] > floor
            ]
            picked.sort(key=lambda point: point[0])
        page = picked[:limit]
        more = len(picked) > limit
        return RawPage(
            name=name,
            step=[p[0] for p in page],
            value=[p[1] for p in page],
            time=[p[2] for p in page],
            next=page[-1][0] if more and page else None,
        )

    def experiments(self, user: str | None) -> list[tuple[str, int, float]]:
        """(name, runs, when the latest run started) of each experiment with a run of ``user``
        (None: anyone's)."""
        where, params = ("AND user = ?", (user,)) if user is not None else ("", ())
        return [
            (row[0], row[1], row[2])
            for row in self._rows(
                "SELECT experiment, COUNT(*), MAX(created) FROM runs WHERE experiment IS NOT NULL "
                f"{where} GROUP BY experiment ORDER BY MAX(created) DESC",
                params,
            )
        ]

    def experiment_runs(
        self,
        experiment: str,
        user: str | None,
        *,
        sort: str | None,
        descending: bool,
        limit: int,
        after: RunsCursor | None = None,
    ) -> tuple[list[RunRow], RunsCursor | None]:
        """A page of at most ``limit`` of an experiment's runs (of ``user``; None: anyone's),
        after the run ``after`` ends a previous page with: sorted by the last value of the
        metric ``sort`` (runs without it last), else newest first; ties newest first.  Returns
        the page and the cursor of the next one (None: this is the last)."""
        where = "r.experiment = ?" + (" AND r.user = ?" if user is not None else "")
        params: list[Any] = [experiment] + ([user] if user is not None else [])
        if sort is None:
            if after is not None:
                where += " AND r.job_id < ?"
                params.append(after.job_id)
            sql = f"SELECT r.job_id, 0, NULL FROM runs r WHERE {where} ORDER BY r.job_id DESC"
        else:
            direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
            if after is not None:
                where += _after_clause(after, beyond)
                params += _after_params(after)
            sql = (
                "SELECT r.job_id, m.last IS NULL, m.last FROM runs r LEFT JOIN metrics m ON "
                f"m.job_id = r.job_id AND m.name = ? WHERE {where} "
                f"ORDER BY (m.last IS NULL), m.last {direction}, r.job_id DESC"
            )
            params.insert(0, sort)
        keys = self._rows(f"{sql} LIMIT ?", (*params, limit + 1))
        page = keys[:limit]
        more = None
        if len(keys) > limit:
            job_id, missing, last = page[-1]
            more = cursor_after(sort, descending, bool(missing), last, job_id)
        return self._run_rows([row[0] for row in page]), more

    def _run_rows(self, ids: list[int]) -> list[RunRow]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        runs = {
            row[0]: row
            for row in self._rows(
                f"SELECT job_id, name, user, params, outcome FROM runs WHERE job_id IN ({marks})",
                tuple(ids),
            )
        }
        metrics: dict[int, dict[str, MetricSummary]] = {job_id: {} for job_id in ids}
        for row in self._rows(
            f"SELECT job_id, {_SUMMARY} FROM metrics WHERE job_id IN ({marks}) AND count > 0",
            tuple(ids),
        ):
            summary = _summary(row[1:])
            metrics[row[0]][summary.name] = summary
        return [
            RunRow(
                job_id=job_id,
                name=runs[job_id][1],
                user=runs[job_id][2],
                params=json.loads(runs[job_id][3]),
                metrics=metrics[job_id],
                outcome=runs[job_id][4],
            )
            for job_id in ids
        ]


def _after_clause(after: RunsCursor, beyond: str) -> str:
    """The condition of the runs that sort after ``after`` (``beyond``: ``<`` descending, ``>``
    ascending): runs with a value sort before runs without one, ties by job id, newest first."""
    if after.missing:
        return " AND m.last IS NULL AND r.job_id < ?"
    return f" AND (m.last IS NULL OR m.last {beyond} ? OR (m.last = ? AND r.job_id < ?))"


def _after_params(after: RunsCursor) -> list[Any]:
    if after.missing:
        return [after.job_id]
    return [after.last, after.last, after.job_id]
