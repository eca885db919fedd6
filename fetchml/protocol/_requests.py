"""Requests of the WebSocket protocol: one struct per op, and how the server decodes a frame.

A request is a map ``{"op": <str>, "id": <int>, ...arguments}``; it decodes straight into one of
the op structs below (the ``op`` value is the tag), so a bad frame is rejected with a message that
names the field.  Binary frames are msgpack, text frames JSON; a reply goes back in the format of
its request.  The client encodes its requests with the same structs.  A new op is one struct
here (in :data:`Request`), its reply in ``_replies``, and its case in the gateway's dispatch.
"""

from __future__ import annotations

import json
import typing
from typing import Annotated, Any

import msgspec

from .._models import JobSpec, JobState, describe_validation_error, surrogate_path
from ..errors import FetchMLError, InvalidRequestError, InvalidSpecError
from ._peek import json_request_id, msgpack_request_id

__all__ = [
    "JSON",
    "MSGPACK",
    "OPS",
    "AuthOp",
    "CancelOp",
    "Codec",
    "GetOp",
    "ListOp",
    "Request",
    "StatusOp",
    "SubmitOp",
    "SubscribeOp",
    "UnsubscribeOp",
    "WhoamiOp",
    "decode_request",
]

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
# Ids and seqs the store can hold (SQLite INTEGER); a larger one would make it raise.
JobIdArg = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
# What a list filter compares with names, tags and experiments (each at most 250 characters).
FilterText = Annotated[str, msgspec.Meta(min_length=1, max_length=250)]


