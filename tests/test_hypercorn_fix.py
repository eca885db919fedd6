"""The hypercorn patches (``fetchml/gateway/_hypercorn_fix.py``): the start-up check of their
targets, and the write coalescing of patch 4 on real connections to a real server.

The shape checks are run on stand-ins (subclasses of hypercorn's classes with one thing of the
wrong shape), or on hypercorn's own class with one attribute monkeypatched for one test; the
process-wide patches are applied once and swapped out only by a test that shows what happens
without one (monkeypatch puts it back).  The coalescing tests find the server side of their own
connection in the patch's registry of connections (servers run in the test's own trio loop)
and, where they count writes, wrap that connection's stream.
"""

from __future__ import annotations

import dataclasses
import enum
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import wsproto.events as wsevents
from helpers.gateway import (
    HIGH_LIMITS,
    SCHEDULER,
    RawWs,
    Users,
    make_server_config,
    serve,
    until_metric,
    ws_connect,
)
from hypercorn.events import Event, RawData
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.tcp_server import TCPServer

from fetchml.errors import FetchMLError
from fetchml.gateway import _hypercorn_fix as fix
from fetchml.server import _main as _server

# ---- the shape checks ---------------------------------------------------------------------------


def test_the_installed_hypercorn_fits_every_patch() -> None:
    fix.apply()  # what a server does first; a second call changes nothing
    patched = (TCPServer._close, TCPServer.run, TCPServer.protocol_send, WSStream._handle_events)
    fix.apply()
    assert (
        TCPServer._close,
        TCPServer.run,
        TCPServer.protocol_send,
        WSStream._handle_events,
    ) == patched
    assert fix.Targets.installed().version == fix.HYPERCORN_VERSION
    fix.check_targets()  # sees through the patches to hypercorn's own methods
    assert _original(TCPServer.protocol_send).__module__ == "hypercorn.trio.tcp_server"


def _original(method: Callable[..., Any]) -> Any:
    """The hypercorn method a patch replaced."""
    return getattr(method, fix._ORIGINAL)


# Stand-ins: hypercorn's classes with one thing changed.


class _SyncClose(TCPServer):
    def _close(self) -> None:  # type: ignore[override]
        pass


class _LockingClose(TCPServer):
    async def _close(self) -> None:
        async with self.send_lock:
            await self.stream.aclose()


class _NoSendLock(TCPServer):
    def __init__(self, app: Any, config: Any, context: Any, state: Any, stream: Any) -> None:
        self.config = config
        self.stream = stream


class _PlainLock(TCPServer):
    def __init__(self, app: Any, config: Any, context: Any, state: Any, stream: Any) -> None:
        self.config = config
        self.send_lock = trio.Semaphore(1)  # type: ignore[assignment]
        self.stream = stream


class _NoConfig(TCPServer):
    def __init__(self, app: Any, config: Any, context: Any, state: Any, stream: Any) -> None:
        self.send_lock = trio.Lock()
        self.stream = stream


class _RunTakesRetries(TCPServer):
    async def run(self, retries: int = 1) -> None:
        pass


class _SendTakesMore(TCPServer):
    async def protocol_send(self, event: Event, *more: Event) -> None:
        pass


class _SendWithoutLock(TCPServer):
    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self.stream.send_all(event.data)


class _HandleTakesEvent(WSStream):
    async def _handle_events(self, event: Any) -> None:  # type: ignore[override]
        pass


class _HandleDisconnects(WSStream):
    async def _handle_events(self) -> None:  # FrameTooLargeError handled upstream at last
        if self.app_put is not None:
            await self.app_put({"type": "websocket.disconnect", "code": 1009})


class _WsStateWithoutConnected(enum.Enum):
    HANDSHAKE = 1
    CLOSED = 2


class _WsprotoStateWithoutLocalClosing(enum.Enum):
    OPEN = 1
    CLOSED = 2


class _WsprotoConnectionWithoutState:
    def send(self, event: Any) -> bytes:
        return b""


@dataclasses.dataclass(frozen=True)
class _RawDataWithPayload:
    payload: bytes


def _installed(**changes: Any) -> fix.Targets:
    return dataclasses.replace(fix.Targets.installed(), **changes)


