"""One-shot ``ml`` commands over plain HTTP (``fetchml.client.HttpClient``).

``ml status``, ``whoami``, ``queue``, ``cancel`` and ``logs`` run without an event loop or a
WebSocket: each command's handler is the one the WebSocket client runs, so their output must be
the same either way.  Checked here against a real server, with the WebSocket path forced by a
wrapper that turns ``one_shot`` off; plus what those commands import, the transport's reading of
answers (lengths, chunks, garbage) and the parser built for one command only.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from test_client_support import Result, ml_env, run_ml, running_server

from fetchml.cli._ml_args import _BUILDERS, build_parser
from fetchml.client import ServerUnreachableError, run_blocking
from fetchml.client._http_once import OneShotSession
from fetchml.errors import FetchMLError, InternalError
from fetchml.protocol import Identity

# ``ml`` with every command on the WebSocket client, as before one-shot commands used HTTP.
WEBSOCKET_ML = [
    sys.executable,
    "-c",
    "import sys; import fetchml.cli._ml as m; m.one_shot = lambda args: False; sys.exit(m.main())",
]
# Durations and times, which differ between two runs a moment apart.
_TIMES = re.compile(r'\b\d+(?:[smhd]\d*[smh]?)\b|"\w+_at":[0-9.]+|\d{4}-\d\d-\d\dT[0-9:+-]+')


def same_text(text: str) -> str:
    return _TIMES.sub("T", text)


async def both_ways(url: str, home: Path, user: str | None, *args: str) -> tuple[Result, Result]:
    """``ml ARGS`` run as it runs (HTTP for one-shot commands) and over the WebSocket."""
    env = ml_env(url, user, home)
    http = await run_ml(*args, env=env)
    ws = await run_ml(*args, env=env, argv=WEBSOCKET_ML)
    return http, ws


async def test_one_shot_commands_say_what_the_websocket_path_says(
    data_dir: Path, tmp_path: Path
) -> None:
    async with running_server(data_dir) as url:
        env = ml_env(url, "bob", tmp_path)
        done = await run_ml("queue", "--no-snapshot", "--name", "a", "--", "echo", "hi", env=env)
        running = await run_ml("queue", "--no-snapshot", "--", "sleep", "30", env=env)
        assert (done.rc, running.rc) == (0, 0), done.err + running.err
        first, second = done.out.strip(), running.out.strip()
        cases: list[tuple[str | None, tuple[str, ...]]] = [
            ("bob", ("status",)),
            ("bob", ("status", "--json")),
            ("admin", ("status", "--state", "running", "--user", "bob", "--json")),
            ("bob", ("status", first)),
            ("bob", ("status", first, second, "--json")),
            ("bob", ("status", "999")),
            ("carol", ("status", "--state", "nope")),
            ("bob", ("whoami",)),
            ("carol", ("whoami", "--json")),
            ("bob", ("logs", first)),
            ("bob", ("logs", first, "--json")),
            ("bob", ("cancel", first, "999")),
            ("carol", ("cancel", second)),
            ("carol", ("queue", "--no-snapshot", "--", "true")),
            ("bob", ("queue", "--no-snapshot", "--cpu", "64", "--", "true")),
            ("bob", ("queue", "--no-snapshot", "--dry-run", "--after", first, "--", "true")),
            ("bob", ("queue", "--no-snapshot", "--dry-run", "--after", "999", "--", "true")),
            (None, ("status",)),
        ]
        with trio.fail_after(60):
            for user, args in cases:
                http, ws = await both_ways(url, tmp_path, user, *args)
                assert (http.rc, same_text(http.out), http.err) == (
                    ws.rc,
                    same_text(ws.out),
                    ws.err,
                ), (user, args)
            wrong = ml_env(url, None, tmp_path, FETCHML_API_KEY="fml_abcdefghijkl_wrong")
            http = await run_ml("whoami", env=wrong)
            ws = await run_ml("whoami", env=wrong, argv=WEBSOCKET_ML)
            assert (http.rc, http.err) == (ws.rc, ws.err) == (4, ws.err)
            assert "invalid API key (the key from FETCHML_API_KEY" in http.err


async def test_queue_and_cancel_over_http(data_dir: Path, tmp_path: Path) -> None:
    async with running_server(data_dir) as url:
        env = ml_env(url, "bob", tmp_path)
        with trio.fail_after(30):
            queued = await run_ml("queue", "--no-snapshot", "--json", "--", "sleep", "30", env=env)
            assert queued.rc == 0, queued.err
            job = queued.json()
            assert (job["user"], job["spec"]["command"], job["snapshot"]) == (
                "bob",
                ["sleep", "30"],
                None,
            )
            cancelled = await run_ml("cancel", str(job["id"]), "--json", env=env)
            assert cancelled.rc == 0, cancelled.err
            assert [j["state"] for j in cancelled.json()] == ["cancelled"]
            again = await run_ml("cancel", str(job["id"]), env=env)
            assert again.rc == 7
            assert again.err == f"ml: error: job {job['id']} has already ended (cancelled)\n"


_PROBE = """
import json, sys
from fetchml.cli import ml_main
code = ml_main(sys.argv[1:])
print(json.dumps([code, sorted(sys.modules)]))
"""
_PROBE_ARGV = (sys.executable, "-c", _PROBE)


@pytest.mark.parametrize(
    "args", [("status",), ("whoami",), ("queue", "--no-snapshot", "--", "true"), ("cancel", "1")]
)
async def test_one_shot_commands_import_no_event_loop(
    data_dir: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Neither trio, trio-websocket, http.client nor rich (stdout is a pipe): they are what
    made these commands slow."""
    async with running_server(data_dir) as url:
        result = await run_ml(*args, env=ml_env(url, "admin", tmp_path), argv=_PROBE_ARGV)
        lines = result.out.strip().splitlines()
        code, modules = json.loads(lines[-1])
        assert code in (0, 6), result.err  # cancel 1: no such job yet
        heavy = {"trio", "trio_websocket", "wsproto", "http.client", "rich", "ssl", "yaml"}
        assert heavy.isdisjoint(modules), sorted(heavy.intersection(modules))


