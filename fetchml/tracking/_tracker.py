"""The tracker actor: reads each running job's track file as it grows into the tracking store,
and samples the jobs' process trees and GPUs.

The job appends lines to its file and never waits on the server (no back-pressure, no socket);
the tracker reads what is new every ``tracking.ingest_interval_s`` (every
:data:`LIVE_INTERVAL_S` for a job someone watches live, :class:`MetricFeed`) and commits the
points with the file offset they end at, in one transaction, so a server killed at any moment
resumes where the last commit ended: no point is lost or stored twice.  However fast one job
logs, a pass reads at most :data:`READ_LIMIT` bytes of its file, so other jobs wait on it at
most that long; and the scheduler never waits on the tracker at all (its own database, and the
reading and writing of points in a process of its own, ``_worker``, so that parsing never
holds the server's GIL).

Messages come from the executor (``RunStarted`` when a run starts or is adopted, ``RunEnded``
when it ends: answered once every line of the file is in, so a job's metrics are complete when
its end is reported).  A fault while ingesting one run is logged and counted
(``fetchml_internal_errors_total{where="tracker"}``); that run's points wait for the next pass
and the others go on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .._config import TrackingSettings
from .._faults import report_internal_error
from ._feed import MetricFeed, Point
from ._ingest import IngestWorker
from ._store import TrackingStore
from ._worker import READ_LIMIT

__all__ = ["READ_LIMIT", "TRACKER_INBOX_SIZE", "RunEnded", "RunStarted", "Sampler", "Tracker"]

log = logging.getLogger("fetchml.tracker")

# How often the file of a job someone watches live is read (when ingest_interval_s is longer):
# the points reach the watcher that much sooner, at the cost of a read of one file per pass.
LIVE_INTERVAL_S = 0.05
# Messages waiting for the tracker; the executor waits when it is full (briefly: handling one
# is bookkeeping).
TRACKER_INBOX_SIZE = 256


class Sampler(Protocol):
    """Samples running jobs' processes (``_system.SystemSampler``): job id -> (root pid, GPU
    indices) in, job id -> ``{"sys/...": value}`` out; blocking."""

    def sample(self, jobs: dict[int, tuple[int, list[int]]]) -> dict[int, dict[str, float]]: ...

    def forget(self, job_id: int) -> None: ...


@dataclass(frozen=True)
class RunStarted:
    """A run started or was adopted: its job, where it logs, its root pid and GPUs."""

    job_id: int
    user: str
    experiment: str | None
    name: str | None
    narrative: dict[str, str | None]
    track_file: str
    pid: int | None
    gpus: list[int]


@dataclass(frozen=True)
class RunEnded:
    """A run ended; ``done`` is set once its file is read to the end.  ``run`` says what its
    start said (for a run that ended while no tracker was watching it)."""

    job_id: int
    run: RunStarted | None = None
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Active:
    """A run being read.  It is written to the store only once its track file exists (or when
    it ends): a job that logs nothing costs one commit, not one per start and end."""

    run: RunStarted
    registered: bool = False


class Tracker:
    """Ingests track files into ``store``; runs until cancelled."""

    def __init__(
        self,
        store: TrackingStore,
        settings: TrackingSettings,
        inbox: trio.MemoryReceiveChannel[RunStarted | RunEnded],
        sampler: Sampler | None = None,
        feed: MetricFeed | None = None,
    ) -> None:
        self._store = store
        self._feed = feed
        self._settings = settings
        self._inbox = inbox
        self._sampler = sampler
        self._active: dict[int, _Active] = {}
        self._worker = IngestWorker(store.data_dir, store.synchronous)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up on the runs a previous server left open, then serve messages and read the
        files until cancelled.  Closes its inbox and ends every watch of the feed on the way
        out."""
        try:
            await self._serve(task_status)
        finally:
            await self._worker.aclose()
            if self._feed is not None:
                self._feed.close()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        with self._inbox:
            try:
                await self._worker.start()
            except Exception as exc:  # the first request tries again
                report_internal_error("tracker", exc, "starting the ingest worker")
            for job_id, track_file in await trio.to_thread.run_sync(self._store.unfinished):
                if track_file is not None:
                    await self._catch_up(job_id, track_file)
            task_status.started()
            interval = self._settings.ingest_interval_s
            live = min(interval, LIVE_INTERVAL_S)
            next_full = next_pass = trio.current_time() + interval
            next_sample = trio.current_time() + self._settings.system_interval_s
            while True:
                message: RunStarted | RunEnded | None = None
                with trio.move_on_at(next_pass):
                    try:
                        message = await self._inbox.receive()
                    except trio.EndOfChannel:
                        return
                if message is not None:
                    await self._handle(message)
                now = trio.current_time()
                if now < next_pass:
                    continue
                full = now >= next_full
                for job_id, active in list(self._active.items()):
                    if full or (self._feed is not None and self._feed.watching(job_id)):
                        await self._ingest(active, to_end=False)
                if trio.current_time() >= next_sample:
                    await self._sample()
                    next_sample = trio.current_time() + self._settings.system_interval_s
                if full:
                    next_full = trio.current_time() + interval
                # Woken sooner only while someone watches a running job: an idle server sleeps.
                watched = self._feed is not None and any(map(self._feed.watching, self._active))
                next_pass = min(next_full, trio.current_time() + live) if watched else next_full

    async def _handle(self, message: RunStarted | RunEnded) -> None:
        match message:
            case RunStarted(job_id=job_id):
                self._active[job_id] = _Active(message)
            case RunEnded(job_id=job_id, done=done):
                active = self._active.pop(job_id, None)
                if active is None and message.run is not None:
                    active = _Active(message.run)
                try:
                    if active is not None:
                        await self._ingest(active, to_end=True)
                    if self._sampler is not None:
                        self._sampler.forget(job_id)
                except Exception as exc:
                    report_internal_error("tracker", exc, f"job {job_id}: ending its run")
                finally:
                    done.set()
            case _:
                raise TypeError(f"tracker: unexpected message {message!r}")

    async def _catch_up(self, job_id: int, track_file: str) -> None:
        """Read a run a previous server left open to the end of its file (it stays open: its
        job may still be running, and is re-adopted)."""
        try:
            more = True
            while more:
                more, _ = await self._read(job_id, track_file, watched=False)
        except Exception as exc:
            report_internal_error("tracker", exc, f"job {job_id}: reading {track_file}")

    async def _ingest(self, active: _Active, *, to_end: bool) -> None:
        """Read what is new in the run's file (all of it, and mark the run ended, with
        ``to_end``; else one read) into the store, and hand what was committed to the job's
        watchers.  Registers the run first if it is not yet.  A run's last read that fails
        (its worker died under it) is tried once more, on a new worker, from what was
        committed: else the run's tail would wait for the next server.  Reports what fails."""
        job_id, track_file = active.run.job_id, active.run.track_file
        for last_try in (False, True) if to_end else (True,):
            try:
                await self._read_run(active, to_end=to_end)
                return
            except Exception as exc:
                if last_try:
                    report_internal_error("tracker", exc, f"job {job_id}: reading {track_file}")
                    return
                log.warning("job %d: its last read failed (%s); once more", job_id, exc)

    async def _read_run(self, active: _Active, *, to_end: bool) -> None:
        """:meth:`_ingest`'s one try.  Waits on the worker; raises what the store or the
        worker raises."""
        job_id, track_file = active.run.job_id, active.run.track_file
        if not active.registered and not await trio.to_thread.run_sync(
            self._register, active, to_end
        ):
            return
        more = True
        while more:
            watched = self._feed is not None and self._feed.watching(job_id)
            more, points = await self._read(job_id, track_file, watched=watched)
            self._publish(job_id, points)
            more = more and to_end
        if to_end:
            await self._worker.end(job_id)

    def _register(self, active: _Active, to_end: bool) -> bool:
        """Write the run to the store if its file exists or it ended (a run without a file is
        recorded ended at once); whether there is a file to read.  Blocks (a worker thread)."""
        run = active.run
        exists = os.path.exists(run.track_file)
        if not exists and not to_end:
            return False
        self._store.register(
            run.job_id,
            run.user,
            experiment=run.experiment,
            name=run.name,
            narrative=run.narrative,
            track_file=run.track_file,
            ended=to_end and not exists,
        )
        active.registered = True
        return exists

    def _publish(self, job_id: int, points: list[Point]) -> None:
        if self._feed is not None and points:
            self._feed.publish(job_id, points)

    async def _read(
        self, job_id: int, track_file: str, *, watched: bool
    ) -> tuple[bool, list[Point]]:
        """One read of at most READ_LIMIT bytes, committed by the worker: whether there may be
        more, and the points stored (only if ``watched``)."""
        return await self._worker.ingest(
            job_id, track_file, watched=watched, max_points=self._settings.max_points_per_run
        )

    async def _sample(self) -> None:
        """Record a system sample of every running job with a process here."""
        sampler = self._sampler
        jobs = {
            j: (a.run.pid, a.run.gpus) for j, a in self._active.items() if a.run.pid is not None
        }
        if sampler is None or not jobs:
            return
        try:
            samples = await trio.to_thread.run_sync(sampler.sample, jobs)
            now = time.time()
            for job_id, values in samples.items():
                if values and job_id in self._active:
                    points = await self._worker.add_points(job_id, values, now)
                    self._publish(job_id, points)
        except Exception as exc:
            report_internal_error("tracker", exc, "sampling the jobs' processes")
