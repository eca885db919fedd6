"""The HTTP API under ``/api/v1`` (JSON), plus ``/health`` and ``/metrics``.

Routes authenticate with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and hand the
work to :class:`Service`; errors raised anywhere become ``{"error": {"code", "message"}}`` with
the status of the error class (see ``_app.py``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import trio
from quart import Quart, Response, g, request

from .._models import JobMatch, JobState, decode_spec_json, describe_validation_error
from ..auth import Principal
from ..errors import InvalidRequestError
from ..protocol import Health, JobBody, JobsBody, StatusBody
from ._log_range import log_range_response
from ._metrics import Metrics
from ._openapi import MAX_LIST, MAX_OFFSET, MAX_QUERY_ID, openapi_document
from ._service import Service

__all__ = ["api_key_from", "caller", "int_arg", "json_response", "register_http"]

_json = msgspec.json.Encoder()


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(_json.encode(payload), status=status, content_type="application/json")


def api_key_from(headers: Any) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return str(credentials.strip())
    key = headers.get("X-API-Key")
    return str(key).strip() if key else None


_DECIMAL = re.compile(r"-?[0-9]+")
# The longest experiment, tag or name filter (as on the WebSocket's ``list``).
MAX_FILTER_TEXT = 250
T = TypeVar("T")


def int_arg(name: str, default: int | None, *, low: int, high: int) -> int | None:
    """Query parameter ``name``: a decimal integer (ASCII digits, an optional ``-``) from
    ``low`` to ``high``, or ``default`` if absent.  Raises InvalidRequestError (400)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _DECIMAL.fullmatch(raw):
        raise InvalidRequestError(f"{name}: not an integer: {raw[:40]!r}", field=name)
    # More digits than ``high`` has is out of range (and int() refuses a few thousand).
    if len(raw.lstrip("-0")) > len(str(high)) or not low <= int(raw) <= high:
        raise InvalidRequestError(f"{name}: must be {low} to {high}", field=name)
    return int(raw)


async def request_struct(struct: type[T], *, empty: bytes | None = None) -> T:
    """The request's JSON body as ``struct`` (an empty body read as ``empty``, if given).
    Raises InvalidRequestError (400) naming the field, or ``body`` for what is not JSON."""
    body = await request.get_data(as_text=False)
    assert isinstance(body, bytes)
    try:
        return msgspec.json.decode(body or empty or b"", type=struct)
    except msgspec.ValidationError as exc:
        field, message = describe_validation_error(exc)
        raise InvalidRequestError(message, field=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"body: {exc}", field="body") from None


def flag_arg(name: str) -> bool:
    """Query parameter ``name`` as a flag: ``1``, ``true``, ``yes`` (any case) or
    ``0``, ``false``, ``no``, empty or absent.  Raises InvalidRequestError (400)."""
    raw = request.args.get(name, "")
    value = raw.lower() if raw.isascii() else raw
    if value in ("1", "true", "yes"):
        return True
    if value in ("", "0", "false", "no"):
        return False
    raise InvalidRequestError(f"{name}: must be 1, true, yes, 0, false or no", field=name)


def _text_arg(name: str) -> str | None:
    """Query parameter ``name`` as a filter text (1 to 250 characters), None if absent or
    empty.  Raises InvalidRequestError (400)."""
    raw = request.args.get(name) or None
    if raw is not None and len(raw) > MAX_FILTER_TEXT:
        raise InvalidRequestError(f"{name}: at most {MAX_FILTER_TEXT} characters", field=name)
    return raw


def _states_arg() -> list[JobState] | None:
    raw = [s for value in request.args.getlist("state") for s in value.split(",") if s]
    if not raw:
        return None
    try:
        return [JobState(s) for s in raw]
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        raise InvalidRequestError(f"state: unknown state; one of {known}", field="state") from None


