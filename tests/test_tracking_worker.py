"""The ingest worker, a real child process: it stores a track file's lines, a request that
fails leaves it serving, garbage gets a reply, one worker per data dir at a time, and closing
it ends it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import psutil
import pytest
import trio

from fetchml.errors import InternalError
from fetchml.tracking import TrackingStore
from fetchml.tracking._ingest import _MAIN, IngestWorker
from fetchml.tracking._worker import Failed, Ingested, frame

NO_NARRATIVE: dict[str, str | None] = {"hypothesis": None, "intent": None, "expected_outcome": None}


def registered_run(data_dir: Path, job_id: int) -> Path:
    """A run in the tracking store of ``data_dir`` and its track file, holding 3 points."""
    track = data_dir / f"track-{job_id}.jsonl"
    track.write_text("".join(json.dumps({"metrics": {"x": i}}) + "\n" for i in range(3)))
    store = TrackingStore(data_dir, synchronous="normal")
    try:
        store.register(
            job_id, "bob", experiment=None, name=None, narrative=NO_NARRATIVE, track_file=str(track)
        )
    finally:
        store.close()
    return track


async def test_a_failed_request_leaves_the_worker_serving(tmp_path: Path) -> None:
    track = registered_run(tmp_path, 1)
    worker = IngestWorker(tmp_path, "normal")
    try:
        with trio.fail_after(30):
            more, points = await worker.ingest(1, str(track), watched=True, max_points=100)
            pid = worker.pid
            with pytest.raises(InternalError, match="IsADirectoryError"):
                await worker.ingest(1, str(tmp_path), watched=False, max_points=100)
            with track.open("a") as handle:
                handle.write(json.dumps({"metrics": {"x": 9}}) + "\n")
            again = await worker.ingest(1, str(track), watched=True, max_points=100)
            assert worker.pid == pid
            await worker.end(1)
    finally:
        await worker.aclose()
    store = TrackingStore(tmp_path, synchronous="normal")
    try:
        assert store.unfinished() == []  # the end is recorded
    finally:
        store.close()
    assert (more, [(n, s, v) for n, s, v, _ in points]) == (
        False,
        [("x", 0, 0.0), ("x", 1, 1.0), ("x", 2, 2.0)],
    )
    assert [(n, s, v) for n, s, v, _ in again[1]] == [("x", 3, 9.0)]
    assert pid is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_hung_worker_is_killed_at_the_deadline_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that does not answer (stopped here) is killed after REPLY_DEADLINE_S, so the
    tracker is not held up; the next request, on a new worker, stores the points once."""
    from fetchml.tracking import _ingest

    monkeypatch.setattr(_ingest, "REPLY_DEADLINE_S", 0.5)
    track = registered_run(tmp_path, 1)
    worker = IngestWorker(tmp_path, "normal")
    try:
        with trio.fail_after(30):
            await worker.start()
            hung = worker.pid
            assert hung is not None
            psutil.Process(hung).suspend()
            started = trio.current_time()
            with pytest.raises(InternalError, match=r"did not answer in 0\.5 s"):
                await worker.ingest(1, str(track), watched=True, max_points=100)
            assert trio.current_time() - started < 5
            _, points = await worker.ingest(1, str(track), watched=True, max_points=100)
            assert worker.pid not in (None, hung)
    finally:
        await worker.aclose()
    assert [(n, s) for n, s, _, _ in points] == [("x", 0), ("x", 1), ("x", 2)]
    assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE


async def test_garbage_gets_a_reply_and_the_input_ending_ends_it(tmp_path: Path) -> None:
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _MAIN, str(tmp_path), "normal"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        await proc.stdin.send_all(frame(b"\xc1 not msgpack"))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            data += await proc.stdout.receive_some()
        await proc.stdin.aclose()
        assert await proc.wait() == 0
        await proc.stdout.aclose()
    reply = msgspec.msgpack.decode(data[4:], type=Failed)
    assert "not a request" in reply.error


async def test_one_worker_per_data_dir_at_a_time(tmp_path: Path) -> None:
    track = registered_run(tmp_path, 1)
    first, second = IngestWorker(tmp_path, "normal"), IngestWorker(tmp_path, "normal")
    answered: list[tuple[bool, list[tuple[str, int, float, float]]]] = []
    try:
        with trio.fail_after(30):
            await first.ingest(1, str(track), watched=False, max_points=100)

            async def ask_second() -> None:
                answered.append(await second.ingest(1, str(track), watched=False, max_points=100))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_second)
                await trio.sleep(1.5)  # the second waits for the first's lock
                assert answered == []
                await first.aclose()
    finally:
        await first.aclose()
        await second.aclose()
    assert answered == [(False, [])]  # the first had read it all


def test_the_worker_reply_types_are_the_protocol() -> None:
    """A reply decodes only as the types the server expects (the tag names the kind)."""
    body = msgspec.msgpack.encode(Ingested(more=True, points=[("x", 1, 2.0, 3.0)]))
    assert msgspec.msgpack.decode(body, type=Ingested).points == [("x", 1, 2.0, 3.0)]
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(body, type=Failed)
