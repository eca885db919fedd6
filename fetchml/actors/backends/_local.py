"""The local executor backend: each job a process group on this machine that outlives the server.

Each run is started through a tiny POSIX shell supervisor (``/bin/sh``, about one process start
of overhead).  The supervisor is the leader of a new session/process group, writes its pid to
``pid.<attempt>``, runs the job's argv in the foreground and writes the exit status to
``exit.<attempt>``.  It traps SIGTERM/SIGINT/SIGHUP so that a signal to the group kills the job but
lets the supervisor record the status; its caught traps reset to the default in the job, so the job
sees them normally.  Because the status is on disk, a server restart can adopt a running job (by its
pid, verified through ``/proc/<pid>/environ``) or collect the status of one that ended meanwhile.

Per job, under ``<data_dir>/jobs/<id>/``: ``log`` (stdout and stderr, appended across attempts),
``output/`` (``FETCHML_OUTPUT_DIR``), ``work/`` (the private working copy of the job's snapshot,
if it has one: its working directory), ``pid.<n>`` and ``exit.<n>``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..._faults import report_internal_error
from ..._models import Job
from ...errors import JobStartError
from ._base import Backend, Ended, dataset_env

__all__ = ["LocalBackend", "LocalRun", "job_dir", "log_path", "track_path", "work_dir"]

_SUPERVISOR = """trap : TERM INT HUP
d=$1 n=$2 c=$3
shift 3
printf '%s\\n' "$$" >"$d/pid.$n"
if cd -- "$c"; then "$@"; s=$?; else s=126; fi
printf '%s\\n' "$s" >"$d/exit.$n"
"""


def job_dir(data_dir: Path, job_id: int) -> Path:
    return data_dir / "jobs" / str(job_id)


def work_dir(data_dir: Path, job_id: int) -> Path:
    """The job's private working copy of its snapshot (made anew for each run)."""
    return job_dir(data_dir, job_id) / "work"


def log_path(data_dir: Path, job_id: int) -> Path:
    """The file that holds a job's stdout and stderr."""
    return job_dir(data_dir, job_id) / "log"


def track_path(data_dir: Path, job_id: int) -> Path:
    """The file a job appends its metrics to (``FETCHML_TRACK_FILE``), read by the tracker."""
    return job_dir(data_dir, job_id) / "track.jsonl"


