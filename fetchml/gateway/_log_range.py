"""One byte range of a job's log (``GET /api/v1/jobs/{id}/logs`` with ``Range``).

What lets a viewer open a log of any size at once: it asks for the tail (``bytes=-65536``), learns
the log's length from ``Content-Range``, follows from there, and reads earlier parts only when the
reader scrolls back to them.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from quart import Response
from werkzeug.http import parse_range_header

__all__ = ["MAX_RANGE_BYTES", "log_range_response"]

# The most one range answer carries (a viewer asks for much less); a larger range is cut short,
# which Content-Range states, so memory per request stays bounded.
MAX_RANGE_BYTES = 8 * 1024 * 1024


def _bounds(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) of the one range ``header`` asks of ``size`` bytes, None if none is left.

    A suffix longer than the log is the whole log (RFC 9110 14.1.2; werkzeug's
    ``range_for_length`` refuses it); a header that is not one byte range is the whole log too.
    """
    ranges = parse_range_header(header)
    if ranges is None or len(ranges.ranges) != 1:
        return (0, size) if size else None
    first, last = ranges.ranges[0]
    if first < 0:  # bytes=-N: the last N bytes
        start, end = max(0, size + first), size
    else:
        start, end = first, size if last is None else min(last, size)
    return (start, end) if start < end else None


def _read(path: Path, header: str) -> tuple[int, int, int, bytes] | None:
    """(start, end, size, bytes) of the range ``header`` asks of ``path``, or None if the range
    cannot be satisfied (also for a log not written yet: it has no bytes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        bounds = _bounds(header, size)
        if bounds is None:
            return None
        start, end = bounds[0], min(bounds[1], bounds[0] + MAX_RANGE_BYTES)
        return start, end, size, os.pread(fd, end - start, start)
    finally:
        os.close(fd)


async def log_range_response(path: Path, header: str) -> Response:
    """206 with the asked bytes of the log at ``path`` and ``Content-Range: bytes a-b/size``;
    416 with ``Content-Range: bytes */size`` when the range starts past the end; 200 and no
    bytes for a log that has none yet.  Waits on a worker thread for the read."""
    found = await trio.to_thread.run_sync(_read, path, header)
    if found is None:
        try:
            size = (await trio.Path(path).stat()).st_size
        except FileNotFoundError:
            size = 0
        if size == 0:
            # No bytes yet: the whole (empty) log, as a server that ignores Range would answer.
            return Response(b"", status=200, content_type="text/plain; charset=utf-8")
        response = Response(b"", status=416)
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    start, end, size, data = found
    response = Response(data, status=206, content_type="text/plain; charset=utf-8")
    response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.headers["Accept-Ranges"] = "bytes"
    return response
