"""Batched job events (``subscribe`` with ``batch``): the events waiting for a subscriber go out
together in ``jobs`` frames, which together carry exactly the events of ``job`` frames."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgpack
import msgspec
import pytest
import trio
import trio.testing
import wsproto.events as wsevents
from helpers.core import open_sched
from helpers.gateway import HIGH_LIMITS, RawWs, Users, Ws, make_server_config, serve, ws_connect
from test_client_support import KEYS, running_server

import fetchml
from fetchml import JobState
from fetchml.client import Client, JobUpdate, connect
from fetchml.client._frames import FrameDecoder
from fetchml.gateway import _ws
from fetchml.protocol import JSON, MAX_BATCH_EVENTS, MSGPACK, JobEntry, JobUpdates, Subscribed

PAD = "x" * 2000  # big events fill a paused subscriber's socket buffers after a few


@dataclass
class Server:
    base: str
    users: Users


@asynccontextmanager
async def _server(tmp_path: Path, data_dir: Path, **settings: Any) -> AsyncIterator[Server]:
    users = Users()
    # Bursts of submits at once, on purpose: over the default rate limit.
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS, **settings)
    assert config.data_path == data_dir  # so the fixture cleans up after the jobs
    async with serve(config) as base:
        yield Server(base, users)


async def _burst(ws: Ws, count: int, pad: str = "") -> list[int]:
    """Submit ``count`` jobs at once (pipelined), ``pad`` an argument of each; their ids once
    all are acknowledged."""
    ids = [ws.next_id() for _ in range(count)]
    for rid in ids:
        await ws.send({"op": "submit", "id": rid, "spec": {"command": ["true", pad]}})
    return [(await ws.reply(rid, within=30))["job"]["id"] for rid in ids]


async def _last_seq(ws: Ws) -> int:
    return cast(int, (await ws.ok("status"))["status"]["last_seq"])


async def _settle(ws: Ws, within: float = 60.0) -> int:
    """Wait until no job is queued or running; the newest seq then."""
    with trio.fail_after(within):
        while True:
            status = (await ws.ok("status"))["status"]
            counts = status["counts"]
            if not counts.get("queued") and not counts.get("running"):
                return cast(int, status["last_seq"])
            await trio.sleep(0.05)


def _flatten(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job events of ``frames``, each as the ``job`` frame it is without batching; checks
    that every frame has exactly the documented fields."""
    events = []
    for frame in frames:
        if frame["ev"] == "jobs":
            assert set(frame) == {"ev", "sub", "events"}, frame
            assert 1 <= len(frame["events"]) <= MAX_BATCH_EVENTS
            for entry in frame["events"]:
                assert set(entry) == {"seq", "job"}, entry
                events.append({"ev": "job", "sub": frame["sub"], **entry})
        else:
            assert frame["ev"] == "job", frame
            assert set(frame) == {"ev", "sub", "seq", "job"}, frame
            events.append(frame)
    return events


def _top_seq(frames: list[dict[str, Any]]) -> int:
    events = _flatten([frame for frame in frames if "ev" in frame])
    return cast(int, events[-1]["seq"]) if events else -1


def _batch_sizes(frames: list[dict[str, Any]]) -> list[int]:
    return [len(frame["events"]) for frame in frames if frame.get("ev") == "jobs"]


async def _read_events(ws: Ws, last_seq: int, within: float = 30.0) -> list[dict[str, Any]]:
    """Event frames until the one with (or carrying) ``last_seq``."""
    frames: list[dict[str, Any]] = []
    with trio.fail_after(within):
        while _top_seq(frames) < last_seq:
            frames.append(await ws.event(within))
    return frames


