"""``ml prune``: the working copies and outputs of old ended jobs, and the snapshots and blobs
nothing left needs, removed.

What stays: every queued or running job's folder and snapshot; the ``keep_last`` most recently
ended jobs; each job's log and run manifest (the record of what ran); the snapshots of every job
not pruned, and every snapshot made within the period.  A pruned job is marked (a ``pruned`` file
in its folder), so it no longer holds its snapshot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

import trio

from .._models import Job
from ..artifacts import MANIFEST_NAME
from ..protocol import PruneReport
from ..snapshots import Snapshots
from ..store import Store
from .backends import job_dir

__all__ = ["PruneReport", "prune"]

PRUNED_MARK = "pruned"
_PAGE = 1000


def _size(path: Path) -> int:
    """Bytes under ``path``, never following a symlink (a link counts as itself)."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove(path: Path) -> None:
    """Remove ``path``: a real folder with what is in it, anything else (a symlink to a folder
    included) as itself, never what a link points to."""
    if stat.S_ISDIR(path.lstat().st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _clear_job(folder: Path, dry_run: bool) -> int:
    """Remove a job's working copy and outputs (not its log, not its run manifest); the bytes
    freed.  Marks the job pruned.  A job may have put symlinks anywhere in its folder: none is
    followed."""
    freed = 0
    output = folder / "output"
    entries = [folder / "work"]
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(output.lstat().st_mode):
            entries += [e for e in output.iterdir() if e.name != MANIFEST_NAME]
        else:
            entries.append(output)
    for entry in entries:
        try:
            freed += _size(entry)
            if not dry_run:
                _remove(entry)
        except FileNotFoundError:
            continue
    if not dry_run:
        folder.mkdir(parents=True, exist_ok=True)  # a job that never ran has none
        (folder / PRUNED_MARK).touch()
    return freed


async def _all_jobs(store: Store) -> list[Job]:
    """Every job, newest first (page by page)."""
    found: list[Job] = []
    before: int | None = None
    while True:
        page = await store.list_jobs(limit=_PAGE, before_id=before)
        found += page
        if len(page) < _PAGE:
            return found
        before = page[-1].id


async def prune(
    store: Store,
    snapshots: Snapshots,
    data_dir: Path,
    *,
    older_than_s: float,
    keep_last: int = 0,
    dry_run: bool = False,
) -> PruneReport:
    """Prune what ended more than ``older_than_s`` ago.  Waits on the store and on worker
    threads (the file system)."""
    cutoff = time.time() - older_than_s
    jobs = await _all_jobs(store)
    ended = sorted((j for j in jobs if j.terminal), key=lambda j: -(j.finished_at or j.created_at))
    recent = {j.id for j in ended[:keep_last]}
    doomed: list[Job] = []
    keep: set[str] = set()
    for job in jobs:
        folder = job_dir(data_dir, job.id)
        old = job.terminal and (job.finished_at or job.created_at) < cutoff and job.id not in recent
        if old and not (folder / PRUNED_MARK).exists():
            doomed.append(job)
        elif not old and job.spec.snapshot is not None:
            keep.add(job.spec.snapshot)

    def work() -> PruneReport:
        freed = sum(_clear_job(job_dir(data_dir, job.id), dry_run) for job in doomed)
        gone = snapshots.forget(keep, cutoff, dry_run=dry_run)
        blobs, blob_bytes = snapshots.drop_unneeded_blobs(cutoff, dry_run=dry_run, forgotten=gone)
        return PruneReport(
            dry_run=dry_run,
            jobs=sorted(job.id for job in doomed),
            snapshots=len(gone),
            blobs=blobs,
            bytes_freed=freed + blob_bytes,
        )

    return await trio.to_thread.run_sync(work)
