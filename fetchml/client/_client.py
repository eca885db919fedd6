"""The protocol client: one WebSocket connection, requests matched to replies by id.

One reader task receives every frame: a reply wakes the request waiting on its ``re`` id, an event
goes to the subscription named by its ``sub``.  Requests may run concurrently from many tasks.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
)

from fetchml import protocol as wire
from fetchml._models import Job, JobSpec, JobState, StatusReport, validate_spec
from fetchml.artifacts import OutputFile, RunManifest, Validation
from fetchml.errors import (
    AuthError,
    FetchMLError,
    InvalidRequestError,
    InvalidSpecError,
    RateLimitedError,
    SubscriberDroppedError,
)
from fetchml.protocol import (
    Buckets,
    DatasetBody,
    DatasetInfo,
    ExperimentsBody,
    FilesBody,
    OutcomeBody,
    PruneReport,
    PruneRequest,
    RawPage,
    RegisterDataset,
    RunInfo,
    RunsBody,
)

from . import _artifacts, _datasets, _tracking
from ._errors import ConnectionLostError, rate_limit_wait
from ._frames import FrameDecoder, encode_request
from ._http import HttpSession
from ._jobs import NO_KEY_HINT, state_names
from ._snapshots import Snapshot, make_snapshot
from ._subscription import DEFAULT_BUFFER, Subscription

__all__ = ["Client"]

R = TypeVar("R", bound=msgspec.Struct)
T = TypeVar("T")

# Seconds closing the connection waits for the server's close frame.
_CLOSE_S: Final = 2.0
# Events kept for a subscription whose reply has not been read yet (the server may send a
# subscription's first events before the reply that names it).
_EARLY_EVENTS: Final = 10_000
# Socket timeout of the HTTP log request.
_HTTP_S: Final = 60.0


class _Pending:
    """A request waiting for its reply: the reply type it expects, then the reply (or the error
    that ended the wait)."""

    __slots__ = ("done", "error", "expected", "on_reply", "reply")

    def __init__(self, expected: type[msgspec.Struct], on_reply: Callable[[Any], None] | None):
        self.done = trio.Event()
        self.expected = expected
        self.reply: msgspec.Struct | None = None
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
        self._frames = FrameDecoder()

    # --- operations ---------------------------------------------------------------------------

    async def whoami(self) -> wire.IdentityReply:
        """The user the key belongs to, with roles and permissions (an :class:`Identity`)."""
        return await self._call(wire.WhoamiOp(id=0), wire.IdentityReply)

    async def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        """Queue a job; returns it as stored.  Raises InvalidSpecError, PermissionDeniedError.

        The spec is validated here first (with the server's own validator), so a bad one raises
        :class:`InvalidSpecError` naming the field without a round trip.
        """
        checked = validate_spec(spec)
        try:
            return (await self._call(wire.SubmitOp(id=0, spec=checked), wire.JobReply)).job
        except InvalidRequestError as exc:
            # The server names fields of a bad submit frame as ``spec.<field>``: paths in the
            # frame.  The caller gave a spec, so its fields are named as paths in the spec.
            if not (exc.field or "").startswith("spec."):
                raise
            field = (exc.field or "").removeprefix("spec.")
            raise InvalidSpecError(exc.message.removeprefix("spec."), field=field) from None

    async def get(self, job_id: int) -> Job:
        """The job's current version.  Raises JobNotFoundError."""
        return (await self._call(wire.GetOp(id=0, job_id=job_id), wire.JobReply, job_id=job_id)).job

    async def cancel(self, job_id: int) -> Job:
        """Cancel a job; returns it once it has ended.  Raises ConflictError if already ended."""
        return (
            await self._call(wire.CancelOp(id=0, job_id=job_id), wire.JobReply, job_id=job_id)
        ).job

    async def status(self) -> StatusReport:
        """The queue summary: counts by state, per-user counts, free and total resources."""
        return (await self._call(wire.StatusOp(id=0), wire.StatusReply)).status

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
        names = state_names(state)
        wire_states = None if names is None else [JobState(name) for name in names]
        request = wire.ListOp(id=0, user=user, state=wire_states, limit=limit, before=before)
        return (await self._call(request, wire.JobsReply)).jobs

    def subscribe(
        self,
        job_id: int | None = None,
        *,
        since: int | None = None,
        logs: bool = False,
        offset: int = 0,
        metrics: bool = False,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """Events of one job (``job_id``) or of every job the key may see, after ``since``
        (a ``seq``; None: from now on).  ``logs=True`` (needs ``job_id``) also streams the job's
        log from byte ``offset`` until the job ends; ``metrics=True`` (needs ``job_id``) the
        metric points the server stores from now on (:class:`MetricPoints` events).

        ``async with client.subscribe(job_id) as events: async for event in events: ...``
        """
        if (logs or metrics) and job_id is None:
            raise ValueError("logs=True and metrics=True need a job_id")
        return Subscription(
            self,
            job_id=job_id,
            since=since,
            logs=logs,
            offset=offset,
            metrics=metrics,
            buffer=buffer,
        )

    async def wait(self, job_id: int) -> Job:
        """Wait until the job ends (from pushed events, no polling); returns its final version."""
        async with self.subscribe(job_id) as events:
            job = await self.get(job_id)
            if job.terminal:
                return job
            async for event in events:
                if isinstance(event, wire.JobUpdate) and event.job.terminal:
                    return event.job
        raise ConnectionLostError("the subscription ended before the job did", url=self.url)

    async def logs(self, job_id: int, *, offset: int = 0) -> bytes:
        """The job's log so far, from byte ``offset`` (one HTTP request: the WebSocket protocol
        only streams logs live, through ``subscribe(job_id, logs=True)``)."""
        path = f"/api/v1/jobs/{int(job_id)}/logs?offset={int(offset)}"
        return await self._over_http(lambda http: http.read(path, job_id=job_id))

    def http_session(self) -> HttpSession:
        """A new HTTP connection to the server with this client's key (close it when done)."""
        return HttpSession(self.url, self._key, timeout=_HTTP_S, ca_file=self._ca_file)

    async def _over_http(self, call: Callable[[HttpSession], T]) -> T:
        """Run ``call`` with an HTTP connection in a worker thread (for what the WebSocket
        protocol does not carry)."""

        def run() -> T:
            with self.http_session() as http:
                return call(http)

        try:
            return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
        except AuthError:
            if self._key is None:
                raise AuthError(NO_KEY_HINT) from None
            raise

    async def snapshot(
        self, path: str | os.PathLike[str] = ".", *, root: str | os.PathLike[str] | None = None
    ) -> Snapshot:
        """Snapshot the project around ``path`` on the server (see :func:`make_snapshot`):
        only the blobs it lacks are sent.  Submit with ``{**spec, **snap.spec_fields()}``."""
        here, top = Path(path), None if root is None else Path(root)

        def run() -> Snapshot:
            return make_snapshot(self.http_session, here, root=top)

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    async def manifest(self, job_id: int) -> RunManifest:
        """The job's ``run_manifest.json``.  Raises NotFoundError before its first start."""
        return await self._over_http(lambda http: _artifacts.manifest(http, job_id))

    async def files(self, job_id: int) -> FilesBody:
        """The job's output files (with their SHA-256 once it has ended)."""
        return await self._over_http(lambda http: _artifacts.files(http, job_id))

    async def validate(self, job_id: int) -> Validation:
        """Re-hash the job's snapshot and outputs on the server against its manifest."""
        return await self._over_http(lambda http: _artifacts.validate(http, job_id))

    async def prune(
        self, *, older_than_s: float, keep_last: int = 0, dry_run: bool = False
    ) -> PruneReport:
        """Prune old jobs' working copies and outputs, and unneeded snapshots and blobs
        (``jobs:update:all``)."""
        request = PruneRequest(older_than_s=older_than_s, keep_last=keep_last, dry_run=dry_run)
        return await self._over_http(lambda http: _artifacts.prune(http, request))

    async def download(
        self,
        job_id: int,
        files: Iterable[OutputFile],
        dest: str | os.PathLike[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> builtins.list[Path]:
        """Download output files under ``dest`` (each checked against its recorded hash);
        ``progress`` gets the bytes of each chunk (called in a worker thread)."""
        wanted, target = builtins.list(files), Path(dest)

        def run(http: HttpSession) -> builtins.list[Path]:
            return [
                _artifacts.download(http, job_id, entry, target, progress=progress)
                for entry in wanted
            ]

        return await self._over_http(run)

    # --- datasets (HTTP) ------------------------------------------------------------------------

    async def register_dataset(
        self, name: str, uri: str, *, sha256: str | None = None, description: str | None = None
    ) -> DatasetBody:
        """Register a dataset, or a new version of one; returns every version, newest first."""
        asked = RegisterDataset(name=name, uri=uri, sha256=sha256, description=description)
        return await self._over_http(lambda http: _datasets.register(http, asked))

    async def datasets(self) -> builtins.list[DatasetInfo]:
        """Every registered dataset with its latest version."""
        return (await self._over_http(_datasets.datasets)).datasets

    async def dataset(self, name: str) -> DatasetBody:
        """Every version of dataset ``name``, newest first."""
        return await self._over_http(lambda http: _datasets.dataset(http, name))

    # --- experiment tracking (HTTP) -------------------------------------------------------------

    async def metrics(self, job_id: int) -> RunInfo:
        """The run's params, tags, summary, narrative, outcome and metric summaries."""
        return await self._over_http(lambda http: _tracking.metrics(http, job_id))

    async def series(
        self,
        job_id: int,
        name: str,
        *,
        points: int = 1000,
        start: int | None = None,
        end: int | None = None,
    ) -> Buckets:
        """Metric ``name`` of the run in at most ``points`` buckets (min, max and last of each),
        from step ``start`` to step ``end`` (both included)."""
        return await self._over_http(
            lambda http: _tracking.series(http, job_id, name, points=points, start=start, end=end)
        )

    async def points(
        self, job_id: int, name: str, *, after: int | None = None, limit: int = 1000
    ) -> RawPage:
        """A page of metric ``name``'s raw points after step ``after``; the next page is
        ``points(..., after=page.next)`` until ``page.next`` is None."""
        return await self._over_http(
            lambda http: _tracking.points(http, job_id, name, after=after, limit=limit)
        )

    async def experiments(self) -> ExperimentsBody:
        """The experiments with a run the key may see."""
        return await self._over_http(_tracking.experiments)

    async def runs(
        self,
        experiment: str,
        *,
        sort: str | None = None,
        order: str = "desc",
        limit: int = 100,
        before: str | None = None,
    ) -> RunsBody:
        """A page of the experiment's runs, sorted by the last value of metric ``sort`` (runs
        without it last) in ``order``; the next page is ``runs(..., before=page.next)``."""
        return await self._over_http(
            lambda http: _tracking.runs(
                http, experiment, sort=sort, order=order, limit=limit, before=before
            )
        )

    async def set_outcome(self, job_id: int, text: str) -> OutcomeBody:
        """Record what the run showed (the job's owner, or an admin)."""
        return await self._over_http(lambda http: _tracking.set_outcome(http, job_id, text))

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
        self,
        request: wire.Request,
        expected: type[R],
        *,
        on_reply: Callable[[R], None] | None = None,
        job_id: int | None = None,
    ) -> R:
        """Send ``request`` (its id is set here) and wait for its reply, of type ``expected``;
        raise the error it reports (``job_id``: the job it was about, for ``not_found``).

        A ``rate_limited`` refusal (the request did nothing) is retried after the wait the
        server names while the waits add up to at most ``rate_limit_wait_s``.
        """
        waited = 0.0
        while True:
            try:
                return await self._call_once(request, expected, on_reply, job_id)
            except RateLimitedError as exc:
                wait = rate_limit_wait(exc, waited, self._rate_limit_wait_s)
                if wait is None:
                    raise
                waited += wait
                await trio.sleep(wait)

    async def _call_once(
        self,
        request: wire.Request,
        expected: type[R],
        on_reply: Callable[[R], None] | None,
        job_id: int | None,
    ) -> R:
        if self._lost is not None:
            raise self._lost()
        request_id = next(self._ids)
        pending = _Pending(expected, on_reply)
        self._pending[request_id] = pending
        try:
            frame = encode_request(msgspec.structs.replace(request, id=request_id))
            try:
                await self._ws.send_message(frame)
            except ConnectionClosed as exc:
                self._ended(exc.reason)
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        if isinstance(reply, wire.ErrorReply):
            raise self._error_of(reply, job_id)
        assert isinstance(reply, expected)
        return reply

    def _error_of(self, reply: wire.ErrorReply, job_id: int | None) -> FetchMLError:
        if reply.error.code == AuthError.code and self._key is None:
            return AuthError(NO_KEY_HINT)
        return reply.error.error(job_id=job_id)

    async def _read_frames(self) -> None:
        """The reader task: dispatch every frame until the connection ends."""
        try:
            while True:
                data = await self._ws.get_message()
                try:
                    self._dispatch(data)
                except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
                    self._ended(
                        None, detail=f"the server sent a frame this client cannot read: {exc}"
                    )
                    await self._ws.aclose(1002, "undecodable frame")
                    return
        except ConnectionClosed as exc:
            self._ended(exc.reason)

    def _dispatch(self, data: bytes | str) -> None:
        """Hand one frame to the request or subscription it is for.  Raises msgspec errors for
        a frame that is not what the protocol says."""
        head = self._frames.head(data)
        if head.re is not None:
            pending = self._pending.get(head.re)
            if pending is None:
                if head.ok:
                    self._stray_reply(data, head)
                return
            reply = self._frames.reply(data, head, pending.expected)
            if pending.on_reply is not None and not isinstance(reply, wire.ErrorReply):
                pending.on_reply(reply)
            pending.reply = reply
            pending.done.set()
            return
        if head.ev is None:
            return
        sub_id, events = self._frames.events(data)
        if not events:
            return  # of a kind this client does not know
        sub = self._subs.get(sub_id)
        if sub is not None:
            for event in events:
                sub._deliver(event)
        elif sub_id > self._newest_sub:
            early = self._early.setdefault(sub_id, [])
            early.extend(events[: _EARLY_EVENTS - len(early)])

    def _stray_reply(self, data: bytes | str, head: msgspec.Struct) -> None:
        """A reply nobody waits for: if it opened a subscription (its caller was cancelled),
        do not leave that running."""
        try:
            opened = self._frames.reply(data, head, wire.Subscribed)  # type: ignore[arg-type]
        except msgspec.ValidationError:
            return
        if isinstance(opened, wire.Subscribed):
            self._abandon_subscription(opened.sub)

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
        elif code == wire.CLOSE_TOO_SLOW:
            return lambda: SubscriberDroppedError(f"the server dropped this connection: {text}")
        elif code == wire.CLOSE_AUTH_FAILED:
            return lambda: AuthError(text)
        elif code == wire.CLOSE_GOING_AWAY:
            message = f"the server at {self.url} is shutting down"
        else:
            why = f" ({code}{': ' + text if text else ''})" if code is not None else ""
            message = f"the connection to {self.url} was lost{why}"
        return lambda: ConnectionLostError(message, url=self.url, close_code=code)

    # --- subscriptions ------------------------------------------------------------------------

    async def _open_subscription(self, sub: Subscription) -> None:
        def opened(reply: wire.Subscribed) -> None:
            self._newest_sub = max(self._newest_sub, reply.sub)
            self._subs[reply.sub] = sub
            sub._opened(reply.sub, reply.since)
            for event in self._early.pop(reply.sub, ()):
                sub._deliver(event)
            for stale in [s for s in self._early if s <= self._newest_sub]:
                del self._early[stale]

        request = wire.SubscribeOp(
            id=0,
            job_id=sub.job_id,
            since=sub.since,
            logs=sub.logs,
            offset=sub.offset if sub.logs else 0,
            metrics=sub.metrics,
            batch=True,  # the reader unpacks jobs frames: a subscriber sees one event each
        )
        await self._call(request, wire.Subscribed, on_reply=opened, job_id=sub.job_id)

    def _forget_subscription(self, sub_id: int) -> None:
        self._subs.pop(sub_id, None)

    async def _unsubscribe(self, sub_id: int) -> None:
        if self._lost is None:
            await self._call(wire.UnsubscribeOp(id=0, sub=sub_id), wire.Unsubscribed)

    def _abandon_subscription(self, sub_id: int) -> None:
        """Drop a subscription nobody reads, unsubscribing in the background."""
        self._forget_subscription(sub_id)
        if self._lost is None:
            self._nursery.start_soon(self._unsubscribe_quietly, sub_id)

    async def _unsubscribe_quietly(self, sub_id: int) -> None:
        with contextlib.suppress(FetchMLError):
            await self._unsubscribe(sub_id)