WRONG_SHAPES: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, the stand-in, the patch named, a word of the problem)
    ("sync-close", {"tcp_server": _SyncClose}, fix.SHIELDED_CLOSE, "not a coroutine function"),
    ("close-takes-lock", {"tcp_server": _LockingClose}, fix.SHIELDED_CLOSE, "send_lock"),
    ("no-send-lock", {"tcp_server": _NoSendLock}, fix.SHIELDED_CLOSE, "self.send_lock"),
    ("not-a-trio-lock", {"tcp_server": _PlainLock}, fix.SHIELDED_CLOSE, "trio.Lock()"),
    (
        "handle-takes-event",
        {"ws_stream": _HandleTakesEvent},
        fix.FRAME_LIMIT,
        "takes (self, event)",
    ),
    ("handle-disconnects", {"ws_stream": _HandleDisconnects}, fix.FRAME_LIMIT, "disconnect"),
    ("no-connected", {"ws_state": _WsStateWithoutConnected}, fix.FRAME_LIMIT, "CONNECTED"),
    (
        "no-local-closing",
        {"wsproto_state": _WsprotoStateWithoutLocalClosing},
        fix.FRAME_LIMIT,
        "LOCAL_CLOSING",
    ),
    (
        "no-connection-state",
        {"wsproto_connection": _WsprotoConnectionWithoutState},
        fix.FRAME_LIMIT,
        "has no state",
    ),
    ("no-config", {"tcp_server": _NoConfig}, fix.CONNECTION_REGISTRY, "self.config"),
    ("run-takes-more", {"tcp_server": _RunTakesRetries}, fix.CONNECTION_REGISTRY, "retries"),
    ("send-takes-more", {"tcp_server": _SendTakesMore}, fix.WRITE_COALESCING, "event, more"),
    ("send-without-lock", {"tcp_server": _SendWithoutLock}, fix.WRITE_COALESCING, "Closed"),
    ("raw-data-payload", {"raw_data": _RawDataWithPayload}, fix.WRITE_COALESCING, "(payload)"),
]


@pytest.mark.parametrize(
    ("changes", "patch", "problem"),
    [case[1:] for case in WRONG_SHAPES],
    ids=[case[0] for case in WRONG_SHAPES],
)
def test_a_target_of_the_wrong_shape_is_refused_naming_its_patch(
    changes: dict[str, Any], patch: str, problem: str
) -> None:
    with pytest.raises(fix.IncompatibleDependencyError) as caught:
        fix.check_targets(_installed(**changes))
    error = caught.value
    assert isinstance(error, FetchMLError)  # `fetchml serve` reports it and exits with 2
    assert error.patches == (patch,)
    assert problem in error.problem
    assert (error.found, error.expected) == (fix.HYPERCORN_VERSION, fix.HYPERCORN_VERSION)
    assert f"'{patch}'" in error.message
    assert f"the patch was written for hypercorn {fix.HYPERCORN_VERSION}" in error.message


def test_another_hypercorn_release_is_refused_for_every_patch() -> None:
    with pytest.raises(fix.IncompatibleDependencyError) as caught:
        fix.check_targets(_installed(version="0.18.1"))
    error = caught.value
    assert error.patches == fix.PATCHES
    assert (error.found, error.expected) == ("0.18.1", "0.18.0")
    assert "hypercorn 0.18.1 is installed" in error.message
    assert "written for hypercorn 0.18.0" in error.message
    assert "hypercorn==0.18.0" in error.message


