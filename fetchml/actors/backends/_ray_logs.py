"""Copying Ray job logs into Fetch ML's log files as they are written.

Ray streams a job's log over a WebSocket, from the job's start until it ends (its client's
``tail_job_logs`` is an asyncio generator).  Every stream runs as a task on one asyncio loop in
one thread, shared by all runs and alive only while some stream is: one thread however many jobs
run, and memory bounded by one chunk per stream (each chunk is written out before the next is
read).  A stream ends quietly when its job has ended: that is how the backend learns of most
ends at once, rather than at its next status poll.

Each :class:`LogTail` knows how many bytes of the attempt's log the file holds already
(``position``); a new tail of the same run (after a broken stream, a cluster outage or a server
restart) skips that many bytes of the stream, so the file never holds a line twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import trio

__all__ = ["LogPump", "LogTail"]

StreamOpener = Callable[[str], AsyncGenerator[str, None]]


class LogTail:
    """One stream of a run's log being appended to its log file.

    ``done`` is set (in the trio run that started it) when the copy has stopped; ``clean`` then
    says whether the stream ended by itself (the job is over and all of its log was copied).
    """

    def __init__(self, submission_id: str, path: Path, position: int) -> None:
        self.submission_id = submission_id
        self.path = path
        self.position = position
        self.started_at = trio.current_time()
        self.done = trio.Event()
        self.clean = False
        self.error: str | None = None
        self.cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None


class LogPump:
    """Runs :class:`LogTail` copies on a shared asyncio loop thread."""

    def __init__(self, open_stream: StreamOpener) -> None:
        self._open_stream = open_stream
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active = 0

    def follow(self, submission_id: str, path: Path, position: int) -> LogTail:
        """Start copying the run's log into ``path``, skipping the first ``position`` bytes.

        Returns at once (call from trio); ``tail.done`` is set when the copy stops.
        """
        tail = LogTail(submission_id, path, position)
        token = trio.lowlevel.current_trio_token()
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=_run_loop, args=(self._loop,), name="fetchml-ray-logs", daemon=True
                ).start()
            self._active += 1
            tail._loop = self._loop
            self._loop.call_soon_threadsafe(self._begin, tail, token)
        return tail

    def cancel(self, tail: LogTail) -> None:
        """Stop copying (idempotent); ``tail.done`` is set soon after.  Never blocks."""
        tail.cancelled = True
        loop = tail._loop
        if loop is not None:
            # A closed loop has finished every copy it ran, this one too.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel_task, tail)

    # --- in the loop's thread ------------------------------------------------------------

    def _begin(self, tail: LogTail, token: trio.lowlevel.TrioToken) -> None:
        task = asyncio.ensure_future(self._copy(tail))
        # A done callback runs even for a task cancelled before it first ran.
        task.add_done_callback(functools.partial(self._finished, tail, token))
        tail._task = task
        if tail.cancelled:
            task.cancel()

    async def _copy(self, tail: LogTail) -> None:
        try:
            await self._copy_stream(tail)
            tail.clean = True
        except Exception as exc:  # whatever aiohttp or Ray raise: the caller polls and retries
            tail.error = f"{type(exc).__name__}: {exc}"

    def _finished(
        self, tail: LogTail, token: trio.lowlevel.TrioToken, task: asyncio.Task[None]
    ) -> None:
        if task.cancelled():
            tail.error = "stopped"
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(tail.done.set)
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._loop is tail._loop:
                assert self._loop is not None
                self._loop.stop()
                self._loop = None

    async def _copy_stream(self, tail: LogTail) -> None:
        """Append the stream to the file, minus the part the file has.  Waits on the stream."""
        seen = 0
        fd = os.open(tail.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            async with contextlib.aclosing(self._open_stream(tail.submission_id)) as stream:
                async for text in stream:
                    data = text.encode()
                    start = seen
                    seen += len(data)
                    if seen <= tail.position:
                        continue
                    data = data[max(0, tail.position - start) :]
                    _write_all(fd, data)
                    tail.position += len(data)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _cancel_task(tail: LogTail) -> None:
    if tail._task is not None:
        tail._task.cancel()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The pump thread: run the loop until its last copy ends, then close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
