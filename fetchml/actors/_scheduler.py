"""The scheduler actor: owns the queue, the resource pool and every job state change.

Its loop takes whatever requests and reports are waiting (up to :data:`MAX_PASS`), applies them to
its in-memory state, decides which jobs start, commits all of it in one store transaction (group
commit), and only then answers requests, publishes events and tells the executor what to start or
stop.  Nothing is acknowledged or announced before it is durable.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from .._config import Config
from .._faults import report_internal_error
from .._models import Job, JobEvent, JobSpec, JobState, StatusReport, check_spec
from ..errors import (
    ConflictError,
    FetchMLError,
    InternalError,
    InvalidSpecError,
    JobNotFoundError,
)
from ..store import Batch, Store, Unreadable, now, unreadable_job
from ._messages import (
    INTERNAL_MESSAGE,
    AdoptJob,
    BackendCapacity,
    Cancel,
    Envelope,
    Failure,
    GetStatus,
    JobExited,
    JobReply,
    Message,
    Publish,
    StartJob,
    StatusReply,
    StopJob,
    Submit,
)
from ._queue import Pool, RunQueue
from .backends import Capacity

__all__ = ["MAX_PASS", "SCHEDULER_INBOX_SIZE", "SchedulerActor"]

log = logging.getLogger("fetchml.scheduler")

# Submitters wait (back-pressure) when this many requests are waiting.
SCHEDULER_INBOX_SIZE = 1024
# Most messages applied in one pass, hence in one commit.
MAX_PASS = 512


@dataclass
class _Pass:
    """What one pass over the inbox produced, to be committed and then carried out."""

    batch: Batch = field(default_factory=Batch)
    replies: list[tuple[Envelope[Message], Message]] = field(default_factory=list)
    commands: list[StartJob | AdoptJob | StopJob] = field(default_factory=list)
    finished: dict[int, JobState] = field(default_factory=dict)
    known_states: dict[int, JobState] = field(default_factory=dict)
    # Owners of the jobs this pass refers to that are not in memory (ended, or read from the
    # store), for the visibility of dependencies.
    owners: dict[int, str] = field(default_factory=dict)


class SchedulerActor:
    """Start it with ``nursery.start(actor.run)``; talk to it through :class:`Envelope` messages."""

    def __init__(
        self,
        config: Config,
        store: Store,
        pool: Pool,
        inbox: trio.MemoryReceiveChannel[Envelope[Message]],
        executor: trio.MemorySendChannel[Envelope[Message]],
        notifier: trio.MemorySendChannel[Envelope[Message]],
    ) -> None:
        self._settings = config.scheduler
        self._store = store
        self._pool = pool
        self._inbox = inbox
        self._executor = executor
        self._notifier = notifier
        self._jobs: dict[int, Job] = {}  # every queued or running job
        self._queue = RunQueue()
        self._blocked: dict[int, set[int]] = {}  # job -> dependencies not yet succeeded
        self._dependents: dict[int, set[int]] = {}  # dependency -> jobs waiting on it
        self._running_by_user: Counter[str] = Counter()
        self._cancel_waiters: dict[int, list[Envelope[Message]]] = {}
        self._backend_name = config.executor.backend
        self._backend_status: str | None = None  # None while the backend works

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover from the store, then serve the inbox until it closes.

        Closes its inbox and its channels to the executor and notifier on exit.  Raises
        :class:`StoreError` if a commit fails (the server must stop rather than run on state it
        could not persist) and TypeError on a message it does not handle.
        """
        with self._inbox, self._executor, self._notifier:
            await self._recover()
            task_status.started()
            while True:
                try:
                    envelopes = [await self._inbox.receive()]
                except trio.EndOfChannel:
                    return
                while len(envelopes) < MAX_PASS:
                    try:
                        envelopes.append(self._inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._run_pass(envelopes)

    async def _run_pass(self, envelopes: list[Envelope[Message]]) -> None:
        """Apply, dispatch, commit, then answer and announce.  Waits on the store and channels.

        A message whose handling fails gets a :class:`Failure` reply (``internal_error`` for a
        fault of this code, logged and counted) and the pass goes on with the others.
        """
        facts = await self._prefetch(envelopes)
        step = _Pass(
            known_states={job_id: state for job_id, (state, _) in facts.items()},
            owners={job_id: owner for job_id, (_, owner) in facts.items()},
        )
        for envelope in envelopes:
            try:
                self._handle(envelope, step)
            except FetchMLError as exc:
                step.replies.append((envelope, Failure.of(exc)))
            except Exception as exc:
                report_internal_error("scheduler", exc, _about(envelope.msg), logger=log)
                step.replies.append((envelope, Failure.of(InternalError(INTERNAL_MESSAGE))))
        try:
            self._dispatch(step)
        except Exception as exc:
            report_internal_error("scheduler", exc, "dispatch", logger=log)
        await self._carry_out(step)

    async def _carry_out(self, step: _Pass) -> None:
        if step.batch:
            await self._store.commit(step.batch)
        for envelope, reply in step.replies:
            envelope.answer(reply)
        if step.batch.events:
            await self._notifier.send(Envelope(Publish(events=tuple(step.batch.events))))
        for command in step.commands:
            await self._executor.send(Envelope(command))

    async def _prefetch(
        self, envelopes: Iterable[Envelope[Message]]
    ) -> dict[int, tuple[JobState, str]]:
        """(state, owner) of the finished jobs this pass refers to (they live only in the
        store), read in one query."""
        wanted: set[int] = set()
        for envelope in envelopes:
            match envelope.msg:
                case Submit(spec=spec):
                    wanted.update(d for d in spec.depends_on if d not in self._jobs)
                case Cancel(job_id=job_id) if job_id not in self._jobs:
                    wanted.add(job_id)
        return await self._store.facts_of(wanted) if wanted else {}

    def _handle(self, envelope: Envelope[Message], step: _Pass) -> None:
        match envelope.msg:
            case Submit(spec=spec, user=user, visible_owners=visible):
                job = self._submit(spec, user, visible, step)
                step.replies.append((envelope, JobReply(job=job)))
            case Cancel(job_id=job_id, user=user):
                self._cancel(envelope, job_id, user, step)
            case JobExited() as exited:
                self._exited(exited, step)
            case GetStatus():
                step.replies.append((envelope, StatusReply(report=self._status())))
            case BackendCapacity() as capacity:
                self._resize(capacity)
            case other:
                raise TypeError(f"scheduler cannot handle {type(other).__name__}")

    # --- state changes ---------------------------------------------------------------------

    def _change(self, step: _Pass, job: Job, **changes: Any) -> Job:
        """Record a new version of ``job`` with a fresh seq and its event, in this pass.

        Raises (before anything changes) what storing it would raise: a value that cannot be
        encoded.
        """
        new: Job = msgspec.structs.replace(job, seq=self._store.allocate_seq(), **changes)
        step.batch.add(JobEvent(seq=new.seq, ts=now(), job=new))
        if new.terminal:
            self._jobs.pop(new.id, None)
            step.finished[new.id] = new.state
            step.owners[new.id] = new.user
            self._settle(step, new)
        else:
            self._jobs[new.id] = new
        return new

    def _owner_of(self, job_id: int, step: _Pass) -> str | None:
        job = self._jobs.get(job_id)
        return job.user if job is not None else step.owners.get(job_id)

    def _state_of(self, job_id: int, step: _Pass) -> JobState | None:
        job = self._jobs.get(job_id)
        if job is not None:
            return job.state
        return step.finished.get(job_id) or step.known_states.get(job_id)

    def _submit(
        self, spec: JobSpec, user: str, visible: tuple[str, ...] | None, step: _Pass
    ) -> Job:
        """Queue a new job.  Raises InvalidSpecError for resources this server cannot give and
        for a dependency that does not exist or whose owner is not in ``visible`` (None: any
        owner): both read "unknown job", so ``depends_on`` cannot probe other users' jobs."""
        problem = self._pool.check_feasible(spec.resources)
        if problem is not None:
            raise InvalidSpecError(problem, field=problem.split(":", 1)[0])
        for index, dep in enumerate(spec.depends_on):
            owner = self._owner_of(dep, step)
            if self._state_of(dep, step) is None or (visible is not None and owner not in visible):
                raise InvalidSpecError(
                    f"depends_on[{index}]: unknown job {dep}", field=f"depends_on[{index}]"
                )
        job = Job(
            id=self._store.allocate_job_id(),
            user=user,
            spec=spec,
            state=JobState.QUEUED,
            created_at=now(),
        )
        return self._enqueue(step, job, fresh=True)

    def _enqueue(self, step: _Pass, job: Job, *, fresh: bool) -> Job:
        """Queue ``job``, wait on its dependencies, or cancel it if one of them failed."""
        pending = set()
        for dep in job.spec.depends_on:
            state = self._state_of(dep, step)
            if state is not None and state.terminal and state is not JobState.SUCCEEDED:
                return self._change(
                    step, job, state=JobState.CANCELLED, reason=f"dependency {dep} {state.value}"
                )
            if state is not JobState.SUCCEEDED:
                pending.add(dep)
        if fresh:
            job = self._change(step, job)
        else:
            self._jobs[job.id] = job
        if pending:
            self._blocked[job.id] = pending
            for dep in pending:
                self._dependents.setdefault(dep, set()).add(job.id)
        else:
            self._queue.push(job)
        return job

    def _settle(self, step: _Pass, job: Job) -> None:
        """Consequences of ``job`` reaching a terminal state: waiters, dependents, queue."""
        self._queue.discard(job.id)
        for dep in self._blocked.pop(job.id, ()):
            self._dependents.get(dep, set()).discard(job.id)
        for envelope in self._cancel_waiters.pop(job.id, ()):
            step.replies.append((envelope, JobReply(job=job)))
        for dependent_id in sorted(self._dependents.pop(job.id, ())):
            dependent = self._jobs.get(dependent_id)
            if dependent is None:
                continue
            if job.state is not JobState.SUCCEEDED:
                self._change(
                    step,
                    dependent,
                    state=JobState.CANCELLED,
                    reason=f"dependency {job.id} {job.state.value}",
                )
                continue
            waiting = self._blocked.get(dependent_id)
            if waiting is not None:
                waiting.discard(job.id)
                if not waiting:
                    del self._blocked[dependent_id]
                    self._queue.push(dependent)

    def _cancel(self, envelope: Envelope[Message], job_id: int, user: str, step: _Pass) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            state = step.finished.get(job_id) or step.known_states.get(job_id)
            if state is None:
                raise JobNotFoundError(job_id)
            raise ConflictError(f"job {job_id} has already ended ({state.value})")
        if job.state is JobState.QUEUED:
            done = self._change(step, job, state=JobState.CANCELLED, reason=f"cancelled by {user}")
            step.replies.append((envelope, JobReply(job=done)))
            return
        self._cancel_waiters.setdefault(job_id, []).append(envelope)
        if not job.cancel_requested:
            self._change(step, job, cancel_requested=True, reason=f"cancelled by {user}")
            step.commands.append(StopJob(job_id=job_id, attempt=job.attempts))

    def _exited(self, exited: JobExited, step: _Pass) -> None:
        job = self._jobs.get(exited.job_id)
        if job is None or job.state is not JobState.RUNNING or job.attempts != exited.attempt:
            log.debug("ignoring a stale exit report for job %d", exited.job_id)
            return
        self._pool.give(job.spec.resources, job.gpus)
        self._running_by_user[job.user] -= 1
        if self._running_by_user[job.user] <= 0:
            del self._running_by_user[job.user]
        state, changes = self._outcome(job, exited)
        new = self._change(
            step,
            job,
            state=state,
            exit_code=exited.exit_code,
            finished_at=exited.finished_at,
            **changes,
        )
        if state is JobState.QUEUED:
            self._enqueue(step, new, fresh=False)

    def _resize(self, capacity: BackendCapacity) -> None:
        """Take the backend's new capacity; this pass's dispatch then starts what now fits."""
        cpus, memory, gpus = Capacity(
            capacity.cpus, capacity.memory_mb, capacity.gpus, capacity.problem
        ).limits(self._settings)
        self._pool.resize(cpus, memory, gpus, known=capacity.problem is None)
        if capacity.problem != self._backend_status:
            if capacity.problem is None:
                log.info("%s backend available again", self._backend_name)
            else:
                log.warning("%s backend: %s", self._backend_name, capacity.problem)
        self._backend_status = capacity.problem

    def _outcome(self, job: Job, exited: JobExited) -> tuple[JobState, dict[str, Any]]:
        """The state a run's end leads to, and the fields that change with it."""
        code = exited.exit_code
        if job.cancel_requested or exited.cause == "cancel":
            return JobState.CANCELLED, {"reason": job.reason or "cancelled"}
        if exited.cause == "unavailable":
            # Not started: the next start reuses the attempt number (and so finds the run, had
            # the request got through after all), and no retry is spent.
            reason = f"not started: {exited.detail or 'backend unavailable'}; requeued"
            return JobState.QUEUED, {"attempts": job.attempts - 1, "reason": reason}
        if exited.cause == "timeout":
            return JobState.TIMED_OUT, {"reason": f"timed out after {job.spec.timeout_s:g} s"}
        if exited.cause == "spawn_failed":
            return JobState.FAILED, {"reason": exited.detail or "could not start"}
        if exited.cause == "error":
            return JobState.FAILED, {"reason": exited.detail or "internal error"}
        if exited.cause == "vanished":
            if job.requeues < self._settings.max_requeues:
                reason = "the process vanished without an exit status; requeued"
                return JobState.QUEUED, {"requeues": job.requeues + 1, "reason": reason}
            return JobState.LOST, {
                "reason": f"the process vanished without an exit status "
                f"{job.requeues + 1} times; not requeued again"
            }
        if code == 0:
            return JobState.SUCCEEDED, {"reason": None}
        # Runs lost without an exit status (requeues) were started too, but spent no retry.
        if job.attempts - job.requeues <= job.spec.max_retries:
            reason = f"attempt {job.attempts} exited with code {code}; retrying"
            return JobState.QUEUED, {"reason": reason}
        return JobState.FAILED, {"reason": f"exited with code {code}"}

    def _dispatch(self, step: _Pass) -> None:
        if self._backend_status is not None:
            return  # the backend cannot start anything now (not even a job that needs nothing)
        picked = self._queue.pick(
            self._jobs,
            self._pool,
            self._running_by_user,
            max_per_user=self._settings.max_running_per_user,
            max_scan=self._settings.max_scan,
        )
        for job, gpus in picked:
            started = self._change(
                step,
                job,
                state=JobState.RUNNING,
                started_at=now(),
                finished_at=None,
                attempts=job.attempts + 1,
                exit_code=None,
                gpus=gpus,
            )
            step.commands.append(StartJob(job=started))

    def _status(self) -> StatusReport:
        counts: Counter[str] = Counter(job.state.value for job in self._jobs.values())
        queued: Counter[str] = Counter(
            job.user for job in self._jobs.values() if job.state is JobState.QUEUED
        )
        pool = self._pool
        return StatusReport(
            counts=dict(counts),
            running_by_user=dict(self._running_by_user),
            queued_by_user=dict(queued),
            cpus_total=pool.cpus,
            cpus_free=pool.cpus_free,
            memory_mb_total=pool.total_memory_mb,
            memory_mb_free=pool.free_memory_mb,
            gpus_total=list(pool.gpu_ids),
            gpus_free=list(pool.free_gpus),
            last_seq=self._store.last_seq,
            backend=self._backend_name,
            backend_status=self._backend_status,
        )

    # --- recovery --------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Rebuild memory from the store: queue the queued, re-adopt the running.

        Whatever is stored, this never raises for one job: a record that cannot be read is set
        aside (the job marked ``lost``), a queued job that can no longer start (its spec breaks
        today's rules, or it needs more than this server has) is marked ``failed`` with why.
        Waits on the store; commits what recovery decides, then dispatches.
        """
        active, unreadable = await self._store.load_active_records()
        self._jobs = {job.id: job for job in active}
        deps = {d for job in active for d in job.spec.depends_on if d not in self._jobs}
        step = _Pass(known_states=await self._store.states_of(deps) if deps else {})
        for bad in unreadable:
            self._set_aside(step, bad)
        for job in active:
            if job.state is JobState.RUNNING:
                self._pool.hold(job.spec.resources, job.gpus)
                self._running_by_user[job.user] += 1
                step.commands.append(AdoptJob(job=job))
                if job.cancel_requested:
                    step.commands.append(StopJob(job_id=job.id, attempt=job.attempts))
            elif job.id in self._jobs:
                self._recover_queued(step, job)
        self._dispatch(step)
        await self._carry_out(step)
        log.info(
            "recovered %d queued and %d running jobs",
            len(self._jobs) - sum(self._running_by_user.values()),
            sum(self._running_by_user.values()),
        )

    def _set_aside(self, step: _Pass, bad: Unreadable) -> None:
        """Mark a job whose record cannot be read ``lost``; the commit keeps the record apart."""
        log.warning(
            "job %d: its stored record cannot be read (%s); set aside", bad.job_id, bad.error
        )
        job = unreadable_job(bad.job_id, bad.user, bad.error, seq=self._store.allocate_seq())
        step.batch.set_aside[job.id] = bad.error
        step.batch.add(JobEvent(seq=job.seq, ts=now(), job=job))
        step.finished[job.id] = job.state

    def _recover_queued(self, step: _Pass, job: Job) -> None:
        """Queue a recovered job, or fail it if it could never start here."""
        try:
            check_spec(job.spec)
            problem = self._pool.check_feasible(job.spec.resources)
            reason = None if problem is None else f"cannot run on this server: {problem}"
        except InvalidSpecError as exc:
            reason = f"could not start: {exc.message}"
        if reason is None:
            self._enqueue(step, job, fresh=False)
            return
        log.warning("job %d: %s", job.id, reason)
        self._change(step, job, state=JobState.FAILED, finished_at=now(), reason=reason)


def _about(msg: Message) -> str:
    """What a message is about, for the log line of a fault while handling it."""
    match msg:
        case Submit(user=user):
            return f"submit by {user}"
        case Cancel(job_id=job_id, user=user):
            return f"cancel of job {job_id} by {user}"
        case JobExited(job_id=job_id, cause=cause):
            return f"end ({cause}) of job {job_id}"
        case _:
            return type(msg).__name__