def test_the_check_reads_the_live_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method replaced under the patch (another library's patch, a hand edit) is refused."""

    def protocol_send(self: TCPServer, event: Event) -> None:
        pass

    monkeypatch.setattr(TCPServer, "protocol_send", protocol_send)
    with pytest.raises(fix.IncompatibleDependencyError, match="not a coroutine") as caught:
        fix.check_targets()
    assert caught.value.patches == (fix.WRITE_COALESCING,)


def test_apply_patches_nothing_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """For this test only, as if no server had started yet in this process."""
    monkeypatch.delattr(TCPServer, fix._MARK, raising=False)
    before = (TCPServer._close, TCPServer.run, WSStream._handle_events)
    monkeypatch.setattr(TCPServer, "protocol_send", _SendWithoutLock.protocol_send)
    with pytest.raises(fix.IncompatibleDependencyError) as caught:
        fix.apply()
    assert caught.value.patches == (fix.WRITE_COALESCING,)
    assert (TCPServer._close, TCPServer.run, WSStream._handle_events) == before
    assert TCPServer.protocol_send is _SendWithoutLock.protocol_send
    assert not getattr(TCPServer, fix._MARK, False)


# ---- write coalescing on real connections ------------------------------------------------------


def _server_side(client: RawWs) -> TCPServer:
    """hypercorn's TCPServer of ``client``'s connection (the servers run in this trio loop)."""
    local = client.stream.socket.getsockname()
    for server in list(fix._connections):
        stream: Any = server.stream
        if stream.socket.getpeername() == local:
            return server
    raise AssertionError(f"no connection of {local} is being served")


def _outgoing(server: TCPServer) -> Any:
    """What the coalescing patch keeps of ``server``'s connection: its queue (``data``) and
    the event that tasks waiting for room wait on (``written``)."""
    return getattr(server, "_fetchml_outgoing")  # noqa: B009 (set by the patch: not typed)


class _CountingStream:
    """A connection's socket stream that counts the server's writes (and keeps what they
    wrote)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.writes = 0
        self.sent = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.sent += data
        await self.inner.send_all(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _frame(payload: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(payload))


async def _send_frames(client: RawWs, payloads: list[dict[str, Any]]) -> None:
    """Every payload as a binary frame, all in one write (the server reads them at once)."""
    data = b"".join(client.ws.send(wsevents.BytesMessage(data=_frame(p))) for p in payloads)
    await client.stream.send_all(data)


class _Reader:
    """Decodes the frames that arrive on ``client``; fails on anything but whole binary frames
    of msgpack maps."""

    def __init__(self, client: RawWs) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []  # every frame so far
        self._partial = b""

    async def until(
        self, done: Callable[[list[dict[str, Any]]], bool], within: float = 20.0
    ) -> list[dict[str, Any]]:
        """Read until ``done(frames)`` holds for every frame so far; return them."""
        client = self.client
        with trio.fail_after(within):
            while not done(self.frames):
                data = await client.stream.receive_some(1 << 20)
                assert data, f"EOF after {len(self.frames)} frames"
                client.ws.receive_data(data)
                for event in client.ws.events():
                    assert isinstance(event, wsevents.BytesMessage), event
                    self._partial += event.data
                    if event.message_finished:
                        frame = msgpack.unpackb(self._partial)
                        self._partial = b""
                        assert isinstance(frame, dict), frame
                        self.frames.append(frame)
        return self.frames


async def _until_queued(server: TCPServer, marker: bytes, count: int) -> None:
    """Wait until ``marker`` is ``count`` times in what ``server`` has written or queued (the
    client is not reading: its replies have been answered, not sent)."""
    counting: object = server.stream  # typed as an SSLStream
    assert isinstance(counting, _CountingStream)
    with trio.fail_after(20):
        while True:
            if (counting.sent + _outgoing(server).data).count(marker) >= count:
                return
            await trio.sleep(0.01)


def _stall_writes(server: TCPServer) -> _CountingStream:
    """Count ``server``'s writes, and give its socket a small send buffer (4 KiB, no
    autotuning): with a client that pauses reading, the first write soon cannot finish, and
    what the connection's other tasks send meanwhile is queued behind it."""
    counting = _CountingStream(server.stream)  # type: ignore[arg-type]
    counting.inner.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    setattr(server, "stream", counting)  # noqa: B010 (typed as an SSLStream)
    return counting


SUBMITS = 100


