"""The wire protocol and the HTTP API under bad input, pipelining, subscriptions and odd clients.

One server (in a thread) serves the module, with small size limits (64 KiB frames and bodies).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import pytest
import trio
from helpers.core import kill_everything_under
from helpers.gateway import (
    HttpSession,
    RawWs,
    ServerThread,
    Users,
    http,
    make_server_config,
    until_job,
    until_metric,
    ws_connect,
)

from fetchml._config import Config, ServerSettings
from fetchml.gateway import create_app

LIMIT = 64 * 1024
GRACE = 3.0  # kill_grace_s: a cancel of a job that ignores SIGTERM takes this long
CURL = ["curl", "--http1.0", "-s", "--max-time", "5", "-i"]


@dataclass
class Server:
    base: str
    users: Users
    data_dir: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("protocol")
    users = Users()
    config = make_server_config(
        tmp, users, max_frame_bytes=LIMIT, max_body_bytes=LIMIT, kill_grace_s=GRACE
    )
    try:
        with ServerThread(config) as thread:
            yield Server(thread.base, users, tmp / "data")
    finally:
        kill_everything_under(tmp)


# ---- bad frames -----------------------------------------------------------------------------


def _pack(payload: Any) -> bytes:
    data: bytes = msgpack.packb(payload)
    return data


# (frame, expected re, expected field or None, text the message must contain)
BINARY_CASES: dict[str, tuple[bytes, int | None, str | None, str]] = {
    "malformed msgpack": (b"\xc1\x00", None, None, "malformed frame"),
    "truncated msgpack": (_pack({"op": "whoami", "id": 1})[:-1], None, None, "malformed frame"),
    "empty frame": (b"", None, None, "malformed frame"),
    "a list, not a map": (_pack([1, 2, 3]), None, None, "must be a map"),
    "a string, not a map": (_pack("whoami"), None, None, "must be a map"),
    "unknown op": (_pack({"op": "frobnicate", "id": 7}), 7, "op", "frobnicate"),
    "op missing": (_pack({"id": 8}), 8, "op", "op"),
    "job_id of the wrong type": (
        _pack({"op": "get", "id": 9, "job_id": "x"}),
        9,
        "job_id",
        "job_id",
    ),
    "job_id zero": (_pack({"op": "cancel", "id": 10, "job_id": 0}), 10, "job_id", "job_id"),
    "job_id beyond the store": (
        _pack({"op": "get", "id": 11, "job_id": 2**64 - 1}),
        11,
        "job_id",
        "job_id",
    ),
    "id missing": (_pack({"op": "whoami"}), None, "id", "id"),
    "id of the wrong type": (_pack({"op": "whoami", "id": "one"}), None, "id", "id"),
    "id negative": (_pack({"op": "whoami", "id": -1}), None, "id", "id"),
    "unknown argument": (_pack({"op": "whoami", "id": 12, "bogus": 1}), 12, "bogus", "bogus"),
    "priority 0": (
        _pack({"op": "submit", "id": 13, "spec": {"command": ["true"], "priority": 0}}),
        13,
        "spec.priority",
        "spec.priority",
    ),
    "spec without command": (
        _pack({"op": "submit", "id": 14, "spec": {"name": "x"}}),
        14,
        "spec.command",
        "spec.command",
    ),
    "unknown resource": (
        _pack({"op": "submit", "id": 15, "spec": {"command": ["true"], "resources": {"tpus": 1}}}),
        15,
        "spec.resources.tpus",
        "spec.resources.tpus",
    ),
    "limit 0": (_pack({"op": "list", "id": 16, "limit": 0}), 16, "limit", "limit"),
    "unknown state": (_pack({"op": "list", "id": 17, "state": ["bogus"]}), 17, "state[0]", "bogus"),
    "since negative": (_pack({"op": "subscribe", "id": 18, "since": -1}), 18, "since", "since"),
}


def _check_error(reply: dict[str, Any], rid: int | None, field: str | None, text: str) -> None:
    assert set(reply) == {"re", "ok", "error"}, reply
    assert reply["re"] == rid
    assert reply["ok"] is False
    error = reply["error"]
    assert error["code"] in ("invalid_request", "invalid_spec"), error
    assert error.get("field") == field, error
    assert text in error["message"], error


@pytest.mark.parametrize("case", list(BINARY_CASES))
async def test_bad_binary_frame_gets_one_error_reply(server: Server, case: str) -> None:
    frame, rid, field, text = BINARY_CASES[case]
    async with ws_connect(server.base, server.users.alice) as ws:
        await ws.send_raw(frame)
        whoami = ws.next_id() + 100
        await ws.send({"op": "whoami", "id": whoami})
        # Exactly one reply for the bad frame, then the next request is answered as usual.
        first, second = await ws.receive(), await ws.receive()
        _check_error(first, rid, field, text)
        assert second["re"] == whoami
        assert second["user"] == "alice"
        assert await ws.barrier() == []


TEXT_CASES: dict[str, tuple[str, int | None, str | None, str]] = {
    "malformed JSON": ("{not json", None, None, "malformed frame"),
    "a JSON list": ("[1, 2]", None, None, "must be a map"),
    "unknown op": ('{"op": "frobnicate", "id": 3}', 3, "op", "frobnicate"),
    "job_id of the wrong type": ('{"op": "get", "id": 4, "job_id": "4"}', 4, "job_id", "job_id"),
    "priority 0": (
        '{"op": "submit", "id": 5, "spec": {"command": ["true"], "priority": 0}}',
        5,
        "spec.priority",
        "spec.priority",
    ),
    "id missing": ('{"op": "status"}', None, "id", "id"),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
async def test_bad_text_frame_gets_one_json_error_reply(server: Server, case: str) -> None:
    frame, rid, field, text = TEXT_CASES[case]
    async with ws_connect(server.base, server.users.bob, text=True) as ws:
        await ws.send_raw(frame)
        await ws.send({"op": "whoami", "id": 99})
        first, second = await ws.receive(), await ws.receive()  # text frames, checked
        _check_error(first, rid, field, text)
        assert second["re"] == 99
        assert second["user"] == "bob"
    assert all(isinstance(raw, str) for raw in ws.frames)


async def test_every_bad_frame_in_a_row_on_one_connection(server: Server) -> None:
    async with ws_connect(server.base, server.users.admin) as ws:
        for frame, rid, field, text in BINARY_CASES.values():
            await ws.send_raw(frame)
            _check_error(await ws.receive(), rid, field, text)
        for text_frame, rid, field, text in TEXT_CASES.values():
            await ws.send_raw(text_frame)
            reply = await ws.conn.get_message()
            assert isinstance(reply, str)
            _check_error(json.loads(reply), rid, field, text)
        assert (await ws.ok("whoami"))["user"] == "admin"
        assert (await ws.ok("status"))["status"]["cpus_total"] == 8


async def test_op_errors_carry_the_request_id(server: Server) -> None:
    async with ws_connect(server.base, server.users.alice) as ws:
        missing = await ws.call("get", job_id=2**62)
        assert missing["error"] == {"code": "not_found", "message": f"no job with id {2**62}"}
        unsubscribe = await ws.call("unsubscribe", sub=4242)
        assert unsubscribe["error"]["code"] == "invalid_request"
        assert unsubscribe["error"]["field"] == "sub"
        logs = await ws.call("subscribe", logs=True)
        assert logs["error"]["code"] == "invalid_request"
        assert logs["error"]["field"] == "logs"
        huge_dep = await ws.call("submit", spec={"command": ["true"], "depends_on": [2**64 - 1]})
        assert huge_dep["error"]["code"] == "invalid_spec"
        # Rejected while decoding the frame, so the path is the frame's (like spec.priority).
        assert huge_dep["error"]["field"] == "spec.depends_on[0]"
        assert (await ws.ok("whoami"))["user"] == "alice"


async def test_frame_over_the_limit_closes_1009_and_only_that_connection(server: Server) -> None:
    users = server.users
    async with ws_connect(server.base, users.alice) as bystander:
        await until_metric(server.base, "fetchml_websocket_connections", 1)
        for frame in (b"\x00" * (LIMIT + 1), "x" * (LIMIT + 1)):
            async with ws_connect(server.base, users.bob) as big:
                assert (await big.ok("whoami"))["user"] == "bob"
                await big.send_raw(frame)
                code, _ = await big.closed(within=5)  # promptly: the client does not hang
                assert code == 1009
            # The server's handler of that connection ended too (it did not wait for ever).
            await until_metric(server.base, "fetchml_websocket_connections", 1)
            assert (await bystander.ok("whoami"))["user"] == "alice"
        # A frame just under the limit is only a bad frame.
        await bystander.send_raw(_pack({"op": "whoami", "id": 5, "pad": "x" * (LIMIT - 100)}))
        reply = await bystander.reply(5)
        assert reply["error"]["field"] == "pad"


async def test_the_server_ends_a_1009_connection_without_the_client_closing_tcp(
    server: Server,
) -> None:
    """hypercorn closes an oversized frame's connection (1009) without telling the app, so its
    handler would wait for a frame for ever and a client that waits for the server to end the TCP
    connection (as RFC 6455 has the server do) would hang: the server must end it itself.  (The
    test above passes without that fix: its client closes the TCP connection.)"""
    async with ws_connect(server.base, server.users.alice) as bystander:
        await until_metric(server.base, "fetchml_websocket_connections", 1)
        client = await RawWs.connect(server.base, server.users.bob)
        async with client:
            await client.send_bytes(b"\x00" * (LIMIT + 1))
            _, code, _ = await client.read_until_close(within=5)
            assert code == 1009
            # This client neither answers the close frame nor closes its TCP connection: the
            # handler must end all the same...
            await until_metric(server.base, "fetchml_websocket_connections", 1)
            # ...and the server then closes the TCP connection itself.
            assert await client.read_to_eof(within=5) == b""
        assert (await bystander.ok("whoami"))["user"] == "alice"


# ---- pipelining, subscriptions --------------------------------------------------------------


async def test_pipelined_submits_each_get_exactly_one_reply(server: Server) -> None:
    async with ws_connect(server.base, server.users.bob) as ws:
        ids = [ws.next_id() for _ in range(200)]
        spec = {"command": ["true"], "name": "pipelined"}
        for rid in ids:
            await ws.send({"op": "submit", "id": rid, "spec": spec})
        with trio.fail_after(30):
            while sum(len(frames) for frames in ws.replies.values()) < len(ids):
                await ws.pump()
        assert await ws.barrier() == []  # no second reply to any of them
        answered = {rid: frames for rid, frames in ws.replies.items() if frames}
        assert set(answered) == set(ids)  # ids are distinct: each answered, and no other
        assert all(len(frames) == 1 for frames in answered.values())
        jobs = [ws.replies[rid][0] for rid in ids]
        assert all(reply["ok"] is True for reply in jobs)
        job_ids = [reply["job"]["id"] for reply in jobs]
        assert len(set(job_ids)) == len(ids)
        # Acknowledged means stored: every one of them can be read back.
        listed = await ws.ok("list", limit=10000)
        assert set(job_ids) <= {job["id"] for job in listed["jobs"]}


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


async def test_subscribe_since_resumes_without_gap_or_duplicate(server: Server) -> None:
    admin = server.users.admin
    async with HttpSession(server.base) as session:

        async def submit(n: int) -> list[int]:
            ids = []
            for _ in range(n):
                response = await session.request(
                    "POST", "/api/v1/jobs", key=admin, json_body={"command": ["true"]}
                )
                ids.append(response.json()["job"]["id"])
            return ids

        async with ws_connect(server.base, admin) as first:
            sub = await first.ok("subscribe")
            start = sub["since"]
            before = await submit(10)
            seen = [await first.event() for _ in range(12)]
        # Disconnected: more jobs are queued, run and end meanwhile.
        after = await submit(10)
        for job_id in before + after:
            await until_job(session, admin, job_id, ("succeeded",))
        last = seen[-1]["seq"]
        async with ws_connect(server.base, admin) as second:
            resumed = await second.ok("subscribe", since=last)
            assert resumed["since"] == last
            wanted = set(before + after)
            ended = {e["job"]["id"] for e in seen if e["job"]["state"] == "succeeded"}
            rest = []
            while not wanted <= ended:
                event = await second.event()
                rest.append(event)
                if event["job"]["state"] == "succeeded":
                    ended.add(event["job"]["id"])
    seqs = _seqs(seen) + _seqs(rest)
    # An admin sees every event: the seqs run without a gap and without a repeat.
    assert seqs == list(range(start + 1, start + 1 + len(seqs)))
    for job_id in before + after:
        states = [e["job"]["state"] for e in seen + rest if e["job"]["id"] == job_id]
        assert states == ["queued", "running", "succeeded"], (job_id, states)


@pytest.mark.parametrize("text", [False, True])
async def test_subscribe_with_logs_streams_the_log_and_ends(server: Server, text: bool) -> None:
    # The job prints a line, then waits for the test (a file in its cwd) before the rest.
    script = "printf 'one\\n'; while [ ! -e go ]; do sleep 0.02; done; printf 'two\\nthree\\n'"
    async with ws_connect(server.base, server.users.alice, text=text) as ws:
        job = (await ws.ok("submit", spec={"command": script, "shell": True}))["job"]
        sub = await ws.ok("subscribe", job_id=job["id"], logs=True, since=0)
        go = trio.Path(server.data_dir / "jobs" / str(job["id"]) / "output" / "go")
        data = b""
        states = []
        with trio.fail_after(10):
            while True:
                event = await ws.event()
                assert event["sub"] == sub["sub"]
                if event["ev"] == "job":
                    states.append(event["job"]["state"])
                    continue
                assert event["job_id"] == job["id"]
                assert event["offset"] == len(data)
                if event["ev"] == "log_end":
                    break
                assert event["ev"] == "log"
                chunk = event["data"]
                if text:
                    assert isinstance(chunk, str)
                    data += chunk.encode()
                else:
                    assert isinstance(chunk, bytes)
                    data += chunk
                if data == b"one\n":  # streamed while the job runs, not only at its end
                    await go.touch()
        assert data == b"one\ntwo\nthree\n"
        # The job's own events come on the same subscription, from the start (since=0).
        while "succeeded" not in states:
            event = await ws.event()
            states.append(event["job"]["state"])
        assert states == ["queued", "running", "succeeded"]
        # A log from an offset, on a finished job: the rest of it, then the end.
        tail = await ws.ok("subscribe", job_id=job["id"], logs=True, offset=4)
        with trio.fail_after(5):
            while True:
                event = await ws.event()
                if event["sub"] == tail["sub"] and event["ev"] == "log":
                    rest = event["data"].encode() if text else event["data"]
                    assert (event["offset"], rest) == (4, b"two\nthree\n")
                if event["sub"] == tail["sub"] and event["ev"] == "log_end":
                    assert event["offset"] == len(data)
                    break


async def test_unsubscribe_stops_events(server: Server) -> None:
    async with ws_connect(server.base, server.users.bob) as ws:
        kept = (await ws.ok("subscribe"))["sub"]
        dropped = (await ws.ok("subscribe"))["sub"]
        assert (await ws.ok("unsubscribe", sub=dropped))["sub"] == dropped
        again = await ws.call("unsubscribe", sub=dropped)
        assert again["error"]["code"] == "invalid_request"
        job = (await ws.ok("submit", spec={"command": ["true"]}))["job"]
        with trio.fail_after(10):
            while True:
                event = await ws.event()
                if event["job"]["id"] == job["id"] and event["job"]["state"] == "succeeded":
                    break
        await ws.quiet(0.2)
        assert {event["sub"] for event in ws.events} <= {kept}
        assert all(event["sub"] == kept for event in ws.events)


async def test_json_text_frames_work_end_to_end(server: Server) -> None:
    async with ws_connect(server.base, server.users.alice, text=True) as ws:
        sub = await ws.ok("subscribe")
        job = (await ws.ok("submit", spec={"command": ["echo", "hi"]}))["job"]
        event = await ws.event()
        assert (event["ev"], event["sub"], event["job"]["id"]) == ("job", sub["sub"], job["id"])
        assert event["seq"] > sub["since"]
        got = await ws.ok("get", job_id=job["id"])
        assert got["job"]["user"] == "alice"
    assert all(isinstance(raw, str) for raw in ws.frames)


async def test_requests_run_concurrently_on_one_connection(server: Server) -> None:
    """A slow request (a cancel waits for the job to end) does not hold up the next one."""
    async with ws_connect(server.base, server.users.alice) as ws:
        script = "trap '' TERM; echo ready; exec sleep 30"  # SIGTERM stays ignored
        job_id = (await ws.ok("submit", spec={"command": script, "shell": True}))["job"]["id"]
        async with HttpSession(server.base) as session:
            with trio.fail_after(10):
                while True:  # until the trap is set
                    path = f"/api/v1/jobs/{job_id}/logs"
                    log = await session.request("GET", path, key=server.users.alice)
                    if log.body == b"ready\n":
                        break
                    await trio.sleep(0.02)
        cancel, whoami = ws.next_id(), ws.next_id()
        started = trio.current_time()
        await ws.send({"op": "cancel", "id": cancel, "job_id": job_id})
        await ws.send({"op": "whoami", "id": whoami})
        first = await ws.pump()
        assert first["re"] == whoami  # answered while the cancel waits out the grace period
        assert (await ws.reply(cancel))["job"]["state"] == "cancelled"
        assert trio.current_time() - started >= GRACE


# ---- HTTP errors ----------------------------------------------------------------------------


async def test_http_invalid_json_and_unknown_fields(server: Server) -> None:
    alice = server.users.alice
    async with HttpSession(server.base) as session:
        bad = await session.request("POST", "/api/v1/jobs", key=alice, body=b"{not json")
        assert bad.status == 400
        assert bad.error["code"] == "invalid_request"
        assert "JSON" in bad.error["message"]
        empty = await session.request("POST", "/api/v1/jobs", key=alice, body=b"")
        assert empty.status == 400
        unknown = await session.request(
            "POST", "/api/v1/jobs", key=alice, json_body={"command": ["true"], "gpu_count": 1}
        )
        assert unknown.status == 400
        assert unknown.error["field"] == "gpu_count"
        assert "gpu_count" in unknown.error["message"]
        nested = await session.request(
            "POST",
            "/api/v1/jobs",
            key=alice,
            json_body={"command": ["true"], "resources": {"cpu": 1}},
        )
        assert nested.status == 400
        assert nested.error["field"] == "resources.cpu"
        priority = await session.request(
            "POST", "/api/v1/jobs", key=alice, json_body={"command": ["true"], "priority": 0}
        )
        assert priority.status == 400
        assert priority.error == {
            "code": "invalid_spec",
            "message": "priority: Expected `int` >= 1",
            "field": "priority",
        }
        shell = await session.request(
            "POST", "/api/v1/jobs", key=alice, json_body={"command": "echo hi"}
        )
        assert shell.status == 400
        assert shell.error["field"] == "command"
        huge = await session.request(
            "POST",
            "/api/v1/jobs",
            key=alice,
            json_body={"command": ["true"], "depends_on": [2**64]},
        )
        assert huge.status == 400
        assert huge.error["field"] == "depends_on[0]"
        # The connection is still good, and so is the server.
        assert (await session.request("GET", "/api/v1/whoami", key=alice)).status == 200


async def test_http_body_over_the_limit_is_413(server: Server) -> None:
    alice = server.users.alice
    body = json.dumps({"command": ["true"], "name": "x" * LIMIT}).encode()
    response = await http(server.base, "POST", "/api/v1/jobs", key=alice, body=body)
    assert response.status == 413
    assert response.error == {
        "code": "request_entity_too_large",
        "message": f"request body larger than {LIMIT} bytes",
    }
    # Without a Content-Length (chunked), the limit holds as well.
    host, port = server.base.removeprefix("http://").split(":")
    head = (
        "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {alice}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunk = b"x" * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    received = b""
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(head)
            # The server may answer and close before the whole body arrived.
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(chunks)
            while data := await stream.receive_some(65536):
                received += data
    assert received.startswith(b"HTTP/1.1 413")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]["code"] == (
        "request_entity_too_large"
    )


async def test_http_unknown_route_and_wrong_method(server: Server) -> None:
    key = server.users.admin
    async with HttpSession(server.base) as session:
        # ``/`` is the dashboard (tests/test_web_static.py); an unknown page beside it is not.
        for path in ("/api/v1/nothing", "/api/v2/jobs", "/api/v1/jobs/abc", "/nothing"):
            missing = await session.request("GET", path, key=key)
            assert missing.status == 404, path
            assert missing.error["code"] == "not_found"
        for method, path in (
            ("DELETE", "/api/v1/jobs"),
            ("PUT", "/api/v1/jobs/1"),
            ("GET", "/api/v1/jobs/1/cancel"),
            ("POST", "/api/v1/status"),
            ("POST", "/health"),
        ):
            wrong = await session.request(method, path, key=key)
            assert wrong.status == 405, (method, path)
            assert wrong.error["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("before=x", "before"),
        ("state=bogus", "state"),
        ("state=queued,bogus", "state"),
    ],
)
async def test_http_bad_query_parameters(server: Server, query: str, param: str) -> None:
    response = await http(server.base, "GET", f"/api/v1/jobs?{query}", key=server.users.carol)
    assert response.status == 400
    assert response.error["code"] == "invalid_request"
    assert response.error["field"] == param
    assert response.error["message"].startswith(f"{param}:")


async def test_http_job_ids_out_of_range_are_not_found(server: Server) -> None:
    key = server.users.admin
    async with HttpSession(server.base) as session:
        for path in ("/api/v1/jobs/{}", "/api/v1/jobs/{}/logs"):
            for job_id in (2**62, 2**63, 10**30):
                response = await session.request("GET", path.format(job_id), key=key)
                assert response.status == 404, (path, job_id)
                assert response.error["message"] == f"no job with id {job_id}"
        cancel = await session.request("POST", f"/api/v1/jobs/{10**30}/cancel", key=key)
        assert cancel.status == 404
        zero = await session.request("GET", "/api/v1/jobs/0", key=key)
        assert zero.status in (400, 404)
        logs = await session.request("GET", "/api/v1/jobs/1/logs?offset=-1", key=key)
        assert logs.status == 400
        assert logs.error["field"] == "offset"


async def test_http_list_filters(server: Server) -> None:
    key = server.users.carol
    async with HttpSession(server.base) as session:
        page = await session.request("GET", "/api/v1/jobs?limit=3", key=key)
        jobs = page.json()["jobs"]
        assert len(jobs) == 3
        assert [j["id"] for j in jobs] == sorted((j["id"] for j in jobs), reverse=True)
        older = await session.request("GET", f"/api/v1/jobs?before={jobs[-1]['id']}", key=key)
        assert all(j["id"] < jobs[-1]["id"] for j in older.json()["jobs"])
        done = await session.request("GET", "/api/v1/jobs?state=succeeded,failed", key=key)
        assert {j["state"] for j in done.json()["jobs"]} <= {"succeeded", "failed"}


# ---- clients that read to EOF, OpenAPI ------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/api/v1/status", "/api/v1/jobs?limit=1"])
async def test_http10_client_gets_the_whole_response_and_eof(server: Server, path: str) -> None:
    key = server.users.carol
    with trio.fail_after(8):
        result = await trio.run_process(
            [*CURL, "-H", f"X-API-Key: {key}", server.base + path],
            capture_stdout=True,
            check=False,
        )
    assert result.returncode == 0, result  # 28 would be curl's timeout: no EOF came
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"200"
    length = re.search(rb"(?im)^content-length: (\d+)", head)
    assert length
    assert len(body) == int(length.group(1))
    json.loads(body)


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
async def test_connection_close_client_reads_to_eof(server: Server, version: str) -> None:
    host, port = server.base.removeprefix("http://").split(":")
    for key in (None, server.users.alice):
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        request = (
            f"GET /api/v1/whoami {version}\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
        ).encode()
        received = b""
        with trio.fail_after(3):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(request)
                while data := await stream.receive_some(65536):
                    received += data
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        assert status == (200 if key else 401)
        assert json.loads(body)


CONTRACT_ROUTES = {
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("post", "/api/v1/jobs/{job_id}/cancel"),
    ("get", "/api/v1/jobs/{job_id}/logs"),
    ("get", "/api/v1/status"),
    ("get", "/api/v1/whoami"),
}


async def test_openapi_document_lists_every_api_route(server: Server) -> None:
    response = await http(server.base, "GET", "/api/v1/openapi.json")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    document = json.loads(response.body)
    assert document["openapi"].startswith("3.")
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented >= CONTRACT_ROUTES
    assert {"/health", "/metrics"} <= set(document["paths"])
    # Every route the app really serves under /api/v1 is documented, and nothing more.
    # The routes only: a stand-in for the service, whose parts no route reaches at set-up.
    stand_in = SimpleNamespace(
        scheduler=SimpleNamespace(config=Config(), snapshots=None, tracking=None)
    )
    app = create_app(cast(Any, stand_in), ServerSettings(), trio.Event())
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule == "/api/v1/openapi.json":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(m.lower(), path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    documented_api = {(m, p) for m, p in documented if p.startswith("/api/v1/")}
    documented_api.discard(("get", "/api/v1/openapi.json"))
    assert served == documented_api
    # Every referenced schema exists.
    text = response.body.decode()
    for ref in set(re.findall(r'"#/components/schemas/(\w+)"', text)):
        assert ref in document["components"]["schemas"], ref
