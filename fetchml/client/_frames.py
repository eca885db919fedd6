"""Frames as the client reads them: each one is a reply to one of its requests or an event of
one of its subscriptions, decoded into the protocol's own structs (:mod:`fetchml.protocol`).

A frame is read twice: first only its ``re``, ``ok`` and ``ev`` (:class:`Head`, which skips
everything else), then as the reply the waiting request expects, an error reply, or an event.
Fields the client does not know are ignored, so a newer server can add some; an event of a
kind it does not know is skipped.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from fetchml.protocol import ErrorReply, Event, Request

__all__ = ["FrameDecoder", "Head", "encode_request"]

R = TypeVar("R", bound=msgspec.Struct)


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

    def event(self, data: bytes | str) -> Event | None:
        """The event, or None for one of a kind this client does not know."""
        try:
            event: Event = self._decode(data, Event)
        except msgspec.ValidationError:
            return None
        return event


_encoder = msgspec.msgpack.Encoder()


def encode_request(request: Request) -> bytes:
    """The msgpack frame of ``request`` (arguments left at their defaults included)."""
    return _encoder.encode(request)
