"""Live metric points: the tracker hands every committed batch of a run's points to the feed,
which passes it on to whoever watches that job, each on a bounded channel of its own.

Points are published only after they are durable, in the order they were logged, so what a
watcher sees is always a suffix of what ``GET /api/v1/jobs/{id}/metrics/{name}`` returns.  The
feed never waits: a watcher whose channel is full is dropped with a reason (it can read what it
missed from the store), so a slow watcher cannot hold up the tracker, and therefore neither the
ingest of other jobs.  A watch of a job that has not started yet simply waits for its points;
one of a job that ended waits for a retry (or until it is closed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

import trio

from ..errors import SubscriberDroppedError
from ._lines import Point

__all__ = ["METRIC_WATCH_BUFFER", "MetricFeed", "MetricWatch", "Point"]

log = logging.getLogger("fetchml.tracker")

# Batches a watcher may fall behind before it is dropped; the tracker publishes about one batch
# per job and ingest pass (tracking.ingest_interval_s), so this is more than a minute of them.
METRIC_WATCH_BUFFER = 256


@dataclass(eq=False, slots=True)
class _Sink:
    channel: trio.MemorySendChannel[list[Point]]
    reason: str | None = field(default=None)


class MetricWatch:
    """An async iterator of point batches of one job, and an async context manager that stops
    watching.  ``__anext__`` waits for the next committed batch; it raises
    :class:`SubscriberDroppedError` if the watcher fell more than its buffer behind, and
    ``StopAsyncIteration`` once closed."""

    def __init__(self, feed: MetricFeed, job_id: int, buffer: int) -> None:
        self._feed = feed
        self.job_id = job_id
        send, self._receive = trio.open_memory_channel[list[Point]](buffer)
        self._sink = _Sink(send)
        feed._add(job_id, self._sink)

    def __aiter__(self) -> MetricWatch:
        return self

    async def __anext__(self) -> list[Point]:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._sink.reason is not None:
                raise SubscriberDroppedError(self._sink.reason) from None
            raise StopAsyncIteration from None

    def pending(self) -> list[Point]:
        """The points of every batch already waiting, without waiting (empty if none)."""
        points: list[Point] = []
        while True:
            try:
                points.extend(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return points

    async def __aenter__(self) -> MetricWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching.  Idempotent; never blocks."""
        self._feed._remove(self.job_id, self._sink)
        self._receive.close()


class MetricFeed:
    """Who watches which job's points.  Lives on the event loop: every method is called from a
    trio task, never a worker thread."""

    def __init__(self) -> None:
        self._watchers: dict[int, set[_Sink]] = {}

    def watch(self, job_id: int, *, buffer: int = METRIC_WATCH_BUFFER) -> MetricWatch:
        """Start watching job ``job_id``'s points from now on."""
        return MetricWatch(self, job_id, buffer)

    def watching(self, job_id: int) -> bool:
        """Whether anyone watches ``job_id`` (so the tracker can skip building batches)."""
        return job_id in self._watchers

    def publish(self, job_id: int, points: Iterable[Point]) -> None:
        """Hand committed ``points`` of ``job_id`` to its watchers; drops any that are full."""
        sinks = self._watchers.get(job_id)
        if not sinks:
            return
        batch = list(points)
        if not batch:
            return
        for sink in list(sinks):
            try:
                sink.channel.send_nowait(batch)
            except trio.WouldBlock:
                log.info("dropping a metric watcher of job %d: it fell behind", job_id)
                sink.reason = (
                    f"the metric watcher of job {job_id} fell more than "
                    f"{sink.channel.statistics().max_buffer_size} batches behind; read what "
                    "it missed from the job's series"
                )
                self._remove(job_id, sink)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._remove(job_id, sink)

    def close(self) -> None:
        """End every watch (the server is stopping)."""
        for sinks in list(self._watchers.values()):
            for sink in sinks:
                sink.channel.close()
        self._watchers.clear()

    def _add(self, job_id: int, sink: _Sink) -> None:
        self._watchers.setdefault(job_id, set()).add(sink)

    def _remove(self, job_id: int, sink: _Sink) -> None:
        sink.channel.close()
        sinks = self._watchers.get(job_id)
        if sinks is None:
            return
        sinks.discard(sink)
        if not sinks:
            del self._watchers[job_id]