async def _read_raw(raw: RawWs, last_seq: int, within: float = 30.0) -> list[dict[str, Any]]:
    """Frames (the subscribe reply included) that a paused client reads until ``last_seq``."""
    frames: list[dict[str, Any]] = []
    partial = b""
    with trio.fail_after(within):
        while _top_seq(frames) < last_seq:
            data = await raw.stream.receive_some(65536)
            assert data, "EOF before the last event"
            raw.ws.receive_data(data)
            for event in raw.ws.events():
                assert not isinstance(event, wsevents.CloseConnection), event
                if isinstance(event, wsevents.BytesMessage):
                    partial += event.data
                    if event.message_finished:
                        frames.append(msgpack.unpackb(partial))
                        partial = b""
    return frames


# ---- the wire --------------------------------------------------------------------------------


async def test_replayed_batches_equal_job_frames_in_msgpack_and_json(
    tmp_path: Path, data_dir: Path
) -> None:
    """A replay has every event waiting at once: full batches, in either frame format."""
    async with _server(tmp_path, data_dir) as server:
        async with ws_connect(server.base, server.users.admin) as submitter:
            start = await _last_seq(submitter)
            await _burst(submitter, 200)  # 600 events: more than one batch holds
            last = await _settle(submitter)
        streams = {}
        for name, text, batch in (
            ("plain", False, None),
            ("off", False, False),
            ("msgpack", False, True),
            ("json", True, True),
        ):
            async with ws_connect(server.base, server.users.admin, text=text) as ws:
                args = {"since": start} if batch is None else {"since": start, "batch": batch}
                assert (await ws.ok("subscribe", **args))["since"] == start
                streams[name] = await _read_events(ws, last)
    # Without batch (or with batch false) one job frame per event, as ever.
    for name in ("plain", "off"):
        assert {frame["ev"] for frame in streams[name]} == {"job"}
    assert _flatten(streams["plain"]) == streams["plain"] == streams["off"]
    assert [event["seq"] for event in streams["plain"]] == list(range(start + 1, last + 1))
    for name in ("msgpack", "json"):
        sizes = _batch_sizes(streams[name])
        assert sizes[0] == MAX_BATCH_EVENTS, sizes
        assert sum(sizes) == last - start
        assert _flatten(streams[name]) == streams["plain"]


async def test_a_paused_subscriber_gets_batches_equal_to_job_frames(
    tmp_path: Path, data_dir: Path
) -> None:
    """Live events pile up while a subscriber does not read; once it reads, they come in
    batches that together are what a subscriber without batch reads."""
    async with _server(tmp_path, data_dir, subscriber_buffer=2000) as server:
        admin = server.users.admin
        async with (
            await RawWs.connect(server.base, admin, rcvbuf=2048) as batched,
            await RawWs.connect(server.base, admin, rcvbuf=2048) as plain,
            ws_connect(server.base, server.users.bob) as submitter,
        ):
            await batched.send({"op": "subscribe", "id": 1, "batch": True})
            await plain.send({"op": "subscribe", "id": 1})
            await _burst(submitter, 100, PAD)  # about 750 KB of events each: far past buffers
            last = await _settle(submitter)
            got = {"batched": await _read_raw(batched, last), "plain": await _read_raw(plain, last)}
    for frames in got.values():
        assert frames[0]["re"] == 1
        assert frames[0]["ok"] is True
    replies = {name: frames[0] for name, frames in got.items()}
    assert replies["batched"] == replies["plain"]
    plain_events = got["plain"][1:]
    assert {frame["ev"] for frame in plain_events} == {"job"}
    assert max(_batch_sizes(got["batched"][1:]), default=0) > 1
    assert _flatten(got["batched"][1:]) == _flatten(plain_events)
    seqs = [event["seq"] for event in plain_events]
    assert seqs == list(range(replies["plain"]["since"] + 1, last + 1))


