"""Start-up patches for hypercorn's trio worker.

1. Shielded connection close (STACK-NOTES, known problem 1).
quart-trio cancels a request's task when the client's disconnect arrives, and hypercorn closes the
socket from inside that cancelled task, so the close never completes: HTTP/1.0 and
``Connection: close`` clients that read until EOF hang, and sockets pile up (hypercorn #106,
#330).  Running the close inside a shielded cancel scope lets it finish; the scope is bounded by
:data:`CLOSE_TIMEOUT_S` so a peer that stops reading cannot hold it open (TLS close_notify).

2. Oversized WebSocket frames: see :func:`_apply_frame_limit_fix`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState

__all__ = ["CLOSE_TIMEOUT_S", "apply"]

CLOSE_TIMEOUT_S = 5.0
CLOSE_TOO_BIG = 1009
_MARK = "_fetchml_shielded_close"


def apply() -> None:
    """Patch ``TCPServer._close`` once per process; later calls do nothing."""
    if getattr(TCPServer, _MARK, False):
        return
    original: Callable[[Any], Awaitable[None]] = TCPServer._close

    async def _close(self: TCPServer) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            await original(self)

    TCPServer._close = _close  # type: ignore[method-assign]
    _apply_frame_limit_fix()
    setattr(TCPServer, _MARK, True)


def _apply_frame_limit_fix() -> None:
    """Tell the app when hypercorn closes a WebSocket itself (a frame over the size limit).

    hypercorn answers an oversized frame with close code 1009 but never sends the app a
    ``websocket.disconnect``, so the handler waits in ``receive()`` forever and the connection is
    never torn down; clients that wait for the server to close the TCP connection hang.
    """
    original: Callable[[Any], Awaitable[None]] = WSStream._handle_events

    async def _handle_events(self: WSStream) -> None:
        await original(self)
        if (
            self.connection.state is ConnectionState.LOCAL_CLOSING
            and self.state is ASGIWebsocketState.CONNECTED
            and self.app_put is not None
        ):
            self.state = ASGIWebsocketState.CLOSED
            await self.app_put({"type": "websocket.disconnect", "code": CLOSE_TOO_BIG})

    WSStream._handle_events = _handle_events  # type: ignore[method-assign]
