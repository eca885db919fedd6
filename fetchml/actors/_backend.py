"""The executor backend interface: how a job's run is started, followed, stopped and re-adopted.

The executor actor owns policy (timeouts, cancel requests, reports to the scheduler); a backend
only knows how to drive runs on one kind of substrate (local processes, a Ray cluster).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Generic, TypeVar

from .._models import Job

__all__ = ["Backend", "Ended"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Ended:
    """A run found already over when adopted.  ``exit_code`` is None if no status was recorded."""

    exit_code: int | None


class Backend(abc.ABC, Generic[R]):
    """Drives runs of type ``R``.  One instance serves every job of one executor."""

    @abc.abstractmethod
    async def start(self, job: Job) -> R:
        """Start attempt ``job.attempts`` of ``job``.  Raises :class:`JobStartError`."""

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
