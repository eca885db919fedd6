"""Hostile requests over HTTP and the WebSocket never break the server.

One server (in a thread, rate limits off, the default 1 MiB body and frame limits) serves the
module.  Each example sends one hostile request, checks that it got exactly one answer of the
documented shape, then that ``/health`` answers 200 and a normal job (``/bin/true``) runs to
``succeeded``.  Accepted jobs are cancelled at once.  If an example kills the server, that example
fails with what the server raised, and the next one gets a fresh server on the same data dir.
The last test restarts the server on the same data dir and runs a normal job again.

HTTP: 201 with a job, or a 4xx JSON error ``{"error": {"code", "message"}}``; 413 above the body
limit; never 5xx.  WebSocket: one reply whose ``re`` is the request's id (``null`` when it has no
usable id), ``ok`` true with a result or false with a client error code, and the connection stays
open (a later request is answered), but above the frame limit, where the server closes with 1009.

Random specs run as processes; they are made harmless (``strategies.harmless``), the server's
``PATH`` is an empty folder, relative working directories land in a scratch folder and every job
process is killed at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import kill_everything_under
from helpers.gateway import (
    HttpSession,
    Response,
    ServerThread,
    Users,
    close_of,
    make_server_config,
    ws_connect,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    CLIENT_CODES,
    MAX_BODY,
    MAX_FRAME,
    NORMAL_JOB,
    REGRESSIONS,
    Case,
    Deep,
    Long,
    any_values,
    cases,
    field_under,
    has_nonfinite,
    has_surrogate,
    hostile_texts,
    label,
    nameable,
    random_frames,
    raw_binary_frames,
    raw_bodies,
    raw_text_frames,
    reported,
    request_ids,
    to_json,
    to_msgpack,
    usable_id,
)
from trio_websocket import ConnectionClosed

import fetchml

WITHIN = 20.0  # one request and its checks, at most (a hang fails the example)
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out", "lost")
ENDED = STATES[2:]
CLOSE_TOO_BIG = 1009
CLOSE_AUTH_FAILED = 4001

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# ---- the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def empty_path(folder: Path) -> Iterator[None]:
    """``PATH`` on an empty folder while the server starts (its backend copies the environment
    then: jobs inherit it)."""
    old = os.environ.get("PATH")
    os.environ["PATH"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = old


@dataclass
class Live:
    """The module's server; :meth:`ensure` replaces it if an example killed it."""

    config: fetchml.Config
    users: Users
    empty: Path
    thread: ServerThread | None = None
    deaths: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        assert self.thread is not None
        return self.thread.base

    @property
    def key(self) -> str:
        return self.users.alice

    def start(self) -> None:
        with empty_path(self.empty):
            thread = ServerThread(self.config)
            thread.__enter__()
        self.thread = thread

    def death(self) -> str | None:
        """What the server died of, if its thread has ended."""
        thread = self.thread
        if thread is None or thread._thread.is_alive():
            return None
        error = thread._error
        if error is None:
            return "the server thread ended without an error"
        return "".join(traceback.format_exception(error))[-6000:]

    def ensure(self) -> None:
        death = self.death()
        if death is not None:
            self.deaths.append(death)
            self.start()

    def stop(self) -> None:
        if self.thread is not None and self.death() is None:
            self.thread.stop()

    def run(self, fn: Any, *args: Any) -> None:
        """``trio.run(fn, *args)`` against a live server; a dead server is named in the failure."""
        self.ensure()
        try:
            trio.run(fn, *args)
        except BaseException as exc:
            death = self.death()
            if death is not None:
                exc.add_note(f"THE SERVER DIED:\n{death}")
            raise


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-gateway")
    empty = tmp / "empty-path"
    empty.mkdir()
    scratch = tmp / "scratch"
    scratch.mkdir()
    users = Users()
    config = make_server_config(tmp, users, limits={"enabled": False})
    server = Live(config, users, empty)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(scratch)  # the jobs' relative cwd
        try:
            server.start()
            yield server
        finally:
            try:
                server.stop()
            finally:
                kill_everything_under(tmp)


