"""Start-up patches for hypercorn's trio worker, each checked against the hypercorn it patches.

The patches replace four private methods of hypercorn, written for and tested with hypercorn
:data:`HYPERCORN_VERSION` (pinned exactly in ``pyproject.toml`` for that reason).  Before it patches
anything, :func:`apply` runs :func:`check_targets`: the installed hypercorn must be that version,
and every method a patch replaces and every attribute, enum member and event it relies on must
have the shape the patch was written against.  Otherwise nothing is patched and the server does
not start: :class:`IncompatibleDependencyError` names the patch, the hypercorn version found and
the one the patch was written for.

1. Shielded connection close (``TCPServer._close``): :func:`_apply_shielded_close`.
2. ``websocket.disconnect`` after an oversized frame (``WSStream._handle_events``):
   :func:`_apply_frame_limit_fix`.
3. A registry of open connections (``TCPServer.run``), so that :func:`abort_connections` can close
   those hypercorn cannot cancel: :func:`_apply_connection_registry`.
4. One write for many frames (``TCPServer.protocol_send``): :func:`_apply_write_coalescing`.

Each patch's docstring cites the upstream reports (https://github.com/pgjones/hypercorn/issues)
of the problem it works around, or says that none was found.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import os
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import Connection, ConnectionState

from ..errors import FetchMLError

__all__ = [
    "CLOSE_TIMEOUT_S",
    "HYPERCORN_VERSION",
    "IncompatibleDependencyError",
    "Targets",
    "abort_connections",
    "apply",
    "check_targets",
]

# The hypercorn release the patches below were written for and checked against (and pinned).
HYPERCORN_VERSION = "0.18.0"
CLOSE_TIMEOUT_S = 5.0
# Bytes the tasks of one connection may queue behind a write in progress before they wait.
COALESCE_LIMIT = 256 * 1024
CLOSE_TOO_BIG = 1009
_MARK = "_fetchml_shielded_close"
# os.write on a socket's descriptor (the direct write of patch 4) works on POSIX systems only.
_POSIX = os.name == "posix"
# Set on each replacement method: the hypercorn method it wraps (what check_targets inspects).
_ORIGINAL = "_fetchml_original"

SHIELDED_CLOSE = "shielded close (TCPServer._close)"
FRAME_LIMIT = "disconnect after an oversized frame (WSStream._handle_events)"
CONNECTION_REGISTRY = "connection registry (TCPServer.run)"
WRITE_COALESCING = "write coalescing (TCPServer.protocol_send)"
PATCHES = (SHIELDED_CLOSE, FRAME_LIMIT, CONNECTION_REGISTRY, WRITE_COALESCING)


class IncompatibleDependencyError(FetchMLError):
    """Raised at start-up when an installed dependency is not what a start-up patch of Fetch ML
    was written for (another version, or a patched method or attribute of another shape); the
    server does not start, and nothing was patched.

    Not a :class:`~fetchml.errors.ConfigError`: nothing in the configuration is wrong and no
    setting can fix it; the installed package is what must change (install the pinned version,
    or port the patch and move the pin with it).  It derives from
    :class:`~fetchml.errors.FetchMLError` so that ``fetchml serve`` reports it like any start-up
    error (its message, exit status 2) rather than with a traceback.  It never crosses the wire.
    """

    code = "incompatible_dependency"
    status = 500

    def __init__(
        self,
        dependency: str,
        patches: tuple[str, ...],
        problem: str,
        *,
        found: str,
        expected: str,
    ) -> None:
        several = len(patches) > 1
        names = ", ".join(repr(p) for p in patches)
        super().__init__(
            f"cannot apply the {dependency} patch{'es' if several else ''} {names}: {problem}"
            f" ({dependency} {found} is installed; the patch{'es were' if several else ' was'}"
            f" written for {dependency} {expected}).  Install {dependency}=={expected}, or port"
            f" the patch ({__name__}) and move the pin in pyproject.toml with it."
        )
        self.dependency = dependency
        self.patches = patches
        self.problem = problem
        self.found = found
        self.expected = expected


@dataclasses.dataclass(frozen=True, slots=True)
class Targets:
    """What the patches replace or rely on: hypercorn's own (:meth:`installed`), or stand-ins
    (a test gives :func:`check_targets` a class of the wrong shape)."""

    version: str
    tcp_server: type[Any]
    ws_stream: type[Any]
    ws_state: type[Any]  # hypercorn's ASGIWebsocketState
    wsproto_connection: type[Any]  # wsproto's Connection (a WSStream's ``connection``)
    wsproto_state: type[Any]  # wsproto's ConnectionState
    raw_data: type[Any]
    closed: type[Any]

    @classmethod
    def installed(cls) -> Targets:
        return cls(
            version=importlib.metadata.version("hypercorn"),
            tcp_server=TCPServer,
            ws_stream=WSStream,
            ws_state=ASGIWebsocketState,
            wsproto_connection=Connection,
            wsproto_state=ConnectionState,
            raw_data=RawData,
            closed=Closed,
        )


def apply() -> None:
    """Check every target (:func:`check_targets`), then apply the four patches; once per
    process, later calls do nothing.

    Raises :class:`IncompatibleDependencyError`, with nothing patched, when a check fails.
    """
    if getattr(TCPServer, _MARK, False):
        return
    check_targets()
    _apply_shielded_close()
    _apply_frame_limit_fix()
    _apply_connection_registry()
    _apply_write_coalescing()
    setattr(TCPServer, _MARK, True)


def check_targets(targets: Targets | None = None) -> None:
    """Check that every patch fits ``targets`` (the installed hypercorn by default).

    Checks the version first (exactly :data:`HYPERCORN_VERSION`), then each patch's targets;
    patches already applied are seen through (their hypercorn methods are checked).  Changes
    nothing.  Raises :class:`IncompatibleDependencyError` naming the first patch that does not
    fit.
    """
    t = Targets.installed() if targets is None else targets
    if t.version != HYPERCORN_VERSION:
        raise IncompatibleDependencyError(
            "hypercorn",
            PATCHES,
            "they replace private methods of one hypercorn release",
            found=t.version,
            expected=HYPERCORN_VERSION,
        )
    _check_shielded_close(_Shape(SHIELDED_CLOSE, t.version), t)
    _check_frame_limit_fix(_Shape(FRAME_LIMIT, t.version), t)
    _check_connection_registry(_Shape(CONNECTION_REGISTRY, t.version), t)
    _check_write_coalescing(_Shape(WRITE_COALESCING, t.version), t)


class _Shape:
    """The checks of one patch's targets; each failure raises IncompatibleDependencyError."""

    def __init__(self, patch: str, found: str) -> None:
        self.patch = patch
        self.found = found

    def fail(self, problem: str) -> NoReturn:
        raise IncompatibleDependencyError(
            "hypercorn", (self.patch,), problem, found=self.found, expected=HYPERCORN_VERSION
        )

    def method(self, cls: type[Any], name: str, params: tuple[str, ...]) -> Callable[..., Any]:
        """``cls.name`` as hypercorn defines it (seen through our patch): a coroutine function
        taking exactly ``params``, positionally."""
        where = f"{cls.__qualname__}.{name}"
        fn = _unwrapped(cls, name)
        if not inspect.isfunction(fn):
            self.fail(f"{where} is not there (or not a plain method)")
        if not inspect.iscoroutinefunction(fn):
            self.fail(f"{where} is not a coroutine function")
        signature = inspect.signature(fn)
        got = tuple(signature.parameters)
        kinds = {p.kind for p in signature.parameters.values()}
        if got != params or kinds != {inspect.Parameter.POSITIONAL_OR_KEYWORD}:
            self.fail(f"{where} takes ({', '.join(got)}), not ({', '.join(params)})")
        return fn

    def source(self, fn: Callable[..., Any], where: str) -> str:
        try:
            return inspect.getsource(fn)
        except (OSError, TypeError):
            self.fail(f"the source of {where} cannot be read, so its shape cannot be checked")

    def sets(self, cls: type[Any], method: str, attrs: tuple[str, ...]) -> None:
        """``cls.method`` (as hypercorn defines it) assigns or declares each of ``attrs`` on
        ``self``."""
        for attr in attrs:
            self._sets(cls, method, attr, ".", f"self.{attr}")

    def sets_to(self, cls: type[Any], method: str, attr: str, value: str, pattern: str) -> None:
        """``cls.method`` assigns ``value`` (matched by the regular expression ``pattern``) to
        ``self.attr``."""
        self._sets(cls, method, attr, pattern, f"self.{attr} = {value}")

    def _sets(self, cls: type[Any], method: str, attr: str, pattern: str, wanted: str) -> None:
        where = f"{cls.__qualname__}.{method}"
        fn = _unwrapped(cls, method)
        if not inspect.isfunction(fn):
            self.fail(f"{where} is not there (or not a plain method)")
        # ``self.attr = value``, ``self.attr: T = value`` or a bare ``self.attr: T``.
        assignment = rf"\bself\.{attr}\s*(:[^=\n]*)?(=\s*{pattern}|$)"
        if not re.search(assignment, self.source(fn, where), re.MULTILINE):
            self.fail(f"{where} no longer sets {wanted}, which the patch relies on")

    def mentions(self, fn: Callable[..., Any], where: str, text: str, why: str) -> None:
        if text not in self.source(fn, where):
            self.fail(f"{where} no longer uses {text} ({why})")

    def lacks(self, fn: Callable[..., Any], where: str, text: str, why: str) -> None:
        if text in self.source(fn, where):
            self.fail(f"{where} now uses {text} ({why})")

    def members(self, cls: type[Any], names: tuple[str, ...]) -> None:
        """``cls`` (an enum, a class) has each of ``names``."""
        for name in names:
            if not hasattr(cls, name):
                self.fail(f"{cls.__module__}.{cls.__qualname__} has no {name}")

    def dataclass_fields(self, cls: type[Any], required: tuple[str, ...]) -> None:
        """``cls`` is a dataclass whose fields without a default are exactly ``required``."""
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not dataclasses.is_dataclass(cls):
            self.fail(f"{where} is not a dataclass")
        no_default = dataclasses.MISSING
        got = tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is no_default and f.default_factory is no_default
        )
        if got != required:
            self.fail(f"{where} is built from ({', '.join(got)}), not ({', '.join(required)})")