async def test_resume_with_since_after_a_batch(tmp_path: Path, data_dir: Path) -> None:
    async with _server(tmp_path, data_dir) as server:
        admin = server.users.admin
        async with ws_connect(server.base, admin) as submitter:
            start = await _last_seq(submitter)
            await _burst(submitter, 10)
            first_last = await _settle(submitter)
            async with ws_connect(server.base, admin) as first:
                await first.ok("subscribe", since=start, batch=True)
                seen = await _read_events(first, first_last)
            assert _batch_sizes(seen) == [first_last - start]
            resume = _top_seq(seen)
            # Disconnected: more jobs are queued, run and end meanwhile.
            await _burst(submitter, 10)
            last = await _settle(submitter)
            async with ws_connect(server.base, admin) as second:
                assert (await second.ok("subscribe", since=resume, batch=True))["since"] == resume
                rest = await _read_events(second, last)
                # Nothing more comes: the last event was the last one.
                assert not [frame for frame in await second.barrier() if "ev" in frame]
    seqs = [event["seq"] for event in _flatten(seen + rest)]
    assert seqs == list(range(start + 1, last + 1))  # no gap, no repeat


async def test_big_batches_are_split_by_size(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ws, "BATCH_BYTES", 5000)
    async with (
        _server(tmp_path, data_dir) as server,
        ws_connect(server.base, server.users.admin) as ws,
    ):
        start = await _last_seq(ws)
        await _burst(ws, 10, PAD)
        last = await _settle(ws)
        await ws.ok("subscribe", since=start, batch=True)
        frames = await _read_events(ws, last)
    sizes = _batch_sizes(frames)
    assert sizes
    assert max(sizes) == 2  # an event is about 2.4 KB: two fit in 5000 bytes
    assert [event["seq"] for event in _flatten(frames)] == list(range(start + 1, last + 1))


async def test_a_batching_subscriber_that_stops_reading_is_dropped_with_a_reason(
    tmp_path: Path, data_dir: Path
) -> None:
    async with _server(tmp_path, data_dir, subscriber_buffer=100) as server:
        stuck = await RawWs.connect(server.base, server.users.admin, rcvbuf=2048)
        async with stuck, ws_connect(server.base, server.users.bob) as submitter:
            await stuck.send({"op": "subscribe", "id": 1, "batch": True})
            await _burst(submitter, 100, PAD)  # 300 events: past the buffer of 100
            await _settle(submitter)
            frames, code, reason = await stuck.read_until_close(within=30)
            await submitter.ok("whoami")  # the others go on
    assert code == 4008
    assert reason is not None
    assert "too slow" in reason
    assert "since=" in reason
    seqs = [event["seq"] for event in _flatten(frames[1:])]
    assert seqs
    assert seqs == sorted(set(seqs))


async def test_bad_batch_values_are_refused_with_the_field(tmp_path: Path, data_dir: Path) -> None:
    async with _server(tmp_path, data_dir) as server:
        for text in (False, True):
            async with ws_connect(server.base, server.users.admin, text=text) as ws:
                for value in ("true", 1, None, [True]):
                    reply = await ws.call("subscribe", batch=value)
                    assert reply["ok"] is False, reply
                    assert reply["error"]["code"] == "invalid_request"
                    assert reply["error"]["field"] == "batch"
                await ws.ok("whoami")


# ---- the encoding of entries -----------------------------------------------------------------


def _event(seq: int) -> fetchml.JobEvent:
    spec = fetchml.JobSpec(command=["true"])
    job = fetchml.Job(id=seq, user="u", spec=spec, state=JobState.QUEUED, seq=seq, created_at=1)
    return fetchml.JobEvent(seq=seq, ts=1.0, job=job)


def test_an_event_is_encoded_once_per_frame_format() -> None:
    entries = _ws.EventEntries(size=8)
    event = _event(3)
    packed = entries.entry(MSGPACK, event)
    assert entries.entry(MSGPACK, event) is packed  # kept: not encoded again
    assert msgspec.msgpack.decode(packed, type=JobEntry) == JobEntry(seq=3, job=event.job)
    text = entries.entry(JSON, event)
    assert entries.entry(JSON, event) is text
    assert msgspec.json.decode(text, type=JobEntry) == JobEntry(seq=3, job=event.job)
    # An equal event read from the store is another object: encoded for itself, the same bytes.
    again = _event(3)
    assert bytes(entries.entry(MSGPACK, again)) == bytes(packed)
    # The ring is bounded: a later event in the same slot takes it.
    entries.entry(MSGPACK, _event(11))
    assert entries.entry(MSGPACK, again) is not packed