async def test_concurrent_replies_on_one_connection_arrive_whole_once_and_in_order(
    tmp_path: Path, data_dir: Path
) -> None:
    """200 requests answered by concurrent tasks, queued behind a write that cannot finish
    while the client pauses, and the events of a subscription (one task, so in seq order) among
    them: every frame arrives whole and once, the subscription's in order, in shared writes."""
    users = Users()
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS)
    assert config.data_path == data_dir  # the fixture kills the job that holds every cpu
    everything = {"cpus": SCHEDULER["cpus"]}
    async with serve(config) as base:
        async with ws_connect(base, users.alice) as other:  # the new jobs stay queued
            blocker = await other.ok(
                "submit", spec={"command": ["sleep", "60"], "resources": everything}
            )
        async with await RawWs.connect(base, users.alice) as client:
            reader = _Reader(client)
            await _send_frames(client, [{"op": "subscribe", "id": 1}])
            [subscribed] = await reader.until(lambda frames: len(frames) == 1)
            assert subscribed["re"] == 1, subscribed
            assert subscribed["ok"] is True, subscribed
            server = _server_side(client)
            counting = _stall_writes(server)
            # Submits (even ids) of jobs with names of all lengths, and whoamis (odd ids): in
            # all well under COALESCE_LIMIT, so that no task has to wait for room.
            names = {2 * i + 2: f"job-{i}-" + "x" * (i % 40) for i in range(SUBMITS)}
            requests: list[dict[str, Any]] = []
            for rid, name in names.items():
                spec = {"command": ["true"], "name": name, "resources": everything}
                requests += [
                    {"op": "submit", "id": rid, "spec": spec},
                    {"op": "whoami", "id": rid + 1},
                ]
            await _send_frames(client, requests)
            for name in names.values():  # its submit answered
                await _until_queued(server, name.encode(), 1)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)  # and the whoamis
            assert server.send_lock.locked()  # a write in progress: the client does not read

            def all_in(frames: list[dict[str, Any]]) -> bool:
                # The replies (and the subscribe's), and the event of every job queued (the
                # subscription predates the jobs).
                replies = [f for f in frames if "re" in f]
                events = [f for f in frames if f.get("ev") == "job"]
                return len(replies) >= 1 + len(requests) and len(events) >= len(names)

            frames = (await reader.until(all_in))[1:]
            writes = counting.writes
    replies = [f for f in frames if "re" in f]
    assert sorted(f["re"] for f in replies) == sorted(r["id"] for r in requests)  # each once
    for reply in replies:
        assert reply["ok"] is True, reply
        if reply["re"] in names:
            assert reply["job"]["spec"]["name"] == names[reply["re"]]  # the bytes are intact
        else:
            assert reply["user"] == "alice", reply
    events = [f for f in frames if f.get("ev") == "job"]
    jobs = {e["job"]["id"] for e in events} - {blocker["job"]["id"]}  # it may start only now
    assert jobs == {r["job"]["id"] for r in replies if "job" in r}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))  # one task's frames keep their order
    # hypercorn's own protocol_send: a write per frame.  Here the 200 replies share a few, and
    # only the events can go out one write each (the subscription's task may be the one whose
    # write was stuck: its next events come after the client reads again).
    assert writes < len(frames) // 2, f"{writes} writes for {len(frames)} frames"


# Replies of a few KiB (the small send buffer holds only one or two of them), fewer than
# COALESCE_LIMIT in all (no task waits for room).
MID_COMMAND = ["true", "x" * 3000]
GETS = 50


@pytest.mark.parametrize("coalescing", [True, False], ids=["patched", "hypercorn"])
async def test_frames_of_many_tasks_go_out_in_fewer_writes(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, coalescing: bool
) -> None:
    """50 pipelined requests, answered by concurrent tasks while the first write cannot finish
    (the client pauses reading): with the patch, a handful of writes; with hypercorn's own
    protocol_send (the same measurement with the patch switched off: proof that this test can
    fail), one write per frame."""
    fix.apply()
    if not coalescing:
        monkeypatch.setattr(TCPServer, "protocol_send", _original(TCPServer.protocol_send))
    users = Users()
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS)
    async with serve(config) as base:
        async with ws_connect(base, users.alice) as other:
            job = (await other.ok("submit", spec={"command": MID_COMMAND}))["job"]
        async with await RawWs.connect(base, users.alice) as client:
            server = _server_side(client)
            counting = _stall_writes(server)
            get = {"op": "get", "job_id": job["id"]}
            await _send_frames(client, [{**get, "id": i} for i in range(GETS)])
            if coalescing:
                await _until_queued(server, MID_COMMAND[1].encode(), GETS)
            else:  # one write per frame, whenever the client reads
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            frames = await _Reader(client).until(lambda frames: len(frames) == GETS)
            writes = counting.writes
    assert sorted(f["re"] for f in frames) == list(range(GETS))
    assert all(f["job"]["spec"]["command"] == MID_COMMAND for f in frames)
    if coalescing:
        assert writes <= GETS // 10, f"{writes} writes for {GETS} frames"
    else:
        assert writes == GETS, f"{writes} writes for {GETS} frames"


