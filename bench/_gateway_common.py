"""Shared helpers of the gateway benchmarks: servers in their own processes, and lean clients.

Servers under test run in child processes started from this file:

- ``python bench/_gateway_common.py fetchml CONFIG`` runs :func:`fetchml.gateway.run_server` on a
  YAML server config (written by :func:`fetchml_server`: temp data dir, a hand-written auth file
  with bcrypt rounds 4, a free port on 127.0.0.1); with ``$FETCHML_BENCH_PROFILE`` set to a folder
  it runs under cProfile and writes ``fetchml-PORT.prof`` there when it stops;
- ``python bench/_gateway_common.py bare PORT`` runs the baseline: a bare QuartTrio app served by
  ``hypercorn.trio.serve`` with the gateway's own hypercorn settings and start-up patches, with a
  WebSocket echo at ``/ws`` and a JSON POST route at ``/api/v1/jobs``.

The clients are deliberately thin (plain sockets and ``selectors``, hand-rolled WebSocket framing,
msgspec decoding of only the fields they read) so that on a 2-core machine they take as little CPU
from the server as possible; the baseline is always driven by the very same client.  Given an
``ssl_context``, the WebSocket client speaks ``wss://`` (the plain path is unchanged).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import itertools
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _common import kill_leftover_jobs

__all__ = [
    "HOST",
    "FrameParser",
    "HttpResult",
    "Keys",
    "PipelineResult",
    "Reply",
    "Server",
    "bare_server",
    "client_frame",
    "close_reason",
    "close_ws",
    "fetchml_server",
    "http_run",
    "pipelined_run",
    "raise_fd_limit",
    "session",
    "start_holder",
    "ws_call",
    "ws_connect",
]

HOST = "127.0.0.1"
BENCH_ROUNDS = 4  # bcrypt cost of the bench keys: the cached path never touches bcrypt
START_TIMEOUT_S = 30.0
FANOUT_BUFFER = 1000  # as the server's default subscriber_buffer
FANOUT_EVENTS = 3  # events the fan-out baseline announces per request
FANOUT_BATCH = 500  # events in one frame of the fan-out baseline, as the gateway's batches
STOP_TIMEOUT_S = 15.0
# Set to a folder, each fetchml server child runs under cProfile and leaves fetchml-PORT.prof there.
PROFILE_ENV = "FETCHML_BENCH_PROFILE"
_HERE = Path(__file__).resolve()


# --- folders and servers -------------------------------------------------------------------------

_labels = itertools.count(1)


@contextlib.contextmanager
def session(title: str) -> Iterator[Callable[[str], Path]]:
    """Print ``title``; yield a maker of fresh sub-folders of one temp folder, removed at the end.

    The temp folder goes under ``$FETCHML_BENCH_DIR`` if set, else the system's temp folder.
    Any job process still alive under a sub-folder's ``data`` is killed first.
    """
    print(title, flush=True)
    _print_load("at start")
    root = os.environ.get("FETCHML_BENCH_DIR") or tempfile.gettempdir()
    top = Path(tempfile.mkdtemp(prefix="fetchml-gw-bench-", dir=root))

    def folder(label: str) -> Path:
        path = top / f"{label}-{next(_labels)}"
        path.mkdir()
        return path

    try:
        yield folder
        _print_load("at end")
    finally:
        for data_dir in top.glob("*/data"):
            kill_leftover_jobs(data_dir)
        shutil.rmtree(top, ignore_errors=True)


def _print_load(when: str) -> None:
    """Rates depend on what else runs here: show the 1-minute load average next to them."""
    load = os.getloadavg()[0]
    print(f"  load average {when}: {load:.1f} on {os.cpu_count()} cores", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> None:
    """Lift this process's soft open-files limit to its hard limit (1,000 sockets need it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A server child process: started in its own session, stopped with SIGINT (then SIGKILL)."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path) -> None:
        self.name = name
        self.port = port
        self._argv = list(argv)
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self._argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited at start:\n{self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} server did not listen within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process (all its threads) has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Keys:
    """API keys of the bench users: ``admin`` (admin) and ``alice`` (researcher)."""

    admin: str
    alice: str