# ---- checks shared by every example -------------------------------------------------------


async def request(base: str, method: str, path: str, **kwargs: Any) -> Response:
    """One request on its own connection (``Connection: close``)."""
    async with HttpSession(base) as session:
        return await session.request(method, path, close=True, within=WITHIN, **kwargs)


async def still_works(base: str, key: str) -> None:
    """``/health`` answers 200 and a normal job runs to ``succeeded``."""
    with trio.fail_after(WITHIN):
        async with HttpSession(base) as session:
            health = await session.request("GET", "/health")
            assert health.status == 200, health
            response = await session.request("POST", "/api/v1/jobs", key=key, json_body=NORMAL_JOB)
            assert response.status == 201, response
            job_id = response.json()["job"]["id"]
            while True:
                response = await session.request("GET", f"/api/v1/jobs/{job_id}", key=key)
                assert response.status == 200, response
                job = response.json()["job"]
                if job["state"] in ENDED:
                    break
                await trio.sleep(0.01)
            assert job["state"] == "succeeded", job


async def cancel(base: str, key: str, job: dict[str, Any]) -> None:
    """Cancel an accepted job at once (it may have ended already: 409)."""
    response = await request(base, "POST", f"/api/v1/jobs/{job['id']}/cancel", key=key)
    assert response.status in (200, 409), response


def check_job(job: Any) -> dict[str, Any]:
    assert isinstance(job, dict), job
    assert isinstance(job.get("id"), int), job
    assert job["id"] >= 1, job
    assert job.get("state") in STATES, job
    assert isinstance(job.get("spec"), dict), job
    return job


def check_error(error: Any) -> dict[str, Any]:
    assert isinstance(error, dict), error
    assert isinstance(error.get("code"), str), error
    assert isinstance(error.get("message"), str), error
    assert error["message"], error
    return error


