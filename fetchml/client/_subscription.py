"""A subscription: events of one job or of every job the key may see, as an async iterator."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING

import trio

from fetchml.errors import FetchMLError, SubscriberDroppedError
from fetchml.protocol import Event, JobUpdate

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["DEFAULT_BUFFER", "Subscription"]

# Events a subscription holds for a consumer that has not read them yet, before it is dropped.
DEFAULT_BUFFER = 10_000
# How long closing a subscription waits for the server to confirm the unsubscribe.
_UNSUBSCRIBE_S = 2.0


class Subscription:
    """Events from the server: :class:`JobUpdate`, with ``logs`` also :class:`LogChunk` and a
    final :class:`LogEnd`, with ``metrics`` also :class:`MetricPoints`.

    The server sends the job events that wait for this subscription together (``batch``); they
    come out one :class:`JobUpdate` each, as if they had come one frame each.

    Use it as ``async with client.subscribe(...) as events: async for event in events: ...``;
    leaving the block unsubscribes.  Iterating without ``async with`` works too (the subscribe
    request is sent on the first ``__anext__``), but then call :meth:`aclose` when done.

    ``last_seq`` is the ``seq`` of the last job event received (or where the subscription
    started), so after a lost connection ``client.subscribe(since=sub.last_seq)`` resumes with no
    gap.  Iteration raises :class:`ConnectionLostError` if the connection ends,
    :class:`SubscriberDroppedError` if this consumer fell too far behind, and ends
    (``StopAsyncIteration``) after :meth:`aclose` or when the client closes.
    """

    def __init__(
        self,
        client: Client,
        *,
        job_id: int | None,
        since: int | None,
        logs: bool,
        offset: int,
        metrics: bool = False,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self._client = client
        self.job_id = job_id
        self.logs = logs
        self.metrics = metrics
        self.offset = offset
        self.since = since
        self.last_seq: int | None = since
        self.sub_id: int | None = None
        self._send, self._receive = trio.open_memory_channel[Event](buffer)
        self._buffer = buffer
        self._error: FetchMLError | None = None
        self._started = False
        self._closed = False

    async def start(self) -> Subscription:
        """Send the subscribe request (once) and return self.  Raises the server's error."""
        if not self._started:
            self._started = True
            await self._client._open_subscription(self)
        return self

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if not self._started:
            await self.start()
        try:
            event = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None
        if isinstance(event, JobUpdate) and (self.last_seq is None or event.seq > self.last_seq):
            self.last_seq = event.seq
        return event

    async def aclose(self) -> None:
        """Unsubscribe (waiting briefly for the server) and end iteration.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._send.close()
        sub_id, self.sub_id = self.sub_id, None
        if sub_id is not None:
            self._client._forget_subscription(sub_id)
            with trio.move_on_after(_UNSUBSCRIBE_S, shield=True), contextlib.suppress(FetchMLError):
                await self._client._unsubscribe(sub_id)

    # --- called by the client's reader task; never blocks -------------------------------------

    def _opened(self, sub_id: int, since: int | None) -> None:
        self.sub_id = sub_id
        if self.last_seq is None:
            self.last_seq = since

    def _deliver(self, event: Event) -> None:
        if self._closed or self._error is not None:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            resume = "" if self.last_seq is None else f"; resume with since={self.last_seq}"
            self._end(
                SubscriberDroppedError(f"more than {self._buffer} events were not read{resume}")
            )
            if self.sub_id is not None:
                self._client._abandon_subscription(self.sub_id)
                self.sub_id = None
        except trio.BrokenResourceError:
            self._end(None)

    def _end(self, error: FetchMLError | None) -> None:
        if error is not None and self._error is None and not self._closed:
            self._error = error
        self._send.close()

    @property
    def closed(self) -> bool:
        return self._closed
