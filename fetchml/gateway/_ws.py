"""The WebSocket endpoint ``/ws``: one :class:`Connection` per client.

Each request frame is answered by exactly one reply with its ``re`` id; requests run concurrently
(at most :data:`MAX_IN_FLIGHT` per connection), so replies may come out of order.  ``subscribe`` is
handled before the next frame is read, so a client that subscribes and then submits sees the
events of its submit.  Each subscription is a task that forwards events; a client that cannot keep
up lets its subscription fall behind, which the notifier answers by dropping it, and the
connection is then closed with a reason (4008, :data:`CLOSE_TOO_SLOW`).  A subscription opened
with ``batch`` sends the job events already waiting for it in one ``jobs`` frame, at most about one
frame per tick of the server's :class:`FramePacer`, so a busy server spends a frame per subscriber
and tick on however many events came (and one that keeps reading falls behind far less);
each event's entry in those frames is encoded once per frame format for all subscribers
(:class:`EventEntries`).  At shutdown every connection is closed with 1001.
Frames that several tasks send at once go out together, in order, in one write (the gateway's
write coalescing, ``_hypercorn_fix``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import trio
from quart import websocket
from quart.globals import websocket_ctx

from .._faults import report_internal_error
from .._models import Job, JobEvent, JobMatch, JobSpec
from ..actors import INTERNAL_MESSAGE, Subscription
from ..auth import Principal
from ..errors import (
    AuthError,
    FetchMLError,
    InternalError,
    InvalidRequestError,
    InvalidSpecError,
    PermissionDeniedError,
    RateLimitedError,
    SubscriberDroppedError,
)
from ..protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_TOO_SLOW,
    JSON,
    MAX_BATCH_EVENTS,
    MAX_EVENT_POINTS,
    MSGPACK,
    AuthOp,
    CancelOp,
    Codec,
    ErrorBody,
    ErrorReply,
    GetOp,
    IdentityReply,
    JobEntry,
    JobReply,
    JobsReply,
    JobUpdate,
    JobUpdates,
    ListOp,
    LogChunk,
    LogEnd,
    LogText,
    MetricPoint,
    MetricPoints,
    Reply,
    Request,
    StatusOp,
    StatusReply,
    SubmitOp,
    Subscribed,
    SubscribeOp,
    Unsubscribed,
    UnsubscribeOp,
    WhoamiOp,
    decode_request,
)
from ..tracking import MetricWatch
from ._context import source_address
from ._pacing import FramePacer
from ._service import Service
from ._ws_direct import FrameSender

__all__ = ["MAX_IN_FLIGHT", "Connection", "EventEntries"]

log = logging.getLogger("fetchml.gateway")

# Requests of one connection being processed at once; reading waits beyond that.
MAX_IN_FLIGHT = 64
# A jobs frame is split before it passes this many bytes of entries (a job's spec may be large).
BATCH_BYTES = 512 * 1024
# Recent events whose encoded entries are kept: subscribers more than this behind encode anew.
ENTRY_CACHE = 4096


class EventEntries:
    """Each job event's entry of a ``jobs`` frame (:class:`JobEntry`), encoded once per frame
    format and shared by every subscriber that sends it.

    The notifier hands one and the same :class:`JobEvent` object to every subscriber, so the
    entry is keyed by that object (its seq picks the slot of a ring, so the memory is bounded);
    an event read from the store by one subscriber alone is a different object and is simply
    encoded for it.  Keying by the object rather than the seq alone keeps servers sharing a
    process (tests) apart.
    """

    def __init__(self, size: int = ENTRY_CACHE) -> None:
        self._size = size
        self._rings: dict[bool, list[tuple[JobEvent, msgspec.Raw] | None]] = {
            True: [None] * size,
            False: [None] * size,
        }

    def entry(self, codec: Codec, event: JobEvent) -> msgspec.Raw:
        """The encoded entry of ``event`` in ``codec``'s format (encoded now if not kept)."""
        ring = self._rings[codec.binary]
        slot = event.seq % self._size
        kept = ring[slot]
        if kept is not None and kept[0] is event:
            return kept[1]
        raw = msgspec.Raw(codec.encode(JobEntry(seq=event.seq, job=event.job)))
        ring[slot] = (event, raw)
        return raw


