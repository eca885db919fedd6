"""Replies and events of the WebSocket protocol, and the bodies of the HTTP API.

Each payload is defined once: the HTTP body (``JobBody``: ``{"job"}``) and the WebSocket reply
that carries it (``JobReply``: ``{"re", "ok", "job"}``) are the same struct, the reply adding the
request id and ``ok``.  Jobs and the queue summary are the core's own structs.  Events are a
tagged union on ``ev``; a subscription's log chunks are bytes in msgpack frames and text in JSON
text frames (:class:`LogText`, what a browser reads); its metric points are arrays.  A subscription
opened with ``batch`` gets the job events that wait for it together in one :class:`JobUpdates`.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

import msgspec

from .._models import Job, StatusReport
from ._errors import ErrorBody

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_POINTS",
    "ErrorEnvelope",
    "ErrorReply",
    "Event",
    "Health",
    "Identity",
    "IdentityReply",
    "JobBody",
    "JobEntry",
    "JobReply",
    "JobUpdate",
    "JobUpdates",
    "JobsBody",
    "JobsReply",
    "LogChunk",
    "LogEnd",
    "LogText",
    "MetricPoint",
    "MetricPoints",
    "PruneReport",
    "PruneRequest",
    "Reply",
    "StatusBody",
    "StatusReply",
    "Subscribed",
    "Unsubscribed",
]


class _Body(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every payload."""


# --- bodies (HTTP) -------------------------------------------------------------------------


class Identity(_Body, frozen=True, kw_only=True):
    """Who the server takes the caller for (``whoami``)."""

    user: str
    roles: list[str]
    permissions: list[str]
    admin: bool


class JobBody(_Body, frozen=True, kw_only=True):
    job: Job


class JobsBody(_Body, frozen=True, kw_only=True):
    jobs: list[Job]


class StatusBody(_Body, frozen=True, kw_only=True):
    status: StatusReport


class ErrorEnvelope(_Body, frozen=True, kw_only=True):
    """An HTTP error body, ``{"error": {"code", "message", ...}}``."""

    error: ErrorBody


class Health(_Body, frozen=True, kw_only=True):
    status: str = "ok"


class PruneRequest(_Body, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What to prune: what ended more than ``older_than_s`` ago, but the ``keep_last`` most
    recently ended jobs; ``dry_run`` only says what would go."""

    older_than_s: Annotated[float, msgspec.Meta(ge=0, le=1e10)] = 30 * 86400.0
    keep_last: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0
    dry_run: bool = False


class PruneReport(_Body, frozen=True, kw_only=True):
    """What a prune removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    jobs: list[int]
    snapshots: int
    blobs: int
    bytes_freed: int


# --- replies (WebSocket) -------------------------------------------------------------------
# Each adds ``re`` (the request's id; None when the frame had no usable id) and ``ok`` to its
# body (msgspec structs inherit from one struct with fields only, hence the repeated pair).


class IdentityReply(Identity, frozen=True, kw_only=True):
    re: int | None
    ok: bool = True


class JobReply(JobBody, frozen=True, kw_only=True):
    re: int | None
    ok: bool = True


class JobsReply(JobsBody, frozen=True, kw_only=True):
    re: int | None
    ok: bool = True


class StatusReply(StatusBody, frozen=True, kw_only=True):
    re: int | None
    ok: bool = True


class Subscribed(_Body, frozen=True, kw_only=True):
    """A subscription opened: its id (named by its events) and the seq it starts after."""

    re: int | None
    ok: bool = True
    sub: int
    since: int | None


class Unsubscribed(_Body, frozen=True, kw_only=True):
    re: int | None
    ok: bool = True
    sub: int


class ErrorReply(ErrorEnvelope, frozen=True, kw_only=True):
    re: int | None
    ok: bool = False


Reply = IdentityReply | JobReply | JobsReply | StatusReply | Subscribed | Unsubscribed | ErrorReply


# --- events --------------------------------------------------------------------------------


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="ev"):
    """Base of every event: ``sub`` names the subscription it belongs to."""

    sub: int


class JobUpdate(_Event, frozen=True, kw_only=True, tag="job"):
    """A job changed (it was queued, started, ended …).  ``seq`` orders all events."""

    seq: int
    job: Job


class JobEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One job event in a :class:`JobUpdates`: what a :class:`JobUpdate` carries but ``sub``."""

    seq: int
    job: Job


# What a JobUpdates carries: JobEntry for a reader; the server sends each entry already encoded
# (msgspec.Raw), once per event and frame format for all its subscribers.
E = TypeVar("E")


class JobUpdates(_Event, Generic[E], frozen=True, kw_only=True, tag="jobs"):
    """Several job events in one frame, in ``seq`` order (at most :data:`MAX_BATCH_EVENTS`).

    Only for a subscription opened with ``batch``: the events already waiting for it when it
    sends go out together, so a busy server costs each subscriber few frames.  A lone event still
    comes as a :class:`JobUpdate`.  Read it as ``JobUpdates[JobEntry]``.
    """

    events: list[E]


class LogChunk(_Event, frozen=True, kw_only=True, tag="log"):
    """Bytes of a job's log (stdout and stderr), starting at byte ``offset`` of the log."""

    job_id: int
    offset: int
    data: bytes


class LogText(_Event, frozen=True, kw_only=True, tag="log"):
    """A :class:`LogChunk` in a JSON text frame: the bytes as text (bad UTF-8 replaced)."""

    job_id: int
    offset: int
    data: str


class LogEnd(_Event, frozen=True, kw_only=True, tag="log_end"):
    """The job ended and its log was sent to the end; ``offset`` is the log's length."""

    job_id: int
    offset: int


class MetricPoint(msgspec.Struct, frozen=True, array_like=True):
    """One point on the wire: ``[name, step, value, time]`` (time in Unix seconds)."""

    name: str
    step: int
    value: float
    time: float


class MetricPoints(_Event, frozen=True, kw_only=True, tag="metric"):
    """Metric points of a job, stored since the last such event, in the order they were
    logged (several per event, at most :data:`MAX_EVENT_POINTS`)."""

    job_id: int
    points: list[MetricPoint]


# Points in one metric event: a burst is split so that no frame grows past about 400 KB.
MAX_EVENT_POINTS = 5000
# Job events in one JobUpdates frame (the server also splits one that would pass about 512 KB).
MAX_BATCH_EVENTS = 500

Event = JobUpdate | LogChunk | LogEnd | MetricPoints
