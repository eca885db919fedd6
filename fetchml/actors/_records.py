"""The executor's records of each run: its working copy made first, its run manifest written
at the start (in the thread that starts the run) and completed (outputs hashed) at the end, both
in worker threads, one per start and one per end."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from .._models import Job
from ..artifacts import (
    RunManifest,
    SnapshotRef,
    finished_manifest,
    read_run_manifest,
    started_manifest,
    write_run_manifest,
)
from ..snapshots import Snapshots
from ..tracking import RunEnded, RunStarted
from ._messages import JobExited
from .backends import job_dir, track_path, work_dir

__all__ = ["RunRecords"]

log = logging.getLogger("fetchml.executor")

# How long the end of a run waits for the tracker to read the rest of its track file.
TRACK_WAIT_S = 60.0


class RunRecords:
    """Working copies and run manifests under ``<data_dir>/jobs/<id>/``.

    ``gpu_names`` maps GPU ids to (name, UUID) for the manifests; ``host`` names where runs
    happen (None: this machine).
    """

    def __init__(
        self,
        data_dir: Path,
        snapshots: Snapshots | None,
        *,
        gpu_names: dict[int, tuple[str, str]] | None = None,
        host: str | None = None,
        tracker: trio.MemorySendChannel[RunStarted | RunEnded] | None = None,
    ) -> None:
        self._data_dir = data_dir.absolute()
        self._snapshots = snapshots
        self._gpu_names = gpu_names or {}
        # Asked once: every manifest names the host, and the question is a system call.
        self._host = host or socket.gethostname()
        self._tracker = tracker
        self._started: dict[tuple[int, int], RunManifest] = {}

    def _output(self, job_id: int) -> Path:
        return job_dir(self._data_dir, job_id) / "output"

    async def prepare(self, job: Job) -> None:
        """Before a run starts: a fresh working copy of the job's snapshot, if it has one.
        Waits on a worker thread.  Raises :class:`JobStartError` when the snapshot or one of
        its blobs is gone."""
        sid = job.spec.snapshot
        if sid is None or self._snapshots is None:
            self._remember(job, None)
            return
        dest = work_dir(self._data_dir, job.id)
        make = functools.partial(self._snapshots.make_working_copy, sid, dest, job.spec.cwd)
        manifest = await trio.to_thread.run_sync(make)
        self._remember(job, SnapshotRef(id=sid, files=len(manifest.files), bytes=manifest.bytes))

    def _remember(self, job: Job, snapshot: SnapshotRef | None) -> None:
        self._started[(job.id, job.attempts)] = started_manifest(
            job, snapshot=snapshot, gpu_names=self._gpu_names, host=self._host
        )

    def manifest_writer(self, job: Job) -> Callable[[], None]:
        """What writes the manifest of the run :meth:`prepare` made ready, to be called in the
        worker thread that starts the run (``Backend.start_then``); it blocks on the file system
        and logs, never raises, a manifest that cannot be written (the run goes on)."""
        return functools.partial(self._write_now, job.id, self._started[(job.id, job.attempts)])

    async def started(self, job: Job, *, adopted: bool, pid: int | None = None) -> None:
        """The run is going: tell the tracker (waits on its inbox).  For an adopted run, take
        the manifest its start wrote (or write one).  A new run's manifest was written by
        :meth:`manifest_writer` as it started."""
        if self._tracker is not None:
            await self._tracker.send(self._run(job, pid))
        if not adopted:
            return
        key = (job.id, job.attempts)
        found = await trio.to_thread.run_sync(read_run_manifest, self._output(job.id))
        if found is not None and found.attempt == job.attempts:
            self._started[key] = found
            return
        self._remember(job, None)
        await trio.to_thread.run_sync(self._write_now, job.id, self._started[key])

    async def finished(self, job: Job, exited: JobExited) -> None:
        """The run ended: tell the tracker; if the run logged metrics, wait (at most
        :data:`TRACK_WAIT_S`) until the tracker has read them all, so they are complete when its
        end is reported; then complete its manifest with the end and the hashed outputs (waits
        on reading every output, in a worker thread)."""
        if self._tracker is not None:
            run = self._run(job, None)
            ended = RunEnded(job.id, run=run)
            await self._tracker.send(ended)
            if _logged_metrics(run):
                with trio.move_on_after(TRACK_WAIT_S) as waited:
                    await ended.done.wait()
                if waited.cancelled_caught:
                    log.warning(
                        "job %d: its metrics are still being read; its end goes first", job.id
                    )
        started = self._started.pop((job.id, exited.attempt), None)
        if started is None:
            started = started_manifest(
                job, snapshot=None, gpu_names=self._gpu_names, host=self._host
            )
        # Outputs listed and the manifest written in one worker thread: one hop per end.
        await trio.to_thread.run_sync(self._write_finished, job.id, started, exited)

    def _write_finished(self, job_id: int, started: RunManifest, exited: JobExited) -> None:
        """Complete ``started`` with the run's end and its hashed outputs, and write it.  Blocks
        on reading every output.  Logs, never raises, what the file system refuses."""
        try:
            manifest = finished_manifest(
                started,
                self._output(job_id),
                finished_at=exited.finished_at,
                exit_code=exited.exit_code,
                end=exited.cause,
            )
        except OSError as exc:
            log.warning("job %d: cannot list its outputs: %s", job_id, exc)
            return
        self._write_now(job_id, manifest)

    def _run(self, job: Job, pid: int | None) -> RunStarted:
        """What the tracker needs to know of a run."""
        spec = job.spec
        return RunStarted(
            job_id=job.id,
            user=job.user,
            experiment=spec.experiment,
            name=spec.name,
            narrative=spec.narrative,
            track_file=str(track_path(self._data_dir, job.id)),
            pid=pid,
            gpus=list(job.gpus),
        )

    def _write_now(self, job_id: int, manifest: RunManifest) -> None:
        """Write the run's manifest.  Blocks on the file system; logs an OSError."""
        try:
            write_run_manifest(self._output(job_id), manifest)
        except OSError as exc:
            log.warning("job %d: cannot write its run manifest: %s", job_id, exc)


def _logged_metrics(run: RunStarted) -> bool:
    """Whether the run has a track file: one stat of a local file, done on the event loop (a
    worker thread's round trip would cost more), so that the end of a run that logged nothing,
    most jobs, does not wait for the tracker."""
    return os.path.exists(run.track_file)