# ---- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A request body: a spec written as JSON (``ascii``: lone surrogates as escapes; ``utf8``:
    as raw bytes, so invalid UTF-8), or raw bytes."""

    kind: str
    case: Case | None
    raw: bytes = field(default=b"", repr=False)

    @property
    def data(self) -> bytes:
        if self.case is None:
            return self.raw
        return to_json(self.case.spec, ascii_only=self.kind == "ascii")

    @property
    def clean(self) -> bool:
        """Standard JSON, valid UTF-8: an error about its spec must name the field."""
        if self.case is None:
            return False
        spec = self.case.spec
        return not has_nonfinite(spec) and (self.kind == "ascii" or not has_surrogate(spec))


bodies: st.SearchStrategy[Body] = st.one_of(
    st.builds(Body, st.just("ascii"), cases),
    st.builds(Body, st.just("ascii"), cases),
    st.builds(Body, st.just("utf8"), cases),
    st.builds(lambda raw: Body("raw", None, raw), raw_bodies),
)


async def http_example(base: str, key: str, body: Body) -> None:
    data = body.data
    response = await request(base, "POST", "/api/v1/jobs", key=key, body=data)
    label(f"HTTP {response.status}")
    assert response.status < 500, f"{response.status}: {response.body[:2000]!r}"
    assert response.headers.get("content-type", "").startswith("application/json"), response
    if len(data) > MAX_BODY:
        assert response.status == 413, response
    if response.status == 201:
        job = check_job(response.json().get("job"))
        await cancel(base, key, job)
    else:
        assert response.status in (400, 413), f"{response.status}: {response.body[:2000]!r}"
        error = check_error(response.error)
        if response.status == 400:
            assert error["code"] in ("invalid_spec", "invalid_request"), error
            top = body.case.top if body.case is not None else None
            if body.clean and top is not None and nameable(top):
                assert error["code"] == "invalid_spec", error
                assert field_under(error.get("field"), top), f"field not under {top!r}: {error}"
    await still_works(base, key)


@FUZZ
@given(body=bodies)
def test_http_submit_hostile_bodies(live: Live, body: Body) -> None:
    with reported(body=body, size=len(body.data)):
        live.run(http_example, live.base, live.key, body)


# Keys in headers: h11 sends only visible ASCII (and spaces, tabs) in a header value.
header_keys: st.SearchStrategy[str] = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    st.builds(lambda n: "k" * n, st.integers(70, 8000)),
    st.sampled_from(("", " ", "Bearer", "fml_", "fml_.", "fml_" + "a" * 100, "\t")),
)


async def http_key_example(base: str, good_key: str, key: str, style: str) -> None:
    key = key.strip(" \t")  # h11 sends no header value with blanks around it
    if style == "bearer" and not key:
        style, key = "raw", "Bearer"
    if style == "raw":  # the whole Authorization header, no scheme
        response = await request(base, "GET", "/api/v1/whoami", headers=[("Authorization", key)])
    else:
        response = await request(base, "GET", "/api/v1/whoami", key=key, style=style)
    assert response.status in (400, 401, 431), f"{response.status}: {response.body[:2000]!r}"
    if response.status == 401:
        check_error(response.error)
    await still_works(base, good_key)


@settings(FUZZ, max_examples=40)
@given(key=header_keys, style=st.sampled_from(("bearer", "x-api-key", "raw")))
def test_http_hostile_keys(live: Live, key: str, style: str) -> None:
    with reported(key=key, style=style):
        live.run(http_key_example, live.base, live.key, key, style)


# ---- WebSocket ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A frame to send: ``payload`` as msgpack (``binary``) or JSON text, or raw bytes/text.

    ``case`` is the spec of a submit frame (its error must name the field), ``rid`` the id the
    frame carries (``...`` when it has none).
    """

    binary: bool
    payload: Any = None
    raw: bytes | str | None = field(default=None, repr=False)
    case: Case | None = None
    rid: Any = ...

    @property
    def data(self) -> bytes | str:
        if self.raw is not None:
            return self.raw
        if self.binary:
            return to_msgpack(self.payload)
        return to_json(self.payload, ascii_only=True).decode()

    @property
    def size(self) -> int:
        data = self.data
        return len(data if isinstance(data, bytes) else data.encode())

    @property
    def clean(self) -> bool:
        """Whether the frame is well-formed msgpack / JSON (then a usable id must be echoed)."""
        if self.raw is not None:
            return False
        if self.binary:
            return not has_surrogate(self.payload)
        return not has_nonfinite(self.payload)

    @property
    def expected_re(self) -> tuple[Any, ...] | None:
        """The ``re`` values a reply to this frame may carry (None: any, for a raw frame)."""
        if self.raw is not None:
            return None
        usable = isinstance(self.payload, dict) and usable_id(self.rid)
        if not usable:
            return (None,)
        return (self.rid,) if self.clean else (self.rid, None)


def submit_frame(binary: bool, rid: Any, case: Case) -> Frame:
    payload = {"op": "submit", "id": rid, "spec": case.spec}
    return Frame(binary, payload, case=case, rid=rid)


def random_frame(binary: bool, payload: Any) -> Frame:
    rid = payload.get("id", ...) if isinstance(payload, dict) else ...
    return Frame(binary, payload, rid=rid)


submit_frames: st.SearchStrategy[Frame] = st.builds(
    submit_frame,
    st.booleans(),
    st.one_of(st.integers(0, 2**53), st.integers(0, 2**53), request_ids),
    cases,
)

other_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(random_frame, st.booleans(), random_frames()),
    st.builds(random_frame, st.booleans(), random_frames()),
    st.builds(lambda raw: Frame(True, raw=raw), raw_binary_frames),
    st.builds(lambda raw: Frame(False, raw=raw), raw_text_frames),
)


def probe_id(rid: Any) -> int:
    return 2 if rid == 1 else 1


async def ws_example(base: str, key: str, frame: Frame) -> None:
    job: dict[str, Any] | None = None
    with trio.fail_after(WITHIN):
        async with ws_connect(base, key, auth_op=False, text=not frame.binary) as ws:
            if frame.size > MAX_FRAME:
                await expect_too_big(ws, frame.data)
            else:
                await ws.send_raw(frame.data)
                job = await expect_one_reply(ws, frame)
    if job is not None and job.get("state") in ("queued", "running"):
        await cancel(base, key, job)
    await still_works(base, key)