# One for the process: entries are keyed by the event objects themselves, never confused.
_entries = EventEntries()


class Connection:
    """Serves one accepted WebSocket until the client leaves or the server shuts down."""

    def __init__(
        self,
        service: Service,
        closing: trio.Event,
        principal: Principal | None,
        *,
        subscriber_buffer: int,
        pacer: FramePacer | None = None,
    ) -> None:
        self._service = service
        # Batching subscriptions send at most a frame per tick (one pacer for the server).
        self._pacer = pacer or FramePacer()
        self._closing = closing
        self._who = principal
        self._buffer = subscriber_buffer
        self._subs: dict[int, trio.CancelScope] = {}
        self._next_sub = 1
        self._slots = trio.Semaphore(MAX_IN_FLIGHT)
        self._nursery: trio.Nursery | None = None
        self._address = source_address.get()
        self._watch_scope: trio.CancelScope | None = None
        self._sender: FrameSender | None = None

    async def serve(self) -> None:
        """Read and answer frames until the peer disconnects or the server closes.

        Waits on the socket.  Raises nothing but cancellation: errors become error replies.
        """
        ws = websocket_ctx.websocket  # looked up once, not through the proxy per frame
        self._sender = FrameSender(ws)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._close_on_shutdown)
            if self._who is not None:
                self._watch()
            while True:
                # Quart hands an empty binary frame over as None (its type says otherwise).
                data: bytes | str | None = await ws.receive()
                if data is None:
                    data = b""
                try:
                    self._slots.acquire_nowait()  # receive() has just been a checkpoint
                except trio.WouldBlock:
                    await self._slots.acquire()
                await self._take(data, nursery)

    async def _take(self, data: bytes | str, nursery: trio.Nursery) -> None:
        """Decode one frame and answer it (``auth`` and ``subscribe`` before the next frame is
        read, other ops in a task of their own); holds a slot until it is answered.

        A fault of ours while decoding is answered as an ``internal_error`` (reported), like a
        fault while performing the op; the connection goes on.  Waits on sending the reply.
        """
        try:
            codec, request, rid, error = decode_request(data)
        except Exception as exc:
            self._slots.release()
            report_internal_error(
                "gateway", exc, f"a WebSocket frame of {self._user()}", logger=log
            )
            codec = MSGPACK if isinstance(data, bytes) else JSON
            await self._reply_error(codec, None, InternalError(INTERNAL_MESSAGE))
            return
        if request is None:
            self._slots.release()
            assert error is not None
            await self._reply_error(codec, rid, error)
        elif isinstance(request, AuthOp | SubscribeOp):
            try:
                await self._answer(codec, request)
            finally:
                self._slots.release()
        else:
            nursery.start_soon(self._answer_and_release, codec, request)

    def _user(self) -> str:
        return self._who.user if self._who is not None else "an unauthenticated client"

    def _watch(self) -> None:
        """Watch the connection's current key from now on (ending the watch of the one before)."""
        if self._watch_scope is not None:
            self._watch_scope.cancel()
        scope = self._watch_scope = trio.CancelScope()
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_key, scope)

    async def _watch_key(self, scope: trio.CancelScope) -> None:
        """Close the connection (1008) once its key no longer holds; follow role changes.

        Checks at once (a reload may have come between authentication and now), then after every
        reload and at the key's expiry.  A revoked or expired key, auth switched on under an
        anonymous connection or an address taken off the allow-list closes it with the reason.
        New roles apply to later ops; a connection with open subscriptions is closed instead
        ("roles changed"), as its subscriptions were authorized under the old ones.
        """
        sessions = self._service.sessions
        with scope:
            who = self._who
            assert who is not None
            try:
                now = sessions.check(who, self._address)
                while True:
                    if self._subs and (now.user, now.permissions) != (who.user, who.permissions):
                        raise AuthError("roles changed: reconnect")
                    self._who = who = now
                    now = await sessions.next_check(who, self._address)
            except (AuthError, PermissionDeniedError) as exc:
                log.info("closing a WebSocket of %s: %s", who.user, exc.message)
                await self._close(CLOSE_POLICY, exc.message)

    async def _close_on_shutdown(self) -> None:
        await self._closing.wait()
        await self._close(CLOSE_GOING_AWAY, "server shutting down")

    async def _close(self, code: int, reason: str) -> None:
        # Frames sent before the close are already queued on the connection, in order: the
        # close frame goes out after them.
        await websocket.close(code, reason[:120])
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _answer_and_release(self, codec: Codec, request: Request) -> None:
        try:
            await self._answer(codec, request)
        finally:
            self._slots.release()

    async def _answer(self, codec: Codec, request: Request) -> None:
        who = self._who
        try:
            if who is None:
                if not isinstance(request, AuthOp):
                    raise AuthError("not authenticated: send an auth op first")
            elif retry_after_s := self._service.over_limit(who):
                op = str(request.__struct_config__.tag)
                await self._service.refuse_rate(who, op, retry_after_s)
            reply = await self._perform(codec, request)
        except FetchMLError as exc:
            await self._reply_error(codec, request.id, exc)
            # A first auth op that fails (a wrong key, a banned address) ends the connection.
            if isinstance(request, AuthOp) and (
                isinstance(exc, AuthError) or (isinstance(exc, RateLimitedError) and who is None)
            ):
                await self._close(CLOSE_AUTH_FAILED, "authentication failed")
            return
        except Exception as exc:
            op = str(request.__struct_config__.tag)
            what = f"op {op} by {self._user()}{_job_of(request)}"
            report_internal_error("gateway", exc, what, logger=log)
            await self._reply_error(codec, request.id, InternalError(INTERNAL_MESSAGE))
            return
        await self._send(codec, reply)

    async def _perform(self, codec: Codec, request: Request) -> Reply:
        """Carry out one op; its reply.  Raises the FetchMLError the op fails with."""
        service = self._service
        rid = request.id
        if isinstance(request, AuthOp):
            return await self._authenticate(request)
        who = self._who
        assert who is not None
        match request:
            case WhoamiOp():
                return IdentityReply(re=rid, **msgspec.structs.asdict(service.whoami(who)))
            case SubmitOp(spec=spec):
                return JobReply(re=rid, job=await self._submit(who, spec))
            case GetOp(job_id=job_id):
                return JobReply(re=rid, job=await service.get(who, job_id))
            case ListOp(user=user, state=state, limit=limit, before=before) as op:
                jobs = await service.list(
                    who,
                    user=user,
                    states=state,
                    limit=limit,
                    before_id=before,
                    match=JobMatch.of(experiment=op.experiment, tag=op.tag, name=op.name),
                )
                return JobsReply(re=rid, jobs=jobs)
            case CancelOp(job_id=job_id):
                return JobReply(re=rid, job=await service.cancel(who, job_id))
            case StatusOp():
                return StatusReply(re=rid, status=await service.status(who))
            case SubscribeOp() as op:
                return await self._subscribe(codec, who, op)
            case UnsubscribeOp(sub=sub):
                scope = self._subs.pop(sub, None)
                if scope is None:
                    raise InvalidRequestError(
                        f"sub: no subscription {sub} on this connection", field="sub"
                    )
                scope.cancel()
                return Unsubscribed(re=rid, sub=sub)
            case _:
                raise TypeError(f"unhandled op {type(request).__name__}")

    async def _authenticate(self, request: AuthOp) -> IdentityReply:
        """Take the key of an ``auth`` op for this connection.  Raises AuthError,
        RateLimitedError, and InvalidRequestError for another user's key."""
        service = self._service
        fresh = await service.authenticate(request.key)
        if self._who is not None and fresh.user != self._who.user:
            # Subscriptions were authorized for the first user: one connection, one user.
            raise InvalidRequestError(
                f"key: this connection is authenticated as {self._who.user!r}; "
                "use a new connection for another user",
                field="key",
            )
        self._who = fresh
        self._watch()
        return IdentityReply(re=request.id, **msgspec.structs.asdict(service.whoami(fresh)))

    async def _submit(self, who: Principal, spec: JobSpec) -> Job:
        try:
            return await self._service.submit(who, spec)
        except InvalidSpecError as exc:
            # Fields are paths in the frame, as for the errors its decoding finds.
            if exc.field is None:
                raise
            raise InvalidSpecError(f"spec.{exc.message}", field=f"spec.{exc.field}") from None

    async def _subscribe(self, codec: Codec, who: Principal, op: SubscribeOp) -> Subscribed:
        """Open the subscription ``op`` asks for and start forwarding it; the reply says where
        it starts.  Raises what the service raises (the job is not visible, not found)."""
        for asked, what in ((op.logs, "logs"), (op.metrics, "metrics")):
            if asked and op.job_id is None:
                raise InvalidRequestError(
                    f"{what}: needs a job_id ({what} are per job)", field=what
                )
        subscription = await self._service.subscribe(
            who, job_id=op.job_id, since=op.since, buffer=self._buffer
        )
        sub_id = self._next_sub
        forwarders: list[Callable[[], Awaitable[None]]] = [
            functools.partial(self._forward_events, codec, sub_id, subscription, batch=op.batch)
        ]
        try:
            if op.logs and op.job_id is not None:
                chunks = await self._service.logs(who, op.job_id, offset=op.offset, follow=True)
                forwarders.append(
                    functools.partial(
                        self._forward_logs, codec, sub_id, op.job_id, op.offset, chunks
                    )
                )
            if op.metrics and op.job_id is not None:
                watch = await self._service.watch_metrics(who, op.job_id)
                forwarders.append(functools.partial(self._forward_metrics, codec, sub_id, watch))
        except BaseException:
            await subscription.aclose()
            raise
        self._next_sub += 1
        scope = trio.CancelScope()
        self._subs[sub_id] = scope
        assert self._nursery is not None
        self._nursery.start_soon(self._forward, sub_id, forwarders, scope)
        return Subscribed(re=op.id, sub=sub_id, since=subscription.last_seq)

    async def _forward(
        self, sub_id: int, forwarders: list[Callable[[], Awaitable[None]]], scope: trio.CancelScope
    ) -> None:
        """Run one subscription's forwarders (events, and the log and metrics if asked) under
        its scope.

        One task owns the scope: a trio cancel scope can be entered only once, so the
        forwarders run in a nursery inside it and ``unsubscribe`` cancels them all.
        """
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    for forwarder in forwarders:
                        nursery.start_soon(forwarder)
            except Exception as exc:
                # A fault of ours: this client cannot tell what it missed; others go on.
                what = f"subscription {sub_id} of {self._user()}"
                report_internal_error("gateway", exc, what, logger=log)
                await self._close(CLOSE_INTERNAL_ERROR, "internal server error")

    async def _forward_events(
        self, codec: Codec, sub_id: int, subscription: Subscription, *, batch: bool
    ) -> None:
        """Send the subscription's job events as they come: each in a ``job`` frame, or with
        ``batch`` paced (:meth:`_forward_batches`).

        Waits on the subscription and the socket.  A dropped subscription closes the connection
        with 4008.
        """
        try:
            async with subscription:
                if batch:
                    await self._forward_batches(codec, sub_id, subscription)
                    return
                async for event in subscription:
                    await self._send(codec, JobUpdate(sub=sub_id, seq=event.seq, job=event.job))
        except SubscriberDroppedError as exc:
            await self._close(CLOSE_TOO_SLOW, f"too slow: {exc.message}")

    async def _forward_batches(self, codec: Codec, sub_id: int, subscription: Subscription) -> None:
        """Send every event waiting in one frame (:meth:`_send_batch`), then wait for the
        pacer's next tick before the next frame, so a subscriber costs about a frame per tick
        however fast events come; an event after a quiet spell goes at once.

        Waits on the subscription, the socket and the pacer; never for a batch to fill.  Raises
        SubscriberDroppedError when the notifier dropped the subscription, and returns when it
        ends.
        """
        while True:
            # What is already here is taken without a checkpoint; waiting only when nothing is.
            events = subscription.take_waiting(MAX_BATCH_EVENTS)
            if not events:
                try:
                    first = await anext(subscription)
                except StopAsyncIteration:
                    return
                events = [first, *subscription.take_waiting(MAX_BATCH_EVENTS - 1)]
            if len(events) > 1:
                await self._send_batch(codec, sub_id, events)
            else:
                event = events[0]
                await self._send(codec, JobUpdate(sub=sub_id, seq=event.seq, job=event.job))
            await self._pacer.next_tick()

    async def _send_batch(self, codec: Codec, sub_id: int, events: list[JobEvent]) -> None:
        """Send ``events`` in ``jobs`` frames of their shared encoded entries, a frame of up to
        :data:`BATCH_BYTES` (and at least one event) after the other.  Waits on the socket."""
        part: list[msgspec.Raw] = []
        size = 0
        for event in events:
            raw = _entries.entry(codec, event)
            if part and size + len(raw) > BATCH_BYTES:
                await self._send(codec, JobUpdates(sub=sub_id, events=part))
                part, size = [], 0
            part.append(raw)
            size += len(raw)
        await self._send(codec, JobUpdates(sub=sub_id, events=part))

    async def _forward_logs(
        self, codec: Codec, sub_id: int, job_id: int, offset: int, chunks: AsyncIterator[bytes]
    ) -> None:
        position = offset
        async for chunk in chunks:
            frame: LogChunk | LogText = (
                LogChunk(sub=sub_id, job_id=job_id, offset=position, data=chunk)
                if codec.binary
                else LogText(
                    sub=sub_id, job_id=job_id, offset=position, data=chunk.decode(errors="replace")
                )
            )
            position += len(chunk)
            await self._send(codec, frame)
        await self._send(codec, LogEnd(sub=sub_id, job_id=job_id, offset=position))

    async def _forward_metrics(self, codec: Codec, sub_id: int, watch: MetricWatch) -> None:
        """Send the job's points as they are committed: every batch already waiting goes in
        the same event (up to MAX_EVENT_POINTS each), so a busy job costs few frames."""
        try:
            async with watch:
                async for batch in watch:
                    points = batch + watch.pending()
                    for start in range(0, len(points), MAX_EVENT_POINTS):
                        part = [MetricPoint(*p) for p in points[start : start + MAX_EVENT_POINTS]]
                        event = MetricPoints(sub=sub_id, job_id=watch.job_id, points=part)
                        await self._send(codec, event)
        except SubscriberDroppedError as exc:
            await self._close(CLOSE_TOO_SLOW, f"too slow: {exc.message}")

    async def _reply_error(self, codec: Codec, rid: int | None, exc: FetchMLError) -> None:
        await self._send(codec, ErrorReply(re=rid, error=ErrorBody.of(exc)))

    async def _send(self, codec: Codec, payload: msgspec.Struct) -> None:
        assert self._sender is not None
        await self._sender.send(codec.frame(payload))


def _job_of(request: Request) -> str:
    """`` on job N`` for an op about one job, else empty: for the log line of a fault."""
    job_id = getattr(request, "job_id", None)
    return f" on job {job_id}" if job_id is not None else ""