# A reply bigger than COALESCE_LIMIT: a job whose command is three long arguments.
BIG_COMMAND = ["true", "a" * 130_000, "b" * 130_000, "c" * 60_000]
# Requests pipelined by the client that stops reading: more than a connection's request slots
# (fetchml.gateway._ws.MAX_IN_FLIGHT) and the app's receive queues in front of them hold.
PIPELINED = 200
BOUND_S = 5.0


@pytest.mark.parametrize(
    "release",
    [
        pytest.param(True, id="patched"),
        pytest.param(False, id="no-release", marks=pytest.mark.slow),
    ],
)
async def test_a_closed_connection_wakes_the_tasks_waiting_for_room(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, release: bool
) -> None:
    """A client pipelines 200 requests with big replies and stops reading: one task's write
    cannot finish, the others wait for room in the queue, holding every request slot of the
    connection, so the app reads nothing more and its receive queue fills up.  The client then
    resets the connection: the waiting tasks must be woken (and the handler end) at once, or the
    disconnect that hypercorn puts on the app's full queue waits on them for ever.

    ``no-release``: the same with ``_release_waiting_senders`` switched off, which must hang
    (until the bound: proof that this test can fail).
    """
    if not release:
        monkeypatch.setattr(fix, "_release_waiting_senders", lambda server: None)
    monkeypatch.setattr(_server, "GRACEFUL_TIMEOUT_S", 0.5)  # the connection's reader is stuck
    users = Users()
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS)
    assert config.data_path == data_dir
    async with serve(config) as base:
        async with ws_connect(base, users.alice) as other:
            job = (await other.ok("submit", spec={"command": BIG_COMMAND}))["job"]
        client = await RawWs.connect(base, users.alice, rcvbuf=4096)
        try:
            get = {"op": "get", "job_id": job["id"]}
            await _send_frames(client, [{**get, "id": i} for i in range(PIPELINED)])
            with trio.fail_after(BOUND_S):  # a server task that never sleeps would hang here
                await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            outgoing = _outgoing(_server_side(client))
            assert len(outgoing.data) > fix.COALESCE_LIMIT
            assert outgoing.written.statistics().tasks_waiting > 1  # tasks waiting for room
            # Reset (not close): the server's stuck write fails at once.
            linger = struct.pack("ii", 1, 0)
            client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        finally:
            await client.aclose()
        if release:
            with trio.fail_after(BOUND_S):
                await until_metric(base, "fetchml_websocket_connections", 0, within=BOUND_S)
        else:
            with pytest.raises(trio.TooSlowError):
                await until_metric(base, "fetchml_websocket_connections", 0, within=BOUND_S)


# ---- the direct write of patch 4 ---------------------------------------------------------------


async def test_a_frame_with_no_write_in_progress_is_written_at_once_or_left() -> None:
    """``_write_now`` writes what the socket takes, without a checkpoint, and leaves the rest;
    a closed socket or a TLS stream is left to the queued write (and its error handling)."""
    ours, peer = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    with trio.testing.assert_no_checkpoints():
        assert fix._write_now(stream, b"hello") == b""
    assert await peer.recv(16) == b"hello"
    big = b"x" * (64 << 20)  # far more than the socket buffers hold
    rest = fix._write_now(stream, big)
    assert 0 < len(rest) < len(big)
    assert big.endswith(rest)
    assert fix._write_now(object(), b"tls") == b"tls"  # not a plain SocketStream
    await stream.aclose()
    assert fix._write_now(stream, b"late") == b"late"
    peer.close()