# ---- 1. Shielded close ------------------------------------------------------------------------


def _check_shielded_close(shape: _Shape, t: Targets) -> None:
    close = shape.method(t.tcp_server, "_close", ("self",))
    shape.sets_to(t.tcp_server, "__init__", "send_lock", "trio.Lock()", r"trio\.Lock\(\)")
    shape.sets(t.tcp_server, "__init__", ("stream",))
    shape.lacks(
        close,
        "TCPServer._close",
        "send_lock",
        "the patch takes the send lock around it, and a trio.Lock is not re-entrant",
    )


def _apply_shielded_close() -> None:
    """Finish a connection's close even when the task closing it is cancelled.

    quart-trio cancels a request's task when the client's disconnect arrives, and hypercorn
    closes the socket from inside that cancelled task, so the close never completes: HTTP/1.0 and
    ``Connection: close`` clients that read until EOF hang, and sockets pile up.  Upstream:
    https://github.com/pgjones/hypercorn/issues/106 (the socket shutdown is skipped when the task
    is cancelled under trio) and https://github.com/pgjones/hypercorn/issues/330 (``Connection:
    close`` answered without closing the connection), both open when last checked.

    Running the close inside a shielded cancel scope lets it finish; the scope is bounded by
    :data:`CLOSE_TIMEOUT_S` so a peer that stops reading cannot hold it open (TLS close_notify).
    The close also takes hypercorn's send lock, which hypercorn's own close skips: its
    ``send_eof`` otherwise races a send of the app on the same stream (a WebSocket's close frame
    as the client disconnects), which then fails with ``trio.BusyResourceError`` and an error in
    the log.  Last, it wakes the tasks waiting for room in the connection's write queue
    (:func:`_release_waiting_senders`): nothing will be written to it any more.
    """
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

    _replace(TCPServer, "_close", _close, original)


