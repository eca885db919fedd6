"""Metrics that come back from elsewhere: a run on a Ray node sends its track file's lines to
the server while it runs.

A job on a node writes its track file there (``FETCHML_TRACK_FILE``, a node-local file the
job's wrapper makes); :data:`TRACK_SENDER`, run by the wrapper in the background, tails it and
sends what is new, whole lines only, about every second, to ``PUT
/api/v1/jobs/{id}/track?attempt=&offset=`` with the run's token (as outputs do,
:mod:`fetchml.artifacts._results`: no API key, only this run's data).  The server appends the
bytes to the job's own track file (``<data_dir>/jobs/<id>/track.jsonl``), the one the
:class:`~fetchml.tracking.Tracker` reads for local runs too, only if ``offset`` is that file's
size: a retried part (its reply lost) is refused with the size to go on from, so nothing is
stored twice and the order is the job's.

While the server is down the lines wait in the node's file (the buffer, bounded by the node's
disk) and the sender retries with backoff; when the job's command ends, the wrapper tells the
sender to send the rest and waits for it, so the run's metrics are in before its end reaches
the server.

Blocking: call :func:`append_track` from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import InvalidRequestError, StorageFullError

__all__ = ["TRACK_FINAL_S", "TRACK_SENDER", "TRACK_SEND_S", "TRACK_SIZE_HEADER", "append_track"]

#: The response header that gives the size of the server's track file (where to send from).
TRACK_SIZE_HEADER = "X-Fetchml-Track-Size"
#: How often the sender looks for new lines to send.
TRACK_SEND_S = 1.0
#: How long, once the job's command has ended, the sender keeps trying to send the rest.
TRACK_FINAL_S = 120.0


def append_track(path: Path, offset: int, data: bytes) -> tuple[bool, int]:
    """Append ``data`` (whole lines) to the track file at ``path`` if ``offset`` is its size.

    Returns (whether it was appended, the file's size now).  An empty ``data`` appends nothing
    and creates no file: it asks for the size.  Waits on a lock of the file (another request
    of the same run appending) and on the disk (the lines are synced before the answer).
    Raises InvalidRequestError for data that does not end a line; StorageFullError when the
    disk cannot take it (nothing of it is kept).
    """
    if not data:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        return offset == size, size
    if not data.endswith(b"\n"):
        raise InvalidRequestError(
            "body: whole lines only (the last one ends with a newline)", field="body"
        )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise StorageFullError(f"the server could not store the metrics: {exc.strerror}") from None
    try:
        # Two requests of one run at once (a retry racing its original): one after the other,
        # so the size checked is the size appended to.
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if offset != size:
            return False, size
        _write_all(fd, size, data)
        return True, size + len(data)
    finally:
        os.close(fd)  # releases the lock


def _write_all(fd: int, size: int, data: bytes) -> None:
    """Write and sync ``data`` at the end of the file (``size`` bytes); on failure cut the file
    back to ``size``, so it never ends in half a line.  Raises StorageFullError."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        # If even that fails, the tracker skips the half line as one it cannot parse.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise StorageFullError(f"the server could not store the metrics: {exc.strerror}") from None


#: The program the job's wrapper runs on the node beside the job (``python3 -c``): the text of
#: :mod:`fetchml.tracking._sender` (standard library only; its docstring says its environment).
TRACK_SENDER = (Path(__file__).parent / "_sender.py").read_text(encoding="utf-8")
