"""Start-up patches for hypercorn's trio worker.

1. Shielded connection close (STACK-NOTES, known problem 1).
quart-trio cancels a request's task when the client's disconnect arrives, and hypercorn closes the
socket from inside that cancelled task, so the close never completes: HTTP/1.0 and
``Connection: close`` clients that read until EOF hang, and sockets pile up (hypercorn #106,
#330).  Running the close inside a shielded cancel scope lets it finish; the scope is bounded by
:data:`CLOSE_TIMEOUT_S` so a peer that stops reading cannot hold it open (TLS close_notify).

The close also takes hypercorn's send lock, which hypercorn's own close skips: its
``send_eof`` otherwise races a send of the app on the same stream (a WebSocket's close frame as
the client disconnects), which then fails with ``trio.BusyResourceError`` and an error in the log.

2. Oversized WebSocket frames: see :func:`_apply_frame_limit_fix`.

3. Connections that cannot be cancelled: see :func:`abort_connections`.

4. One write for many frames: see :func:`_apply_write_coalescing`.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState

__all__ = ["CLOSE_TIMEOUT_S", "abort_connections", "apply"]

CLOSE_TIMEOUT_S = 5.0
# Bytes the tasks of one connection may queue behind a write in progress before they wait.
COALESCE_LIMIT = 256 * 1024
CLOSE_TOO_BIG = 1009
_MARK = "_fetchml_shielded_close"


def apply() -> None:
    """Patch ``TCPServer._close`` once per process; later calls do nothing."""
    if getattr(TCPServer, _MARK, False):
        return
    original: Callable[[Any], Awaitable[None]] = TCPServer._close

    async def _close(self: TCPServer) -> None:
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    lock: trio.Lock = self.send_lock
                    if lock.statistics().owner is trio.lowlevel.current_task():
                        await original(self)  # called from inside a send: already exclusive
                        return
                    async with lock:
                        await original(self)
                        return
                await self.stream.aclose()  # a send never finished (a peer that stopped reading)
        finally:
            _release_waiting_senders(self)

    TCPServer._close = _close  # type: ignore[method-assign]
    _apply_frame_limit_fix()
    _apply_connection_registry()
    _apply_write_coalescing()
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


class _Outgoing:
    """The bytes queued on one connection behind the write in progress."""

    __slots__ = ("data", "written")

    def __init__(self) -> None:
        self.data = bytearray()
        self.written = trio.Event()  # set (and replaced) after every write


def _apply_write_coalescing() -> None:
    """Send what several tasks queue on one connection in one write.

    hypercorn writes every frame with its own ``send_all`` under a lock, so each WebSocket reply
    costs a lock hand-over, a system call and, with TLS, a TLS record through trio's pure-Python
    ``SSLStream``; under load that per-write cost dominates (bench/bench_gateway_security.py).
    Here a task that finds a write in progress appends its bytes to the connection's queue and
    returns (or, past :data:`COALESCE_LIMIT`, waits for room): the writing task sends everything
    queued, in order, before it lets go.  Order is kept because appending never waits.  A
    failed write drops the queue and tells the protocol the connection closed, as hypercorn does.
    """
    original: Callable[[Any, Event], Awaitable[None]] = TCPServer.protocol_send

    async def protocol_send(self: TCPServer, event: Event) -> None:
        if not isinstance(event, RawData):
            await original(self, event)
            return
        outgoing: _Outgoing | None = getattr(self, "_fetchml_outgoing", None)
        if outgoing is None:
            outgoing = self._fetchml_outgoing = _Outgoing()  # type: ignore[attr-defined]
        outgoing.data += event.data
        lock: trio.Lock = self.send_lock
        if lock.locked():
            while len(outgoing.data) > COALESCE_LIMIT and lock.locked():
                await outgoing.written.wait()
            return
        async with lock:
            await _write_queued(self, outgoing)

    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]


def _release_waiting_senders(server: TCPServer) -> None:
    """Drop what is queued on a closed connection and wake the tasks waiting for room."""
    outgoing: _Outgoing | None = getattr(server, "_fetchml_outgoing", None)
    if outgoing is not None:
        outgoing.data.clear()
        written, outgoing.written = outgoing.written, trio.Event()
        written.set()


async def _write_queued(server: TCPServer, outgoing: _Outgoing) -> None:
    """Write ``outgoing`` until it stays empty; the caller holds the connection's send lock."""
    while outgoing.data:
        chunk = bytes(outgoing.data)
        outgoing.data.clear()
        try:
            with trio.CancelScope(shield=True):
                await server.stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            outgoing.data.clear()
            await server.protocol.handle(Closed())
            return
        finally:
            written, outgoing.written = outgoing.written, trio.Event()
            written.set()


# Connections being served, so that abort_connections can find them.
_connections: weakref.WeakSet[TCPServer] = weakref.WeakSet()


def _apply_connection_registry() -> None:
    original: Callable[[Any], Awaitable[None]] = TCPServer.run

    async def run(self: TCPServer) -> None:
        _connections.add(self)
        try:
            await original(self)
        finally:
            _connections.discard(self)

    TCPServer.run = run  # type: ignore[method-assign]


def abort_connections(config: Config) -> int:
    """Close the socket of every connection still open on the server run with ``config``.

    hypercorn shields each socket write from cancellation, so a write to a peer that stopped
    reading (a WebSocket subscriber that never reads) outlives hypercorn's graceful timeout and
    holds the server's shutdown for ever.  Closing the socket ends that write with
    ``ClosedResourceError``.  Waits on nothing; returns how many connections it closed.
    """
    closed = 0
    for server in list(_connections):
        if server.config is not config:
            continue
        stream = getattr(server.stream, "transport_stream", server.stream)
        stream.socket.close()  # trio wakes every task blocked on it, shielded or not
        closed += 1
    return closed
