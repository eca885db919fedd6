"""Wiring the actors together, and :class:`Scheduler`, the handle programs use to talk to them.

``open_scheduler`` is the embedding API: an async context manager that opens the store, starts the
notifier, executor and scheduler actors in one nursery, and yields a :class:`Scheduler`.
``serve_actors`` runs the same actors as one task that a caller's nursery starts
(``nursery.start``), so the server can run its gateway as a sibling of the actors; its fallible
set-up, :func:`prepare_runtime`, comes first, outside any nursery.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from .._config import Config, discover_gpus, gpu_inventory, machine_memory_mb, make_config
from .._models import (
    Job,
    JobMatch,
    JobSpec,
    JobState,
    StatusReport,
    check_name,
    check_spec,
    validate_spec,
)
from ..datasets import DatasetRegistry, Datasets
from ..errors import (
    FetchMLError,
    InvalidRequestError,
    JobNotFoundError,
    SchedulerClosedError,
    StoreError,
)
from ..snapshots import Snapshots
from ..store import Store
from ..tracking import (
    METRIC_WATCH_BUFFER,
    TRACKER_INBOX_SIZE,
    MetricFeed,
    MetricWatch,
    RunEnded,
    RunStarted,
    Sampler,
    Tracker,
    TrackingStore,
)
from ._executor import EXECUTOR_INBOX_SIZE, Executor
from ._logs import follow_log
from ._messages import (
    BackendCapacity,
    Cancel,
    Envelope,
    Failure,
    GetStatus,
    JobReply,
    Message,
    StatusReply,
    Submit,
    call,
)
from ._notifier import NOTIFIER_INBOX_SIZE, Notifier
from ._prune import PruneReport, prune
from ._queue import Pool
from ._records import RunRecords
from ._scheduler import SCHEDULER_INBOX_SIZE, SchedulerActor
from ._subscription import DEFAULT_BUFFER, Subscription
from .backends import Backend, Capacity, LocalBackend, log_path

__all__ = ["Runtime", "Scheduler", "open_scheduler", "prepare_runtime", "serve_actors"]

T = TypeVar("T")


def _sampler() -> Sampler | None:
    """The system-metrics sampler (psutil, ``nvidia-smi``), or None where it cannot load."""
    try:
        from ..tracking import SystemSampler
    except ImportError as exc:
        logging.getLogger("fetchml.tracker").warning("no system metrics: %s", exc)
        return None
    return SystemSampler()


# Most jobs one list() returns.
MAX_LIST = 10_000


class Scheduler:
    """The handle to a running scheduler.  Every method may be called from any trio task.

    Methods raise :class:`SchedulerClosedError` once the scheduler has stopped.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        inbox: trio.MemorySendChannel[Envelope[Message]],
        notifier: trio.MemorySendChannel[Envelope[Message]],
        snapshots: Snapshots,
        tracking: TrackingStore,
        feed: MetricFeed,
        datasets: Datasets,
    ) -> None:
        self.config = config
        self._store = store
        self._inbox = inbox
        self._notifier = notifier
        self.snapshots = snapshots
        self.tracking = tracking
        self._feed = feed
        self.datasets = datasets

    async def submit(self, spec: JobSpec | Mapping[str, Any], *, user: str) -> Job:
        """Queue a job for ``user``; returns it once it is durably stored.

        Raises :class:`InvalidSpecError` naming the field for a bad spec (nothing is stored).
        Waits on the scheduler's inbox and on the commit.
        """
        return await self._submit(validate_spec(spec), user, None)

    async def submit_decoded(
        self, spec: JobSpec, *, user: str, visible_owners: tuple[str, ...] | None = None
    ) -> Job:
        """Queue a spec that msgspec decoded from the wire (decoding checked its types and
        bounds; a struct built in Python has had no such check: use :meth:`submit`).  Only the
        checks a schema cannot express run again.  ``visible_owners`` is whose jobs ``user`` may
        name in ``depends_on`` (None: anyone's); another's is refused as unknown.

        Raises and waits as :meth:`submit` does.
        """
        return await self._submit(check_spec(spec), user, visible_owners)

    async def _submit(self, spec: JobSpec, user: str, visible: tuple[str, ...] | None) -> Job:
        _check_user(user)
        if spec.snapshot is not None:
            await self.snapshots.usable(spec.snapshot, user, any_owner=visible is None)
        spec = await self.datasets.resolve(spec)
        reply = await call(self._inbox, Submit(spec=spec, user=user, visible_owners=visible))
        return _job_of(reply)

    async def get(self, job_id: int) -> Job:
        """The job's current version.  Raises :class:`JobNotFoundError`."""
        job_id = _check_id(job_id)
        async with self._reading():
            job = await self._store.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    async def list(
        self,
        *,
        user: str | None = None,
        states: Iterable[JobState | str] | None = None,
        limit: int = 100,
        before_id: int | None = None,
        match: JobMatch | None = None,
    ) -> list[Job]:
        """Jobs newest first, optionally only ``user``'s, only in ``states``, only those
        ``match`` keeps (experiment, tag, name)."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequestError(f"limit: must be 1 to {MAX_LIST}", field="limit")
        try:
            wanted = None if states is None else [JobState(s) for s in states]
        except ValueError as exc:
            raise InvalidRequestError(f"states: {exc}", field="states") from None
        async with self._reading():
            return await self._store.list_jobs(
                user=user, states=wanted, limit=limit, before_id=before_id, match=match
            )

    async def states_of(self, job_ids: Iterable[int]) -> dict[int, tuple[JobState, str]]:
        """(state, owner) of each listed job that exists, in one store read per 500 ids.
        Raises :class:`SchedulerClosedError` once the scheduler has stopped."""
        async with self._reading():
            return await self._store.facts_of(job_ids)

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """Around a store read: once the store is closed, that is SchedulerClosedError."""
        if self._store.closed:
            raise SchedulerClosedError("the scheduler has stopped")
        try:
            yield
        except StoreError:
            if self._store.closed:
                raise SchedulerClosedError("the scheduler has stopped") from None
            raise

    async def cancel(self, job_id: int, *, user: str) -> Job:
        """Cancel a job on behalf of ``user``; returns it once it has ended.

        A queued job is cancelled at once.  A running one gets SIGTERM to its process group, then
        SIGKILL after the grace period, and is returned, ``cancelled``, when its process is gone
        (also if it happened to exit by itself meanwhile: it was asked to stop).  Raises
        :class:`JobNotFoundError`, or :class:`ConflictError` if it had already ended.
        """
        _check_user(user)
        reply = await call(self._inbox, Cancel(job_id=_check_id(job_id), user=user))
        return _job_of(reply, job_id)

    async def wait(self, job_id: int) -> Job:
        """Wait until the job reaches a terminal state and return it.

        Raises :class:`SchedulerClosedError` if the scheduler stops first.
        """
        job = await self.get(job_id)
        if job.terminal:
            return job
        async with self.subscribe(job_id=job_id, since=job.seq) as events:
            async for event in events:
                if event.job.terminal:
                    return event.job
        # The events ended: the scheduler is stopping.  Never hand back a job still running.
        job = await self.get(job_id)
        if job.terminal:
            return job
        raise SchedulerClosedError("the scheduler stopped before the job ended")

    def subscribe(
        self,
        *,
        job_id: int | None = None,
        user: str | None = None,
        since: int | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """Events of one job, of one user's jobs, or of all jobs, after ``since`` (None: from now).

        Use as ``async with scheduler.subscribe(...) as events: async for event in events``.
        """
        return Subscription(
            self._store, self._notifier, job_id=job_id, user=user, since=since, buffer=buffer
        )

    def watch_metrics(self, job_id: int, *, buffer: int = METRIC_WATCH_BUFFER) -> MetricWatch:
        """Job ``job_id``'s metric points from now on, in batches as they are committed.

        Use as ``async with scheduler.watch_metrics(7) as batches: async for points in
        batches``; each point is ``(name, step, value, time)``.  Raises
        :class:`SubscriberDroppedError` from the iteration if it falls more than ``buffer``
        batches behind (read the rest from ``scheduler.tracking``).
        """
        return self._feed.watch(job_id, buffer=buffer)

    async def status(self) -> StatusReport:
        """Queue counts and resource usage right now."""
        reply = await call(self._inbox, GetStatus())
        if isinstance(reply, StatusReply):
            return reply.report
        raise _unexpected(reply)

    async def prune(
        self, *, older_than_s: float, keep_last: int = 0, dry_run: bool = False
    ) -> PruneReport:
        """Remove the working copies and outputs of jobs that ended more than ``older_than_s``
        ago (but the ``keep_last`` most recent), and the snapshots and blobs nothing left needs;
        never what a queued or running job needs.  With ``dry_run``, only say what would go.
        Waits on the store and the file system."""
        async with self._reading():
            return await prune(
                self._store,
                self.snapshots,
                self.config.data_path,
                older_than_s=older_than_s,
                keep_last=keep_last,
                dry_run=dry_run,
            )

    def log_path(self, job_id: int) -> Path:
        """Where the job's stdout and stderr go (the file may not exist yet)."""
        return log_path(self.config.data_path, _check_id(job_id))

    def logs(self, job_id: int, *, offset: int = 0, follow: bool = False) -> AsyncIterator[bytes]:
        """The job's log from byte ``offset``, in chunks; with ``follow``, until the job ends."""
        return follow_log(self, job_id, offset=offset, follow=follow)


