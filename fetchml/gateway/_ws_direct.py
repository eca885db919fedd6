"""A WebSocket's data frames framed here and handed straight to hypercorn's connection.

Quart's ``send`` goes through its ASGI adapter (an ``accept`` check, a signal), hypercorn's ASGI
``app_send`` (a copy, a wsproto event) and wsproto's framing before the bytes reach the
connection's writer; for a server that fans an event out to a thousand subscribers that path
costs more than the write itself (bench/bench_gateway_fanout.py).  A server's data frame is
simple (RFC 6455 5.2: no mask, a length), so :class:`FrameSender` frames it and hands it to the
WebSocket's hypercorn stream the way ``app_send`` would.

Only on the path that needs no more than that: a connection open in both hypercorn's and
wsproto's view, without an extension (``permessage-deflate`` compresses each frame: those go
through wsproto).  Anything else (the handshake of another hypercorn, a closing connection)
goes through Quart's ``send``, which does what it always did.  The pinned hypercorn
(``_hypercorn_fix.HYPERCORN_VERSION``) is the one this was written for; a test checks that the
direct path is taken with it and that its frames are wsproto's.
"""

from __future__ import annotations

import struct
from typing import Any

from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from quart.wrappers import Websocket
from wsproto.connection import ConnectionState

__all__ = ["FrameSender", "frame"]

_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame(data: bytes | str) -> bytes:
    """``data`` as one unmasked, final WebSocket frame: binary for bytes, text for str."""
    if isinstance(data, str):
        payload, first = data.encode(), _FIN_TEXT
    else:
        payload, first = data, _FIN_BINARY
    size = len(payload)
    if size < 126:
        head = _SHORT.pack(first, size)
    elif size < 1 << 16:
        head = _MEDIUM.pack(first, 126, size)
    else:
        head = _LONG.pack(first, 127, size)
    return head + payload


def _stream_of(ws: Websocket) -> WSStream | None:
    """The hypercorn stream under an accepted Quart WebSocket, if it is one this module can send
    on directly (no extension in use); else None.

    Quart's ``_send`` is ``partial(send_data, send)`` with hypercorn's ``WSStream.app_send`` as
    ``send``; anything of another shape is not looked into further.
    """
    args: Any = getattr(ws._send, "args", ())
    stream = getattr(args[0], "__self__", None) if args else None
    if not isinstance(stream, WSStream) or stream.state is not ASGIWebsocketState.CONNECTED:
        return None
    proto = getattr(stream.connection, "_proto", None)
    extensions = getattr(proto, "extensions", None)
    if not isinstance(extensions, list) or any(ext.enabled() for ext in extensions):
        return None
    return stream


class FrameSender:
    """Sends the frames of one accepted WebSocket, directly where it can (see the module)."""

    def __init__(self, ws: Websocket) -> None:
        self._ws = ws
        self._stream = _stream_of(ws)

    @property
    def direct(self) -> bool:
        """Whether frames go straight to hypercorn (else through Quart's ``send``)."""
        return self._stream is not None

    async def send(self, data: bytes | str) -> None:
        """Send ``data`` as one frame.  Waits on the connection's writer (when the peer reads
        slowly); raises what Quart's ``send`` raises once the connection is no longer open."""
        stream = self._stream
        if (
            stream is None
            or stream.closed
            or stream.state is not ASGIWebsocketState.CONNECTED
            or stream.connection.state is not ConnectionState.OPEN
        ):
            await self._ws.send(data)
            return
        await stream.send(Data(stream_id=stream.stream_id, data=frame(data)))
