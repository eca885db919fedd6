"""The protocol client (``fetchml.client``) against a real in-process server."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import trio
import trio.testing
from test_client_support import KEYS, running_server, server_config

import fetchml
import fetchml.client
from fetchml import JobState
from fetchml.client import (
    Client,
    ConnectionLostError,
    JobUpdate,
    LogChunk,
    LogEnd,
    ServerUnreachableError,
    connect,
)
from fetchml.errors import (
    AuthError,
    ConflictError,
    InvalidSpecError,
    JobNotFoundError,
    PermissionDeniedError,
)
from fetchml.protocol import JobUpdate as JobEvent
from fetchml.protocol import Subscribed
from fetchml.server import run_server


def sh(script: str, **fields: object) -> dict[str, object]:
    return {"command": script, "shell": True, **fields}


async def test_submit_follow_wait_list_status(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_server(data_dir) as url, connect(url, KEYS["admin"]) as client:
            me = await client.whoami()
            assert (me.user, me.admin) == ("admin", True)
            job = await client.submit(sh("echo one; sleep 0.3; echo two; exit 3", name="t"))
            assert isinstance(job, fetchml.Job)
            assert job.state is JobState.QUEUED
            assert job.user == "admin"
            log = b""
            states = []
            async with client.subscribe(job.id, since=job.seq, logs=True) as events:
                async for event in events:
                    if isinstance(event, JobUpdate):
                        states.append(event.job.state)
                    elif isinstance(event, LogChunk):
                        assert event.offset == len(log)
                        log += event.data
                    else:
                        assert isinstance(event, LogEnd)
                        assert event.offset == len(log)
                        break
            assert log == b"one\ntwo\n"
            assert JobState.RUNNING in states
            done = await client.wait(job.id)
            assert (done.state, done.exit_code) == (JobState.FAILED, 3)
            assert await client.logs(job.id) == b"one\ntwo\n"
            assert await client.logs(job.id, offset=4) == b"two\n"
            listed = await client.list(limit=5)
            assert [j.id for j in listed] == [job.id]
            assert await client.list(state="succeeded") == []
            assert [j.id for j in await client.list(state=["failed", JobState.LOST])] == [job.id]
            report = await client.status()
            assert isinstance(report, fetchml.client.ServerStatus)
            assert report.cpus_total == 2
            assert report.last_seq >= done.seq


async def test_errors_map_to_fetchml_classes(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_server(data_dir) as url:
            async with connect(url, KEYS["admin"]) as admin:
                with pytest.raises(JobNotFoundError) as missing:
                    await admin.get(999)
                assert missing.value.job_id == 999
                with pytest.raises(InvalidSpecError) as bad:
                    await admin.submit({"command": ["x"], "priority": 11})
                assert bad.value.field == "priority"
                with pytest.raises(InvalidSpecError) as too_big:
                    await admin.submit({"command": ["x"], "resources": {"cpus": 64}})
                assert too_big.value.field == "resources.cpus"
                done = await admin.wait((await admin.submit({"command": ["true"]})).id)
                with pytest.raises(ConflictError):
                    await admin.cancel(done.id)
            async with connect(url, KEYS["carol"]) as analyst:
                with pytest.raises(PermissionDeniedError) as denied:
                    await analyst.submit({"command": ["true"]})
                assert denied.value.permission == "jobs:create"
                assert (await analyst.get(done.id)).id == done.id
            async with connect(url, KEYS["bob"]) as researcher:
                with pytest.raises(JobNotFoundError):
                    await researcher.get(done.id)
                assert await researcher.list() == []
                with pytest.raises(PermissionDeniedError) as other:
                    await researcher.list(user="admin")
                assert other.value.permission == "jobs:read:all"


async def test_bad_key_unreachable_and_wrong_url(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_server(data_dir) as url:
            with pytest.raises(AuthError, match="invalid API key"):
                async with connect(url, "fml_aaaaaaaaaaaa_not-a-real-key"):
                    pass
            with pytest.raises(AuthError, match="FETCHML_API_KEY"):
                async with connect(url, config_path=str(data_dir / "none.yaml")) as client:
                    await client.whoami()
            with pytest.raises(ServerUnreachableError, match="HTTP 404"):
                async with connect(url + "/elsewhere", KEYS["admin"]):
                    pass
            # a ws:// URL that already names the endpoint is used as is
            async with connect(url.replace("http", "ws") + "/ws", KEYS["admin"]) as client:
                assert (await client.whoami()).user == "admin"
        with pytest.raises(ServerUnreachableError) as unreachable:
            async with connect(url, KEYS["admin"]):
                pass
        assert url in unreachable.value.message
        assert unreachable.value.url == url


async def test_concurrent_requests_get_their_own_replies(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_server(data_dir) as url, connect(url, KEYS["admin"]) as client:
            ids = [
                (await client.submit({"command": ["true"], "name": f"j{n}"})).id for n in range(20)
            ]
            got: dict[int, str | None] = {}

            async def fetch(job_id: int) -> None:
                got[job_id] = (await client.get(job_id)).spec.name

            async with trio.open_nursery() as nursery:
                for job_id in ids * 3:
                    nursery.start_soon(fetch, job_id)
                nursery.start_soon(client.status)
            assert got == {job_id: f"j{n}" for n, job_id in enumerate(ids)}


async def test_subscribe_all_and_resume_since(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with running_server(data_dir) as url, connect(url, KEYS["admin"]) as client:
            seen: list[JobUpdate] = []
            async with client.subscribe() as events:
                start = events.last_seq
                first = await client.submit({"command": ["true"]})
                await client.wait(first.id)
                async for event in events:
                    assert isinstance(event, JobUpdate)
                    seen.append(event)
                    if event.job.terminal:
                        break
                resume_from = events.last_seq
            assert [e.job.state for e in seen] == ["queued", "running", "succeeded"]
            assert resume_from == seen[-1].seq
            second = await client.submit({"command": ["true"]})
            async with client.subscribe(since=start) as replay:
                replayed = []
                async for event in replay:
                    assert isinstance(event, JobUpdate)
                    replayed.append((event.job.id, event.seq))
                    if event.job.id == second.id:
                        break
            assert replayed[: len(seen)] == [(e.job.id, e.seq) for e in seen]


async def test_researcher_events_are_only_own(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with (
            running_server(data_dir) as url,
            connect(url, KEYS["bob"]) as bob,
            connect(url, KEYS["admin"]) as admin,
        ):
            async with bob.subscribe() as events:
                await admin.wait((await admin.submit({"command": ["true"]})).id)
                mine = await bob.submit({"command": ["true"]})
                async for event in events:
                    assert isinstance(event, JobUpdate)
                    assert event.job.user == "bob"
                    if event.job.terminal:
                        break
            assert (await bob.wait(mine.id)).state is JobState.SUCCEEDED


async def test_server_shutdown_ends_requests_and_subscriptions(data_dir: Path) -> None:
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            serve = partial(run_server, server_config(data_dir), stop=stop, handle_signals=False)
            binds = await nursery.start(serve)
            async with connect(binds[0], KEYS["admin"]) as client:
                async with client.subscribe() as events:
                    stop.set()
                    with pytest.raises(ConnectionLostError, match="shutting down"):
                        async for _ in events:
                            pass
                with pytest.raises(ConnectionLostError):
                    await client.whoami()


def _frame(payload: msgspec.Struct) -> bytes:
    """A frame as the server sends it."""
    return msgspec.msgpack.encode(payload)


class _FakeSocket:
    """Stands in for the WebSocket: records the requests sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    async def send_message(self, data: bytes) -> None:
        self.sent.append(msgspec.msgpack.decode(data))

    async def aclose(self) -> None:
        pass


async def test_events_that_overtake_the_subscribe_reply_are_kept() -> None:
    job = fetchml.Job(
        id=1, user="u", spec=fetchml.JobSpec(command=["x"]), state=JobState.QUEUED, created_at=0
    )
    socket = _FakeSocket()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            client = Client(cast(Any, socket), "http://x", nursery, key="k")
            events = client.subscribe()
            nursery.start_soon(events.start)
            await trio.testing.wait_all_tasks_blocked()
            (request,) = socket.sent
            assert request["op"] == "subscribe"
            # the server may send a subscription's first event before the reply naming it
            client._dispatch(_frame(JobEvent(seq=5, sub=1, job=job)))
            client._dispatch(_frame(Subscribed(re=cast(int, request["id"]), sub=1, since=4)))
            first = await events.__anext__()
            assert isinstance(first, JobUpdate)
            assert first.seq == events.last_seq == 5
            # events of a subscription already gone are dropped, not kept for later
            client._dispatch(_frame(JobEvent(seq=6, sub=0, job=job)))
            assert client._early == {}
            await client.aclose()
            with pytest.raises(StopAsyncIteration):
                await events.__anext__()