def _check_user(user: str) -> None:
    check_name(user, "user")


def _check_id(job_id: int) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise InvalidRequestError(f"job_id: not a job id: {job_id!r}", field="job_id")
    return job_id


def _job_of(reply: Message, job_id: int | None = None) -> Job:
    if isinstance(reply, JobReply):
        return reply.job
    raise _unexpected(reply, job_id)


def _unexpected(reply: Message, job_id: int | None = None) -> FetchMLError:
    if isinstance(reply, Failure):
        return reply.error(job_id=job_id)
    return FetchMLError(f"unexpected reply {type(reply).__name__}")


async def _make_backend(config: Config) -> Backend[Any]:
    """The backend ``executor.backend`` names.  Raises :class:`ConfigError` (Ray not installed)."""
    if config.executor.backend == "ray":
        from .backends._ray import RayBackend  # Ray itself is imported only now

        return await RayBackend.create(
            config.data_path,
            config.executor.ray,
            part_bytes=config.snapshots.part_bytes,
            system_interval_s=config.tracking.system_interval_s,
        )
    return LocalBackend(config.data_path)


async def _make_pool(config: Config, capacity: Capacity | None) -> Pool:
    """The pool of what jobs may use: the backend's capacity if it has one (a cluster), else
    the machine's; explicit ``scheduler`` settings win either way."""
    settings = config.scheduler
    if capacity is not None:
        cpus, memory, ids = capacity.limits(settings)
        return Pool(cpus, memory, ids, known=capacity.problem is None)
    if settings.gpus == "auto":
        gpus = await trio.to_thread.run_sync(discover_gpus)
    else:
        gpus = settings.gpus
    cpus = settings.cpus if settings.cpus is not None else float(os.cpu_count() or 1)
    memory = settings.memory_mb if settings.memory_mb is not None else machine_memory_mb()
    return Pool(cpus, memory, gpus)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the actors run on, made before any of them starts: the backend and the pool of
    resources it offers (with the backend's problem, if it cannot run anything now)."""

    backend: Backend[Any]
    pool: Pool
    snapshots: Snapshots
    tracking: TrackingStore
    datasets: Datasets
    problem: str | None = None
    gpu_names: dict[int, tuple[str, str]] = field(default_factory=dict)
    feed: MetricFeed = field(default_factory=MetricFeed)

    def close(self) -> None:
        """Close what the runtime opened (the snapshot and dataset registries, the tracking
        store).  Blocks briefly."""
        self.snapshots.close()
        self.tracking.close()
        self.datasets.close()


async def prepare_runtime(config: Config) -> Runtime:
    """The fallible part of starting the actors, done before a nursery opens, so that its
    errors reach the caller as they are.  Raises :class:`ConfigError` (a backend that cannot be
    used: Ray not installed) and :class:`StoreError` (the snapshot registry cannot be opened).
    Waits on the backend's first capacity read."""
    backend = await _make_backend(config)
    capacity = await backend.capacity()
    pool = await _make_pool(config, capacity)
    snapshots = await _open_store(
        "the snapshots",
        config,
        lambda: Snapshots(config.data_path, config.snapshots, synchronous=config.store.synchronous),
    )
    synchronous = config.store.synchronous
    try:
        tracking = await _open_store(
            "the tracking store",
            config,
            lambda: TrackingStore(config.data_path, synchronous=synchronous),
        )
    except BaseException:
        snapshots.close()
        raise
    try:
        registry = await _open_store(
            "the dataset registry",
            config,
            lambda: DatasetRegistry(config.data_path, synchronous=synchronous),
        )
    except BaseException:
        snapshots.close()
        tracking.close()
        raise
    names = await trio.to_thread.run_sync(gpu_inventory) if pool.gpu_ids else {}
    problem = None if capacity is None else capacity.problem
    return Runtime(backend, pool, snapshots, tracking, Datasets(registry), problem, names)


async def _open_store(what: str, config: Config, open_it: Callable[[], T]) -> T:
    """Open one of the server's SQLite files in ``data_dir``.  Raises :class:`StoreError`."""
    try:
        return await trio.to_thread.run_sync(open_it)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open {what} in {config.data_path}: {exc}") from None


async def serve_actors(
    config: Config,
    store: Store,
    runtime: Runtime,
    *,
    task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the notifier, executor and scheduler actors until cancelled.

    ``task_status.started`` gets the :class:`Scheduler` handle once the scheduler has recovered
    from the store and accepts work.  Cancelling stops the actors; running jobs keep running and
    are re-adopted on the next start.  Raises :class:`StoreError` if the store fails.
    """
    sched_send, sched_recv = trio.open_memory_channel[Envelope[Message]](SCHEDULER_INBOX_SIZE)
    if runtime.problem is not None:
        # So that the very first status says what is wrong.
        problem = BackendCapacity(cpus=0, memory_mb=0, gpus=0, problem=runtime.problem)
        sched_send.send_nowait(Envelope(problem))
    exec_send, exec_recv = trio.open_memory_channel[Envelope[Message]](EXECUTOR_INBOX_SIZE)
    note_send, note_recv = trio.open_memory_channel[Envelope[Message]](NOTIFIER_INBOX_SIZE)
    track_send, track_recv = trio.open_memory_channel[RunStarted | RunEnded](TRACKER_INBOX_SIZE)
    async with trio.open_nursery() as nursery:
        await nursery.start(Notifier(note_recv, store.last_seq).run)
        tracker = Tracker(runtime.tracking, config.tracking, track_recv, _sampler(), runtime.feed)
        await nursery.start(tracker.run)
        executor = Executor(
            runtime.backend,
            exec_recv,
            sched_send.clone(),
            kill_grace_s=config.executor.kill_grace_s,
            records=RunRecords(
                config.data_path,
                runtime.snapshots,
                gpu_names=runtime.gpu_names,
                host=runtime.backend.host,
                tracker=track_send,
            ),
        )
        await nursery.start(executor.run)
        actor = SchedulerActor(
            config, store, runtime.pool, sched_recv, exec_send, note_send.clone()
        )
        await nursery.start(actor.run)
        task_status.started(
            Scheduler(
                config,
                store,
                sched_send,
                note_send,
                runtime.snapshots,
                runtime.tracking,
                runtime.feed,
                runtime.datasets,
            )
        )


@asynccontextmanager
async def open_scheduler(
    config: Config | str | os.PathLike[str] | None = None, **settings: Any
) -> AsyncIterator[Scheduler]:
    """Run a scheduler for the duration of the ``async with`` block.

    ``config`` is a :class:`Config`, a path to a YAML file (``configs/server.yaml``) or None for
    the defaults; ``settings`` override single keys (``data_dir="runs"``, ``gpus=[0, 1]``,
    ``max_running_per_user=2``).  Raises :class:`ConfigError` or :class:`StoreError` on start,
    as they are (not in an exception group).  Leaving the block stops the actors but not the
    running jobs, which the next start re-adopts.
    """
    cfg = make_config(config, **settings)
    runtime = await prepare_runtime(cfg)
    try:
        store = await Store.open(cfg.data_path, synchronous=cfg.store.synchronous)
    except BaseException:
        runtime.close()
        raise
    try:
        async with trio.open_nursery() as nursery:
            scheduler: Scheduler = await nursery.start(serve_actors, cfg, store, runtime)
            try:
                yield scheduler
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The actors' nursery is this API's own business: what reaches the caller is the one
        # error inside it (the caller's own, or a StoreError), as it was raised.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
        runtime.close()