# ---- 2. Oversized WebSocket frames ------------------------------------------------------------


def _check_frame_limit_fix(shape: _Shape, t: Targets) -> None:
    handle = shape.method(t.ws_stream, "_handle_events", ("self",))
    shape.sets(t.ws_stream, "__init__", ("state", "app_put", "connection"))
    shape.members(t.ws_state, ("CONNECTED", "CLOSED"))
    shape.members(t.wsproto_connection, ("state",))
    shape.members(t.wsproto_state, ("LOCAL_CLOSING",))
    where = "WSStream._handle_events"
    shape.mentions(handle, where, "FrameTooLargeError", "where the frame limit is enforced")
    shape.lacks(
        handle,
        where,
        "websocket.disconnect",
        "hypercorn now tells the app itself: the patch would send a second disconnect",
    )


def _apply_frame_limit_fix() -> None:
    """Tell the app when hypercorn closes a WebSocket itself (a frame over the size limit).

    hypercorn answers an oversized frame with close code 1009 but never sends the app a
    ``websocket.disconnect``, so the handler waits in ``receive()`` forever and the connection is
    never torn down; clients that wait for the server to close the TCP connection hang.  No
    upstream report of this was found (pgjones/hypercorn issues searched for the frame limit,
    1009 and a missing ``websocket.disconnect``; the nearest, #127, is about the close code the
    app sees when the client closes).
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

    _replace(WSStream, "_handle_events", _handle_events, original)


# ---- 3. Connections that cannot be cancelled --------------------------------------------------

# Connections being served, so that abort_connections can find them.
_connections: weakref.WeakSet[TCPServer] = weakref.WeakSet()


def _check_connection_registry(shape: _Shape, t: Targets) -> None:
    shape.method(t.tcp_server, "run", ("self",))
    shape.sets(t.tcp_server, "__init__", ("config", "stream"))


def _apply_connection_registry() -> None:
    """Keep every connection being served in :data:`_connections`, for
    :func:`abort_connections`.  Upstream: no report found of hypercorn's shielded writes
    outliving its graceful timeout (the trio worker; #308 is the asyncio worker's own hang)."""
    original: Callable[[Any], Awaitable[None]] = TCPServer.run

    async def run(self: TCPServer) -> None:
        _connections.add(self)
        try:
            await original(self)
        finally:
            _connections.discard(self)

    _replace(TCPServer, "run", run, original)


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


# ---- 4. Write coalescing ----------------------------------------------------------------------


class _Outgoing:
    """The bytes queued on one connection behind the write in progress."""

    __slots__ = ("closed", "data", "written")

    def __init__(self) -> None:
        self.data = bytearray()
        self.written = trio.Event()  # set (and replaced) after every write
        self.closed = False  # the connection is gone: what is sent now is dropped


def _check_write_coalescing(shape: _Shape, t: Targets) -> None:
    send = shape.method(t.tcp_server, "protocol_send", ("self", "event"))
    shape.sets_to(t.tcp_server, "__init__", "send_lock", "trio.Lock()", r"trio\.Lock\(\)")
    shape.sets(t.tcp_server, "__init__", ("stream",))
    shape.sets(t.tcp_server, "run", ("protocol",))
    run = shape.method(t.tcp_server, "run", ("self",))
    shape.mentions(run, "TCPServer.run", "self.protocol_send", "the protocol's send callable")
    where = "TCPServer.protocol_send"
    for name in ("RawData", "Closed", "send_lock"):
        shape.mentions(send, where, name, "the events and the lock the patch takes over")
    shape.dataclass_fields(t.raw_data, ("data",))
    shape.dataclass_fields(t.closed, ())


def _apply_write_coalescing() -> None:
    """Send what several tasks queue on one connection in one write.

    hypercorn writes every frame with its own ``send_all`` under a lock, so each WebSocket reply
    costs a lock hand-over, a system call and, with TLS, a TLS record through trio's pure-Python
    ``SSLStream``; under load that per-write cost dominates (bench/bench_gateway_security.py).
    Here a task that finds a write in progress appends its bytes to the connection's queue and
    returns (or, past :data:`COALESCE_LIMIT`, waits for room): the writing task sends everything
    queued, in order, before it lets go.  Order is kept because appending never waits.

    Once a write fails or the connection is closed, :func:`_release_waiting_senders` drops the
    queue, wakes the tasks waiting for room and makes later sends return at once; a failed write
    then tells the protocol the connection closed, as hypercorn does.  The wake-up comes first:
    a client that pipelined many requests and stopped reading leaves every request slot of its
    WebSocket with a task waiting for room, so the app reads nothing, its receive queue is full,
    and telling the protocol (a ``websocket.disconnect`` put on that queue) waits on them.
    The task that takes the lock lets the scheduler run once before it writes, so what the
    connection's other tasks send meanwhile goes in the same write (a WebSocket's pipelined
    replies: writing each at once made twice the system calls and halved the submit rate,
    bench/bench_gateway_ws.py).  On a plain (not TLS) socket it then writes directly
    (:func:`_write_now`): the socket's buffer takes it all unless the peer is slow, and the
    shielded scope and the scheduler round trip of ``send_all`` cost more than the write itself,
    which a server that fans one event out to a thousand subscribers pays a thousand times
    (bench/bench_gateway_fanout.py); what the socket does not take is sent with ``send_all``.
    Upstream: no report found (a performance change, not a bug of hypercorn's).
    """
    original: Callable[[Any, Event], Awaitable[None]] = TCPServer.protocol_send

    async def protocol_send(self: TCPServer, event: Event) -> None:
        if not isinstance(event, RawData):
            await original(self, event)
            return
        outgoing: _Outgoing | None = getattr(self, "_fetchml_outgoing", None)
        if outgoing is None:
            outgoing = self._fetchml_outgoing = _Outgoing()  # type: ignore[attr-defined]
        if outgoing.closed:
            return  # nothing reaches the peer any more (hypercorn's own send would fail)
        outgoing.data += event.data
        lock: trio.Lock = self.send_lock
        if lock.locked():
            while len(outgoing.data) > COALESCE_LIMIT and lock.locked() and not outgoing.closed:
                await outgoing.written.wait()
            return
        lock.acquire_nowait()  # free, and no checkpoint since: nobody else can hold it
        try:
            # One pass of the scheduler, holding the lock: the frames the connection's other
            # tasks send meanwhile (replies to pipelined requests) join this write.
            await trio.lowlevel.cancel_shielded_checkpoint()
            await _write_queued(self, outgoing)
        finally:
            lock.release()

    _replace(TCPServer, "protocol_send", protocol_send, original)


def _write_now(stream: object, data: bytes) -> bytes:
    """Write what the socket under ``stream`` takes of ``data`` at once, without waiting or
    a checkpoint; what is left (all of it for a TLS stream, a socket that would block, or one
    that fails: the queued write meets the failure again and closes the connection as usual).

    Only by the holder of the connection's send lock, so nothing else is writing to the socket
    meanwhile and the bytes stay in order.
    """
    if _POSIX and type(stream) is trio.SocketStream:
        sock = stream.socket
        fd = sock.fileno()  # -1 once closed: never write to a number that may be reused
        if fd != -1 and not sock.did_shutdown_SHUT_WR:
            try:
                sent = os.write(fd, data)
            except OSError:
                return data
            return data[sent:]
    return data


def _release_waiting_senders(server: TCPServer) -> None:
    """Drop what is queued on a closed connection, wake the tasks waiting for room, and make
    later sends on it return at once (nothing will be written to it any more)."""
    outgoing: _Outgoing | None = getattr(server, "_fetchml_outgoing", None)
    if outgoing is not None:
        outgoing.closed = True
        outgoing.data.clear()
        written, outgoing.written = outgoing.written, trio.Event()
        written.set()


async def _write_queued(server: TCPServer, outgoing: _Outgoing) -> None:
    """Write ``outgoing`` until it stays empty; the caller holds the connection's send lock."""
    while outgoing.data:
        chunk = bytes(outgoing.data)
        outgoing.data.clear()
        try:
            rest = _write_now(server.stream, chunk)
            if rest:
                with trio.CancelScope(shield=True):
                    await server.stream.send_all(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Wake the tasks waiting for room before telling the protocol: telling it can wait
            # on them (the app's receive queue is full while they hold its request slots).
            _release_waiting_senders(server)
            await server.protocol.handle(Closed())
            return
        finally:
            written, outgoing.written = outgoing.written, trio.Event()
            written.set()


def _unwrapped(cls: type[Any], name: str) -> object:
    """``cls.name`` as found on the class (not bound), or the hypercorn method it patches."""
    found = inspect.getattr_static(cls, name, None)
    return getattr(found, _ORIGINAL, found)


def _replace(cls: type[Any], name: str, patched: Callable[..., Any], original: object) -> None:
    """Put ``patched`` in place of ``cls.name``, remembering ``original`` for check_targets."""
    setattr(patched, _ORIGINAL, original)
    setattr(cls, name, patched)
