"""Reading a job's log file, once or following it as it grows (``tail -f``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._runtime import Scheduler

__all__ = ["follow_log"]

# Bytes per chunk handed to the caller.
CHUNK_BYTES = 64 * 1024
# How often a followed log is checked for growth while its job runs.
POLL_S = 0.2


async def follow_log(
    scheduler: Scheduler, job_id: int, *, offset: int = 0, follow: bool = False
) -> AsyncIterator[bytes]:
    """Yield the job's log from ``offset`` in chunks of up to :data:`CHUNK_BYTES`.

    With ``follow``, keeps reading while the job is not terminal, checking every
    :data:`POLL_S` s, and ends after the last bytes once it is.  Raises
    :class:`JobNotFoundError` for an unknown job.  Waits on file reads (worker threads).
    """
    job = await scheduler.get(job_id)
    path = trio.Path(scheduler.log_path(job_id))
    position = offset
    while True:
        finished = job.terminal
        try:
            async with await path.open("rb") as handle:
                # An offset at or past the end has nothing to read (and one past what the file
                # system can address makes seek fail).
                if position < os.fstat(handle.fileno()).st_size:
                    await handle.seek(position)
                    while chunk := await handle.read(CHUNK_BYTES):
                        position += len(chunk)
                        yield chunk
        except FileNotFoundError:
            pass
        if not follow or finished:
            return
        await trio.sleep(POLL_S)
        job = await scheduler.get(job_id)
