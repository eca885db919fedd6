"""Shared helpers of the core benchmarks: temporary data dirs, statistics, output, cleanup.

Each benchmark is a script run as ``python bench/bench_core_X.py``; this module sits next to them
and is imported as ``_common`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import signal
import statistics
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
    "hold_the_only_cpu",
    "kill_leftover_jobs",
    "line",
    "median",
    "percentile",
    "submit_concurrently",
    "wait_state",
]

USER = "bench"


# The disk these benchmarks were written on is ext4 *without a journal*.  There, to create a file
# or folder the kernel skips, one by one, each free inode of the block group that was freed in the
# last 1 to 6 minutes, and takes one of those only when nothing else is free: in a group whose
# free inodes were all just freed (say, by the previous run deleting its data dir), every create
# walks the whole group, ~0.4 ms instead of ~20 us.  Each job creates five inodes (its folder,
# output folder, log, pid and exit files), so left alone, every figure would depend on what was
# deleted nearby in the last minutes, by an earlier benchmark or by anyone's tests.  Hence: data
# is removed only at the very end of a session, then flushed (sync: that shortens the slow
# period); and a session starts by creating job-shaped folders until creation is cheap again,
# which uses up the just-freed inodes nearby (they are removed with the session).  It prints what
# that took and the cost per create it ended on.
_SLOW_CREATE_US = 40.0
_WARM_CHUNK_JOBS = 400
_WARM_MAX_S = 60.0


def bench_root() -> Path:
    """Where the session folder goes: ``$FETCHML_BENCH_DIR``, else ``/var/tmp``.

    ``/var/tmp`` rather than ``/tmp``: it is on disk where ``/tmp`` may be a tmpfs (on which
    ``fsync`` costs nothing, flattering every durable figure), and test suites churn ``/tmp``.
    """
    chosen = os.environ.get("FETCHML_BENCH_DIR")
    if chosen:
        return Path(chosen)
    if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK):
        return Path("/var/tmp")
    return Path(tempfile.gettempdir())


def create_cost_us(folder: Path, jobs: int) -> float:
    """Mean microseconds per inode to lay out ``jobs`` job-like folders in a new folder.

    Each is what a job run creates: ``N/``, ``N/output/``, ``N/log``, ``N/pid.1``, ``N/exit.1``.
    """
    probe = Path(tempfile.mkdtemp(prefix="warm-", dir=folder))
    start = time.perf_counter()
    for index in range(jobs):
        job = probe / str(index)
        (job / "output").mkdir(parents=True)
        for name in ("log", "pid.1", "exit.1"):
            os.close(os.open(job / name, os.O_CREAT | os.O_WRONLY, 0o600))
    return (time.perf_counter() - start) / (jobs * 5) * 1e6


def _warm_up(folder: Path) -> None:
    """Create job-shaped folders in ``folder`` until that is cheap (or a minute has passed)."""
    start = time.monotonic()
    chunks = 0
    while True:
        cost = create_cost_us(folder, _WARM_CHUNK_JOBS)
        chunks += 1
        elapsed = time.monotonic() - start
        if cost <= _SLOW_CREATE_US or elapsed >= _WARM_MAX_S:
            break
    note = ""
    if chunks > 1:
        note = f" (after {chunks * _WARM_CHUNK_JOBS * 5:,} creates in {elapsed:.0f} s, see _common)"
    if cost > _SLOW_CREATE_US:
        note += "  SLOW: the job figures will suffer"
    print(f"  data dirs in {folder.parent}: {cost:.0f} us per file create{note}", flush=True)


@contextlib.contextmanager
def bench_session(title: str, *, runs_jobs: bool = True) -> Iterator[None]:
    """Print the title; make, warm and hold the session folder for :func:`bench_dir`.

    Warms only if the benchmark ``runs_jobs`` (creates job folders).  Removes the folder (after
    killing any job process left) and flushes the disk at the end.
    """
    global _session
    print(title, flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"  machine: {os.cpu_count()} cpus, load average {load} (figures drift with load)")
    folder = Path(tempfile.mkdtemp(prefix="fetchml-bench-", dir=bench_root()))
    try:
        if runs_jobs:
            _warm_up(folder)
        else:
            print(f"  data dirs in {folder.parent}", flush=True)
        _session = folder
        yield
    finally:
        _session = None
        for data_dir in folder.iterdir():
            kill_leftover_jobs(data_dir)
        shutil.rmtree(folder, ignore_errors=True)
        os.sync()


_session: Path | None = None
_dirs = itertools.count(1)


@contextlib.contextmanager
def bench_dir(label: str) -> Iterator[Path]:
    """A fresh data dir in the session folder (removed with it, at the end of the session).

    Any job process still alive under it is killed on exit, so a failed run leaves nothing.
    """
    if _session is None:
        raise RuntimeError("bench_dir() needs an open bench_session()")
    path = _session / f"{label}-{next(_dirs)}"
    path.mkdir()
    try:
        yield path
    finally:
        kill_leftover_jobs(path)


def _job_pids(data_dir: Path) -> list[int]:
    """Supervisor pids of the runs under ``data_dir`` (at any depth) still alive."""
    found = []
    for pid_file in data_dir.glob("**/jobs/*/pid.*"):
        wanted = (
            f"FETCHML_JOB_ID={pid_file.parent.name}".encode(),
            f"FETCHML_OUTPUT_DIR={pid_file.parent / 'output'}".encode(),
        )
        try:
            pid = int(pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if all(item in environ for item in wanted):
            found.append(pid)
    return found


def kill_leftover_jobs(data_dir: Path) -> int:
    """SIGKILL the process group of every job still running under ``data_dir``; how many."""
    pids = _job_pids(data_dir)
    killed = len(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
        pids = _job_pids(data_dir)
        time.sleep(0.01)
    return killed


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


async def hold_the_only_cpu(scheduler: fetchml.Scheduler) -> fetchml.Job:
    """Start a long job that takes the scheduler's only cpu, so jobs submitted after it queue."""
    blocker = await scheduler.submit(
        {"command": ["sleep", "600"], "resources": {"cpus": 1}}, user=USER
    )
    return await wait_state(scheduler, blocker.id, fetchml.JobState.RUNNING)


async def submit_concurrently(
    scheduler: fetchml.Scheduler, spec: fetchml.JobSpec, jobs: int, submitters: int
) -> float:
    """Submit ``spec`` ``jobs`` times from ``submitters`` tasks; return the seconds it took."""

    async def submitter(count: int) -> None:
        for _ in range(count):
            await scheduler.submit(spec, user=USER)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(submitters):
            nursery.start_soon(submitter, jobs // submitters + (index < jobs % submitters))
    return time.perf_counter() - start


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
    print(f"  {label:<46} {value:>18}  {note}".rstrip(), flush=True)