async def expect_too_big(ws: Any, data: bytes | str) -> None:
    """A frame over the limit: the server closes the connection with 1009."""
    label("WS closed (too big)")
    try:
        await ws.send_raw(data)
    except ConnectionClosed as exc:  # closed while the frame was still going out
        code, reason = close_of(exc)
        # The server closes with 1009 while bytes of the frame are still unread on its side:
        # its kernel then resets the connection, and the reset may overtake the close frame.
        assert code in (CLOSE_TOO_BIG, 1006), (code, reason)
        return
    code, reason = await ws.closed()
    assert code == CLOSE_TOO_BIG, (code, reason)


async def expect_one_reply(ws: Any, frame: Frame) -> dict[str, Any] | None:
    """Exactly one reply for ``frame``, and the connection lives on; the job it made, if any."""
    reply = await next_reply(ws)
    error = reply.get("error")
    label(f"WS {error.get('code') if isinstance(error, dict) else 'ok'}")
    job = check_ws_reply(frame, reply)
    # The connection lives on, and no second reply comes for the frame.
    probe = probe_id(frame.rid)
    await ws.send({"op": "whoami", "id": probe})
    answer = await next_reply(ws)
    assert answer.get("re") == probe, f"a second reply: {answer}"
    assert answer.get("ok") is True, answer
    return job


async def next_reply(ws: Any) -> dict[str, Any]:
    """The next frame that is a reply (events, of a subscription a random frame made, skipped)."""
    while True:
        frame: dict[str, Any] = await ws.receive(WITHIN)
        if "ev" not in frame:
            assert "re" in frame, frame
            return frame


def check_ws_reply(frame: Frame, reply: dict[str, Any]) -> dict[str, Any] | None:
    """Check one reply; return the job it carries, if any."""
    expected = frame.expected_re
    if expected is not None:
        assert reply["re"] in expected, f"re {reply['re']!r}, expected one of {expected}"
    assert reply.get("ok") in (True, False), reply
    if reply["ok"] is True:
        job = reply.get("job")
        if frame.case is not None:
            return check_job(job)
        return job if isinstance(job, dict) else None
    assert set(reply) == {"re", "ok", "error"}, reply
    error = check_error(reply["error"])
    assert error["code"] in CLIENT_CODES, error
    if frame.case is not None:
        assert error["code"] in ("invalid_spec", "invalid_request"), error
        top = frame.case.top
        # With a bad id the error may be about the id; with a good one it must name the field.
        if frame.clean and usable_id(frame.rid) and top is not None and nameable(top):
            assert error["code"] == "invalid_spec", error
            where = f"spec.{top}"
            assert field_under(error.get("field"), where), f"field not under {where!r}: {error}"
    return None


@settings(FUZZ, max_examples=150)
@given(frame=submit_frames)
def test_ws_submit_hostile_specs(live: Live, frame: Frame) -> None:
    with reported(frame=frame, size=frame.size):
        live.run(ws_example, live.base, live.key, frame)


@settings(FUZZ, max_examples=150)
@given(frame=other_frames)
def test_ws_hostile_frames(live: Live, frame: Frame) -> None:
    with reported(frame=frame, raw=frame.raw, size=frame.size):
        live.run(ws_example, live.base, live.key, frame)


