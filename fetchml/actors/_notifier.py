"""The notifier actor: fans committed events out to subscribers, each on its own bounded channel.

The scheduler publishes events only after they are committed, in seq order.  The notifier keeps
the most recent ones in a ring, so a subscriber resuming from a recent ``since`` is served from
memory; an older ``since`` is answered with :class:`ReplayNeeded` and the subscriber reads the gap
from the store first.  A subscriber whose channel is full is dropped at once with a reason: the
notifier never waits on a subscriber, so a slow one cannot stall the scheduler.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import trio

from .._faults import report_internal_error
from .._models import JobEvent
from ..errors import InternalError
from ._messages import (
    INTERNAL_MESSAGE,
    Attach,
    Attached,
    Detach,
    Envelope,
    Failure,
    Message,
    Publish,
    ReplayNeeded,
)

__all__ = ["NOTIFIER_INBOX_SIZE", "RING_SIZE", "Notifier", "Sink"]

log = logging.getLogger("fetchml.notifier")

# Publishes arrive once per scheduler commit; attach/detach once per subscriber.
NOTIFIER_INBOX_SIZE = 1024
# Recent events kept in memory for subscribers that resume from a recent seq.
RING_SIZE = 10_000


@dataclass(eq=False, slots=True)
class Sink:
    """A subscriber's event channel plus why the notifier closed it, if it did.

    The notifier owns ``channel`` (the send side) from :class:`Attach` on and closes it when it
    drops the subscriber or stops; the subscriber owns the receive side.
    """

    channel: trio.MemorySendChannel[JobEvent]
    capacity: int
    job_id: int | None = None
    user: str | None = None
    reason: str | None = field(default=None)
    dropped: bool = False  # closed for falling behind (the subscriber may resume with since=)

    def close(self, reason: str, *, dropped: bool = False) -> None:
        self.reason = reason
        self.dropped = dropped
        self.channel.close()


class Notifier:
    """Start it with ``nursery.start(notifier.run)``; publish with :class:`Publish` messages."""

    def __init__(self, inbox: trio.MemoryReceiveChannel[Envelope[Message]], last_seq: int) -> None:
        self._inbox = inbox
        self._last_seq = last_seq
        self._ring: deque[JobEvent] = deque(maxlen=RING_SIZE)
        self._everything: dict[int, Sink] = {}
        self._by_job: dict[int, dict[int, Sink]] = {}
        self._by_user: dict[str, dict[int, Sink]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the inbox until it closes or the task is cancelled; then close every sink.

        A fault while handling one message (a message it does not handle included) is
        reported as an internal error; a request among them gets a :class:`Failure` reply.
        """
        task_status.started()
        try:
            with self._inbox:
                async for envelope in self._inbox:
                    try:
                        self._handle(envelope)
                    except Exception as exc:
                        report_internal_error("notifier", exc, type(envelope.msg).__name__)
                        if isinstance(envelope.stream, Sink):
                            envelope.stream.close("internal server error")
                        envelope.answer(Failure.of(InternalError(INTERNAL_MESSAGE)))
        finally:
            for sink in self._all_sinks():
                sink.close("the server is shutting down")

    def _all_sinks(self) -> list[Sink]:
        sinks = list(self._everything.values())
        for group in (*self._by_job.values(), *self._by_user.values()):
            sinks.extend(group.values())
        return sinks

    def _handle(self, envelope: Envelope[Message]) -> None:
        match envelope.msg:
            case Publish(events=events):
                for event in events:
                    self._publish(event)
            case Attach() as attach:
                assert isinstance(envelope.stream, Sink), "Attach needs a Sink"
                envelope.answer(self._attach(attach, envelope.stream))
            case Detach(sub_id=sub_id):
                sink = self._detach(sub_id)
                if sink is not None:
                    sink.close("unsubscribed")
            case other:
                raise TypeError(f"notifier cannot handle {type(other).__name__}")

    def _publish(self, event: JobEvent) -> None:
        self._last_seq = event.seq
        self._ring.append(event)
        job = event.job
        for group in (self._everything, self._by_job.get(job.id), self._by_user.get(job.user)):
            if not group:
                continue
            for sub_id, sink in list(group.items()):
                try:
                    sink.channel.send_nowait(event)
                except trio.WouldBlock:
                    log.info(
                        "dropping subscriber %d: more than %d events behind", sub_id, sink.capacity
                    )
                    self._detach(sub_id)
                    sink.close(
                        f"subscriber fell more than {sink.capacity} events behind; "
                        f"resume with since={event.seq - sink.capacity}",
                        dropped=True,
                    )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._detach(sub_id)  # the subscriber went away without detaching

    def _attach(self, attach: Attach, sink: Sink) -> Message:
        since = attach.since
        if since is not None and since < self._last_seq:
            oldest = self._ring[0].seq if self._ring else self._last_seq + 1
            if since + 1 < oldest:
                sink.channel.close()
                return ReplayNeeded(oldest=oldest)
            backlog = [e for e in self._ring if e.seq > since and _matches(sink, e)]
            if len(backlog) > sink.capacity // 2:
                sink.channel.close()
                return ReplayNeeded(oldest=backlog[-1].seq)
            for event in backlog:
                sink.channel.send_nowait(event)
        if attach.job_id is not None:
            self._by_job.setdefault(attach.job_id, {})[attach.sub_id] = sink
        elif attach.user is not None:
            self._by_user.setdefault(attach.user, {})[attach.sub_id] = sink
        else:
            self._everything[attach.sub_id] = sink
        return Attached(sub_id=attach.sub_id)

    def _detach(self, sub_id: int) -> Sink | None:
        """Forget subscriber ``sub_id``; return its sink (the caller closes it) if it had one."""
        sink = self._everything.pop(sub_id, None)
        if sink is not None:
            return sink
        for index in (self._by_job, self._by_user):
            for key, group in list(index.items()):
                sink = group.pop(sub_id, None)
                if sink is not None:
                    if not group:
                        del index[key]  # type: ignore[arg-type]
                    return sink
        return None


def _matches(sink: Sink, event: JobEvent) -> bool:
    if sink.job_id is not None:
        return event.job.id == sink.job_id
    if sink.user is not None:
        return event.job.user == sink.user
    return True
