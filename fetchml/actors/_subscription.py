"""Event subscriptions: replay from the store, then live events from the notifier, with no gap.

A subscription first reads stored events after ``since`` page by page, then attaches to the
notifier, which hands over the recent events the replay has not reached and every later one.
Events are de-duplicated by ``seq``, so the hand-over point may overlap safely.
"""

from __future__ import annotations

import itertools
from collections import deque
from types import TracebackType

import trio

from .._models import JobEvent
from ..errors import SchedulerClosedError, SubscriberDroppedError
from ..store import Store
from ._messages import Attach, Attached, Envelope, Failure, Message, call
from ._notifier import Sink

__all__ = ["DEFAULT_BUFFER", "Subscription"]

# Events a subscriber may fall behind before it is dropped.
DEFAULT_BUFFER = 1000
# Stored events read per replay query.
_REPLAY_PAGE = 1000
_ids = itertools.count(1)


class Subscription:
    """An async iterator of :class:`JobEvent`, and an async context manager that detaches it.

    Raises :class:`SubscriberDroppedError` from ``__anext__`` if it fell more than ``buffer``
    events behind (resume with ``since=`` the last seq seen), and ``StopAsyncIteration`` when the
    server stops.
    """

    def __init__(
        self,
        store: Store,
        notifier: trio.MemorySendChannel[Envelope[Message]],
        *,
        job_id: int | None = None,
        user: str | None = None,
        since: int | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._job_id = job_id
        self._user = user
        # "From now on" is "after the newest seq assigned so far"; pinning it here makes the
        # subscription start at the moment it is created, not when it is first iterated.
        self._cursor: int | None = since if since is not None else store.last_seq
        self._buffer = buffer
        self._pending: deque[JobEvent] = deque()
        self._sink: Sink | None = None
        self._sub_id = next(_ids)
        self._closed = False

    @property
    def last_seq(self) -> int | None:
        """The seq of the last event delivered (or the ``since`` it started from)."""
        return self._cursor

    def __aiter__(self) -> Subscription:
        return self

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave the notifier's event log.  Idempotent; never blocks."""
        if self._closed:
            return
        self._closed = True
        if self._sink is not None:
            self._sink.close("unsubscribed")

    async def __anext__(self) -> JobEvent:
        """The next event.  Waits on the store (replay) or the notifier (live)."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                event = self._pending.popleft()
            elif self._sink is None:
                await self._catch_up()
                continue
            else:
                event = await self._receive_live(self._sink)
            if self._advance(event):
                return event

    def take_waiting(self, limit: int) -> list[JobEvent]:
        """The events that are already here (replayed, or live and not read yet), at most
        ``limit``, in order, as ``__anext__`` would return them; without waiting.

        Never waits nor checkpoints, so it adds no latency; the end of the subscription (it
        was dropped, the server stops) is left for the next ``__anext__`` to raise.
        """
        taken: list[JobEvent] = []
        while len(taken) < limit and not self._closed:
            if self._pending:
                events = [self._pending.popleft()]
            elif self._sink is not None:
                events = self._sink.take(limit - len(taken))
                if not events:
                    break
            else:
                break  # the replay has not started: that takes waiting on the store
            taken += filter(self._advance, events)
        return taken

    def _advance(self, event: JobEvent) -> bool:
        """Whether ``event`` is new to this subscription (the replay and the notifier's
        hand-over may overlap); if so, it is the last one delivered from now on."""
        if self._cursor is not None and event.seq <= self._cursor:
            return False
        self._cursor = event.seq
        return True

    async def _receive_live(self, sink: Sink) -> JobEvent:
        """The sink's next event.  Waits on the notifier; raises SubscriberDroppedError when
        it was dropped, StopAsyncIteration when it ended otherwise."""
        while True:
            # As a channel's receive does: a cancellation comes before an event is taken, never
            # after, and the others get a turn either way.
            await trio.lowlevel.checkpoint_if_cancelled()
            taken = sink.take(1)
            if taken:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return taken[0]
            if sink.finished:
                await self.aclose()
                if sink.dropped:
                    raise SubscriberDroppedError(sink.reason or "subscriber dropped")
                raise StopAsyncIteration
            await sink.wait()
            if self._closed:
                raise StopAsyncIteration

    async def _catch_up(self) -> None:
        """Replay one page from the store, or attach to the notifier if the replay is done."""
        if self._cursor is not None:
            page = await self._store.events_after(
                self._cursor, job_id=self._job_id, user=self._user, limit=_REPLAY_PAGE
            )
            if page:
                self._pending.extend(page)
                if len(page) == _REPLAY_PAGE:
                    return
        await self._attach()

    async def _attach(self) -> None:
        sink = Sink(self._sub_id, self._buffer, job_id=self._job_id, user=self._user)
        since = self._pending[-1].seq if self._pending else self._cursor
        attach = Attach(sub_id=self._sub_id, since=since, job_id=self._job_id, user=self._user)
        try:
            reply = await call(self._notifier, attach, stream=sink)
        except SchedulerClosedError:
            self._closed = True
            raise StopAsyncIteration from None
        if isinstance(reply, Attached):
            self._sink = sink
            return
        if isinstance(reply, Failure):
            raise reply.error()
        # ReplayNeeded: the notifier's memory does not reach back to our cursor; read on.