def _write_auth_file(path: Path, settings: dict[str, Any] | None = None) -> Keys:
    """A hand-written auth file in the documented YAML shape, hashes at bcrypt rounds 4.

    ``settings`` adds keys to the ``auth:`` section (``ip_whitelist``), each written as JSON.
    """
    from fetchml.auth import generate_key, hash_key

    admin, alice = generate_key()[1], generate_key()[1]
    more = "".join(
        f"  {name}: {msgspec.json.encode(value).decode()}\n"
        for name, value in (settings or {}).items()
    )
    path.write_text(
        "auth:\n"
        "  enabled: true\n"
        f"{more}"
        "  api_keys:\n"
        "    admin:\n"
        f'      hash: "{hash_key(admin, BENCH_ROUNDS)}"\n'
        "      admin: true\n"
        "    alice:\n"
        f'      hash: "{hash_key(alice, BENCH_ROUNDS)}"\n'
        "      roles: [researcher]\n"
    )
    path.chmod(0o600)
    return Keys(admin=admin, alice=alice)


@contextlib.contextmanager
def fetchml_server(
    folder: Path,
    *,
    scheduler: dict[str, Any],
    server: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
) -> Iterator[tuple[Server, Keys, Path]]:
    """Run ``run_server`` in a child process on a free port; yield (server, keys, data dir).

    ``extra`` adds top-level config sections and ``auth`` keys of the auth file's ``auth:``
    section; everything else is the server's default.

    ``folder`` holds the config, the auth file, the log and the data dir.  On exit the server is
    stopped and any job process it left running is killed.
    """
    port = free_port()
    data_dir = folder / "data"
    auth_path = folder / "auth.yaml"
    keys = _write_auth_file(auth_path, auth)
    settings = {"host": HOST, "port": port, **(server or {})}
    config = {
        "data_dir": str(data_dir),
        "auth_file": str(auth_path),
        "server": settings,
        "scheduler": {"gpus": [], **scheduler},
        "executor": {"kill_grace_s": 1.0},
        "logging": {"level": "warning"},
        # One key sends thousands of requests a second here: the per-key rate limit (on by
        # default) would throttle the measurement itself, so it is off unless a bench sets it.
        "limits": {"enabled": False},
        **(extra or {}),
    }
    config_path = folder / "server.yaml"
    config_path.write_bytes(msgspec.json.encode(config))  # JSON is YAML
    proc = Server(
        "fetchml",
        [sys.executable, str(_HERE), "fetchml", str(config_path)],
        port,
        folder / "fetchml-server.log",
    )
    try:
        proc.start()
        yield proc, keys, data_dir
    finally:
        proc.stop()
        kill_leftover_jobs(data_dir)


@contextlib.contextmanager
def bare_server(folder: Path) -> Iterator[Server]:
    """Run the bare QuartTrio baseline app in a child process on a free port."""
    port = free_port()
    proc = Server(
        "bare",
        [sys.executable, str(_HERE), "bare", str(port)],
        port,
        folder / "bare-server.log",
    )
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def _run_fetchml(config_path: str) -> None:
    import trio

    from fetchml._config import load_config
    from fetchml._logging import setup_logging
    from fetchml.server import run_server

    raise_fd_limit()
    config = load_config(config_path)
    setup_logging(config.logging.level, config.logging.format)
    profile_dir = os.environ.get(PROFILE_ENV)
    if not profile_dir:
        trio.run(run_server, config)
        return
    import cProfile

    # The default (wall) clock: the event loop's idle time shows as epoll's, and worker threads
    # (the store's commits, the audit log's writes) are not profiled.  time.thread_time would
    # count CPU only, but costs a system call per event here and triples the server's CPU.
    profile = cProfile.Profile()
    try:
        profile.runcall(trio.run, run_server, config)
    finally:
        profile.dump_stats(Path(profile_dir) / f"fetchml-{config.server.port}.prof")