@dataclass(slots=True)
class LocalRun:
    """One attempt of a job as a local process group led by the supervisor ``pid``."""

    job_id: int
    attempt: int
    pid: int
    pidfd: int
    own_child: bool
    directory: Path
    ended: trio.Event = field(default_factory=trio.Event)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _is_our_run(pid: int, job_id: int, attempt: int) -> bool:
    """Whether ``pid`` is still the supervisor of this job's attempt (pids get reused)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    fields = environ.split(b"\0")
    return f"FETCHML_JOB_ID={job_id}".encode() in fields and (
        f"FETCHML_ATTEMPT={attempt}".encode() in fields
    )


def _run_processes(job_id: int, attempt: int, output: Path) -> list[int]:
    """Pids of every process of this attempt (supervisor and job), found by environment.

    Used where no pid can be trusted: a missing pid file, or a run whose supervisor is gone.
    Rare, so scanning every process is affordable; the output dir (unique per data dir) tells
    this server's job apart from another server's job with the same id.
    """
    wanted = {
        f"FETCHML_JOB_ID={job_id}".encode(),
        f"FETCHML_ATTEMPT={attempt}".encode(),
        f"FETCHML_OUTPUT_DIR={output}".encode(),
    }
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if wanted.issubset(environ.split(b"\0")):
            found.append(int(name))
    return found


def _find_supervisor(job_id: int, attempt: int, output: Path) -> int | None:
    """The supervisor of this attempt: the one of its processes that leads its own session.

    For a run whose pid file is missing: the server died between starting the supervisor and the
    supervisor writing the file.
    """
    for pid in _run_processes(job_id, attempt, output):
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(pid) == pid:
                return pid
    return None


def _kill_leftovers(job_id: int, attempt: int, output: Path) -> None:
    """SIGKILL what is left of a run whose supervisor is gone, so it never runs twice."""
    for pid in _run_processes(job_id, attempt, output):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _prepend(folder: str, env: dict[str, str]) -> str:
    existing = env.get("PYTHONPATH")
    return f"{folder}:{existing}" if existing else folder


class LocalBackend(Backend[LocalRun]):
    """Runs jobs as local process groups under ``data_dir/jobs``."""

    def __init__(self, data_dir: Path) -> None:
        # Absolute: a job's supervisor runs in the job's own working directory and writes its
        # pid and exit files under this path, so a relative one would point somewhere else.
        self._data_dir = data_dir.absolute()
        self._base_env = dict(os.environ)

    def _environment(self, job: Job, output: Path) -> dict[str, str]:
        env = {**self._base_env, **job.spec.env}
        env["FETCHML_JOB_ID"] = str(job.id)
        env["FETCHML_ATTEMPT"] = str(job.attempts)
        env["FETCHML_OUTPUT_DIR"] = str(output)
        env["FETCHML_TRACK_FILE"] = str(track_path(self._data_dir, job.id))
        env.update(dataset_env(job))
        if job.spec.snapshot is not None:
            env["FETCHML_SNAPSHOT_ID"] = job.spec.snapshot
            # The project's root on the import path, as an editable install of it would be, so
            # a script in a subfolder imports the project's packages as it does locally.
            env["PYTHONPATH"] = _prepend(str(work_dir(self._data_dir, job.id)), env)
        # An empty list hides every GPU: a job sees exactly the devices it was given.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in job.gpus)
        return env

    def _spawn(self, job: Job) -> LocalRun:
        """Create the job's folders and start its supervisor.  Blocks for about a process start.

        Runs on a worker thread (see :meth:`start`): ``subprocess`` lets go of the GIL while the
        new process execs (``os.posix_spawn`` holds it throughout), and creating the folders can
        take milliseconds on a busy disk, so neither stalls the event loop.
        """
        directory = job_dir(self._data_dir, job.id)
        output = directory / "output"
        output.mkdir(parents=True, exist_ok=True)
        if job.spec.snapshot is not None:
            # The working copy the executor made; the spec's cwd is a folder inside it.
            work = directory / "work"
            cwd = str(work / job.spec.cwd) if job.spec.cwd else str(work)
        else:
            cwd = job.spec.cwd or str(output)
        argv = ["/bin/sh", "-c", _SUPERVISOR, "fetchml-job", str(directory), str(job.attempts)]
        argv += [cwd, *job.spec.argv()]
        log_fd = os.open(directory / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            # restore_signals resets SIGPIPE and SIGXFSZ, which Python ignores and an ignored
            # disposition would survive exec; start_new_session makes it a session leader.
            process = subprocess.Popen(
                argv,
                executable="/bin/sh",
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=self._environment(job, output),
                start_new_session=True,
                restore_signals=True,
            )
        finally:
            os.close(log_fd)
        # The supervisor is waited for (pidfd) and reaped (_reap) by this backend, not through
        # the Popen object: mark that finished, so it neither reaps the child nor warns about it
        # when it is collected.
        process.returncode = 0
        pid = process.pid
        return LocalRun(job.id, job.attempts, pid, os.pidfd_open(pid), True, directory)

    async def start(self, job: Job) -> LocalRun:
        return await self.start_then(job, _nothing)

    async def start_then(self, job: Job, after: Callable[[], None]) -> LocalRun:
        """Start the run and call ``after`` in the same worker thread.  Raises
        :class:`JobStartError` when the supervisor cannot be started."""

        def spawn_then() -> LocalRun:
            run = self._spawn(job)
            try:
                after()
            except Exception as exc:  # the run is going: never report it as not started
                report_internal_error("executor", exc, f"after starting job {job.id}")
            return run

        try:
            return await trio.to_thread.run_sync(spawn_then)
        except (OSError, subprocess.SubprocessError) as exc:
            raise JobStartError(f"cannot start job {job.id}: {exc}") from None

    async def adopt(self, job: Job) -> LocalRun | Ended:
        directory = job_dir(self._data_dir, job.id)
        attempt = job.attempts
        pid = _read_int(directory / f"pid.{attempt}")
        if pid is None and not (directory / f"exit.{attempt}").exists():
            pid = _find_supervisor(job.id, attempt, directory / "output")
        if pid is not None and _is_our_run(pid, job.id, attempt):
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                pass
            else:
                # Re-check after opening: the pid could have been reused in between.
                if _is_our_run(pid, job.id, attempt):
                    return LocalRun(job.id, attempt, pid, pidfd, False, directory)
                os.close(pidfd)
        _kill_leftovers(job.id, attempt, directory / "output")
        return Ended(_read_int(directory / f"exit.{attempt}"))

    async def wait(self, run: LocalRun) -> int | None:
        await trio.lowlevel.wait_readable(run.pidfd)
        trio.lowlevel.notify_closing(run.pidfd)
        os.close(run.pidfd)
        run.pidfd = -1
        if run.own_child:
            # The supervisor is a zombie until reaped, so its pid (the group id) cannot be reused
            # yet: kill whatever the job left running in its group, then reap.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGKILL)
            _reap(run.pid)
        else:
            # Not our child: it is reaped elsewhere and its pid may already be reused, so find
            # what the job left behind by its environment instead of by group id.
            _kill_leftovers(run.job_id, run.attempt, run.directory / "output")
        run.ended.set()
        return _read_int(run.directory / f"exit.{run.attempt}")

    async def terminate(self, run: LocalRun, grace: float) -> None:
        # A SIGTERM that lands before the job's program is exec'd is swallowed by the
        # supervisor's trap (in the supervisor, or in its forked copy before exec) and never
        # reaches the job, which would then only die by SIGKILL after the grace.  A run is in
        # that state for about a process start, so wait that out first.
        with trio.move_on_after(min(grace, _SETTLE_S)):
            while not _settled(run.pid):
                if run.ended.is_set():
                    return
                await trio.sleep(_SETTLE_POLL_S)
        if run.ended.is_set():
            return
        if not _signal_group(run.pid, signal.SIGTERM):
            return
        with trio.move_on_after(grace):
            await run.ended.wait()
            return
        _signal_group(run.pid, signal.SIGKILL)

    def root_pid(self, run: LocalRun) -> int | None:
        return run.pid

    def release(self, run: LocalRun) -> None:
        """Release the run's pid file descriptor; the run goes on (server shutting down)."""
        if run.pidfd != -1:
            trio.lowlevel.notify_closing(run.pidfd)
            os.close(run.pidfd)
            run.pidfd = -1


def _nothing() -> None:
    """What :meth:`LocalBackend.start` does after a start: nothing."""


# Most time terminate waits for a just-started run to exec its job, and how often it looks.
_SETTLE_S = 1.0
_SETTLE_POLL_S = 0.002


def _settled(pid: int) -> bool:
    """Whether a signal to the group of supervisor ``pid`` now reaches the job's program.

    True once the supervisor has a child that is no longer a copy of itself (it has exec'd the
    job), or when that cannot be told (no such pid, no ``/proc`` children list).
    """
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    for child in children:
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() != own:
                return True
        except OSError:
            continue
    return False


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        if exc.errno == errno.EPERM:
            return False
        raise
    return True


def _reap(pid: int) -> None:
    """Collect the exit of our child ``pid``, already a zombie, so it does not linger."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
