"""Queue order and resource accounting, as plain data structures (no I/O, no trio).

Order: highest priority first, then lowest job id (submission order, so FIFO within a priority
and stable across restarts).  Placement: a job starts when its cpus, memory and GPUs fit what is
free.  The first job that does not fit reserves what it needs, so smaller jobs behind it may use
only what is left beyond that reservation (backfill that cannot starve the big job forever).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .._models import MAX_CPUS, Job, Resources

__all__ = ["Pool", "RunQueue"]

_MILLI = 1000
# Above any pool: a stored request beyond the spec's bounds (an infinite or huge cpus from an
# older version) counts as this much, so it never fits and never overflows the arithmetic.
_CPU_CAP = 10 * MAX_CPUS


def _milli(cpus: float) -> int:
    # Integer milli-cpus: sums of float cpus would drift and mis-fit after many jobs.
    if not cpus >= 0:  # negative or NaN
        return 0
    return round(min(cpus, _CPU_CAP) * _MILLI)


@dataclass(slots=True)
class _Need:
    cpus: int
    memory_mb: int
    gpus: int

    @classmethod
    def of(cls, resources: Resources) -> _Need:
        return cls(_milli(resources.cpus), resources.memory_mb, resources.gpus)


class Pool:
    """The resources jobs may use (the machine's, or a cluster's): totals, and what runs hold.

    Totals can change while jobs run (:meth:`resize`: a cluster gained or lost nodes, or
    vanished); what is free may then be negative until enough running jobs end.
    """

    def __init__(
        self, cpus: float, memory_mb: int, gpus: Iterable[int], *, known: bool = True
    ) -> None:
        self.total_cpus = _milli(cpus)
        self.total_memory_mb = memory_mb
        self.gpu_ids = tuple(sorted(set(gpus)))
        self.free_cpus = self.total_cpus
        self.free_memory_mb = memory_mb
        self.free_gpus: list[int] = list(self.gpu_ids)
        self._held_gpus: set[int] = set()
        # Totals that decide whether a job could ever run; None while they are unknown.
        self._limits: _Need | None = (
            _Need(self.total_cpus, memory_mb, len(self.gpu_ids)) if known else None
        )

    def fits(self, need: _Need, reserved: _Need | None = None) -> bool:
        r = reserved or _Need(0, 0, 0)
        # A resource the job does not ask for always fits, even when a waiting job has reserved
        # more of it than is free (else a job waiting for GPUs would hold up every CPU-only job).
        return (
            (need.cpus == 0 or need.cpus <= self.free_cpus - r.cpus)
            and (need.memory_mb == 0 or need.memory_mb <= self.free_memory_mb - r.memory_mb)
            and (need.gpus == 0 or need.gpus <= len(self.free_gpus) - r.gpus)
        )

    def take(self, resources: Resources) -> tuple[int, ...]:
        """Reserve ``resources`` (which must fit) and return the GPU ids handed out."""
        need = _Need.of(resources)
        self.free_cpus -= need.cpus
        self.free_memory_mb -= need.memory_mb
        gpus = tuple(self.free_gpus[: need.gpus])
        self._held_gpus.update(gpus)
        self._refresh_gpus()
        return gpus

    def hold(self, resources: Resources, gpus: Iterable[int]) -> None:
        """Account for a re-adopted run that already has ``gpus``."""
        need = _Need.of(resources)
        self.free_cpus -= need.cpus
        self.free_memory_mb -= need.memory_mb
        # Ids this pool does not hand out (the config changed) are none of its business.
        self._held_gpus.update(g for g in gpus if g in self.gpu_ids)
        self._refresh_gpus()

    def give(self, resources: Resources, gpus: Iterable[int]) -> None:
        """Return what a finished run held."""
        need = _Need.of(resources)
        self.free_cpus += need.cpus
        self.free_memory_mb += need.memory_mb
        self._held_gpus.difference_update(gpus)
        self._refresh_gpus()

    def resize(
        self, cpus: float, memory_mb: int, gpus: Iterable[int], *, known: bool = True
    ) -> None:
        """Change the totals; running jobs keep what they hold.

        ``known=False`` (the backend cannot be reached, the totals are zero for now) keeps the
        last known totals for :meth:`check_feasible`, so jobs can still be queued meanwhile.
        """
        used_cpus = self.total_cpus - self.free_cpus
        used_memory = self.total_memory_mb - self.free_memory_mb
        self.total_cpus = _milli(cpus)
        self.total_memory_mb = memory_mb
        self.free_cpus = self.total_cpus - used_cpus
        self.free_memory_mb = memory_mb - used_memory
        self.gpu_ids = tuple(sorted(set(gpus)))
        self._refresh_gpus()
        if known:
            self._limits = _Need(self.total_cpus, memory_mb, len(self.gpu_ids))

    def _refresh_gpus(self) -> None:
        # Held ids beyond the current totals (GPUs whose node left) still count as in use.
        room = max(0, len(self.gpu_ids) - len(self._held_gpus))
        self.free_gpus = [g for g in self.gpu_ids if g not in self._held_gpus][:room]

    def check_feasible(self, resources: Resources) -> str | None:
        """Why a job could never run here (field and reason), or None if it could (or the
        totals are unknown for now)."""
        limits = self._limits
        if limits is None:
            return None
        if _milli(resources.cpus) > limits.cpus:
            return (
                f"resources.cpus: {resources.cpus:g} requested, "
                f"this server has {limits.cpus / _MILLI:g}"
            )
        if resources.memory_mb > limits.memory_mb:
            return (
                f"resources.memory_mb: {resources.memory_mb} requested, "
                f"this server has {limits.memory_mb}"
            )
        if resources.gpus > limits.gpus:
            return f"resources.gpus: {resources.gpus} requested, this server has {limits.gpus}"
        return None

    @property
    def cpus(self) -> float:
        return self.total_cpus / _MILLI

    @property
    def cpus_free(self) -> float:
        return self.free_cpus / _MILLI


class RunQueue:
    """Queued jobs whose dependencies are met, in start order.

    A heap of ``(-priority, id)``; removal is lazy (the caller's ``jobs`` map says what is still
    queued), so cancel is O(1) and a pick pass skips the stale entries.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []
        self._ids: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def push(self, job: Job) -> None:
        if job.id not in self._ids:
            self._ids.add(job.id)
            heapq.heappush(self._heap, (-job.spec.priority, job.id))

    def discard(self, job_id: int) -> None:
        self._ids.discard(job_id)

    def pick(
        self,
        jobs: dict[int, Job],
        pool: Pool,
        running_by_user: Counter[str],
        *,
        max_per_user: int | None,
        max_scan: int,
    ) -> list[tuple[Job, tuple[int, ...]]]:
        """Remove and return the jobs to start now with their GPU ids, in order.

        Looks at ``max_scan`` live entries at most.  Takes the resources from ``pool`` and counts
        the starts in ``running_by_user``.
        """
        chosen: list[tuple[Job, tuple[int, ...]]] = []
        skipped: list[tuple[int, int]] = []
        reserved: _Need | None = None
        heap = self._heap
        scanned = 0
        while heap and scanned < max_scan:
            key = heapq.heappop(heap)
            if key[1] not in self._ids:
                continue
            scanned += 1
            job = jobs[key[1]]
            if max_per_user is not None and running_by_user[job.user] >= max_per_user:
                skipped.append(key)
                continue
            need = _Need.of(job.spec.resources)
            if pool.fits(need, reserved):
                self._ids.discard(job.id)
                chosen.append((job, pool.take(job.spec.resources)))
                running_by_user[job.user] += 1
            else:
                skipped.append(key)
                if reserved is None:
                    reserved = need
                if pool.free_cpus - reserved.cpus <= 0 and need.cpus > 0:
                    break  # nothing more with cpus > 0 can fit; zero-cpu jobs are rare
        for key in skipped:
            heapq.heappush(heap, key)
        return chosen