class _Op(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op", kw_only=True):
    id: RequestId


class AuthOp(_Op, frozen=True, kw_only=True, tag="auth"):
    key: str


class WhoamiOp(_Op, frozen=True, kw_only=True, tag="whoami"):
    pass


class SubmitOp(_Op, frozen=True, kw_only=True, tag="submit"):
    spec: JobSpec


class GetOp(_Op, frozen=True, kw_only=True, tag="get"):
    job_id: JobIdArg


class ListOp(_Op, frozen=True, kw_only=True, tag="list"):
    """Jobs newest first; ``experiment`` and ``tag`` match exactly, ``name`` is a substring
    (any case) of the job's name."""

    user: str | None = None
    state: list[JobState] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    before: JobIdArg | None = None
    experiment: FilterText | None = None
    tag: FilterText | None = None
    name: FilterText | None = None


class CancelOp(_Op, frozen=True, kw_only=True, tag="cancel"):
    job_id: JobIdArg


class SubscribeOp(_Op, frozen=True, kw_only=True, tag="subscribe"):
    """Events of one job (``job_id``) or of every job the caller may see, after ``since``.

    ``logs`` (with ``job_id``) also streams the job's log from byte ``offset``; ``metrics``
    (with ``job_id``) the metric points the server stores from now on (:class:`MetricPoints`).
    ``batch``: job events that wait for the subscriber together come in one ``jobs`` frame
    (:class:`JobUpdates`) rather than one ``job`` frame each; log and metric events are the same.
    """

    job_id: JobIdArg | None = None
    since: Seq | None = None
    logs: bool = False
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    metrics: bool = False
    batch: bool = False


class UnsubscribeOp(_Op, frozen=True, kw_only=True, tag="unsubscribe"):
    sub: int


class StatusOp(_Op, frozen=True, kw_only=True, tag="status"):
    pass


Request = (
    AuthOp
    | WhoamiOp
    | SubmitOp
    | GetOp
    | ListOp
    | CancelOp
    | SubscribeOp
    | UnsubscribeOp
    | StatusOp
)


OPS = frozenset(str(op.__struct_config__.tag) for op in typing.get_args(Request))


class Codec:
    """Encoders and decoders for one frame format (msgpack for binary frames, JSON for text)."""

    def __init__(self, *, binary: bool) -> None:
        self.binary = binary
        if binary:
            self._decode_request = msgspec.msgpack.Decoder(Request).decode
            self._decode_any = msgspec.msgpack.Decoder().decode
            self.encode = msgspec.msgpack.Encoder().encode
        else:
            self._decode_request = msgspec.json.Decoder(Request).decode
            self._decode_any = msgspec.json.Decoder().decode
            self.encode = msgspec.json.Encoder().encode

    def frame(self, payload: Any) -> bytes | str:
        data = self.encode(payload)
        return data if self.binary else data.decode()


MSGPACK = Codec(binary=True)
JSON = Codec(binary=False)


def decode_request(
    data: bytes | str,
) -> tuple[Codec, Request | None, int | None, FetchMLError | None]:
    """Decode one frame: ``(codec, request, request id, error)``.

    On a bad frame ``request`` is None and ``error`` says what is wrong; ``request id`` is then
    recovered if the frame has a usable ``id``, so the error reply can name it.
    """
    codec = MSGPACK if isinstance(data, bytes) else JSON
    raw = data if isinstance(data, bytes) else data.encode()
    try:
        request = codec._decode_request(raw)
    except msgspec.ValidationError as exc:
        return codec, None, _recover_id(codec, raw), _bad_frame(exc)
    except msgspec.DecodeError as exc:
        if not codec.binary:
            surrogate = _lone_surrogate(data if isinstance(data, str) else "")
            if surrogate is not None:
                return codec, None, *surrogate
        return codec, None, None, InvalidRequestError(f"malformed frame: {exc}")
    except RecursionError:  # msgspec's own, for a frame nested deeper than it decodes
        error = InvalidRequestError("malformed frame: nested too deeply")
        return codec, None, _peek_id(codec, raw), error
    except UnicodeDecodeError as exc:  # msgspec's own, for some strings that are not UTF-8
        return (
            codec,
            None,
            None,
            InvalidRequestError(f"malformed frame: a string is not UTF-8 ({exc.reason})"),
        )
    return codec, request, request.id, None


def _peek_id(codec: Codec, raw: bytes) -> int | None:
    """The id of a frame nested too deeply to decode, read without decoding it."""
    return msgpack_request_id(raw) if codec.binary else json_request_id(raw)


def _lone_surrogate(text: str) -> tuple[int | None, FetchMLError] | None:
    """(request id, error) for a JSON frame that msgspec refused only for a lone surrogate
    escape (``"\\ud800"``, which it reports as truncated input), or None if that is not it.
    The standard library's decoder accepts those, which lets the error name the field."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None
    path = surrogate_path(frame)
    if path is None:
        return None
    rid = _valid_id(frame.get("id")) if isinstance(frame, dict) else None
    message = f"{path or 'frame'}: not valid Unicode (a lone surrogate)"
    if path == "spec" or path.startswith("spec."):
        return rid, InvalidSpecError(message, field=path)
    return rid, InvalidRequestError(message, field=path or None)


def _valid_id(rid: object) -> int | None:
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= 2**53:
        return rid
    return None


def _recover_id(codec: Codec, raw: bytes) -> int | None:
    try:
        frame = codec._decode_any(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _peek_id(codec, raw)  # too deep, or a string that is not Unicode
    return _valid_id(frame.get("id")) if isinstance(frame, dict) else None


def _bad_frame(exc: msgspec.ValidationError) -> InvalidRequestError:
    field, message = describe_validation_error(exc)
    if field == "op" and message.startswith("op: Invalid value"):
        known = ", ".join(sorted(OPS))
        return InvalidRequestError(
            f"unknown op {message.removeprefix('op: Invalid value ')}; known ops: {known}",
            field="op",
        )
    if field is None and "Expected `object`" in str(exc):
        return InvalidRequestError("a frame must be a map with 'op' and 'id'")
    if field is not None and (field == "spec" or field.startswith("spec.")):
        # The same error class (and code) as HTTP gives for the spec; the path stays the frame's.
        return InvalidSpecError(message, field=field)
    return InvalidRequestError(message, field=field)
