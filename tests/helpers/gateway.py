"""Helpers of the gateway tests: users and auth files, servers, and clients that are not ours.

The clients speak to the server over real sockets only: HTTP through ``h11`` (keep-alive, or one
request per connection), WebSocket through ``trio-websocket`` (or bare ``wsproto``) with frames
encoded by ``msgpack`` or ``json``, never by the project's own codec.  Servers run in-process
(:func:`serve` in the test's own trio loop, or :class:`ServerThread` for one server shared by a
module) or as a real ``fetchml serve`` subprocess (:class:`ServerProcess`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import h11
import msgpack
import trio
import trio_websocket
import wsproto
import wsproto.events as wsevents
from trio_websocket import ConnectionClosed

import fetchml
from fetchml.server import run_server

ROUNDS = 4
HOST = "127.0.0.1"
# Scheduler settings of every test server: small and fixed, no GPUs.
SCHEDULER = {"cpus": 8, "memory_mb": 4000, "gpus": [], "kill_grace_s": 0.5}
# Rate limits for servers whose tests send floods of requests, or many wrong keys, from 127.0.0.1
# on purpose: the defaults would slow the key down or ban the address part-way through.
HIGH_LIMITS = {"requests_per_s": 1e6, "burst": 1_000_000, "auth_failures": 1_000_000}
HIGH_LIMITS_YAML = "limits:\n" + "".join(f"  {k}: {v}\n" for k, v in HIGH_LIMITS.items())


def bcrypt_hash(key: str) -> str:
    return bcrypt.hashpw(key.encode(), bcrypt.gensalt(ROUNDS)).decode()


@dataclass(frozen=True)
class Users:
    """Hand-made keys (not of the server's own format) for the users of the role matrix."""

    admin: str = field(default_factory=lambda: "admin-" + secrets.token_urlsafe(24))
    alice: str = field(default_factory=lambda: "alice-" + secrets.token_urlsafe(24))
    bob: str = field(default_factory=lambda: "bob-" + secrets.token_urlsafe(24))
    carol: str = field(default_factory=lambda: "carol-" + secrets.token_urlsafe(24))

    @property
    def keys(self) -> dict[str, str]:
        return {"admin": self.admin, "alice": self.alice, "bob": self.bob, "carol": self.carol}

    def auth_yaml(self) -> str:
        """The auth file as a person writes it by hand: the documented YAML, bcrypt hashes."""
        return (
            "auth:\n"
            "  enabled: true\n"
            "  api_keys:\n"
            "    admin:\n"
            f'      hash: "{bcrypt_hash(self.admin)}"\n'
            "      admin: true\n"
            "      roles: [admin]\n"
            "    alice:\n"
            f'      hash: "{bcrypt_hash(self.alice)}"\n'
            "      admin: false\n"
            "      roles: [researcher]\n"
            "    bob:\n"
            f'      hash: "{bcrypt_hash(self.bob)}"\n'
            "      roles: [researcher]\n"
            "      permissions: {}\n"
            "    carol:\n"
            f'      hash: "{bcrypt_hash(self.carol)}"\n'
            "      roles: [analyst]\n"
            "  roles: {}\n"
        )

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.auth_yaml())
        path.chmod(0o600)
        return path


def make_server_config(tmp: Path, users: Users, **settings: Any) -> fetchml.Config:
    """A config on port 0 with ``users``' auth file in ``tmp`` and data in ``tmp/data``."""
    auth_file = users.write(tmp / "auth.yaml")
    merged = {**SCHEDULER, **settings}
    return fetchml.make_config(
        data_dir=str(tmp / "data"), port=0, auth_file=str(auth_file), **merged
    )


def base_of(urls: list[str]) -> str:
    """``http://127.0.0.1:<port>`` from hypercorn's bound URLs."""
    for url in urls:
        if url.startswith("http://127.0.0.1:"):
            return url
    raise AssertionError(f"no loopback URL in {urls}")