async def _next_chunk(
    chunks: AsyncIterator[bytes], closing: trio.Event, ended: Callable[[], Awaitable[object]]
) -> bytes | None:
    """The next chunk, or None at the end, once ``closing`` is set or once ``ended()`` returns
    (the caller's key no longer holds); the wait is then cancelled."""
    chunk: bytes | None = None
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            nonlocal chunk
            chunk = await anext(chunks, None)
            nursery.cancel_scope.cancel()

        async def stop_when(event: Callable[[], Awaitable[object]]) -> None:
            await event()
            nursery.cancel_scope.cancel()

        nursery.start_soon(read)
        nursery.start_soon(stop_when, closing.wait)
        nursery.start_soon(stop_when, ended)
    return chunk


async def caller(service: Service) -> Principal:
    """The caller of the request being served, counted against its key's rate limit.  Raises
    AuthError (401) and RateLimitedError (429).  Waits on the auth actor (and the audit log on
    a refusal)."""
    principal = await service.authenticate(api_key_from(request.headers))
    g.fetchml_user = principal.user  # named in the log line of a fault in this request
    retry_after_s = service.over_limit(principal)
    if retry_after_s:
        await service.refuse_rate(principal, f"{request.method} {request.path}", retry_after_s)
    return principal


def register_http(
    app: Quart, service: Service, metrics: Metrics, closing: trio.Event | None = None
) -> None:
    """Add every HTTP route to ``app``.

    ``closing`` (set when the server starts shutting down) ends followed log streams cleanly,
    so they neither hold up the shutdown nor end in a truncated response.
    """
    if closing is None:
        closing = trio.Event()

    async def who() -> Principal:
        return await caller(service)

    @app.get("/health")
    async def health() -> Response:
        return json_response(Health())

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = await metrics.render(service.scheduler, service.limits)
        return Response(body, content_type=content_type)

    @app.get("/api/v1/openapi.json")
    async def openapi() -> Response:
        return json_response(openapi_document())

    @app.get("/api/v1/whoami")
    async def whoami() -> Response:
        return json_response(service.whoami(await who()))

    @app.post("/api/v1/jobs")
    async def submit() -> Response:
        principal = await who()
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        spec = decode_spec_json(body)
        return json_response(JobBody(job=await service.submit(principal, spec)), status=201)

    @app.get("/api/v1/jobs")
    async def list_jobs() -> Response:
        principal = await who()
        jobs = await service.list(
            principal,
            user=request.args.get("user") or None,
            states=_states_arg(),
            limit=int_arg("limit", 100, low=1, high=MAX_LIST) or 100,
            before_id=int_arg("before", None, low=1, high=MAX_QUERY_ID),
            match=JobMatch.of(
                experiment=_text_arg("experiment"), tag=_text_arg("tag"), name=_text_arg("name")
            ),
        )
        return json_response(JobsBody(jobs=jobs))

    @app.get("/api/v1/jobs/<int:job_id>")
    async def get_job(job_id: int) -> Response:
        return json_response(JobBody(job=await service.get(await who(), job_id)))

    @app.post("/api/v1/jobs/<int:job_id>/cancel")
    async def cancel_job(job_id: int) -> Response:
        return json_response(JobBody(job=await service.cancel(await who(), job_id)))

    @app.get("/api/v1/jobs/<int:job_id>/logs")
    async def job_logs(job_id: int) -> Response:
        principal = await who()
        offset = int_arg("offset", 0, low=0, high=MAX_OFFSET) or 0
        follow = flag_arg("follow")
        range_header = request.headers.get("Range")
        if range_header and not follow:  # a part of the log, e.g. its tail (the dashboard)
            await service.get(principal, job_id)
            return await log_range_response(service.scheduler.log_path(job_id), range_header)
        chunks = await service.logs(principal, job_id, offset=offset, follow=follow)
        # A followed log can stream for days: it ends when the key is revoked or expires.
        ended = functools.partial(service.sessions.until_invalid, principal, request.remote_addr)

        async def body() -> AsyncIterator[bytes]:
            try:
                while (chunk := await _next_chunk(chunks, closing, ended)) is not None:
                    yield chunk
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]

        response = Response(body(), content_type="text/plain; charset=utf-8")
        response.timeout = None  # a followed log streams for as long as the job runs
        return response

    @app.get("/api/v1/status")
    async def status() -> Response:
        return json_response(StatusBody(status=await service.status(await who())))
