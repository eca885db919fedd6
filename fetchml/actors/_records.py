"""The executor's records of each run: its working copy made first, its run manifest written
at the start and completed (outputs hashed) at the end, both in worker threads."""

from __future__ import annotations

import functools
import logging
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
from ._messages import JobExited
from .backends import job_dir, work_dir

__all__ = ["RunRecords"]

log = logging.getLogger("fetchml.executor")


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
    ) -> None:
        self._data_dir = data_dir.absolute()
        self._snapshots = snapshots
        self._gpu_names = gpu_names or {}
        self._host = host
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

    async def started(self, job: Job, *, adopted: bool) -> None:
        """The run is going: write its manifest (for an adopted run, take the one its start
        wrote).  A manifest that cannot be written is logged, not raised: the run goes on."""
        key = (job.id, job.attempts)
        if adopted:
            found = await trio.to_thread.run_sync(read_run_manifest, self._output(job.id))
            if found is not None and found.attempt == job.attempts:
                self._started[key] = found
                return
            self._remember(job, None)
        manifest = self._started[key]
        await self._write(job.id, manifest)

    async def finished(self, job: Job, exited: JobExited) -> None:
        """The run ended: complete its manifest with the end and the hashed outputs (waits on
        reading every output, in a worker thread)."""
        started = self._started.pop((job.id, exited.attempt), None)
        if started is None:
            started = started_manifest(
                job, snapshot=None, gpu_names=self._gpu_names, host=self._host
            )
        finish = functools.partial(
            finished_manifest,
            started,
            self._output(job.id),
            finished_at=exited.finished_at,
            exit_code=exited.exit_code,
            end=exited.cause,
        )
        try:
            manifest = await trio.to_thread.run_sync(finish)
        except OSError as exc:
            log.warning("job %d: cannot list its outputs: %s", job.id, exc)
            return
        await self._write(job.id, manifest)

    async def _write(self, job_id: int, manifest: RunManifest) -> None:
        try:
            await trio.to_thread.run_sync(write_run_manifest, self._output(job_id), manifest)
        except OSError as exc:
            log.warning("job %d: cannot write its run manifest: %s", job_id, exc)