def _run_bare(port: int) -> None:
    import hypercorn.trio
    import trio
    from quart import Response, request, websocket
    from quart_trio import QuartTrio

    from fetchml._config import make_config
    from fetchml._logging import setup_logging
    from fetchml.gateway import apply_hypercorn_fixes
    from fetchml.gateway._pacing import FramePacer
    from fetchml.server._main import GC_THRESHOLDS, SWITCH_INTERVAL_S, _hypercorn_config

    raise_fd_limit()
    setup_logging("warning")
    apply_hypercorn_fixes()
    gc.set_threshold(*GC_THRESHOLDS)  # the process settings of run_server, for a fair baseline
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = QuartTrio("bare")

    @app.websocket("/ws")
    async def echo() -> None:
        await websocket.accept()
        while True:
            await websocket.send(await websocket.receive())

    # Each event as a dict, and its entry of a batch frame encoded once for every subscriber.
    subscribers: dict[int, trio.MemorySendChannel[tuple[dict[str, Any], msgspec.Raw]]] = {}
    last_seq = 0
    pacer = FramePacer()  # the gateway's tick, for subscribers that ask for pace

    @app.websocket("/fanout")
    async def fanout() -> None:
        """The fan-out baseline, with the notifier's policy.

        A ``subscribe`` frame makes the connection a subscriber with a bounded buffer of
        ``FANOUT_BUFFER`` events, closed with 1008 when it overflows; any other frame is answered
        and announced as ``FANOUT_EVENTS`` job events (stamped with ``ts``) to every subscriber.
        Each subscriber's frames are encoded for it (they carry its ``sub``), as the gateway does;
        with ``batch`` in the subscribe, the events already waiting go in one ``jobs`` frame of
        entries encoded once per event (the gateway's batching), a lone one as a ``job`` frame;
        with ``pace`` too, a frame per tick of the gateway's pacer at most (its pacing).
        """
        nonlocal last_seq
        await websocket.accept()
        while True:
            data = await websocket.receive()
            request = msgspec.msgpack.decode(data.encode() if isinstance(data, str) else data)
            rid = request.get("id")
            if request.get("op") != "subscribe":
                await websocket.send(msgspec.msgpack.encode({"re": rid, "ok": True}))
                now = time.time()
                for state in ("queued", "running", "succeeded")[:FANOUT_EVENTS]:
                    last_seq += 1
                    job = {"id": rid, "user": "alice", "spec": request.get("spec"), "state": state}
                    job.update(seq=last_seq, created_at=now, started_at=now, finished_at=now)
                    event = {"seq": last_seq, "ts": now, "job": job}
                    entry = (event, msgspec.Raw(msgspec.msgpack.encode(event)))
                    for key, channel in list(subscribers.items()):
                        try:
                            channel.send_nowait(entry)
                        except trio.WouldBlock:
                            channel.close()
                            del subscribers[key]
                continue
            send, receive = trio.open_memory_channel[tuple[dict[str, Any], msgspec.Raw]](
                FANOUT_BUFFER
            )
            subscribers[id(send)] = send
            reply = {"re": rid, "ok": True, "sub": 1, "since": last_seq}
            batch = request.get("batch") is True
            pace = batch and request.get("pace") is True
            try:
                await websocket.send(msgspec.msgpack.encode(reply))
                async for event, entry in receive:
                    entries = [entry]
                    while batch and len(entries) < FANOUT_BATCH:
                        try:
                            entries.append(receive.receive_nowait()[1])
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    if len(entries) > 1:
                        frame = {"ev": "jobs", "sub": 1, "events": entries}
                    else:
                        frame = {"ev": "job", "sub": 1, **event}
                    await websocket.send(msgspec.msgpack.encode(frame))
                    if pace:
                        await pacer.next_tick()
            finally:
                subscribers.pop(id(send), None)
            await websocket.close(1008, "too slow: fell behind")
            return

    @app.post("/api/v1/jobs")
    async def submit() -> tuple[Response, int]:
        spec = await request.get_json()
        return Response(msgspec.json.encode({"job": spec}), content_type="application/json"), 201

    async def main() -> None:
        async def shutdown_trigger() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

        config = _hypercorn_config(make_config(host=HOST, port=port))
        await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown_trigger)

    trio.run(main)