async def ws_auth_example(base: str, key: str, binary: bool, value: Any) -> None:
    """An ``auth`` op with a hostile key on a fresh connection: one error reply; then the
    connection is either closed (4001) or still answers (``unauthorized``: not signed in)."""
    frame = Frame(binary, {"op": "auth", "id": 7, "key": value}, rid=7)
    with trio.fail_after(WITHIN):
        async with ws_connect(base, None, text=not binary) as ws:
            await ws.send_raw(frame.data)
            if frame.size > MAX_FRAME:
                code, reason = await ws.closed()
                assert code == CLOSE_TOO_BIG, (code, reason)
            else:
                reply = await next_reply(ws)
                assert reply["re"] in (frame.expected_re or ()), reply
                assert reply.get("ok") is False, reply
                assert set(reply) == {"re", "ok", "error"}, reply
                error = check_error(reply["error"])
                assert error["code"] in ("unauthorized", "invalid_request"), error
                answer: dict[str, Any] | None = None
                close_code: int | None = None
                try:
                    await ws.send({"op": "whoami", "id": 8})
                    answer = await next_reply(ws)
                except ConnectionClosed as closed:
                    close_code = closed.reason.code if closed.reason is not None else None
                if answer is None:
                    assert close_code == CLOSE_AUTH_FAILED, close_code
                else:
                    assert answer.get("re") == 8, f"a second reply: {answer}"
                    assert answer.get("ok") is False, answer
                    assert check_error(answer.get("error"))["code"] == "unauthorized", answer
    await still_works(base, key)


@settings(FUZZ, max_examples=40)
@given(
    binary=st.booleans(),
    value=st.one_of(hostile_texts, any_values, st.sampled_from(("", "\x00", "fml_\x00", "\ud800"))),
)
def test_ws_auth_hostile_keys(live: Live, binary: bool, value: Any) -> None:
    with reported(binary=binary, value=value):
        live.run(ws_auth_example, live.base, live.key, binary, value)


# ---- the known crashers -------------------------------------------------------------------


def _regression_frame(name: str, binary: bool) -> Frame:
    regression = REGRESSIONS[name]
    top = regression.field.split("[")[0].split(".")[0] if regression.field else None
    return submit_frame(binary, 41, Case(regression.spec, top))


def check_regression_error(name: str, error: dict[str, Any], prefix: str, clean: bool) -> None:
    regression = REGRESSIONS[name]
    if not regression.refused:
        return
    if not clean:
        assert error["code"] in ("invalid_spec", "invalid_request"), error
        return
    assert error["code"] == "invalid_spec", error
    if regression.field is not None:
        where = prefix + regression.field
        assert field_under(error.get("field"), where), f"field not under {where!r}: {error}"


async def http_regression(base: str, key: str, name: str) -> None:
    regression = REGRESSIONS[name]
    body = Body("ascii", Case(regression.spec, None))
    response = await request(base, "POST", "/api/v1/jobs", key=key, body=body.data)
    assert response.status < 500, f"{response.status}: {response.body[:2000]!r}"
    if response.status == 201:
        assert not regression.refused, f"accepted: {response.body[:2000]!r}"
        await cancel(base, key, check_job(response.json().get("job")))
    else:
        assert response.status == 400, f"{response.status}: {response.body[:2000]!r}"
        check_regression_error(name, check_error(response.error), "", body.clean)
    await still_works(base, key)


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_http(live: Live, name: str) -> None:
    live.run(http_regression, live.base, live.key, name)


async def ws_regression(base: str, key: str, name: str, binary: bool) -> None:
    regression = REGRESSIONS[name]
    frame = _regression_frame(name, binary)
    job: dict[str, Any] | None = None
    with trio.fail_after(WITHIN):
        async with ws_connect(base, key, auth_op=False, text=not binary) as ws:
            await ws.send_raw(frame.data)
            reply = await next_reply(ws)
            assert reply["re"] in (frame.expected_re or ()), reply
            if reply.get("ok") is True:
                assert not regression.refused, f"accepted: {reply}"
                job = check_job(reply.get("job"))
            else:
                assert set(reply) == {"re", "ok", "error"}, reply
                error = check_error(reply["error"])
                check_regression_error(name, error, "spec.", frame.clean)
            await ws.send({"op": "whoami", "id": 42})
            answer = await next_reply(ws)
            assert answer.get("re") == 42, f"a second reply: {answer}"
    if job is not None:
        await cancel(base, key, job)
    await still_works(base, key)


