"""The notifier actor: fans committed events out to subscribers through shared event logs.

The scheduler publishes events only after they are committed, in seq order.  Subscribers are
grouped by what they see (every job, one job, one user's jobs); each group has one
:class:`EventLog` that every one of its subscribers reads at a cursor of its own, so a publish
costs an append per group, not a channel send per subscriber (1,000 dashboards at 100 events/s
would otherwise be 100,000 sends a second on the event loop).

The notifier also keeps the most recent events in a ring, so a subscriber resuming from a recent
``since`` is served from memory; an older ``since`` is answered with :class:`ReplayNeeded` and the
subscriber reads the gap from the store first.  A subscriber that falls more than its buffer
behind is dropped with a reason, after the events its buffer held: the notifier never waits on a
subscriber, so a slow one cannot stall the scheduler.
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
    Envelope,
    Failure,
    Message,
    Publish,
    ReplayNeeded,
)

__all__ = ["NOTIFIER_INBOX_SIZE", "RING_SIZE", "EventLog", "Notifier", "Sink"]

log = logging.getLogger("fetchml.notifier")

# Publishes arrive once per scheduler commit; attaches once per subscriber.
NOTIFIER_INBOX_SIZE = 1024
# Recent events kept in memory for subscribers that resume from a recent seq.
RING_SIZE = 10_000


class EventLog:
    """The events of one group of subscribers, in seq order, each member reading at its cursor.

    Positions are counted from the log's first event ever, so a cursor stays valid when old
    events are trimmed.  The log holds at least ``retain`` events (its largest member buffer)
    behind its end, at most twice that, so a member that stops reading costs bounded memory:
    when a trim passes it, it is dropped with the events its buffer held.
    """

    __slots__ = ("_first", "_index", "_key", "_waiting", "events", "members", "retain")

    def __init__(self, index: dict[object, EventLog] | None = None, key: object = None) -> None:
        self.events: list[JobEvent] = []
        self.members: dict[int, Sink] = {}
        self.retain = 1
        self._first = 0
        self._waiting: dict[int, Sink] = {}  # members parked until the next append
        # Where the notifier keeps this log: it leaves it when its last member leaves, so a
        # log per job watched once does not outlive its watchers.
        self._index, self._key = index, key

    @property
    def end(self) -> int:
        """The position after the newest event."""
        return self._first + len(self.events)

    def join(self, sink: Sink) -> None:
        """Add ``sink``; it reads from the next event appended."""
        self.members[sink.sub_id] = sink
        self.retain = max(self.retain, sink.capacity)
        sink.attach_to(self)

    def leave(self, sink: Sink) -> None:
        """Remove ``sink`` (if a member) and wake it if it waits, so that it sees it ended."""
        self.members.pop(sink.sub_id, None)
        if not self.members and self._index is not None:
            self._index.pop(self._key, None)
        if self._waiting.pop(sink.sub_id, None) is not None:
            sink.lot.unpark_all()

    def append(self, event: JobEvent) -> None:
        """Add ``event`` and wake the members waiting for one; trims at twice ``retain``."""
        self.events.append(event)
        if len(self.events) > 2 * self.retain:
            self._trim()
        waiting, self._waiting = self._waiting, {}
        for sink in waiting.values():
            sink.lot.unpark_all()

    def between(self, start: int, stop: int) -> list[JobEvent]:
        """The events at positions ``start`` (at least the oldest held) up to ``stop``."""
        return self.events[start - self._first : stop - self._first]

    async def wait_for_more(self, sink: Sink) -> None:
        """Wait until an event is appended or ``sink`` leaves; returns at once if one is
        already past its cursor.  A checkpoint either way."""
        if self.end > sink.cursor or sink.sub_id not in self.members:
            await trio.lowlevel.checkpoint()
            return
        self._waiting[sink.sub_id] = sink
        await sink.lot.park()

    def _trim(self) -> None:
        """Forget all but the newest ``retain`` events, first dropping each member they would
        leave behind (it keeps the events its buffer held)."""
        cut = self.end - self.retain
        for sink in list(self.members.values()):
            if sink.cursor < cut:
                sink.check_behind()
        del self.events[: cut - self._first]
        self._first = cut


@dataclass(eq=False, slots=True)
class Sink:
    """One subscriber's place in its group's :class:`EventLog`, with what it has not read yet
    from elsewhere (the recent events handed over when it attached) and why it ended, if it did.

    The notifier joins it to a log on :class:`Attach`; the subscriber reads it with
    :meth:`take` and :meth:`wait`, and closes it when it goes.  Only the trio thread touches it.
    """

    sub_id: int
    capacity: int
    job_id: int | None = None
    user: str | None = None
    reason: str | None = None
    dropped: bool = False  # ended for falling behind (the subscriber may resume with since=)
    ended: bool = False  # nothing more comes from the log (what is in backlog still does)
    backlog: deque[JobEvent] = field(default_factory=deque)
    cursor: int = 0
    last_seq: int | None = None  # of the newest event it has taken (or the attach's since)
    source: EventLog | None = None  # the log it reads, once attached
    lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    def attach_to(self, source: EventLog) -> None:
        self.source, self.cursor = source, source.end

    def take(self, limit: int) -> list[JobEvent]:
        """Up to ``limit`` of the events waiting for this subscriber, oldest first; never waits.

        A subscriber found more than ``capacity`` events behind is dropped here, with the
        ``capacity`` oldest of them kept for it: what a full buffer of that size would hold.
        """
        self.check_behind()
        taken = [self.backlog.popleft() for _ in range(min(limit, len(self.backlog)))]
        if not self.ended and self.source is not None and len(taken) < limit:
            upto = min(self.source.end, self.cursor + limit - len(taken))
            taken += self.source.between(self.cursor, upto)
            self.cursor = upto
        if taken:
            self.last_seq = taken[-1].seq
        return taken

    async def wait(self) -> None:
        """Wait until :meth:`take` has something or the sink has ended.  A checkpoint."""
        if self.source is None or self.ended or self.backlog:
            await trio.lowlevel.checkpoint()
        else:
            await self.source.wait_for_more(self)

    @property
    def finished(self) -> bool:
        """Ended, and everything it was to receive taken."""
        return self.ended and not self.backlog

    def close(self, reason: str, *, dropped: bool = False) -> None:
        """End the sink after the events already published (or, were it behind, after what its
        buffer held): they stay readable; nothing after them arrives.  Idempotent."""
        self.check_behind()
        if not self.ended:
            self._end(self.source.end if self.source is not None else 0, reason, dropped=dropped)

    def check_behind(self) -> None:
        """Drop the sink if it is more than ``capacity`` events behind its log's end, keeping
        the events its buffer would hold."""
        if self.ended or self.source is None:
            return
        room = max(self.capacity - len(self.backlog), 0)
        if self.source.end - self.cursor <= room:
            return
        log.info("dropping subscriber %d: more than %d events behind", self.sub_id, self.capacity)
        stop = self.cursor + room
        if room:
            since: int | None = self.source.between(stop - 1, stop)[0].seq
        else:
            since = self.backlog[-1].seq if self.backlog else self.last_seq
        self._end(
            stop,
            f"subscriber fell more than {self.capacity} events behind; resume with since={since}",
            dropped=True,
        )

    def _end(self, stop: int, reason: str, *, dropped: bool) -> None:
        """Move the events up to ``stop`` into the backlog and leave the log."""
        self.ended, self.reason, self.dropped = True, reason, dropped
        if self.source is not None:
            self.backlog.extend(self.source.between(self.cursor, stop))
            self.cursor = stop
            self.source.leave(self)


class Notifier:
    """Start it with ``nursery.start(notifier.run)``; publish with :class:`Publish` messages."""

    def __init__(self, inbox: trio.MemoryReceiveChannel[Envelope[Message]], last_seq: int) -> None:
        self._inbox = inbox
        self._last_seq = last_seq
        self._ring: deque[JobEvent] = deque(maxlen=RING_SIZE)
        self._everything = EventLog()
        self._by_job: dict[object, EventLog] = {}
        self._by_user: dict[object, EventLog] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the inbox until it closes or the task is cancelled; then end every sink (its
        subscriber still reads what was published before).

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
            for group in (self._everything, *self._by_job.values(), *self._by_user.values()):
                for sink in list(group.members.values()):
                    sink.close("the server is shutting down")

    def _handle(self, envelope: Envelope[Message]) -> None:
        match envelope.msg:
            case Publish(events=events):
                for event in events:
                    self._publish(event)
            case Attach() as attach:
                assert isinstance(envelope.stream, Sink), "Attach needs a Sink"
                envelope.answer(self._attach(attach, envelope.stream))
            case other:
                raise TypeError(f"notifier cannot handle {type(other).__name__}")

    def _publish(self, event: JobEvent) -> None:
        self._last_seq = event.seq
        self._ring.append(event)
        if self._everything.members:
            self._everything.append(event)
        for group in (self._by_job.get(event.job.id), self._by_user.get(event.job.user)):
            if group is not None:
                group.append(event)

    def _attach(self, attach: Attach, sink: Sink) -> Message:
        since = attach.since
        if since is not None and since < self._last_seq:
            oldest = self._ring[0].seq if self._ring else self._last_seq + 1
            if since + 1 < oldest:
                return ReplayNeeded(oldest=oldest)
            backlog = [e for e in self._ring if e.seq > since and _matches(sink, e)]
            if len(backlog) > sink.capacity // 2:
                return ReplayNeeded(oldest=backlog[-1].seq)
            sink.backlog.extend(backlog)
        sink.last_seq = since if since is not None else self._last_seq
        self._group(attach).join(sink)
        return Attached(sub_id=attach.sub_id)

    def _group(self, attach: Attach) -> EventLog:
        """The log of the subscribers that see what ``attach`` asks for, made if none has."""
        index: dict[object, EventLog]
        key: object
        if attach.job_id is not None:
            index, key = self._by_job, attach.job_id
        elif attach.user is not None:
            index, key = self._by_user, attach.user
        else:
            return self._everything
        group = index.get(key)
        if group is None:
            group = index[key] = EventLog(index, key)
        return group


def _matches(sink: Sink, event: JobEvent) -> bool:
    if sink.job_id is not None:
        return event.job.id == sink.job_id
    if sink.user is not None:
        return event.job.user == sink.user
    return True
