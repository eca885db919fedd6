"""The server's side of the ingest worker (:mod:`fetchml.tracking._worker`): one child process,
started on first use, asked one request at a time.

If the worker dies (killed, out of memory), the request in flight raises
:class:`~fetchml.errors.InternalError` and the next one starts a new worker (waiting, if need
be, until a second after the previous start: a worker that cannot start does not become a loop
of starts); what the dead one had committed is kept and what it had not is read again, so no
point is lost or stored twice.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from ..errors import InternalError
from ._lines import Point
from ._worker import (
    FRAME_HEAD,
    Added,
    AddPoints,
    End,
    Ended,
    Failed,
    Ingest,
    Ingested,
    Reply,
    Request,
    frame,
)

__all__ = ["MAX_REPLY_BYTES", "REPLY_DEADLINE_S", "WORKER_EXIT_S", "IngestWorker"]

log = logging.getLogger("fetchml.tracker")

#: How long a worker told to stop (its input closed) may take to finish its request and exit
#: before it is killed.
WORKER_EXIT_S = 10.0
#: How long one request may take (a read of at most READ_LIMIT bytes and its commit take well
#: under a second here): a worker that hangs (stopped, a disk that does not answer) is killed
#: then, so that it cannot hold up the tracker, and the server's loop, for longer.
REPLY_DEADLINE_S = 60.0
#: The largest reply taken (the points of one read, if watched, are far smaller): a longer
#: frame head means the stream is corrupt, and the worker is killed.
MAX_REPLY_BYTES = 64 << 20
_RESTART_S = 1.0
_MAIN = "import sys; from fetchml.tracking._worker import main; sys.exit(main(sys.argv))"
_R = TypeVar("_R", Ingested, Added, Ended)


class IngestWorker:
    """The ingest worker of ``data_dir``, started on the first request.  Use from one trio
    task at a time (a lock keeps requests in order anyway); close with :meth:`aclose`."""

    def __init__(self, data_dir: Path, synchronous: str) -> None:
        # Not ``-m``: the package imports the module before runpy would run it as __main__.
        # ``-P``: the server's working directory is not put on the worker's import path.
        self._argv = [sys.executable, "-P", "-c", _MAIN, str(data_dir), synchronous]
        self._proc: trio.Process | None = None
        self._buffer = bytearray()
        self._lock = trio.Lock()
        self._started_at: float | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)

    @property
    def pid(self) -> int | None:
        """The worker's pid while one runs."""
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        """Start the worker now (it is otherwise started by the first request), so that the
        first read of a run is not late by the worker's start-up: a page that subscribes to
        a run's points while that read is under way would miss them.  Waits only for the
        process to be spawned, not for it to be ready.  Raises InternalError."""
        async with self._lock:
            await self._running()

    async def ingest(
        self, job_id: int, track_file: str, *, watched: bool, max_points: int
    ) -> tuple[bool, list[Point]]:
        """Read what is new in a registered run's file (one read, committed): whether there
        may be more, and the points stored if ``watched``.  Waits on the worker.  Raises
        InternalError (the request failed, or the worker died)."""
        reply = await self._call(Ingest(job_id, track_file, watched, max_points), Ingested)
        return reply.more, reply.points

    async def add_points(self, job_id: int, points: dict[str, float], when: float) -> list[Point]:
        """Store one point of each metric at its next step (system samples); the points stored.
        Waits on the worker.  Raises InternalError."""
        return (await self._call(AddPoints(job_id, points, when), Added)).points

    async def end(self, job_id: int) -> None:
        """Mark the run ended (read to the end).  Waits on the worker.  Raises InternalError."""
        await self._call(End(job_id), Ended)

    async def _call(self, request: Request, expected: type[_R]) -> _R:
        """Send one request and wait (at most REPLY_DEADLINE_S) for its reply, of type
        ``expected``, starting a worker if none runs.  Cancelled in the middle, the worker is
        killed (its reply would answer the next request), as is one that does not answer in
        time or sends a broken frame.  Raises InternalError for a Failed reply, a reply of
        another type, or a worker that died, hung or cannot start."""
        async with self._lock:
            proc = await self._running()
            assert proc.stdin is not None
            try:
                with trio.fail_after(REPLY_DEADLINE_S):
                    await proc.stdin.send_all(frame(self._encoder.encode(request)))
                    reply = self._decoder.decode(await self._read(proc))
            except trio.TooSlowError:
                await self._discard()
                text = f"the tracking worker did not answer in {REPLY_DEADLINE_S:g} s: killed"
                raise InternalError(text) from None
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                EOFError,
                msgspec.DecodeError,
            ) as exc:
                await self._discard()
                why = str(exc) or type(exc).__name__
                text = f"the tracking worker ended ({why}); the next request starts another"
                raise InternalError(text) from None
            except BaseException:
                await self._discard()
                raise
        match reply:
            case Failed(error=error):
                raise InternalError(f"tracking worker: {error}")
            case expected():
                return reply
            case _:
                raise InternalError(f"tracking worker: {reply!r} to {type(request).__name__}")

    async def _running(self) -> trio.Process:
        """The worker, started if none runs: no sooner than a second after the previous start
        (waits until then).  Raises InternalError if it cannot start."""
        if self._proc is not None:
            return self._proc
        if self._started_at is not None:
            await trio.sleep_until(self._started_at + _RESTART_S)
        self._started_at = trio.current_time()
        try:
            # A session of its own: a Ctrl-C at the server's terminal stops the server, which
            # then closes the worker's input; the worker is not cut off mid-commit by the signal.
            self._proc = await trio.lowlevel.open_process(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            raise InternalError(f"cannot start the tracking worker: {exc}") from None
        self._buffer.clear()
        return self._proc

    async def _read(self, proc: trio.Process) -> bytes:
        """One frame's body from the worker.  Raises EOFError if its output ends, or if a
        frame says it is longer than MAX_REPLY_BYTES."""
        assert proc.stdout is not None
        while True:
            if len(self._buffer) >= FRAME_HEAD:
                size = int.from_bytes(self._buffer[:FRAME_HEAD], "big")
                if size > MAX_REPLY_BYTES:
                    raise EOFError(f"a reply of {size} bytes, past {MAX_REPLY_BYTES}")
                if len(self._buffer) >= FRAME_HEAD + size:
                    body = bytes(self._buffer[FRAME_HEAD : FRAME_HEAD + size])
                    del self._buffer[: FRAME_HEAD + size]
                    return body
            data = await proc.stdout.receive_some(1 << 20)
            if not data:
                raise EOFError("its output ended")
            self._buffer += data

    async def _discard(self) -> None:
        """Kill the worker and wait for it (shielded: bounded, it has been killed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            await _close_pipes(proc)

    async def aclose(self) -> None:
        """Stop the worker: close its input, wait up to WORKER_EXIT_S for it to finish its
        request and exit, else kill it.  Shielded (bounded)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(WORKER_EXIT_S):
                await proc.wait()
            if proc.returncode is None:
                log.warning("the tracking worker did not exit in %gs: killed", WORKER_EXIT_S)
                proc.kill()
                await proc.wait()
            await _close_pipes(proc)


async def _close_pipes(proc: trio.Process) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            await pipe.aclose()
