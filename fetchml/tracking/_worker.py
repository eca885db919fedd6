"""The ingest worker: a child process of the server that reads track files into the tracking
store, so that parsing a job's million points a second never holds the server's GIL.

Why a process: in a thread, the parser competes with the event loop for the interpreter; every
time the loop lets go of the GIL (each socket read, each commit), it waits for the parser's
current piece (measured: the loop's 1 ms sleeps overshoot by 0.5 ms at the median while a thread
parses flat out, and dispatch p99 doubled while a job logged).  Here the parser runs on its own
interpreter and the operating system shares the cores; it runs at a lower priority
(:data:`WORKER_NICE`) so that the server's loop, which wakes briefly and often, is served
first when the cores are busy; the job's points wait in its file meanwhile, never lost.

Every write of points (a file's lines, the server's own system samples) goes through this one
process, the only writer of the chunks (it keeps the open chunk of each metric of a running run
in memory, until the run's end, which it records too); the server itself writes only runs'
rows (registration, outcome) and reads.  One worker per data
dir: it holds ``tracking.lock`` (a worker left by a server killed with ``-9`` finishes its
request, sees its input end and exits; the next one waits for its lock meanwhile).

Protocol (the server's :class:`~fetchml.tracking._ingest.IngestWorker` is the only client):
frames of a 4-byte big-endian length and a msgpack body, one request then its one reply, on
the worker's stdin and stdout; it exits at the end of its input.  Run as :func:`main` with
``DATA_DIR SYNCHRONOUS`` as its arguments.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

import msgspec

from ._lines import Point, parse_lines
from ._store import TrackingStore

__all__ = [
    "FRAME_HEAD",
    "READ_LIMIT",
    "WORKER_NICE",
    "AddPoints",
    "Added",
    "End",
    "Ended",
    "Failed",
    "Ingest",
    "Ingested",
    "Reply",
    "Request",
    "read_frame",
    "serve",
]

#: Most bytes of one track file read (and committed) by one request: however fast one job
#: logs, other jobs' files wait at most that long.
READ_LIMIT = 8 << 20
#: The worker's niceness, added to the server's: below the server's loop, above nothing else.
WORKER_NICE = 5
LOCK_NAME = "tracking.lock"
#: Bytes of a frame's head: its body's length, big-endian.
FRAME_HEAD = 4


class Ingest(msgspec.Struct, frozen=True, tag="ingest"):
    """Read what is new in a registered run's track file (at most READ_LIMIT bytes), committed
    with the offset it ends at; return the points only if ``watched``."""

    job_id: int
    track_file: str
    watched: bool
    max_points: int


class AddPoints(msgspec.Struct, frozen=True, tag="add"):
    """Store one point of each metric (the server's system samples) at its next step."""

    job_id: int
    points: dict[str, float]
    when: float


class End(msgspec.Struct, frozen=True, tag="end"):
    """Mark a run ended (its file is read to the end) and drop what is kept of it."""

    job_id: int


class Ingested(msgspec.Struct, frozen=True, tag="ingested"):
    more: bool  # the file may hold more: read again
    points: list[Point]


class Added(msgspec.Struct, frozen=True, tag="added"):
    points: list[Point]


class Ended(msgspec.Struct, frozen=True, tag="ended"):
    pass


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    """The request raised: what, for the server's log.  The worker goes on."""

    error: str


Request = Ingest | AddPoints | End
Reply = Ingested | Added | Ended | Failed


def ingest_once(
    store: TrackingStore, job_id: int, track_file: str, watched: bool, max_points: int
) -> Ingested:
    """One read of at most READ_LIMIT bytes of the run's file, committed.  Blocks on the file
    and the store; raises what the store raises (nothing is committed then)."""
    position = store.position(job_id)
    if position is None:
        return Ingested(more=False, points=[])
    offset, next_step, _ = position
    try:
        with Path(track_file).open("rb") as handle:
            handle.seek(offset)
            data = handle.read(READ_LIMIT)
    except FileNotFoundError:
        return Ingested(more=False, points=[])
    batch, next_step = parse_lines(data, next_step, time.time())
    if batch.consumed == 0:
        if len(data) < READ_LIMIT:
            return Ingested(more=False, points=[])
        # A "line" longer than the limit: skipped as invalid, never read whole.
        store.ingest(job_id, batch, offset=offset + len(data), next_step=next_step, max_points=0)
        return Ingested(more=True, points=[])
    stored, system = store.ingest(
        job_id, batch, offset=offset + batch.consumed, next_step=next_step, max_points=max_points
    )
    points = batch.points[:stored] + system if watched else []
    return Ingested(more=len(data) >= READ_LIMIT, points=points)


def handle(store: TrackingStore, request: Request) -> Reply:
    """The reply to one request; a request that raises is answered Failed."""
    try:
        match request:
            case Ingest(job_id=job_id, track_file=path, watched=watched, max_points=cap):
                return ingest_once(store, job_id, path, watched, cap)
            case AddPoints(job_id=job_id, points=points, when=when):
                return Added(points=store.add_points(job_id, points, when))
            case End(job_id=job_id):
                store.mark_ended(job_id)
                return Ended()
            case _:
                raise TypeError(f"tracking worker: unexpected request {request!r}")
    except Exception as exc:
        return Failed(error=f"{type(exc).__name__}: {exc}")


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame's body, or None at the end of the input (also in the middle of a frame: the
    server is gone)."""
    head = stream.read(FRAME_HEAD)
    if len(head) < FRAME_HEAD:
        return None
    size = int.from_bytes(head, "big")
    body = stream.read(size)
    return body if len(body) == size else None


def frame(body: bytes) -> bytes:
    """``body`` as a frame."""
    return len(body).to_bytes(FRAME_HEAD, "big") + body


def serve(data_dir: Path, synchronous: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Take the data dir's lock (waiting for a previous worker to exit), then answer requests
    until the input ends."""
    with (data_dir / LOCK_NAME).open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = TrackingStore(data_dir, synchronous=synchronous)
        try:
            decoder = msgspec.msgpack.Decoder(Request)
            encoder = msgspec.msgpack.Encoder()
            while (body := read_frame(stdin)) is not None:
                try:
                    request = decoder.decode(body)
                except msgspec.DecodeError as exc:
                    reply: Reply = Failed(error=f"not a request: {exc}")
                else:
                    reply = handle(store, request)
                stdout.write(frame(encoder.encode(reply)))
                stdout.flush()
        finally:
            store.close()


def main(argv: list[str]) -> int:
    """``argv``: the program's name, the data dir, ``full`` or ``normal``.  Waits for the lock,
    then serves until the input ends; exit status 0, or 2 for wrong arguments."""
    if len(argv) != 3:
        print("usage: fetchml.tracking._worker DATA_DIR SYNCHRONOUS", file=sys.stderr)
        return 2
    os.nice(WORKER_NICE)
    # The protocol gets a descriptor of its own; anything printed goes to stderr, not into it.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(Path(argv[1]), argv[2], sys.stdin.buffer, replies)
    return 0
