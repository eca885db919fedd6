"""Shared helpers of the core benchmarks: temporary data dirs, statistics, output, cleanup.

Each benchmark is a script run as ``python bench/bench_core_X.py``; this module sits next to them
and is imported as ``_common`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import signal
import statistics
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

import fetchml

__all__ = [
    "USER",
    "bench_dir",
    "bench_root",
    "bench_session",
    "create_cost_us",
    "fmt_rate",
    "kill_leftover_jobs",
    "line",
    "median",
    "percentile",
    "wait_state",
]

USER = "bench"


def bench_root() -> Path:
    """Where the benchmark's temporary folder goes: ``$FETCHML_BENCH_DIR``, else the system's."""
    return Path(os.environ.get("FETCHML_BENCH_DIR") or tempfile.gettempdir())


# The disk these benchmarks were written on is ext4 *without a journal*.  There the allocator skips,
# one by one, every inode freed in the last 1 to 6 minutes when it creates a new one, so after a
# run deletes ~10,000 job files, creating a file near them costs ~1 ms instead of ~10 us for
# minutes -- and each job creates five (its folder, output folder, log, pid and exit files).  So
# the session folder is marked as a "top directory" (chattr +T): ext4 then spreads its
# sub-folders, the data dirs, over block groups with free room, away from recently freed inodes,
# like a data dir that has lived on a disk for a while.  The cost of a file create is printed.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000
_SLOW_CREATE_US = 60.0


def _mark_topdir(folder: Path) -> None:
    """Set the ext2/3/4 TOPDIR flag on ``folder`` if the filesystem supports it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        (value,) = struct.unpack("l", flags)
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", value | _FS_TOPDIR_FL))
    except OSError:
        pass  # not ext*: nothing to do
    finally:
        os.close(fd)


def create_cost_us(folder: Path, count: int = 100) -> float:
    """Mean microseconds to create one empty file in a fresh sub-folder of ``folder``."""
    probe = Path(tempfile.mkdtemp(prefix="probe-", dir=folder))
    start = time.perf_counter()
    for index in range(count):
        os.close(os.open(probe / str(index), os.O_CREAT | os.O_WRONLY, 0o600))
    return (time.perf_counter() - start) / count * 1e6


@contextlib.contextmanager
def bench_session(title: str) -> Iterator[None]:
    """Print the title; hold the session folder for :func:`bench_dir`; remove it at the end."""
    global _session
    print(title, flush=True)
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-", dir=bench_root()) as name:
        _session = Path(name)
        try:
            _mark_topdir(_session)
            cost = create_cost_us(_session)
            note = "  (slow here; data dirs are placed elsewhere)" if cost > _SLOW_CREATE_US else ""
            print(f"  data dirs under {bench_root()}: file create {cost:.0f} us{note}", flush=True)
            yield
            if _replaced:
                worst = max(_replaced)
                print(
                    f"  ({len(_replaced)} data dirs landed where a file create took up to "
                    f"{worst:.0f} us and were replaced)",
                    flush=True,
                )
        finally:
            for data_dir in _session.iterdir():
                kill_leftover_jobs(data_dir)
            _session = None


_session: Path | None = None
_dirs = itertools.count(1)
_replaced: list[float] = []
_PLACEMENT_TRIES = 8


@contextlib.contextmanager
def bench_dir(label: str) -> Iterator[Path]:
    """A fresh data dir in the session folder (removed with it, at the end of the session).

    A dir that lands in a block group full of recently freed inodes (see the note above; file
    creation there is 10 to 100 times slower) is left aside and another one made, a few times
    at most.  Any job process still alive under it is killed on exit.
    """
    if _session is None:
        raise RuntimeError("bench_dir() needs an open bench_session()")
    for _ in range(_PLACEMENT_TRIES):
        path = _session / f"{label}-{next(_dirs)}"
        path.mkdir()
        cost = create_cost_us(path, count=30)
        if cost <= _SLOW_CREATE_US:
            break
        _replaced.append(cost)
    try:
        yield path
    finally:
        kill_leftover_jobs(path)


def _job_pids(data_dir: Path) -> list[tuple[int, int]]:
    """(job id, supervisor pid) of every run under ``data_dir`` whose process is still there."""
    found = []
    for pid_file in data_dir.glob("jobs/*/pid.*"):
        job_id = int(pid_file.parent.name)
        try:
            pid = int(pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"FETCHML_JOB_ID={job_id}".encode() in environ:
            found.append((job_id, pid))
    return found


def kill_leftover_jobs(data_dir: Path) -> int:
    """SIGKILL the process group of every job still running under ``data_dir``; how many."""
    runs = _job_pids(data_dir)
    for _, pid in runs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _job_pids(data_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(runs)


async def wait_state(
    scheduler: fetchml.Scheduler, job_id: int, state: fetchml.JobState
) -> fetchml.Job:
    """Poll until job ``job_id`` is in ``state``; raise if it is not within 10 s."""
    with trio.fail_after(10):
        while True:
            job = await scheduler.get(job_id)
            if job.state is state:
                return job
            if job.terminal:
                raise RuntimeError(f"job {job_id} ended as {job.state.value}: {job.reason}")
            await trio.sleep(0.01)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def line(label: str, value: str, note: str = "") -> None:
    """One aligned result line."""
    print(f"  {label:<44} {value:>14}  {note}".rstrip(), flush=True)