# ---- the embedding API -----------------------------------------------------------------------


async def test_take_waiting_returns_what_is_already_there(data_dir: Path) -> None:
    with trio.fail_after(20):
        async with open_sched(data_dir) as scheduler, scheduler.subscribe(since=0) as events:
            assert events.take_waiting(10) == []  # the replay has not started: no wait
            jobs = [await scheduler.submit({"command": ["true"]}, user="alice") for _ in range(4)]
            for job in jobs:
                await scheduler.wait(job.id)
            last = (await scheduler.status()).last_seq
            first = await events.__anext__()
            some = events.take_waiting(3)
            rest = events.take_waiting(100)
            assert len(some) == 3
            assert events.take_waiting(100) == []
            seqs = [e.seq for e in (first, *some, *rest)]
            assert seqs == list(range(1, last + 1))
            assert events.last_seq == last
            # Later events are taken the same way (read from the store, or live once attached).
            await scheduler.wait((await scheduler.submit({"command": ["true"]}, user="alice")).id)
            live = [await events.__anext__()]
            with trio.fail_after(5):
                while len(live) < 3:
                    live += events.take_waiting(100) or [await events.__anext__()]
            assert [e.seq for e in live] == [last + 1, last + 2, last + 3]


# ---- fetchml.client --------------------------------------------------------------------------


async def test_client_unpacks_batches_into_one_update_per_event(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    events_of = FrameDecoder.events

    def counting(self: FrameDecoder, data: bytes | str) -> tuple[int, list[fetchml.client.Event]]:
        if msgpack.unpackb(data).get("ev") == "jobs":
            batches.append(len(msgpack.unpackb(data)["events"]))
        return events_of(self, data)

    monkeypatch.setattr(FrameDecoder, "events", counting)
    with trio.fail_after(30):
        async with running_server(data_dir) as url, connect(url, KEYS["admin"]) as client:
            start = (await client.status()).last_seq
            jobs = [await client.submit({"command": ["true"]}) for _ in range(5)]
            for job in jobs:
                await client.wait(job.id)
            last = (await client.status()).last_seq
            seen: list[JobUpdate] = []
            async with client.subscribe(since=start) as events:
                async for event in events:
                    assert isinstance(event, JobUpdate)
                    assert events.last_seq == event.seq
                    seen.append(event)
                    if event.seq >= last:
                        break
    assert batches
    assert batches[0] == last - start
    assert [e.seq for e in seen] == list(range(start + 1, last + 1))
    assert {e.job.id for e in seen} == {job.id for job in jobs}


def _frame(payload: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(payload)


class _FakeSocket:
    """Stands in for the WebSocket: records the requests sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    async def send_message(self, data: bytes) -> None:
        self.sent.append(msgspec.msgpack.decode(data))

    async def aclose(self) -> None:
        pass


async def test_client_asks_for_batches_and_keeps_last_seq_per_event() -> None:
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
            assert request["batch"] is True
            # A batch that overtakes the reply is kept as well, one event each.
            early = JobUpdates(sub=1, events=[JobEntry(seq=5, job=job), JobEntry(seq=6, job=job)])
            client._dispatch(_frame(early))
            client._dispatch(_frame(Subscribed(re=cast(int, request["id"]), sub=1, since=4)))
            later = JobUpdates(sub=1, events=[JobEntry(seq=s, job=job) for s in (7, 8, 9)])
            client._dispatch(_frame(later))
            seqs = []
            for _ in range(5):
                event = await events.__anext__()
                assert isinstance(event, JobUpdate)
                assert event.sub == 1
                assert events.last_seq == event.seq
                seqs.append(event.seq)
            assert seqs == [5, 6, 7, 8, 9]
            await client.aclose()
