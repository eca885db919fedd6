"""The executor backend interface: how a job's run is started, followed, stopped and re-adopted.

The executor actor owns policy (timeouts, cancel requests, reports to the scheduler); a backend
only knows how to drive runs on one kind of substrate (local processes, a Ray cluster).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from ..._config import SchedulerSettings
from ..._models import Job

__all__ = ["Backend", "Capacity", "Ended", "dataset_env"]

R = TypeVar("R")


def dataset_env(job: Job) -> dict[str, str]:
    """``FETCHML_DATASET_<NAME>`` = the URI of each dataset the job's spec resolved to."""
    return {ref.env_name: ref.uri for ref in job.spec.dataset_refs}


@dataclass(frozen=True, slots=True)
class Ended:
    """A run found already over when adopted.  ``exit_code`` is None if no status was recorded."""

    exit_code: int | None


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a backend can run at once.  ``problem`` says why it can run nothing now (a cluster
    that cannot be reached); the totals are then zero."""

    cpus: float
    memory_mb: int
    gpus: int
    problem: str | None = None

    @classmethod
    def unavailable(cls, problem: str) -> Capacity:
        return cls(0.0, 0, 0, problem)

    def limits(self, settings: SchedulerSettings) -> tuple[float, int, tuple[int, ...]]:
        """(cpus, memory_mb, GPU ids) the scheduler may hand out: explicit settings win.

        An unreachable backend has nothing to hand out, whatever the settings say.
        """
        if self.problem is not None:
            return 0.0, 0, ()
        cpus = self.cpus if settings.cpus is None else settings.cpus
        memory = self.memory_mb if settings.memory_mb is None else settings.memory_mb
        gpus = tuple(range(self.gpus)) if settings.gpus == "auto" else tuple(settings.gpus)
        return cpus, memory, gpus


class Backend(abc.ABC, Generic[R]):
    """Drives runs of type ``R``.  One instance serves every job of one executor.

    A backend whose capacity changes (a cluster) sets :attr:`capacity_refresh_s`; the executor
    then calls :meth:`capacity` that often and tells the scheduler when the answer changes.
    """

    #: Seconds between capacity reads, or None: the capacity is fixed (config or machine).
    capacity_refresh_s: float | None = None
    #: Where runs happen, for run manifests (None: this machine).
    host: str | None = None

    async def capacity(self) -> Capacity | None:
        """What the backend can run at once now; None: the scheduler uses the config or machine.

        Never raises for an unreachable backend: it answers ``Capacity.unavailable(why)``.
        """
        return None

    @abc.abstractmethod
    async def start(self, job: Job) -> R:
        """Start attempt ``job.attempts`` of ``job``.

        Raises :class:`JobStartError`; :class:`BackendUnavailableError` when the backend cannot
        be reached (the job is requeued without spending a retry).
        """

    async def start_then(self, job: Job, after: Callable[[], None]) -> R:
        """Start the run as :meth:`start` does, then call ``after`` (blocking file work that
        must follow the start, such as writing the run's manifest) in a worker thread.

        ``after`` runs only once the run has started and must not raise.  A backend that starts
        runs in a worker thread of its own calls it in that same thread (one thread hop per start
        instead of two: each costs the event loop, see ``bench/bench_core_sequential.py``).
        Raises what :meth:`start` raises.
        """
        run = await self.start(job)
        await trio.to_thread.run_sync(after)
        return run

    @abc.abstractmethod
    async def adopt(self, job: Job) -> R | Ended:
        """Find attempt ``job.attempts`` of ``job``, started by an earlier server process."""

    @abc.abstractmethod
    async def wait(self, run: R) -> int | None:
        """Wait until the run ends; its exit code, or None if it left no exit status.

        Cancellable: cancelling the wait leaves the run going.
        """

    @abc.abstractmethod
    async def terminate(self, run: R, grace: float) -> None:
        """Ask the run to stop (SIGTERM or its equivalent), force it after ``grace`` seconds.

        Returns once the forced stop has been sent or the run is gone; :meth:`wait` reports the end.
        """

    @abc.abstractmethod
    def release(self, run: R) -> None:
        """Stop following ``run`` without affecting it (the server is stopping).  Idempotent."""

    def root_pid(self, run: R) -> int | None:
        """The pid of the run's process tree on this machine, to sample (None: elsewhere)."""
        return None
