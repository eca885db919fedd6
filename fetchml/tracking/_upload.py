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


# Run by the job's wrapper on the node, in the background while the job's command runs, with
# what it needs in the environment (neither the program nor the token shows in the job's log):
# FETCHML_RESULTS_URL, FETCHML_JOB_ID, FETCHML_ATTEMPT, FETCHML_RUN_TOKEN, FETCHML_TRACK_FILE,
# FETCHML_PART_BYTES, FETCHML_TRACK_SEND_S, FETCHML_TRACK_FINAL_S.  It stops (after sending the
# rest) once FETCHML_TRACK_FILE + ".end" exists (the wrapper's sign that the command ended), on
# SIGTERM or SIGINT, or when the wrapper is gone.  A file is polled rather than a signal
# awaited: a signal sent before Python has set its handler would kill it unsent.  Exit status
# 0: all sent (the node's files are removed); 1: some lines could not be sent (they stay).
TRACK_SENDER = r"""
import http.client, os, signal, sys, time, urllib.error, urllib.request
env = os.environ
url, job, attempt = env["FETCHML_RESULTS_URL"], env["FETCHML_JOB_ID"], env["FETCHML_ATTEMPT"]
token, path = env["FETCHML_RUN_TOKEN"], env["FETCHML_TRACK_FILE"]
part = int(env["FETCHML_PART_BYTES"])
every = float(env.get("FETCHML_TRACK_SEND_S", "1"))
final_s = float(env.get("FETCHML_TRACK_FINAL_S", "120"))
end_file, parent = path + ".end", os.getppid()
target = f"{url}/api/v1/jobs/{job}/track?attempt={attempt}&offset="
stop = []
def on_signal(*_):
    stop.append(time.monotonic())
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
class Refused(Exception):
    pass
def say(text):
    print(f"[fetchml] metrics: {text}", file=sys.stderr, flush=True)
def stopping():
    if not stop and (os.path.exists(end_file) or os.getppid() != parent):
        stop.append(time.monotonic())
    return bool(stop)
def nap(seconds):
    until = time.monotonic() + seconds
    while time.monotonic() < until and not stopping():
        time.sleep(min(0.05, max(0.0, until - time.monotonic())))
def read(at, size):
    try:
        with open(path, "rb") as handle:
            handle.seek(at)
            return handle.read(size)
    except FileNotFoundError:
        return b""
def put(offset, data):
    request = urllib.request.Request(target + str(offset), data=data, method="PUT")
    request.add_header("X-Fetchml-Run-Token", token)
    request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
            size = answer.headers.get("X-Fetchml-Track-Size")
    except urllib.error.HTTPError as exc:
        size, text = exc.headers.get("X-Fetchml-Track-Size"), exc.read()[:300]
        if exc.code == 409 and size is not None:
            return False, int(size)
        if exc.code >= 500 or exc.code in (408, 429):
            raise
        raise Refused(f"the server refused them ({exc.code}): {text.decode(errors='replace')}")
    if size is None:
        raise Refused("the server does not take metrics from runs elsewhere")
    return True, int(size)
def send(offset, data):
    delay, told = 0.5, False
    while True:
        try:
            answer = put(offset, data)
            if told:
                say("the server answers again")
            return answer
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if stop and time.monotonic() > stop[0] + final_s:
                raise Refused(f"the server did not answer for {final_s:.0f} s: {exc}")
            if not told:
                say(f"cannot reach the server ({exc}); they wait on the node, retrying")
                told = True
            if stopping():
                time.sleep(delay)
            else:
                nap(delay)
            delay = min(delay * 2, 10.0)
def line_end(at):
    while block := read(at, part):
        if (cut := block.find(b"\n")) >= 0:
            return at + cut + 1
        at += len(block)
    return None
def main():
    pos, have, warned = 0, None, False
    while True:
        done = stopping()
        chunk = read(pos, part)
        whole = chunk[: chunk.rfind(b"\n") + 1]
        skip = 0
        if not whole and len(chunk) >= part and (end := line_end(pos)) is not None:
            # A line longer than a part cannot be sent whole: sent as a line the server counts
            # as invalid, as it would count the line itself.
            skip, whole = end - pos, b'{"oversized_line_bytes": %d}\n' % (end - pos)
            if not warned:
                say(f"a line of {end - pos} bytes is longer than a part ({part}): skipped")
                warned = True
        if whole:
            if have is None:
                have = send(0, b"")[1]
            sent, size = send(have, whole)
            if sent or size == have + len(whole):
                pos += skip or len(whole)
            have = size
            continue
        if done:
            return
        nap(every)
try:
    main()
except Refused as exc:
    say(f"{exc}; what was not sent is in {path}")
    sys.exit(1)
for name in (path, end_file):
    try:
        os.unlink(name)
    except OSError:
        pass
"""
