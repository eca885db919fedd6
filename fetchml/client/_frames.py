"""The frames of the WebSocket protocol as the client sees them, and what subscriptions yield.

Every frame the server sends is a msgpack map: a reply ``{"re", "ok", ...}`` or an event
``{"ev", ...}``.  One flat struct with optional fields decodes both in a single typed pass (jobs
straight into :class:`fetchml.Job`); fields the client does not know are ignored, so a newer
server can add some.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fetchml._models import Job, StatusReport

__all__ = [
    "Event",
    "Frame",
    "Identity",
    "JobUpdate",
    "LogChunk",
    "LogEnd",
    "ServerStatus",
    "WireError",
    "decode_frame",
    "encode_request",
]


class WireError(msgspec.Struct, frozen=True):
    """The error body of a failed reply."""

    code: str = "internal"
    message: str = "unknown error"
    field: str | None = None
    permission: str | None = None
    retry_after: float | None = None


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """Any frame from the server: a reply (``re`` set) or an event (``ev`` set)."""

    re: int | None = None
    ok: bool = False
    error: WireError | None = None
    ev: str | None = None
    seq: int | None = None
    sub: int | None = None
    since: int | None = None
    job: Job | None = None
    jobs: list[Job] | None = None
    status: ServerStatus | None = None
    job_id: int | None = None
    offset: int | None = None
    data: bytes | None = None
    user: str | None = None
    roles: list[str] | None = None
    permissions: list[str] | None = None
    admin: bool | None = None


# The queue summary (the ``status`` reply) is the server's own struct.
ServerStatus = StatusReport


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who the server takes the caller for (the ``whoami`` reply)."""

    user: str
    roles: list[str]
    permissions: list[str]
    admin: bool


class JobUpdate(msgspec.Struct, frozen=True, kw_only=True, tag="job"):
    """A job changed (it was queued, started, ended …).  ``seq`` orders all events."""

    seq: int
    job: Job


class LogChunk(msgspec.Struct, frozen=True, kw_only=True, tag="log"):
    """Bytes of a job's log (stdout and stderr), starting at byte ``offset`` of the log."""

    job_id: int
    offset: int
    data: bytes


class LogEnd(msgspec.Struct, frozen=True, kw_only=True, tag="log_end"):
    """The job ended and its log was sent to the end; ``offset`` is the log's length."""

    job_id: int
    offset: int


Event = JobUpdate | LogChunk | LogEnd

_decoder = msgspec.msgpack.Decoder(Frame)
_encoder = msgspec.msgpack.Encoder()


def decode_frame(data: bytes | str) -> Frame:
    """Decode one frame (msgpack, or JSON for a text frame).  Raises msgspec errors."""
    if isinstance(data, str):
        return msgspec.json.decode(data, type=Frame)
    return _decoder.decode(data)


def encode_request(op: str, request_id: int, args: dict[str, Any]) -> bytes:
    """The msgpack request frame ``{"op", "id", **args}`` (None-valued arguments left out)."""
    frame = {"op": op, "id": request_id}
    frame.update({name: value for name, value in args.items() if value is not None})
    return _encoder.encode(frame)


def event_of(frame: Frame) -> Event | None:
    """The subscription event carried by an event frame, or None for one of unknown kind."""
    if frame.ev == "job" and frame.job is not None and frame.seq is not None:
        return JobUpdate(seq=frame.seq, job=frame.job)
    if frame.ev == "log" and frame.job_id is not None and frame.data is not None:
        return LogChunk(job_id=frame.job_id, offset=frame.offset or 0, data=frame.data)
    if frame.ev == "log_end" and frame.job_id is not None:
        return LogEnd(job_id=frame.job_id, offset=frame.offset or 0)
    return None
