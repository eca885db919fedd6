"""Frames as the client reads them: each one is a reply to one of its requests or an event of
one of its subscriptions, decoded into the protocol's own structs (:mod:`fetchml.protocol`).

A frame is read twice: first only its ``re``, ``ok`` and ``ev`` (:class:`Head`, which skips
everything else), then as the reply the waiting request expects, an error reply, or an event.
Fields the client does not know are ignored, so a newer server can add some; an event of a
kind it does not know is skipped.  A ``jobs`` frame (several job events, :class:`JobUpdates`) is
unpacked into one :class:`JobUpdate` per event, so a subscriber sees the same events either way.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from fetchml.protocol import ErrorReply, Event, JobEntry, JobUpdate, JobUpdates, Request

__all__ = ["FrameDecoder", "Head", "encode_request"]

R = TypeVar("R", bound=msgspec.Struct)
# Every event frame the client reads: the events of a subscription, and batches of job events.
_Incoming = Event | JobUpdates[JobEntry]


class Head(msgspec.Struct, frozen=True):
    """What says where a frame goes: ``re`` (a reply to that request) or ``ev`` (an event)."""

    re: int | None = None
    ok: bool = False
    ev: str | None = None


class FrameDecoder:
    """Decoders for frames from the server, msgpack (binary) or JSON (text)."""

    def __init__(self) -> None:
        self._decoders: dict[tuple[bool, Any], Any] = {}

    def _decode(self, data: bytes | str, type_: Any) -> Any:
        binary = isinstance(data, bytes)
        decoder = self._decoders.get((binary, type_))
        if decoder is None:
            module = msgspec.msgpack if binary else msgspec.json
            decoder = self._decoders[(binary, type_)] = module.Decoder(type_)
        return decoder.decode(data)

    def head(self, data: bytes | str) -> Head:
        """Where the frame goes.  Raises msgspec errors for a frame that is not a map."""
        head: Head = self._decode(data, Head)
        return head

    def reply(self, data: bytes | str, head: Head, expected: type[R]) -> R | ErrorReply:
        """The reply: of the ``expected`` type if it succeeded, else an error reply.  Raises
        msgspec errors for one that does not have that shape."""
        decoded: R | ErrorReply = self._decode(data, expected if head.ok else ErrorReply)
        return decoded

    def events(self, data: bytes | str) -> tuple[int, list[Event]]:
        """``(sub, events)`` of an event frame: one event, the job events of a ``jobs`` frame
        in order, or none for an event of a kind this client does not know (then ``sub`` is
        -1).  Raises msgspec errors for a frame that is not a map."""
        try:
            frame: _Incoming = self._decode(data, _Incoming)
        except msgspec.ValidationError:
            return -1, []
        if isinstance(frame, JobUpdates):
            sub = frame.sub
            return sub, [JobUpdate(sub=sub, seq=e.seq, job=e.job) for e in frame.events]
        return frame.sub, [frame]


_encoder = msgspec.msgpack.Encoder()


def encode_request(request: Request) -> bytes:
    """The msgpack frame of ``request`` (arguments left at their defaults included)."""
    return _encoder.encode(request)
