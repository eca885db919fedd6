"""The protocol client: one WebSocket connection, requests matched to replies by id.

One reader task receives every frame: a reply wakes the request waiting on its ``re`` id, an event
goes to the subscription named by its ``sub``.  Requests may run concurrently from many tasks.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
)

from fetchml._models import Job, JobSpec, JobState, validate_spec
from fetchml.errors import (
    AuthError,
    FetchMLError,
    InvalidRequestError,
    InvalidSpecError,
    RateLimitedError,
    SubscriberDroppedError,
)

from ._errors import ConnectionLostError, error_from_wire
from ._frames import (
    Frame,
    Identity,
    JobUpdate,
    ServerStatus,
    decode_frame,
    encode_request,
    event_of,
)
from ._subscription import DEFAULT_BUFFER, Subscription

__all__ = ["Client"]

# Seconds closing the connection waits for the server's close frame.
_CLOSE_S: Final = 2.0
# Events kept for a subscription whose reply has not been read yet (the server may send a
# subscription's first events before the reply that names it).
_EARLY_EVENTS: Final = 10_000
# Socket timeout of the HTTP log request.
_HTTP_S: Final = 60.0
_NO_KEY_HINT: Final = "no API key given (set FETCHML_API_KEY or run `ml config init`)"


class _Pending:
    __slots__ = ("done", "error", "frame", "on_reply")

    def __init__(self, on_reply: Callable[[Frame], None] | None) -> None:
        self.done = trio.Event()
        self.frame: Frame | None = None
        self.error: FetchMLError | None = None
        self.on_reply = on_reply


class Client:
    """A connection to a Fetch ML server.  Get one with :func:`connect`.

    Every method raises the :mod:`fetchml.errors` class the server reported
    (:class:`AuthError`, :class:`PermissionDeniedError` with ``.permission``,
    :class:`JobNotFoundError`, :class:`InvalidSpecError` with ``.field``, :class:`ConflictError`
    …) and :class:`ConnectionLostError` if the connection ends before the reply.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        url: str,
        nursery: trio.Nursery,
        *,
        key: str | None,
        stream: trio.abc.AsyncResource | None = None,
        ca_file: str | None = None,
        rate_limit_wait_s: float = 0.0,
    ) -> None:
        self.url = url
        self._ca_file = ca_file
        self._rate_limit_wait_s = rate_limit_wait_s
        self._ws = ws
        self._stream = stream
        self._nursery = nursery
        self._key = key
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[int, Subscription] = {}
        self._early: dict[int, list[Any]] = {}
        self._newest_sub = 0
        self._lost: Callable[[], FetchMLError] | None = None
        self._closing = False

    # --- operations ---------------------------------------------------------------------------

    async def whoami(self) -> Identity:
        """The user the key belongs to, with roles and permissions."""
        frame = await self._call("whoami")
        return Identity(
            user=frame.user or "",
            roles=frame.roles or [],
            permissions=frame.permissions or [],
            admin=bool(frame.admin),
        )

    async def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        """Queue a job; returns it as stored.  Raises InvalidSpecError, PermissionDeniedError.

        The spec is validated here first (with the server's own validator), so a bad one raises
        :class:`InvalidSpecError` naming the field without a round trip.
        """
        checked = validate_spec(spec)
        try:
            return _job(await self._call("submit", spec=checked))
        except InvalidRequestError as exc:
            # The server names fields of a bad submit frame as ``spec.<field>``: paths in the
            # frame.  The caller gave a spec, so its fields are named as paths in the spec.
            if not (exc.field or "").startswith("spec."):
                raise
            field = (exc.field or "").removeprefix("spec.")
            raise InvalidSpecError(exc.message.removeprefix("spec."), field=field) from None

    async def get(self, job_id: int) -> Job:
        """The job's current version.  Raises JobNotFoundError."""
        return _job(await self._call("get", job_id=job_id))

    async def cancel(self, job_id: int) -> Job:
        """Cancel a job; returns it once it has ended.  Raises ConflictError if already ended."""
        return _job(await self._call("cancel", job_id=job_id))

    async def status(self) -> ServerStatus:
        """The queue summary: counts by state, per-user counts, free and total resources."""
        frame = await self._call("status")
        if frame.status is None:
            raise FetchMLError("the server's status reply has no status")
        return frame.status

    async def list(
        self,
        *,
        user: str | None = None,
        state: JobState | str | Iterable[JobState | str] | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> builtins.list[Job]:
        """Jobs the key may see, newest first: only ``user``'s, only in ``state`` (one or more),
        at most ``limit``, with ids below ``before`` (for paging)."""
        states = [state] if isinstance(state, str) else state
        wire_states = None if states is None else [_state_name(s) for s in states]
        frame = await self._call("list", user=user, state=wire_states, limit=limit, before=before)
        return frame.jobs or []

    def subscribe(
        self,
        job_id: int | None = None,
        *,
        since: int | None = None,
        logs: bool = False,
        offset: int = 0,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """Events of one job (``job_id``) or of every job the key may see, after ``since``
        (a ``seq``; None: from now on).  ``logs=True`` (needs ``job_id``) also streams the job's
        log from byte ``offset`` until the job ends.

        ``async with client.subscribe(job_id) as events: async for event in events: ...``
        """
        if logs and job_id is None:
            raise ValueError("logs=True needs a job_id")
        return Subscription(
            self, job_id=job_id, since=since, logs=logs, offset=offset, buffer=buffer
        )

    async def wait(self, job_id: int) -> Job:
        """Wait until the job ends (from pushed events, no polling); returns its final version."""
        async with self.subscribe(job_id) as events:
            job = await self.get(job_id)
            if job.terminal:
                return job
            async for event in events:
                if isinstance(event, JobUpdate) and event.job.terminal:
                    return event.job
        raise ConnectionLostError("the subscription ended before the job did", url=self.url)

    async def logs(self, job_id: int, *, offset: int = 0) -> bytes:
        """The job's log so far, from byte ``offset`` (one HTTP request: the WebSocket protocol
        only streams logs live, through ``subscribe(job_id, logs=True)``)."""
        from ._http import fetch_log

        key, ca_file = self._key, self._ca_file
        try:
            return await trio.to_thread.run_sync(
                lambda: fetch_log(
                    self.url, key, job_id, offset=offset, timeout=_HTTP_S, ca_file=ca_file
                ),
                abandon_on_cancel=True,
            )
        except AuthError:
            if key is None:
                raise AuthError(_NO_KEY_HINT) from None
            raise

    async def aclose(self) -> None:
        """Close the connection; pending requests fail, subscriptions end.  Idempotent."""
        if self._closing:
            return
        self._closing = True
        with trio.move_on_after(_CLOSE_S, shield=True):
            await self._ws.aclose()
        if self._stream is not None:
            # trio-websocket leaves a client's socket open when the server closed first.
            await trio.aclose_forcefully(self._stream)
        self._ended(None)

    # --- requests and replies -----------------------------------------------------------------

    async def _call(
        self, op: str, *, on_reply: Callable[[Frame], None] | None = None, **args: Any
    ) -> Frame:
        """Send one request and wait for its reply; raise the error it reports.

        A ``rate_limited`` refusal (the request did nothing) is retried after the wait the
        server names while the waits add up to at most ``rate_limit_wait_s``.
        """
        waited = 0.0
        while True:
            try:
                return await self._call_once(op, on_reply=on_reply, **args)
            except RateLimitedError as exc:
                wait = max(exc.retry_after_s, 0.001)
                if waited + wait > self._rate_limit_wait_s:
                    raise
                waited += wait
                await trio.sleep(wait)

    async def _call_once(
        self, op: str, *, on_reply: Callable[[Frame], None] | None = None, **args: Any
    ) -> Frame:
        if self._lost is not None:
            raise self._lost()
        request_id = next(self._ids)
        pending = _Pending(on_reply)
        self._pending[request_id] = pending
        try:
            try:
                await self._ws.send_message(encode_request(op, request_id, args))
            except ConnectionClosed as exc:
                self._ended(exc.reason)
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        frame = pending.frame
        assert frame is not None
        if not frame.ok:
            raise self._error_of(frame, args.get("job_id"))
        return frame

    def _error_of(self, frame: Frame, job_id: int | None) -> FetchMLError:
        body = frame.error
        if body is None:
            return FetchMLError("the server reported an error without a body")
        if body.code == AuthError.code and self._key is None:
            return AuthError(_NO_KEY_HINT)
        return error_from_wire(
            body.code,
            body.message,
            field=body.field,
            permission=body.permission,
            job_id=job_id,
            retry_after=body.retry_after,
        )

    async def _read_frames(self) -> None:
        """The reader task: dispatch every frame until the connection ends."""
        try:
            while True:
                data = await self._ws.get_message()
                try:
                    frame = decode_frame(data)
                except msgspec.MsgspecError as exc:
                    self._ended(
                        None, detail=f"the server sent a frame this client cannot read: {exc}"
                    )
                    await self._ws.aclose(1002, "undecodable frame")
                    return
                self._dispatch(frame)
        except ConnectionClosed as exc:
            self._ended(exc.reason)

    def _dispatch(self, frame: Frame) -> None:
        if frame.re is not None:
            pending = self._pending.get(frame.re)
            if pending is None:
                if frame.ok and frame.sub is not None and frame.since is not None:
                    # A subscribe whose caller was cancelled: do not leave it running.
                    self._abandon_subscription(frame.sub)
                return
            if frame.ok and pending.on_reply is not None:
                pending.on_reply(frame)
            pending.frame = frame
            pending.done.set()
            return
        if frame.ev is None or frame.sub is None:
            return
        event = event_of(frame)
        if event is None:
            return
        sub = self._subs.get(frame.sub)
        if sub is not None:
            sub._deliver(event)
        elif frame.sub > self._newest_sub:
            early = self._early.setdefault(frame.sub, [])
            if len(early) < _EARLY_EVENTS:
                early.append(event)

    def _ended(self, reason: CloseReason | None, *, detail: str | None = None) -> None:
        """The connection is over: fail what waits on it, end every subscription."""
        if self._lost is None:
            self._lost = self._lost_error_factory(reason, detail)
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = self._lost()
                pending.done.set()
        for sub in builtins.list(self._subs.values()):
            sub._end(None if self._closing else self._lost())
        self._subs.clear()

    def _lost_error_factory(
        self, reason: CloseReason | None, detail: str | None
    ) -> Callable[[], FetchMLError]:
        code = reason.code if reason is not None else None
        text = (reason.reason or "") if reason is not None else ""
        if self._closing:
            message = "the connection was closed by this client"
        elif detail is not None:
            message = detail
        elif code == 1008 and text.startswith("too slow"):
            return lambda: SubscriberDroppedError(f"the server dropped this connection: {text}")
        elif code == 1008 and "authentication" in text:
            return lambda: AuthError(text)
        elif code == 1001:
            message = f"the server at {self.url} is shutting down"
        else:
            why = f" ({code}{': ' + text if text else ''})" if code is not None else ""
            message = f"the connection to {self.url} was lost{why}"
        return lambda: ConnectionLostError(message, url=self.url, close_code=code)

    # --- subscriptions ------------------------------------------------------------------------

    async def _open_subscription(self, sub: Subscription) -> None:
        def opened(frame: Frame) -> None:
            assert frame.sub is not None
            self._newest_sub = max(self._newest_sub, frame.sub)
            self._subs[frame.sub] = sub
            sub._opened(frame.sub, frame.since)
            for event in self._early.pop(frame.sub, ()):
                sub._deliver(event)
            for stale in [s for s in self._early if s <= self._newest_sub]:
                del self._early[stale]

        await self._call(
            "subscribe",
            on_reply=opened,
            job_id=sub.job_id,
            since=sub.since,
            logs=True if sub.logs else None,
            offset=sub.offset if sub.logs and sub.offset else None,
        )

    def _forget_subscription(self, sub_id: int) -> None:
        self._subs.pop(sub_id, None)

    async def _unsubscribe(self, sub_id: int) -> None:
        if self._lost is None:
            await self._call("unsubscribe", sub=sub_id)

    def _abandon_subscription(self, sub_id: int) -> None:
        """Drop a subscription nobody reads, unsubscribing in the background."""
        self._forget_subscription(sub_id)
        if self._lost is None:
            self._nursery.start_soon(self._unsubscribe_quietly, sub_id)

    async def _unsubscribe_quietly(self, sub_id: int) -> None:
        with contextlib.suppress(FetchMLError):
            await self._unsubscribe(sub_id)


def _state_name(state: JobState | str) -> str:
    try:
        return JobState(state).value
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidRequestError(
            f"state: unknown state {state!r}; one of {known}", field="state"
        ) from None


def _job(frame: Frame) -> Job:
    if frame.job is None:
        raise FetchMLError("the server's reply has no job")
    return frame.job