@contextlib.asynccontextmanager
async def serve(config: fetchml.Config) -> AsyncIterator[str]:
    """Run a server in this trio loop for the ``async with`` block; yields its base URL.

    Leaving the block stops the server gracefully (its ``stop`` event), also when the block
    raised, and fails if it takes more than 15 s.
    """
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await run_server(config, stop=stop, handle_signals=False, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(run)
        try:
            yield base_of(urls)
        finally:
            stop.set()
            with trio.CancelScope(shield=True), trio.move_on_after(15):
                await stopped.wait()
            if not stopped.is_set():
                nursery.cancel_scope.cancel()
    assert stopped.is_set(), "the server did not stop within 15 s"


class ServerThread:
    """A server in its own thread and trio loop, shared by the tests of a module."""

    def __init__(self, config: fetchml.Config) -> None:
        self.config = config
        self.base = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="fetchml-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the server thread did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, *, cancel: bool = False, within: float = 30.0) -> None:
        """Stop the server (its ``stop`` event, or by cancelling it) and wait for the thread.

        Blocks (call it from a thread when a trio loop runs); raises what the server raised, or
        AssertionError if it did not stop in time.  Does nothing more once stopped.
        """
        if (
            self._thread.is_alive()
            and self._token is not None
            and self._stop is not None
            and self._scope is not None
        ):
            action = self._scope.cancel if cancel else self._stop.set
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(action, trio_token=self._token)
        self._thread.join(within)
        assert not self._thread.is_alive(), f"the server thread did not stop within {within} s"
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            urls = await nursery.start(
                functools.partial(run_server, self.config, stop=self._stop, handle_signals=False)
            )
            self.base = base_of(urls)
            self._ready.set()


# ---- HTTP -----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The ``{"code", "message", ...}`` of an error response (fails if it is not one)."""
        payload = self.json()
        assert set(payload) == {"error"}, payload
        assert {"code", "message"} <= set(payload["error"]), payload
        assert self.headers.get("content-type", "").startswith("application/json")
        return dict(payload["error"])


def auth_headers(key: str | None, style: str = "bearer") -> list[tuple[str, str]]:
    if key is None:
        return []
    if style == "bearer":
        return [("Authorization", f"Bearer {key}")]
    if style == "x-api-key":
        return [("X-API-Key", key)]
    raise ValueError(style)


def _split(base: str) -> tuple[str, int]:
    host, _, port = base.removeprefix("http://").partition(":")
    return host, int(port)


class HttpSession:
    """A keep-alive HTTP/1.1 connection (``h11``): many requests, one after the other."""

    def __init__(self, base: str) -> None:
        self.host, self.port = _split(base)
        self._stream: trio.SocketStream | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> HttpSession:
        with trio.fail_after(10):
            self._stream = await trio.open_tcp_stream(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        style: str = "bearer",
        json_body: Any = None,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
        close: bool = False,
        within: float = 10.0,
    ) -> Response:
        """Send one request and read its whole response (to EOF with ``close``)."""
        stream, conn = self._stream, self._conn
        assert stream is not None
        if json_body is not None:
            body = json.dumps(json_body).encode()
        all_headers = [("Host", f"{self.host}:{self.port}")]
        all_headers += [("Connection", "close")] if close else []
        all_headers += auth_headers(key, style)
        if body is not None:
            all_headers += [("Content-Type", "application/json")]
            all_headers += [("Content-Length", str(len(body)))]
        all_headers += headers or []
        with trio.fail_after(within):
            data = conn.send(h11.Request(method=method, target=path, headers=all_headers))
            if body is not None:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            with contextlib.suppress(trio.BrokenResourceError):
                # A server may answer (413) and close before reading a large body.
                await stream.send_all(data)
            response: h11.Response | None = None
            chunks: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        received = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        received = b""
                    conn.receive_data(received)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
        assert response is not None
        return Response(
            status=response.status_code,
            headers={k.decode().lower(): v.decode() for k, v in response.headers},
            body=b"".join(chunks),
        )


async def until_job(
    session: HttpSession, key: str, job_id: int, states: tuple[str, ...], within: float = 10.0
) -> dict[str, Any]:
    """Poll ``GET /api/v1/jobs/{id}`` until the job is in one of ``states``; return it."""
    with trio.fail_after(within):
        while True:
            response = await session.request("GET", f"/api/v1/jobs/{job_id}", key=key)
            job: dict[str, Any] = response.json()["job"]
            if job["state"] in states:
                return job
            await trio.sleep(0.02)


async def metric(base: str, name: str) -> float:
    """The value of an unlabelled metric on ``/metrics``."""
    response = await http(base, "GET", "/metrics")
    match = re.search(rf"(?m)^{re.escape(name)} (\S+)$", response.body.decode())
    assert match, f"no {name} in /metrics"
    return float(match.group(1))


async def until_metric(base: str, name: str, value: float, within: float = 5.0) -> None:
    """Poll ``/metrics`` until ``name`` equals ``value``."""
    with trio.fail_after(within):
        while True:
            if await metric(base, name) == value:
                return
            await trio.sleep(0.02)


async def http(base: str, method: str, path: str, **kwargs: Any) -> Response:
    """One request on a fresh connection with ``Connection: close``."""
    async with HttpSession(base) as session:
        return await session.request(method, path, close=True, **kwargs)


# ---- WebSocket ------------------------------------------------------------------------------


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/ws"


class Ws:
    """A WebSocket client: requests with ids, replies matched by ``re``, events buffered apart.

    Frames are msgpack (binary) unless ``text`` is set, then JSON text frames.
    """

    def __init__(self, conn: trio_websocket.WebSocketConnection, *, text: bool = False) -> None:
        self.conn = conn
        self.text = text
        self._ids = itertools.count(1)
        self.replies: dict[int | None, list[dict[str, Any]]] = {}
        self.events: deque[dict[str, Any]] = deque()
        self.frames: list[bytes | str] = []  # every frame received, raw

    def encode(self, payload: Any) -> bytes | str:
        if self.text:
            return json.dumps(payload)
        data: bytes = msgpack.packb(payload)
        return data

    async def send(self, payload: Any) -> None:
        await self.conn.send_message(self.encode(payload))

    async def send_raw(self, data: bytes | str) -> None:
        await self.conn.send_message(data)

    def next_id(self) -> int:
        return next(self._ids)

    async def receive(self, within: float = 10.0) -> dict[str, Any]:
        """The next frame, decoded; checks it came in the format of our requests."""
        with trio.fail_after(within):
            raw = await self.conn.get_message()
        self.frames.append(raw)
        if self.text:
            assert isinstance(raw, str), f"expected a JSON text frame, got {raw!r}"
            frame = json.loads(raw)
        else:
            assert isinstance(raw, bytes), f"expected a msgpack binary frame, got {raw!r}"
            frame = msgpack.unpackb(raw)
        assert isinstance(frame, dict), frame
        return frame

    async def pump(self, within: float = 10.0) -> dict[str, Any]:
        """Receive one frame and file it as a reply or an event; return it."""
        frame = await self.receive(within)
        if "re" in frame:
            self.replies.setdefault(frame["re"], []).append(frame)
        else:
            assert "ev" in frame, frame
            self.events.append(frame)
        return frame

    async def reply(self, rid: int | None, within: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(within):
            while not self.replies.get(rid):
                await self.pump()
        return self.replies[rid].pop(0)

    async def call(self, op: str, *, within: float = 10.0, **args: Any) -> dict[str, Any]:
        """Send ``op`` with a fresh id and return its reply."""
        rid = self.next_id()
        await self.send({"op": op, "id": rid, **args})
        frame = await self.reply(rid, within)
        assert frame["re"] == rid
        return frame

    async def ok(self, op: str, **args: Any) -> dict[str, Any]:
        frame = await self.call(op, **args)
        assert frame["ok"] is True, frame
        return frame

    async def event(self, within: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(within):
            while not self.events:
                await self.pump()
        return self.events.popleft()

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Every frame that arrives within ``seconds`` (filed as usual)."""
        got = []
        with trio.move_on_after(seconds):
            while True:
                got.append(await self.pump(within=seconds + 1))
        return got

    async def barrier(self, within: float = 10.0) -> list[dict[str, Any]]:
        """Every frame that arrives before the reply to a ``whoami`` sent now (filed as usual;
        the whoami's own reply is not kept).

        A check that nothing more came which cannot race: frames go out on one connection in
        the order they are sent, and the server is done with a request once it has sent its
        reply (a malformed frame, ``auth`` and ``subscribe`` even before it reads the next frame;
        another op in a task whose last act is its reply).  So whatever the server sends for the
        requests it answered before this whoami arrives comes before the whoami's reply.  Events
        are forwarded by each subscription's own task, unordered against replies: this is no
        barrier for them.
        """
        rid = self.next_id()
        await self.send({"op": "whoami", "id": rid})
        got: list[dict[str, Any]] = []
        with trio.fail_after(within):
            while True:
                frame = await self.pump(within)
                if frame.get("re") == rid:
                    del self.replies[rid]
                    return got
                got.append(frame)

    async def closed(self, within: float = 10.0) -> tuple[int, str | None]:
        """Read (and file) frames until the server closes; return (code, reason)."""
        with trio.fail_after(within):
            while True:
                try:
                    await self.pump(within)
                except ConnectionClosed as exc:
                    return close_of(exc)


def close_of(exc: ConnectionClosed) -> tuple[int, str | None]:
    """(code, reason) of the close that ended a trio-websocket connection."""
    if exc.reason is None:  # trio-websocket types it optional: no close seen yet
        raise AssertionError(f"connection closed without a close frame: {exc!r}")
    return exc.reason.code, exc.reason.reason


@contextlib.asynccontextmanager
async def ws_connect(
    base: str,
    key: str | None = None,
    *,
    style: str = "bearer",
    text: bool = False,
    auth_op: bool = True,
) -> AsyncIterator[Ws]:
    """A connected :class:`Ws`.  With ``key`` and ``auth_op`` it authenticates by an ``auth``
    op; with ``key`` and ``auth_op=False`` by a header on the upgrade (``style``).

    Leaving the block closes the connection, reading (and dropping) what still arrives, within
    5 s.  trio-websocket's own exit can hang for ever: its reader task blocks handing a message
    to a queue nobody reads (events keep coming), and the exit waits for that task.
    """
    headers = auth_headers(key, style) if (key is not None and not auth_op) else []
    # trio-websocket (wsproto) takes the upgrade's extra headers as bytes.
    extra_headers = [(name.encode(), value.encode()) for name, value in headers]
    conn: trio_websocket.WebSocketConnection | None = None
    try:
        with trio.CancelScope() as bound:
            async with trio_websocket.open_websocket_url(
                ws_url(base),
                extra_headers=extra_headers,
                max_message_size=16 * 1024 * 1024,
                connect_timeout=10,
                disconnect_timeout=5,
            ) as conn:
                try:
                    client = Ws(conn, text=text)
                    if key is not None and auth_op:
                        await client.ok("auth", key=key)
                    yield client
                finally:
                    bound.deadline = trio.current_time() + 5
                    await _drain_and_close(conn)
    finally:
        if conn is not None:
            # trio-websocket 0.12 never closes a client's TCP stream when the server closed
            # first (it waits for the server's TCP close, then forgets the stream): close it
            # here, or the socket is only freed by the garbage collector (ResourceWarning).
            await conn._stream.aclose()


async def _drain_and_close(conn: trio_websocket.WebSocketConnection) -> None:
    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await conn.get_message()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await conn.aclose()


async def ws_upgrade_refusal(base: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """Try a WebSocket upgrade that the server should refuse; return (status, body)."""
    host, port = _split(base)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = wsevents.Request(
        host=f"{host}:{port}",
        target="/ws",
        extra_headers=[(k.encode(), v.encode()) for k, v in headers],
    )
    status, body = 0, b""
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(client.send(request))
            while data := await stream.receive_some(65536):
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, wsevents.AcceptConnection):
                        raise AssertionError("the upgrade was accepted")
                    if isinstance(event, wsevents.RejectConnection):
                        status = event.status_code
                    elif isinstance(event, wsevents.RejectData):
                        body += event.data
                        if event.body_finished:
                            return status, body
    raise AssertionError(f"EOF before the whole refusal (status {status})")


class RawWs:
    """A bare ``wsproto`` client on a socket with a small receive buffer, for slow readers."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.frames: list[Any] = []  # every frame read so far, decoded
        self._partial = b""

    @classmethod
    async def connect(cls, base: str, key: str, *, rcvbuf: int = 4096) -> RawWs:
        host, port = _split(base)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with trio.fail_after(10):
            await sock.connect((host, port))
            client = cls(trio.SocketStream(sock))
            request = wsevents.Request(
                host=f"{host}:{port}",
                target="/ws",
                extra_headers=[(b"authorization", f"Bearer {key}".encode())],
            )
            await client.stream.send_all(client.ws.send(request))
            while True:
                client.ws.receive_data(await client.stream.receive_some(65536))
                for event in client.ws.events():
                    if isinstance(event, wsevents.AcceptConnection):
                        return client
                    raise AssertionError(f"upgrade refused: {event!r}")

    async def send(self, payload: Any) -> None:
        frame = wsevents.BytesMessage(data=msgpack.packb(payload))
        await self.stream.send_all(self.ws.send(frame))

    async def send_bytes(self, data: bytes) -> None:
        """One binary frame of ``data`` as it is (not msgpack-encoded)."""
        await self.stream.send_all(self.ws.send(wsevents.BytesMessage(data=data)))

    async def read_to_eof(self, within: float = 10.0) -> bytes:
        """Read until the server closes the TCP connection; what arrived before (no frames
        are expected after the close handshake)."""
        data = b""
        with trio.fail_after(within):
            while chunk := await self.stream.receive_some(65536):
                data += chunk
        return data

    async def read_until_close(self, within: float = 10.0) -> tuple[list[Any], int, str | None]:
        """Read every frame until the server's close; return (frames, code, reason: None for a
        close frame without one)."""
        frames: list[Any] = self.frames
        with trio.fail_after(within):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise AssertionError(f"EOF without a close frame after {len(frames)} frames")
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, wsevents.CloseConnection):
                        return frames, event.code, event.reason
                    if isinstance(event, wsevents.BytesMessage):
                        self._partial += event.data
                        if event.message_finished:
                            frames.append(msgpack.unpackb(self._partial))
                            self._partial = b""

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawWs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---- `fetchml serve` subprocesses -------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (bound to port 0, read, closed)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def server_yaml(data_dir: Path, auth_file: Path, extra: str = "") -> str:
    """A server config file (YAML) for a ``fetchml serve`` subprocess."""
    return (
        f"data_dir: {data_dir}\n"
        f"auth_file: {auth_file}\n"
        "scheduler:\n"
        f"  cpus: {SCHEDULER['cpus']}\n"
        f"  memory_mb: {SCHEDULER['memory_mb']}\n"
        "  gpus: []\n"
        "executor:\n"
        f"  kill_grace_s: {SCHEDULER['kill_grace_s']}\n" + extra
    )


SERVE_PROGRAM = "from fetchml.cli import main; raise SystemExit(main())"


class ServerProcess:
    """A real ``fetchml serve`` in its own session; stderr is collected as it comes."""

    def __init__(self, args: list[str], *, cwd: Path, port: int) -> None:
        self.args = args
        self.cwd = cwd
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.proc: trio.Process | None = None
        self._stderr = bytearray()
        self._stderr_ended = trio.Event()

    @property
    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    async def stderr_to_end(self, within: float = 5.0) -> str:
        """All the server wrote to stderr, once the process has exited: waits for the end of
        the pipe (the server's jobs do not hold it: their output goes to their logs), so that
        a check that something was *not* logged cannot pass on a log read too early."""
        with trio.fail_after(within):
            await self._stderr_ended.wait()
        return self.stderr

    async def _read_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        try:
            async with self.proc.stderr:
                while chunk := await self.proc.stderr.receive_some(65536):
                    self._stderr += chunk
        finally:
            self._stderr_ended.set()

    async def start(self, nursery: trio.Nursery, *, wait_up: bool = True) -> None:
        argv = [sys.executable, "-c", SERVE_PROGRAM, "serve", *self.args, "--port", str(self.port)]
        self.proc = await trio.lowlevel.open_process(
            argv,
            cwd=self.cwd,
            env={k: v for k, v in os.environ.items() if k != "FETCHML_CONFIG"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        nursery.start_soon(self._read_stderr)
        if wait_up:
            await self.wait_up()

    async def wait_up(self, within: float = 20.0) -> None:
        """Poll ``/health`` until it answers; fail if the process exits first."""
        with trio.fail_after(within):
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"server exited with {self.proc.returncode}:\n" + await self.stderr_to_end()
                    )
                with contextlib.suppress(OSError, h11.ProtocolError, trio.TooSlowError):
                    response = await http(self.base, "GET", "/health", within=2)
                    if response.status == 200:
                        return
                await trio.sleep(0.02)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, within: float = 10.0) -> int:
        assert self.proc is not None
        with trio.fail_after(within):
            return await self.proc.wait()

    async def kill(self) -> None:
        """SIGKILL the server process (only it: its jobs live in sessions of their own)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with trio.move_on_after(10) as scope:
                scope.shield = True
                await self.proc.wait()


# What the server logs for a fault of its own code (fetchml._faults.report_internal_error).
INTERNAL_ERROR_LINE = "internal error in "


@contextlib.asynccontextmanager
async def server_process(
    args: list[str],
    *,
    cwd: Path,
    port: int | None = None,
    wait_up: bool = True,
    internal_errors: bool = False,
) -> AsyncIterator[ServerProcess]:
    """Run ``fetchml serve ARGS --port PORT`` for the block; SIGKILLed if still running at exit.

    Fails if the server logged an internal error, unless ``internal_errors`` says to expect some.
    """
    server = ServerProcess(args, cwd=cwd, port=port or free_port())
    async with trio.open_nursery() as nursery:
        try:
            await server.start(nursery, wait_up=wait_up)
            yield server
        finally:
            await server.kill()
    if not internal_errors:
        assert INTERNAL_ERROR_LINE not in server.stderr, f"internal error(s):\n{server.stderr}"