def test_run_blocking_runs_a_coroutine_that_never_suspends() -> None:
    async def plain() -> int:
        return 7

    async def suspends() -> None:
        await trio.lowlevel.checkpoint()

    assert run_blocking(plain()) == 7
    with pytest.raises(RuntimeError, match="waited on an event loop"):
        run_blocking(suspends())


def test_a_command_parser_built_alone_is_the_one_of_the_full_parser() -> None:
    def subparsers(parser: object) -> dict[str, object]:
        actions = parser._actions  # type: ignore[attr-defined]
        return next(a for a in actions if a.__class__.__name__ == "_SubParsersAction").choices  # type: ignore[no-any-return]

    full = subparsers(build_parser("0"))
    assert sorted(full) == sorted(name for names, _ in _BUILDERS for name in names)
    for name, parser in full.items():
        alone = subparsers(build_parser("0", name))
        assert list(alone) == [n for names, _ in _BUILDERS if name in names for n in names]
        assert alone[name].format_help() == parser.format_help()  # type: ignore[attr-defined]
    assert build_parser("0", "nope").format_help() == build_parser("0").format_help()


# ---- the transport: one request per connection -------------------------------------------


Answer = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_once(answer: Answer, task_status: trio.TaskStatus[int]) -> None:
    """A loopback listener that reads one request per connection and lets ``answer`` reply."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
        async with stream:
            await answer(stream)

    await trio.serve_listeners(handle, listeners)


def sending(*parts: bytes) -> Answer:
    async def answer(stream: trio.SocketStream) -> None:
        for part in parts:
            await stream.send_all(part)
            await trio.sleep(0.01)  # in several reads

    return answer


IDENTITY = b'{"user":"u","roles":[],"permissions":[],"admin":false}'
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
ANSWERS: dict[str, tuple[Answer, object]] = {
    "length": (sending(_HEAD + b"Content-Length: %d\r\n\r\n" % len(IDENTITY), IDENTITY), "u"),
    "chunked": (
        sending(
            _HEAD + b"Transfer-Encoding: chunked\r\n\r\n",
            b"%x\r\n%s\r\n" % (10, IDENTITY[:10]),
            b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(IDENTITY) - 10, IDENTITY[10:]),
        ),
        "u",
    ),
    "to the end": (sending(_HEAD + b"\r\n", IDENTITY[:5], IDENTITY[5:]), "u"),
    "nothing": (sending(), "the server closed the connection (if the server uses TLS"),
    "not http": (sending(b"\x15\x03\x01\x00\x02\x02\x46" + b"x" * 70000), "the answer is not HTTP"),
    "cut": (sending(_HEAD + b"Content-Length: 100\r\n\r\n{"), "a cut answer"),
    "bad chunk": (sending(_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"), "a bad chunk"),
    "proxy page": (
        sending(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\n\r\n<h1/>"),
        "answered HTTP 502, not with a Fetch ML error; is this the URL of a Fetch ML server?",
    ),
    "error body": (
        sending(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 52\r\n\r\n"
            b'{"error":{"code":"internal_error","message":"oops"}}'
        ),
        InternalError,
    ),
    "not json": (sending(_HEAD + b"Content-Length: 2\r\n\r\n{]"), "is not valid"),
}


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_the_transport_reads_each_kind_of_answer(case: str) -> None:
    answer, expected = ANSWERS[case]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_once, answer)
        url = f"http://127.0.0.1:{port}"
        session = OneShotSession(url, "k", timeout=5, ca_file=None)
        with trio.fail_after(10):
            try:
                got: object = await trio.to_thread.run_sync(
                    lambda: session.call("GET", "/api/v1/whoami", Identity).user
                )
            except FetchMLError as exc:
                got = exc
        nursery.cancel_scope.cancel()
    if isinstance(expected, type):
        assert isinstance(got, expected), got
    elif expected == "u":
        assert got == "u"
    else:
        assert isinstance(got, FetchMLError), got
        assert str(expected) in str(got), got
        if case not in ("error body", "not json"):
            assert isinstance(got, ServerUnreachableError)
            assert str(got).startswith(f"cannot reach the Fetch ML server at {url}") or (
                case == "proxy page"
            )


def test_the_transport_names_a_refused_connection() -> None:
    session = OneShotSession("http://127.0.0.1:1", None, timeout=5, ca_file=None)
    with pytest.raises(ServerUnreachableError) as refused:
        session.call("GET", "/api/v1/whoami", Identity)
    assert str(refused.value) == (
        "cannot reach the Fetch ML server at http://127.0.0.1:1: connection refused"
    )


async def test_ml_names_a_stopped_server(tmp_path: Path) -> None:
    env = ml_env("http://127.0.0.1:1", "bob", tmp_path)
    for args in (("status",), ("whoami",), ("queue", "--no-snapshot", "--", "true")):
        result = await run_ml(*args, env=env)
        assert (result.rc, result.err) == (
            3,
            "ml: error: cannot reach the Fetch ML server at http://127.0.0.1:1: "
            "connection refused\n",
        )
