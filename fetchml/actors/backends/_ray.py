"""The Ray executor backend: each run of a job is one Ray job, submitted through the Job API.

Fetch ML keeps the queue, priorities, per-user limits and admission (the scheduler starts only
what fits the cluster's resources, re-read every ``capacity_interval_s``); Ray places and runs
each job on a node.  A run is submitted with the submission id
``fetchml-<instance>-<job id>-<attempt>``: ``<instance>`` is made once per data dir (the file
``ray-instance``), so two servers, or one whose data dir was wiped, never share an id, and a
submit that is retried (after a lost reply or a server restart) finds the run already there
instead of starting it twice.

Per job, under ``<data_dir>/jobs/<id>/``: ``log`` (appended across attempts, as for the local
backend) and ``ray.<attempt>``, the size the log had when the attempt started, so that a server
that restarts knows how much of the attempt's Ray log it has copied already.

The cluster may go away.  Then starts fail with :class:`BackendUnavailableError` (the job is
requeued without spending a retry), the capacity reads as none (nothing else starts), and runs
keep their state: :meth:`RayBackend.wait` keeps asking until the cluster answers again.  A run
the cluster no longer knows (a new cluster) ends without an exit status and is requeued.

Every blocking Ray call runs in a worker thread (at most :data:`RAY_THREADS` at once); log
streams run on one asyncio thread (:mod:`._ray_logs`).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from ..._config import RaySettings
from ..._models import Job, JobSpec
from ...artifacts import UPLOADER, run_token
from ...errors import BackendUnavailableError, ConfigError, JobStartError
from ...tracking import TRACK_FINAL_S, TRACK_SEND_S, TRACK_SENDER
from ._base import Backend, Capacity, Ended, dataset_env
from ._local import job_dir, log_path, work_dir
from ._ray_client import (
    RayClient,
    RayDuplicate,
    RayError,
    RayJobInfo,
    RayNotFound,
    RayRejected,
    RayUnavailable,
    Submission,
    load_ray,
)
from ._ray_logs import LogPump, LogTail

__all__ = ["RAY_THREADS", "RayBackend", "RayRun", "entrypoint", "submission_id"]

log = logging.getLogger("fetchml.ray")

T = TypeVar("T")

# Blocking Ray client calls in flight at once (each one HTTP request).
RAY_THREADS = 8
INSTANCE_FILE = "ray-instance"
_MIB = 1 << 20
# Longest wait, once Ray says a run ended, for its log stream to deliver the rest.
_DRAIN_S = 10.0
# Below this many bytes of log copied, the end of an ended run's log is fetched in one response.
_FETCH_MAX = 1 << 20
_SIGTERM_EXIT = 128 + 15


def submission_id(instance: str, job_id: int, attempt: int) -> str:
    """The Ray submission id of attempt ``attempt`` of job ``job_id``."""
    return f"fetchml-{instance}-{job_id}-{attempt}"


def entrypoint(spec: JobSpec, results: bool = False) -> str:
    """The shell command Ray runs (with ``/bin/sh -c``) for ``spec``: its argv, safely quoted.

    ``exec`` so that Ray's stop signal reaches the job itself; ``cd`` first when ``cwd`` is set
    (inside the snapshot's working copy, when the job has one, whose root goes on
    ``PYTHONPATH``).  With ``results`` the job runs
    in a subshell with ``FETCHML_OUTPUT_DIR`` and ``FETCHML_TRACK_FILE`` on the node, while
    :data:`~fetchml.tracking.TRACK_SENDER` sends the track file's lines to the server; when the
    job ends, the sender is told to send the rest (the ``.end`` file) and waited for, then the
    output folder is sent (:data:`~fetchml.artifacts.UPLOADER`; both programs are given in the
    environment with their settings, :meth:`Results.env`), and only then is the run's own exit
    status returned: its metrics and outputs are in before the server hears that it ended.
    """
    command = "exec " + shlex.join(spec.argv())
    if spec.cwd:
        command = f"cd -- {shlex.quote(spec.cwd)} && {command}"
    if spec.snapshot is not None:
        # The working copy's root (Ray's working_dir) on the import path, as locally.
        command = f'PYTHONPATH="$PWD${{PYTHONPATH:+:$PYTHONPATH}}"; export PYTHONPATH; {command}'
    if not results:
        return command
    return (
        'FETCHML_OUTPUT_DIR="$PWD/.fetchml-output"; export FETCHML_OUTPUT_DIR; '
        'mkdir -p "$FETCHML_OUTPUT_DIR"; '
        # A file of this run's own (two runs may share a node and a cwd), on the node's disk.
        'FETCHML_TRACK_FILE=$(mktemp "${TMPDIR:-/tmp}/fetchml-track.XXXXXXXX") '
        '|| FETCHML_TRACK_FILE="$PWD/.fetchml-track.jsonl"; export FETCHML_TRACK_FILE; '
        'python3 -I -c "$FETCHML_TRACK_SENDER" & t=$!; '
        f"( {command} ); s=$?; "
        ': > "$FETCHML_TRACK_FILE.end"; '
        "wait $t || echo '[fetchml] some metrics could not be sent to the server' >&2; "
        'python3 -I -c "$FETCHML_UPLOADER" '
        "|| echo '[fetchml] the outputs could not be sent to the server' >&2; "
        "exit $s"
    )


@dataclass(frozen=True, slots=True)
class Results:
    """Where a run on a node sends its metrics and outputs back, and the token that lets it."""

    url: str
    job_id: int
    attempt: int
    token: str
    part_bytes: int
    system_interval_s: float = 0.0  # how often the sender samples the job (0: never)

    def env(self) -> dict[str, str]:
        """The environment the uploader and the track sender read (the token never goes on a
        command line)."""
        return {
            "FETCHML_UPLOADER": UPLOADER,
            "FETCHML_TRACK_SENDER": TRACK_SENDER,
            "FETCHML_RESULTS_URL": self.url,
            "FETCHML_RUN_TOKEN": self.token,
            "FETCHML_PART_BYTES": str(self.part_bytes),
            "FETCHML_TRACK_SEND_S": str(TRACK_SEND_S),
            "FETCHML_TRACK_FINAL_S": str(TRACK_FINAL_S),
            "FETCHML_SYSTEM_INTERVAL_S": str(self.system_interval_s),
        }


def _instance_id(data_dir: Path) -> str:
    """This data dir's instance id, made on first use.  Blocks on small file operations."""
    path = data_dir / INSTANCE_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        text = path.read_text().strip()
        if text.isalnum():
            return text
        raise ConfigError(f"{path}: not a Fetch ML instance id: {text!r}") from None
    instance = secrets.token_hex(6)
    with os.fdopen(fd, "w") as file:
        file.write(instance + "\n")
        file.flush()
        os.fsync(file.fileno())
    return instance


