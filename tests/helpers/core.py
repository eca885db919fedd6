"""Process and polling helpers for the core tests: real processes, read through ``/proc``."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import fetchml
from fetchml import Job, JobState

PYTHON = sys.executable
HOST = Path(__file__).with_name("host.py")

# What most tests run with: small, fixed resources so scheduling is deterministic.
BASE_SETTINGS: dict[str, Any] = {
    "cpus": 2,
    "memory_mb": 1000,
    "gpus": [0, 1],
    "kill_grace_s": 0.5,
}


def open_sched(data_dir: Path, **overrides: Any) -> Any:
    """``fetchml.open_scheduler`` on ``data_dir`` with :data:`BASE_SETTINGS` plus overrides."""
    return fetchml.open_scheduler(data_dir=str(data_dir), **{**BASE_SETTINGS, **overrides})


def sh(script: str, **fields: Any) -> dict[str, Any]:
    """A spec that runs ``script`` with ``/bin/sh -c``."""
    return {"command": script, "shell": True, **fields}


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``R``, ``S``, ``Z`` …), or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is dead: it only waits to be reaped)."""
    return proc_state(pid) not in (None, "Z", "X")


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def pids_under(root: Path) -> list[int]:
    """Live processes that belong to a job whose output dir is under ``root``."""
    prefix = str(root)
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        out = environ_of(pid).get("FETCHML_OUTPUT_DIR")
        if out is not None and out.startswith(prefix) and alive(pid):
            found.append(pid)
    return found


def job_processes(data_dir: Path, job_id: int) -> tuple[list[int], list[int]]:
    """(supervisor pids, job pids) of job ``job_id`` of the server on ``data_dir``, alive."""
    output = str(data_dir / "jobs" / str(job_id) / "output")
    supervisors, workers = [], []
    for pid in all_pids():
        if environ_of(pid).get("FETCHML_OUTPUT_DIR") != output or not alive(pid):
            continue
        if "fetchml-job" in cmdline_of(pid):
            supervisors.append(pid)
        else:
            workers.append(pid)
    return supervisors, workers


def reap(pid: int) -> None:
    """Reap ``pid`` if it is our own exited child (supervisors of in-process schedulers)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_everything_under(root: Path) -> list[int]:
    """SIGKILL every job process under ``root`` and reap our own children; returns the pids."""
    killed = pids_under(root)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid_file in root.glob("**/jobs/*/pid.*"):
        with contextlib.suppress(OSError, ValueError):
            reap(int(pid_file.read_text()))
    return killed


def supervisor_pid(data_dir: Path, job_id: int, attempt: int = 1) -> int | None:
    path = data_dir / "jobs" / str(job_id) / f"pid.{attempt}"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def kill_job_group(data_dir: Path, job_id: int, attempt: int = 1) -> None:
    """SIGKILL the whole process group of a run (supervisor included), then reap it if ours."""
    pid = supervisor_pid(data_dir, job_id, attempt)
    assert pid is not None, f"job {job_id} attempt {attempt} has no pid file"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for _ in range(200):
        reap(pid)
        if not alive(pid):
            return
        time.sleep(0.01)
    raise AssertionError(f"supervisor {pid} of job {job_id} survived SIGKILL")


async def until(predicate: Callable[[], Awaitable[bool] | bool], *, within: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms until it is true; fail after ``within`` seconds."""
    with trio.fail_after(within):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(0.01)


async def until_state(scheduler: Any, job_id: int, state: JobState, within: float = 5.0) -> Job:
    """Poll until the job is in ``state``; return it."""
    job: Job | None = None

    async def reached() -> bool:
        nonlocal job
        job = await scheduler.get(job_id)
        return job.state is state

    await until(reached, within=within)
    assert job is not None
    return job


async def until_started(scheduler: Any, data_dir: Path, job_id: int, within: float = 5.0) -> Job:
    """Wait until the job runs and its command has been exec'd (not just the supervisor).

    A signal sent between the supervisor's fork and the job's exec can be lost, so tests that
    cancel a job and time the cancel wait for this first.
    """
    job = await until_state(scheduler, job_id, JobState.RUNNING, within)
    await until(lambda: bool(job_processes(data_dir, job_id)[1]), within=within)
    return job


def _complete(path: Path) -> str | None:
    """The text of ``path`` if it exists and ends with a newline, else None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text if text.endswith("\n") else None


async def until_file(path: Path, within: float = 5.0) -> str:
    """Wait until ``path`` exists with a complete line in it; return its text."""
    await until(lambda: _complete(path) is not None, within=within)
    text = _complete(path)
    assert text is not None
    return text


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")
