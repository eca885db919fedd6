"""The executor actor: starts, follows, times out and stops runs through a backend.

It takes :class:`StartJob`, :class:`AdoptJob` and :class:`StopJob` from its inbox and reports
every end of a run as one :class:`JobExited` to the scheduler.  For a backend whose capacity
changes (a Ray cluster), it also reads the capacity periodically and reports each change as a
:class:`BackendCapacity`.  Its main loop never waits on the
scheduler (each run has its own task that does the reporting), so the scheduler can always hand it
work without a deadlock.  Cancelling the executor (server shutdown) stops following runs but never
stops the runs themselves: they are adopted again on the next start.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import trio

from .._faults import report_internal_error
from .._models import Job, spec_problem
from ..errors import BackendUnavailableError, JobStartError
from ._messages import (
    AdoptJob,
    BackendCapacity,
    Envelope,
    ExitCause,
    JobExited,
    Message,
    StartJob,
    StopJob,
)
from ._records import RunRecords
from .backends import Backend, Capacity, Ended

__all__ = ["EXECUTOR_INBOX_SIZE", "Executor"]

log = logging.getLogger("fetchml.executor")

# Commands from the scheduler; the main loop only spawns tasks, so it drains this fast.
EXECUTOR_INBOX_SIZE = 1024
# Ends of runs that never started (no manifest to complete).
_NOT_RUN = frozenset({"spawn_failed", "unavailable"})
# Beyond the kill grace, how long stopping a run after a fault may take.
_STOP_EXTRA_S = 5.0


@dataclass(slots=True)
class _Tracked:
    """A run the executor follows.  ``cause`` is set when the executor decided to stop it."""

    attempt: int
    run: Any = None
    cause: ExitCause | None = None


class Executor:
    """Owns the runs of one backend.  Start it with ``nursery.start(executor.run)``."""

    def __init__(
        self,
        backend: Backend[Any],
        inbox: trio.MemoryReceiveChannel[Envelope[Message]],
        reports: trio.MemorySendChannel[Envelope[Message]],
        *,
        kill_grace_s: float,
        records: RunRecords | None = None,
    ) -> None:
        self._backend = backend
        self._records = records
        self._inbox = inbox
        self._reports = reports
        self._grace = kill_grace_s
        self._runs: dict[int, _Tracked] = {}
        self._nursery: trio.Nursery | None = None
        self._capacity: Capacity | None = None  # the last one reported

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the inbox until it closes.  Closes the inbox and the report channel on exit.

        Raises TypeError on a message it does not handle (a programming error, loudly).
        """
        with self._inbox, self._reports:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._backend.capacity_refresh_s is not None:
                    nursery.start_soon(self._watch_capacity, self._backend.capacity_refresh_s)
                task_status.started()
                async for envelope in self._inbox:
                    try:
                        self._handle(envelope.msg, nursery)
                    except Exception as exc:
                        report_internal_error("executor", exc, type(envelope.msg).__name__)
                nursery.cancel_scope.cancel()

    def _handle(self, msg: Message, nursery: trio.Nursery) -> None:
        """Act on one command.  Raises TypeError for a message it does not handle (a
        programming error: reported loudly by the caller, which then goes on)."""
        match msg:
            case StartJob(job=job):
                self._follow(job, adopt=False, nursery=nursery)
            case AdoptJob(job=job):
                self._follow(job, adopt=True, nursery=nursery)
            case StopJob(job_id=job_id, attempt=attempt):
                self._stop(job_id, attempt, "cancel")
            case _:
                raise TypeError(f"executor cannot handle {type(msg).__name__}")

    def _follow(self, job: Job, *, adopt: bool, nursery: trio.Nursery) -> None:
        # Registered before the task runs, so a StopJob right behind this finds the run.
        self._runs[job.id] = _Tracked(job.attempts)
        nursery.start_soon(self._supervise, job, adopt, name=f"job-{job.id}")

    def _stop(self, job_id: int, attempt: int, cause: ExitCause) -> None:
        tracked = self._runs.get(job_id)
        if tracked is None or tracked.attempt != attempt or tracked.cause is not None:
            return
        tracked.cause = cause
        if tracked.run is not None:
            self._stop_now(tracked)

    async def _watch_capacity(self, interval: float) -> None:
        """Read the backend's capacity now and every ``interval`` s; report each change.

        Waits on the backend and on the scheduler's inbox; runs until cancelled.
        """
        with self._reports.clone() as reports:
            while True:
                try:
                    capacity = await self._backend.capacity()
                except Exception as exc:  # a backend's bug: report it, read again next time
                    report_internal_error("executor", exc, "reading the backend's capacity")
                    capacity = None
                if capacity is not None:
                    await self._report_capacity(capacity, reports)
                await trio.sleep(interval)

    async def _report_capacity(
        self, capacity: Capacity, reports: trio.MemorySendChannel[Envelope[Message]]
    ) -> None:
        """Tell the scheduler about ``capacity`` unless it was the last one told."""
        if capacity == self._capacity:
            return
        self._capacity = capacity
        await reports.send(
            Envelope(
                BackendCapacity(
                    cpus=capacity.cpus,
                    memory_mb=capacity.memory_mb,
                    gpus=capacity.gpus,
                    problem=capacity.problem,
                )
            )
        )

    async def _supervise(self, job: Job, adopt: bool) -> None:
        """Start or adopt one run, wait for its end (enforcing the timeout) and report it once.

        Waits on the backend and, to report, on the scheduler's inbox.
        """
        tracked = self._runs[job.id]
        with self._reports.clone() as reports:
            try:
                exited = await self._run_to_end(job, tracked, adopt, reports)
                if self._records is not None and exited.cause not in _NOT_RUN:
                    await self._records.finished(job, exited)
            except Exception as exc:
                exited = await self._fault(job, tracked, exc)
            finally:
                self._runs.pop(job.id, None)
            await reports.send(Envelope(exited))

    async def _fault(self, job: Job, tracked: _Tracked, exc: Exception) -> JobExited:
        """The end to report for a run whose following failed with a fault of ours (or of the
        backend's): reported as an internal error; the run, if there is one, is stopped (within
        the grace period), so it never goes on unaccounted for.  The job fails."""
        report_internal_error("executor", exc, f"job {job.id}, attempt {tracked.attempt}")
        if tracked.run is not None:
            with trio.move_on_after(self._grace + _STOP_EXTRA_S):
                await self._terminate(tracked.run)
        return JobExited(
            job_id=job.id,
            attempt=tracked.attempt,
            cause="error",
            finished_at=time.time(),
            detail="internal error while running the job (the details are in the server log)",
        )

    async def _run_to_end(
        self,
        job: Job,
        tracked: _Tracked,
        adopt: bool,
        reports: trio.MemorySendChannel[Envelope[Message]],
    ) -> JobExited:
        def exited(cause: ExitCause, code: int | None, detail: str | None = None) -> JobExited:
            return JobExited(
                job_id=job.id,
                attempt=tracked.attempt,
                cause=cause,
                exit_code=code,
                finished_at=time.time(),
                detail=detail,
            )

        try:
            run = await (self._backend.adopt(job) if adopt else self._start(job))
        except BackendUnavailableError as exc:
            log.warning("job %d not started: %s", job.id, exc.message)
            # First the capacity (none for now), so the requeued job is not started again at once.
            await self._report_capacity(Capacity.unavailable(exc.message), reports)
            return exited("unavailable", None, exc.message)
        except JobStartError as exc:
            log.warning("job %d: %s", job.id, exc.message)
            return exited("spawn_failed", None, exc.message)
        except Exception as exc:
            if adopt:
                raise  # whether the run goes on is unknown: a fault (see _fault)
            return exited("spawn_failed", None, _start_failure(job, exc))
        if isinstance(run, Ended):
            return exited("exit" if run.exit_code is not None else "vanished", run.exit_code)
        tracked.run = run
        if self._records is not None:
            await self._records.started(job, adopted=adopt, pid=self._backend.root_pid(run))
        try:
            code = await self._wait_enforcing_timeout(job, tracked)
        finally:
            self._backend.release(run)
        if tracked.cause is not None:
            return exited(tracked.cause, code)
        return exited("exit" if code is not None else "vanished", code)

    async def _start(self, job: Job) -> Any:
        """Prepare the run's records, then start it; its manifest is written by the thread that
        starts it.  Raises what the records' preparation and the backend's start raise."""
        if self._records is None:
            return await self._backend.start(job)
        await self._records.prepare(job)
        return await self._backend.start_then(job, self._records.manifest_writer(job))

    async def _wait_enforcing_timeout(self, job: Job, tracked: _Tracked) -> int | None:
        """Wait for the run's end; past the job's deadline, stop it and wait on."""
        if tracked.cause is not None:
            self._stop_now(tracked)
        with trio.move_on_at(_deadline(job)) as timeout:
            return await self._backend.wait(tracked.run)
        if timeout.cancelled_caught and tracked.cause is None:
            tracked.cause = "timeout"
            self._stop_now(tracked)
        return await self._backend.wait(tracked.run)

    def _stop_now(self, tracked: _Tracked) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._terminate, tracked.run)

    async def _terminate(self, run: Any) -> None:
        """Stop ``run`` through the backend (SIGTERM, then SIGKILL after the grace).  A fault
        of the backend's is reported, not raised: it must not end the executor."""
        try:
            await self._backend.terminate(run, self._grace)
        except Exception as exc:
            report_internal_error("executor", exc, "stopping a run")


def _start_failure(job: Job, exc: Exception) -> str:
    """Why ``job`` could not start, for its ``reason``, from what its start raised.

    A spec that today's validation refuses (stored by an older version) is named precisely and
    is the job's fault; anything else is a fault of the backend's, reported as internal.
    """
    problem = spec_problem(job.spec)
    if problem is not None:
        log.warning("job %d could not start: %s", job.id, problem[1])
        return f"could not start: {problem[1]}"
    report_internal_error("executor", exc, f"starting job {job.id}")
    return "could not start: internal error (the details are in the server log)"


def _deadline(job: Job) -> float:
    """The trio clock time at which the job's timeout expires (inf without a timeout)."""
    if job.spec.timeout_s is None or job.started_at is None:
        return math.inf
    remaining = job.started_at + job.spec.timeout_s - time.time()
    return trio.current_time() + remaining