@pytest.mark.parametrize("name", list(REGRESSIONS))
@pytest.mark.parametrize("wire", ["msgpack", "json"])
def test_regression_ws(live: Live, name: str, wire: str) -> None:
    live.run(ws_regression, live.base, live.key, name, wire == "msgpack")


# Bodies that once got a 5xx, or that a parser may choke on: each must get a 4xx.
BODY_REGRESSIONS: dict[str, bytes] = {
    "a lone surrogate as raw UTF-8 in a shell command": to_json(
        {"command": "exit 0\n\ud800", "shell": True}, ascii_only=False
    ),
    "a lone surrogate as raw UTF-8 in argv": b'{"command": ["fz-\xed\xa0\x80"]}',
    "a lone surrogate as raw UTF-8 in a key": b'{"command": ["fz-a"], "\xed\xb2\x80": 1}',
    "a byte that is never UTF-8": b'{"command": ["fz-\xff"]}',
    "an overlong NUL": b'{"command": ["fz-a\xc0\x80b"]}',
    "a BOM": b'\xef\xbb\xbf{"command": ["fz-a"]}',
    "a NUL after the JSON": b'{"command": ["fz-a"]}\x00',
    "NaN cpus": b'{"command": ["fz-a"], "resources": {"cpus": NaN}}',
    "Infinity cpus": b'{"command": ["fz-a"], "resources": {"cpus": Infinity}}',
    "priority 1e400": b'{"command": ["fz-a"], "priority": 1e400}',
    "a 5000-digit dependency": b'{"command": ["fz-a"], "depends_on": [' + b"9" * 5000 + b"]}",
    "a list body 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "a map body 50000 deep": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "a spec list 50 deep around a lone surrogate, raw UTF-8": to_json(
        Deep("list", 50, "\ud800"), ascii_only=False
    ),
}


async def http_body_regression(base: str, key: str, data: bytes) -> None:
    response = await request(base, "POST", "/api/v1/jobs", key=key, body=data)
    assert response.status == 400, f"{response.status}: {response.body[:2000]!r}"
    assert check_error(response.error)["code"] in ("invalid_request", "invalid_spec")
    await still_works(base, key)


@pytest.mark.parametrize("name", list(BODY_REGRESSIONS))
def test_regression_http_bodies(live: Live, name: str) -> None:
    live.run(http_body_regression, live.base, live.key, BODY_REGRESSIONS[name])