@dataclass(eq=False, slots=True)
class RayRun:
    """One attempt of a job as a Ray job.  ``written``: bytes of its log in the log file."""

    job_id: int
    attempt: int
    submission_id: str
    log: Path
    written: int = 0
    tail: LogTail | None = None
    ended: trio.Event = field(default_factory=trio.Event)


class RayBackend(Backend[RayRun]):
    """Runs jobs on the Ray cluster of ``settings.address``.  Make it with :meth:`create`."""

    def __init__(
        self,
        data_dir: Path,
        settings: RaySettings,
        client: RayClient,
        instance: str,
        *,
        part_bytes: int = 8 << 20,
        system_interval_s: float = 0.0,
    ) -> None:
        """``system_interval_s``: how often a run's track sender samples its processes and
        GPUs on the node (0: never; only with ``settings.callback_url``)."""
        self._data_dir = data_dir
        self._part_bytes = part_bytes
        self._system_interval_s = system_interval_s
        self.host = f"ray cluster at {settings.address}"
        self._settings = settings
        self._client = client
        self._instance = instance
        self._ray_calls = trio.CapacityLimiter(RAY_THREADS)
        self._pump = LogPump(client.tail)
        self.capacity_refresh_s = settings.capacity_interval_s

    @classmethod
    async def create(
        cls,
        data_dir: Path,
        settings: RaySettings,
        *,
        part_bytes: int = 8 << 20,
        system_interval_s: float = 0.0,
    ) -> RayBackend:
        """Import Ray and read (or make) the data dir's instance id, in a worker thread.

        Does not need the cluster.  Raises :class:`ConfigError` if Ray is not installed.
        """

        def prepare() -> str:
            try:
                load_ray()
            except ImportError as exc:
                raise ConfigError(
                    f"executor.backend is ray, but Ray cannot be imported ({exc}); "
                    "install it with: pip install 'fetchml[ray]'"
                ) from None
            return _instance_id(data_dir)

        instance = await trio.to_thread.run_sync(prepare)
        client = RayClient(settings.address, timeout=settings.request_timeout_s)
        return cls(
            data_dir,
            settings,
            client,
            instance,
            part_bytes=part_bytes,
            system_interval_s=system_interval_s,
        )

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking Ray client call in a worker thread; raises what it raises.

        Cancelling the wait abandons the call (it ends by its request timeout).
        """
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args), limiter=self._ray_calls, abandon_on_cancel=True
        )

    # --- capacity ------------------------------------------------------------------------

    async def capacity(self) -> Capacity:
        """The cluster's alive nodes' resources, or none (with the reason) if it is unreachable.

        Waits on one Ray request.
        """
        try:
            cpus, memory, gpus = await self._call(self._client.resources)
        except RayError as exc:
            return Capacity.unavailable(f"ray cluster unreachable: {exc}")
        return Capacity(cpus, memory // _MIB, gpus)

    # --- start and adopt -----------------------------------------------------------------

    def _run(self, job: Job, *, new: bool) -> RayRun:
        """The run of attempt ``job.attempts``.  ``new``: record where its log starts.

        Blocks on small local file operations (cheaper inline than a thread hop).
        """
        directory = job_dir(self._data_dir, job.id)
        directory.mkdir(parents=True, exist_ok=True)
        path = log_path(self._data_dir, job.id)
        size = path.stat().st_size if path.exists() else 0
        marker = directory / f"ray.{job.attempts}"
        run = RayRun(
            job.id, job.attempts, submission_id(self._instance, job.id, job.attempts), path
        )
        if new:
            marker.write_text(f"{size}\n")
        else:
            try:
                start = int(marker.read_text().strip())
            except (OSError, ValueError):
                start = size
            run.written = max(0, size - start)
        return run

    def _submission(self, job: Job, run: RayRun, token: str | None) -> Submission:
        spec = job.spec
        env = {**spec.env, "FETCHML_JOB_ID": str(job.id), "FETCHML_ATTEMPT": str(job.attempts)}
        env.update(dataset_env(job))
        working_dir = None
        if spec.snapshot is not None:
            env["FETCHML_SNAPSHOT_ID"] = spec.snapshot
            working_dir = str(work_dir(self._data_dir, job.id))
        results = None
        if self._settings.callback_url and token is not None:
            results = Results(
                self._settings.callback_url.rstrip("/"),
                job.id,
                job.attempts,
                token,
                self._part_bytes,
                self._system_interval_s,
            )
            env.update(results.env())
        metadata = {
            "fetchml_job_id": str(job.id),
            "fetchml_attempt": str(job.attempts),
            "fetchml_user": job.user,
        }
        if spec.name:
            metadata["fetchml_name"] = spec.name
        return Submission(
            submission_id=run.submission_id,
            entrypoint=entrypoint(spec, results is not None),
            env=env,
            cpus=spec.resources.cpus,
            gpus=spec.resources.gpus,
            memory_bytes=spec.resources.memory_mb * _MIB,
            metadata=metadata,
            working_dir=working_dir,
        )

    async def start(self, job: Job) -> RayRun:
        """Submit attempt ``job.attempts`` as a Ray job; a duplicate id means it is there already.

        Waits on one Ray request (and a thread making the attempt's run token).  Raises
        :class:`BackendUnavailableError` (cluster unreachable) or :class:`JobStartError` (the
        cluster refused it, or the run's files cannot be written).
        """
        try:
            run = self._run(job, new=True)
            token = None
            if self._settings.callback_url:
                # In a thread: made once per attempt, it is written and fsynced.
                where = job_dir(self._data_dir, job.id)
                token = await trio.to_thread.run_sync(run_token, where, job.attempts)
        except OSError as exc:
            raise JobStartError(f"cannot start job {job.id}: {exc}") from None
        try:
            await self._call(self._client.submit, self._submission(job, run, token))
        except RayDuplicate:
            log.info(
                "job %d: %s is on the cluster already; following it", job.id, run.submission_id
            )
        except RayUnavailable as exc:
            raise BackendUnavailableError(f"ray cluster unavailable: {exc}") from None
        except RayError as exc:
            raise JobStartError(f"ray refused job {job.id}: {exc}") from None
        return run

    async def adopt(self, job: Job) -> RayRun | Ended:
        """Find the attempt on the cluster by its submission id.

        Running: follow it.  Ended: copy the rest of its log, then its exit code.  Unknown to the
        cluster: ``Ended(None)``.  Cluster unreachable: follow it anyway (:meth:`wait` keeps
        asking).  Waits on Ray requests and, for an ended run, on its log stream.
        """
        run = self._run(job, new=False)
        try:
            info = await self._call(self._client.info, run.submission_id)
        except RayNotFound:
            return Ended(None)
        except (RayUnavailable, RayRejected) as exc:
            log.warning("job %d: cannot check %s now (%s)", job.id, run.submission_id, exc)
            return run
        if info.terminal:
            await self._drain(run)
            return Ended(_exit_code(run, info))
        return run

    # --- following -----------------------------------------------------------------------

    async def wait(self, run: RayRun) -> int | None:
        """Follow the run until Ray says it ended; its exit code (None: the cluster lost it).

        Waits on a status request every ``poll_interval_s``; while the cluster is unreachable it
        keeps asking, for as long as it takes.  Once Ray says the run goes on, its log is
        streamed into the log file (a run over by the first answer, as most short ones, never
        needs a stream: its log is fetched at once).  Raises nothing but trio.Cancelled.
        """
        reachable, going = True, False
        while True:
            tail = self._live_tail(run, reachable and going)
            with trio.move_on_after(self._settings.poll_interval_s):
                if tail is None:
                    await trio.sleep_forever()
                else:
                    await tail.done.wait()
            try:
                info = await self._call(self._client.info, run.submission_id)
            except RayNotFound:
                self._stop_tail(run)
                _note(run, f"the Ray cluster no longer knows {run.submission_id}")
                run.ended.set()
                return None
            except (RayUnavailable, RayRejected) as exc:
                if reachable:
                    log.warning(
                        "job %d: lost touch with %s: %s", run.job_id, run.submission_id, exc
                    )
                reachable = False
                self._stop_tail(run)
                continue
            if not reachable:
                log.info("job %d: %s is %s", run.job_id, run.submission_id, info.status)
            reachable = going = True
            if info.terminal:
                await self._drain(run)
                run.ended.set()
                return _exit_code(run, info)

    def _live_tail(self, run: RayRun, wanted: bool) -> LogTail | None:
        """The run's log stream, (re)started if ``wanted`` and need be; else None.

        A stream that ended early is restarted at most once per poll interval.
        """
        tail = run.tail
        if tail is not None and not tail.done.is_set():
            return tail
        if not wanted:
            return None
        if tail is not None:
            run.written = tail.position
            log.debug("job %d: log stream ended (%s)", run.job_id, tail.error or "job over")
            if trio.current_time() - tail.started_at < self._settings.poll_interval_s:
                return None
        run.tail = self._pump.follow(run.submission_id, run.log, run.written)
        return run.tail

    async def _drain(self, run: RayRun) -> None:
        """Once the run has ended: copy the rest of its log into the file.

        Ray's stream closes only 2-3 s after the job ends, and the run's resources stay held
        until it is reported.  So for a small log (less than :data:`_FETCH_MAX` bytes copied so
        far) the stream is stopped and the whole log fetched at once, the missing end appended;
        a larger one is left to its stream, for :data:`_DRAIN_S` at most.  Waits on the stream
        and on one Ray request; a failed request leaves the log short (and says so in it).
        """
        tail = run.tail
        if tail is not None and tail.position >= _FETCH_MAX:
            with trio.move_on_after(_DRAIN_S):
                await tail.done.wait()
            if tail.clean:
                run.written = tail.position
                return
        await self._stop_tail_now(run)
        try:
            text = await self._call(self._client.logs, run.submission_id)
        except RayError as exc:
            _note(run, f"the end of this run's log could not be fetched from Ray: {exc}")
            return
        data = text.encode()
        if len(data) > run.written:
            _append(run.log, data[run.written :])
            run.written = len(data)

    async def _stop_tail_now(self, run: RayRun) -> None:
        """Stop the run's log stream and wait until it has stopped writing (a moment)."""
        tail = run.tail
        if tail is None:
            return
        self._pump.cancel(tail)
        with trio.move_on_after(_DRAIN_S):
            await tail.done.wait()
        run.written = tail.position
        run.tail = None

    def _stop_tail(self, run: RayRun) -> None:
        if run.tail is not None:
            self._pump.cancel(run.tail)
            if run.tail.done.is_set():
                run.written = run.tail.position

    async def terminate(self, run: RayRun, grace: float) -> None:
        """Ask Ray to stop the run: Ray sends SIGTERM, then SIGKILL after the cluster's own grace
        (``RAY_JOB_STOP_WAIT_TIME_S``; ``grace`` cannot change it).

        Waits on Ray requests; while the cluster is unreachable, asks again every poll interval
        until it answers or the run has ended.
        """
        while not run.ended.is_set():
            try:
                await self._call(self._client.stop, run.submission_id)
            except RayNotFound:
                return
            except RayError as exc:
                log.warning("job %d: cannot stop %s yet: %s", run.job_id, run.submission_id, exc)
                with trio.move_on_after(self._settings.poll_interval_s):
                    await run.ended.wait()
            else:
                return

    def release(self, run: RayRun) -> None:
        """Stop copying the run's log; the run goes on (server stopping).  Idempotent."""
        self._stop_tail(run)


def _exit_code(run: RayRun, info: RayJobInfo) -> int:
    """The exit code a run that Ray says has ended counts as.

    SUCCEEDED: 0.  FAILED: the driver's exit code, else 1 (Ray's message goes to the log).
    STOPPED: the driver's, else 143 (as for SIGTERM).  Negative codes (killed by signal N) are
    reported as 128 + N, as a shell would.
    """
    code = info.exit_code
    if info.status == "SUCCEEDED":
        return 0
    if code is not None and code < 0:
        code = 128 - code
    if info.status == "STOPPED":
        return _SIGTERM_EXIT if code is None else code
    if code is None or code == 0:
        _note(run, f"Ray job {run.submission_id} failed: {info.message or 'no reason given'}")
        return 1
    return code


def _note(run: RayRun, text: str) -> None:
    """Append a line from Fetch ML itself to the run's log.  Blocks on one small write."""
    _append(run.log, f"[fetchml] {' '.join(text.split())[:2000]}\n".encode())


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to the log file (errors only logged).  Blocks on one write."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except OSError as exc:
        log.warning("cannot write to %s: %s", path, exc)
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