# --- a lean WebSocket client ---------------------------------------------------------------------


class Reply(msgspec.Struct):
    """The fields a client reads from a reply; ``id`` is where an echoed request carries it."""

    re: int | None = None
    id: int | None = None
    ok: bool = True
    error: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    sub: int | None = None
    status: dict[str, Any] | None = None

    @property
    def rid(self) -> int | None:
        return self.re if self.re is not None else self.id


_reply_decoder = msgspec.msgpack.Decoder(Reply)


class _Light(msgspec.Struct):
    re: int | None = None
    id: int | None = None
    ok: bool = True
    error: Any = None


_light_decoder = msgspec.msgpack.Decoder(_Light)


def client_frame(payload: bytes, opcode: int = 2) -> bytes:
    """One final client frame.  The mask key is all zeros (legal), so masking is a no-op."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class FrameParser:
    """Splits the server's byte stream into ``(opcode, payload)`` frames."""

    __slots__ = ("_buf",)

    def __init__(self, initial: bytes = b"") -> None:
        self._buf = bytearray(initial)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        frames: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            size, head = b1 & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if b1 & 0x80 or not b0 & 0x80:
                raise ConnectionError("unexpected masked or fragmented frame from the server")
            if end - pos < head + size:
                break
            frames.append((b0 & 0x0F, bytes(buf[pos + head : pos + head + size])))
            pos += head + size
        if pos:
            del buf[:pos]
        return frames


def close_reason(payload: bytes) -> str:
    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return f"{code} {payload[2:].decode(errors='replace')}".strip()