# Frames that once broke a connection or the server, each answered once and the connection kept.
FRAME_REGRESSIONS: dict[str, Frame] = {
    "id 2**64 - 1 (msgpack)": Frame(True, {"op": "whoami", "id": 2**64 - 1}, rid=2**64 - 1),
    "id 2**70 (json)": Frame(False, {"op": "whoami", "id": 2**70}, rid=2**70),
    "id -1": Frame(True, {"op": "whoami", "id": -1}, rid=-1),
    "id nan": Frame(True, {"op": "whoami", "id": math.nan}, rid=math.nan),
    "job_id 2**64 - 1": Frame(True, {"op": "get", "id": 3, "job_id": 2**64 - 1}, rid=3),
    "before 2**63 (list)": Frame(True, {"op": "list", "id": 3, "before": 2**63}, rid=3),
    "since 2**64 - 1": Frame(True, {"op": "subscribe", "id": 3, "since": 2**64 - 1}, rid=3),
    "offset 2**63": Frame(
        True, {"op": "subscribe", "id": 3, "job_id": 1, "logs": True, "offset": 2**63}, rid=3
    ),
    "metrics of a job that does not exist": Frame(
        True, {"op": "subscribe", "id": 3, "job_id": 2**53, "metrics": True}, rid=3
    ),
    "metrics as a string (json)": Frame(
        False, {"op": "subscribe", "id": 3, "job_id": 1, "metrics": "true"}, rid=3
    ),
    "batch as a string (json)": Frame(False, {"op": "subscribe", "id": 3, "batch": "true"}, rid=3),
    "batch with logs of a job that does not exist": Frame(
        True, {"op": "subscribe", "id": 3, "job_id": 2**53, "logs": True, "batch": True}, rid=3
    ),
    "sub 2**64 - 1": Frame(True, {"op": "unsubscribe", "id": 3, "sub": 2**64 - 1}, rid=3),
    "user with NUL (list)": Frame(True, {"op": "list", "id": 3, "user": "a\x00b"}, rid=3),
    "user with a surrogate (list, json)": Frame(
        False, {"op": "list", "id": 3, "user": "a\ud800b"}, rid=3
    ),
    "op with a surrogate (json)": Frame(False, {"op": "\ud800", "id": 3}, rid=3),
    "unknown key with a surrogate (json)": Frame(
        False, {"op": "whoami", "id": 3, "\udc80": 1}, rid=3
    ),
    "an argument 2000 deep (msgpack)": Frame(
        True, {"op": "whoami", "id": 3, "x": Deep("list", 2000, 1)}, rid=3
    ),
    "an argument 2000 deep (json)": Frame(
        False, {"op": "whoami", "id": 3, "x": Deep("dict", 2000, 1)}, rid=3
    ),
    "a command 2000 deep (msgpack)": Frame(
        True, {"op": "submit", "id": 3, "spec": {"command": Deep("list", 2000, "x")}}, rid=3
    ),
    "a 200 KB op name (msgpack)": Frame(True, {"op": Long("o", 200_000), "id": 3}, rid=3),
    "nesting 100000 deep (msgpack)": Frame(True, raw=b"\x91" * 100_000 + b"\x01"),
    "nesting 100000 deep (json)": Frame(False, raw="[" * 100_000 + "]" * 100_000),
    "a list frame 2000 deep (json)": Frame(False, raw="[" * 2000 + "]" * 2000),
    # found by the properties
    "a bare lone surrogate (msgpack)": Frame(True, "\ud800"),
    "a 100000-surrogate string (msgpack)": Frame(True, Long("\ud800", 100_000)),
    "a lone surrogate in the op (msgpack)": Frame(True, {"op": "\ud800", "id": 3}, rid=3),
    "a spec list 50 deep around a lone surrogate (json)": submit_frame(
        False, 0, Case(Deep("list", 50, "\ud800"), None)
    ),
    "a spec list 50 deep around a lone surrogate (msgpack)": submit_frame(
        True, 5, Case(Deep("list", 50, "\ud800"), None)
    ),
    "a lone surrogate in a shell command, id null (msgpack)": submit_frame(
        True, None, Case({"command": "exit 0\n\ud800", "shell": True}, "command")
    ),
}


# ``auth`` ops with keys that once got an internal error or lost their id.
AUTH_REGRESSIONS: dict[str, tuple[bool, Any]] = {
    "a lone surrogate (msgpack)": (True, "\ud800"),
    "a lone surrogate (json)": (False, "\ud800"),
    "a NUL (msgpack)": (True, "fml_\x00"),
    "a 100 KB key (json)": (False, "k" * 100_000),
    "null (json)": (False, None),
    "a number (msgpack)": (True, 5),
    "over the frame limit (json)": (False, Long("a", MAX_FRAME + 1)),
}


@pytest.mark.parametrize("name", list(AUTH_REGRESSIONS))
def test_regression_auth(live: Live, name: str) -> None:
    binary, value = AUTH_REGRESSIONS[name]
    live.run(ws_auth_example, live.base, live.key, binary, value)


@pytest.mark.parametrize("name", list(FRAME_REGRESSIONS))
def test_regression_frames(live: Live, name: str) -> None:
    frame = FRAME_REGRESSIONS[name]
    live.run(ws_example, live.base, live.key, frame)


# ---- at the end: a restart on the same data dir -------------------------------------------


def test_restart_on_the_same_data_dir(live: Live) -> None:
    """After everything above: a normal job runs, the server stops cleanly, a new one on the
    same data dir comes up and runs a normal job too.  No example may have killed the server."""
    live.run(still_works, live.base, live.key)
    live.stop()
    live.start()
    live.run(still_works, live.base, live.key)
    assert not live.deaths, "the server died during the module:\n\n" + "\n\n".join(live.deaths)