def ws_connect(
    port: int,
    key: str | None,
    *,
    path: str = "/ws",
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[socket.socket, bytes]:
    """Open a WebSocket to ``path`` (key in ``Authorization``); return (socket, bytes after it).

    With ``ssl_context`` it is ``wss://``: the socket is an :class:`ssl.SSLSocket`, its
    certificate checked for ``HOST``.
    """
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ssl_context is not None:
        try:
            sock = ssl_context.wrap_socket(sock, server_hostname=HOST)
        except BaseException:
            sock.close()
            raise
    nonce = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed during the WebSocket handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError(f"WebSocket upgrade refused: {status.decode(errors='replace')}")
    return sock, rest


def close_ws(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(True)
        sock.settimeout(1.0)
        sock.sendall(client_frame((1000).to_bytes(2, "big"), opcode=8))
    sock.close()


def ws_call(
    port: int, key: str, request: dict[str, Any], *, ssl_context: ssl.SSLContext | None = None
) -> Reply:
    """One request on a fresh connection; the reply (raises if it is an error)."""
    sock, rest = ws_connect(port, key, ssl_context=ssl_context)
    try:
        parser = FrameParser()
        sock.sendall(client_frame(msgspec.msgpack.encode(request)))
        frames = parser.feed(rest)
        while True:
            for opcode, payload in frames:
                if opcode == 8:
                    raise ConnectionError(f"closed by the server: {close_reason(payload)}")
                reply = _reply_decoder.decode(payload)
                if reply.rid == request["id"]:
                    if not reply.ok:
                        raise RuntimeError(f"{request['op']} failed: {reply.error}")
                    return reply
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the reply")
            frames = parser.feed(chunk)
    finally:
        close_ws(sock)


def start_holder(
    port: int, keys: Keys, spec: dict[str, Any], *, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Submit ``spec`` (a job that holds every cpu) and wait until it runs; its job id."""
    reply = ws_call(
        port, keys.alice, {"op": "submit", "id": 1, "spec": spec}, ssl_context=ssl_context
    )
    assert reply.job is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        request = {"op": "status", "id": 2}
        status = ws_call(port, keys.admin, request, ssl_context=ssl_context).status
        assert status is not None
        if status["counts"].get("running"):
            return int(reply.job["id"])
        time.sleep(0.05)
    raise RuntimeError("the job meant to hold the cpus did not start")


@dataclass
class PipelineResult:
    """One pipelined run: requests answered, wall seconds, per-request round trips (s)."""

    count: int
    elapsed: float
    rtts: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: Any = None

    @property
    def rate(self) -> float:
        return self.count / self.elapsed


class _Pipe:
    __slots__ = ("done", "frames", "inflight", "mask", "next", "out", "parser", "sent_at", "sock")

    def __init__(self, sock: socket.socket, rest: bytes, frames: list[tuple[int, bytes]]) -> None:
        self.sock = sock
        self.parser = FrameParser(rest)
        self.frames = frames
        self.next = 0
        self.inflight = 0
        self.done = 0
        self.out = bytearray()
        self.sent_at: dict[int, float] = {}
        self.mask = selectors.EVENT_READ

    def fill(self, window: int, sel: selectors.BaseSelector) -> None:
        count = min(window - self.inflight, len(self.frames) - self.next)
        if count > 0:
            batch = self.frames[self.next : self.next + count]
            now = time.perf_counter()
            sent_at = self.sent_at
            for rid, _ in batch:
                sent_at[rid] = now
            self.out += b"".join(frame for _, frame in batch)
            self.next += count
            self.inflight += count
        self.flush(sel)

    def flush(self, sel: selectors.BaseSelector) -> None:
        if self.out:
            try:
                sent = self.sock.send(self.out)
                del self.out[:sent]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass  # a TLS retry may send a longer ``out``: it only ever grows at the end
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if mask != self.mask:
            sel.modify(self.sock, mask, self)
            self.mask = mask


def pipelined_run(
    port: int,
    key: str,
    frames: list[list[tuple[int, bytes]]],
    *,
    window: int,
    timeout: float = 90.0,
    ssl_context: ssl.SSLContext | None = None,
) -> PipelineResult:
    """Send ``frames[i]`` on connection ``i``, at most ``window`` unanswered per connection.

    Every frame is ``(request id, bytes)``; the run ends when every request is answered.  The
    clock runs from the first send to the last reply; connecting is not timed.  With
    ``ssl_context`` the connections are ``wss://``.
    """
    tls = ssl_context is not None
    pipes = []
    for conn_frames in frames:
        sock, rest = ws_connect(port, key, ssl_context=ssl_context)
        sock.setblocking(False)
        pipes.append(_Pipe(sock, rest, conn_frames))
    sel = selectors.DefaultSelector()
    result = PipelineResult(count=sum(len(f) for f in frames), elapsed=0.0)
    rtts = result.rtts
    remaining = result.count
    try:
        start = time.perf_counter()
        deadline = start + timeout
        for pipe in pipes:
            sel.register(pipe.sock, pipe.mask, pipe)
            pipe.fill(window, sel)
        while remaining:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{remaining} requests unanswered after {timeout:.0f} s")
            for selected, events in sel.select(timeout=1.0):
                pipe = selected.data
                if events & selectors.EVENT_WRITE:
                    pipe.flush(sel)
                if not events & selectors.EVENT_READ:
                    continue
                if tls:
                    data = _recv_tls(pipe.sock)
                    if data is None:
                        continue
                else:
                    try:
                        data = pipe.sock.recv(1 << 18)
                    except BlockingIOError:
                        continue
                if not data:
                    raise ConnectionError("the server closed a connection mid-run")
                now = time.perf_counter()
                sent_at = pipe.sent_at
                for opcode, payload in pipe.parser.feed(data):
                    if opcode == 8:
                        raise ConnectionError(f"closed by the server: {close_reason(payload)}")
                    if opcode not in (1, 2):
                        continue
                    reply = _light_decoder.decode(payload)
                    rid = reply.re if reply.re is not None else reply.id
                    rtts.append(now - sent_at.pop(rid or 0))
                    if not reply.ok:
                        result.errors += 1
                        result.first_error = result.first_error or reply.error
                    pipe.inflight -= 1
                    remaining -= 1
                pipe.fill(window, sel)
        result.elapsed = time.perf_counter() - start
    finally:
        sel.close()
        for pipe in pipes:
            close_ws(pipe.sock)
    return result


def _recv_tls(sock: socket.socket) -> bytes | None:
    """All a non-blocking TLS socket can give now: b"" at its end, None if not one whole record.

    One ``recv`` returns at most one TLS record, and bytes OpenSSL holds already (``pending()``)
    are in no kernel buffer, so the selector would not report them: read until it wants more.
    """
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 18)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            break
        if not data:
            if chunks:
                break  # the end is reported by the next call
            return b""
        chunks.append(data)
    return b"".join(chunks) if chunks else None


# --- a lean keep-alive HTTP client (used when wrk is not installed) ------------------------------


@dataclass
class HttpResult:
    """One keep-alive run: responses, wall seconds, latencies (s), non-2xx count and a sample."""

    count: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)
    bad: int = 0
    bad_sample: bytes = b""

    @property
    def rate(self) -> float:
        return self.count / self.elapsed


class _HttpConn:
    __slots__ = ("buf", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.sent_at = 0.0


def http_run(port: int, request: bytes, *, connections: int, duration: float) -> HttpResult:
    """Send ``request`` over ``connections`` keep-alive connections, one at a time on each,
    for ``duration`` seconds; count the responses."""
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(connections):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conns.append(_HttpConn(sock))
    result = HttpResult(count=0, elapsed=0.0)
    try:
        start = time.perf_counter()
        end = start + duration
        for conn in conns:
            sel.register(conn.sock, selectors.EVENT_READ, conn)
            conn.sent_at = time.perf_counter()
            conn.sock.sendall(request)
        open_conns = len(conns)
        while open_conns:
            for selected, _ in sel.select(timeout=1.0):
                conn = selected.data
                data = conn.sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("the server closed a keep-alive connection")
                conn.buf += data
                head_end = conn.buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = bytes(conn.buf[:head_end]).lower()
                marker = head.find(b"content-length:")
                size = int(head[marker + 15 : head.find(b"\r\n", marker)]) if marker >= 0 else 0
                if len(conn.buf) < head_end + 4 + size:
                    continue
                now = time.perf_counter()
                if not head.startswith(b"http/1.1 2"):
                    result.bad += 1
                    result.bad_sample = result.bad_sample or bytes(conn.buf[: head_end + 4 + size])
                del conn.buf[: head_end + 4 + size]
                result.count += 1
                result.latencies.append(now - conn.sent_at)
                if now < end:
                    conn.sent_at = now
                    conn.sock.sendall(request)  # small: fits the socket buffer
                else:
                    sel.unregister(conn.sock)
                    open_conns -= 1
            if time.perf_counter() > end + 30:
                raise TimeoutError("responses still missing 30 s after the end of the run")
        result.elapsed = time.perf_counter() - start
    finally:
        sel.close()
        for conn in conns:
            conn.sock.close()
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fetchml":
        _run_fetchml(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "bare":
        _run_bare(int(sys.argv[2]))
    else:
        sys.exit("usage: _gateway_common.py fetchml CONFIG | bare PORT")
