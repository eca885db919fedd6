"""A subscriber that stops reading is dropped with a reason; nobody else waits for it."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.gateway import (
    HIGH_LIMITS,
    RawWs,
    ServerThread,
    Users,
    make_server_config,
    serve,
    until_metric,
    ws_connect,
)

from fetchml.server import _main as _server

BUFFER = 200
BATCHES = 50
BATCH = 20  # a burst of state changes stays well under BUFFER for a subscriber that reads
PAD = "x" * 200  # bigger events fill the socket buffers sooner


async def test_slow_subscriber_is_closed_and_others_keep_going(
    tmp_path: Path, data_dir: Path
) -> None:
    users = Users()
    # 1000 submits at once, on purpose: over the default rate limit.
    config = make_server_config(tmp_path, users, subscriber_buffer=BUFFER, limits=HIGH_LIMITS)
    assert config.data_path == data_dir  # so the fixture cleans up after the jobs
    async with serve(config) as base:
        # A client that subscribes to everything, with a tiny receive buffer, and never reads.
        slow = await RawWs.connect(base, users.admin, rcvbuf=2048)
        async with slow:
            await slow.send({"op": "subscribe", "id": 1})
            fast_events: list[dict[str, Any]] = []
            ended: set[int] = set()

            async with (
                ws_connect(base, users.carol) as fast,
                ws_connect(base, users.bob) as other,
                trio.open_nursery() as nursery,
            ):
                await fast.ok("subscribe")

                async def read_fast() -> None:
                    while True:
                        event = await fast.event(within=30)
                        fast_events.append(event)
                        if event["job"]["state"] == "succeeded":
                            ended.add(event["job"]["id"])

                nursery.start_soon(read_fast)
                worst = 0.0
                submitted = []
                for _ in range(BATCHES):
                    started = time.monotonic()
                    ids = [other.next_id() for _ in range(BATCH)]
                    for rid in ids:
                        spec = {"command": ["true"], "name": PAD}
                        await other.send({"op": "submit", "id": rid, "spec": spec})
                    for rid in ids:
                        submitted.append((await other.reply(rid))["job"]["id"])
                    worst = max(worst, time.monotonic() - started)
                    # A request of another kind is prompt as well.
                    started = time.monotonic()
                    await other.ok("status")
                    worst = max(worst, time.monotonic() - started)
                with trio.fail_after(30):
                    while True:
                        if ended >= set(submitted):
                            break
                        await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
                assert worst < 5.0, f"a batch of {BATCH} submits took {worst:.2f} s"
            # The reading subscriber missed nothing and was not dropped.
            seqs = [event["seq"] for event in fast_events]
            assert seqs == sorted(set(seqs))
            # The one that did not read is closed with "too slow" and a reason, once it reads
            # what was already on its way.
            frames, code, reason = await slow.read_until_close(within=20)
            assert code == 4008
            assert reason is not None
            assert "too slow" in reason
            assert frames[0] == {"re": 1, "ok": True, "sub": 1, "since": 0}
            events = frames[1:]
            assert 0 < len(events) < 3 * BATCHES * BATCH
            seqs = [event["seq"] for event in events]
            assert seqs == sorted(set(seqs))
            await until_metric(base, "fetchml_websocket_connections", 0)


@pytest.mark.parametrize("cancel", [False, True], ids=["stop", "cancel"])
async def test_server_stops_although_a_client_stopped_reading(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any, cancel: bool
) -> None:
    """hypercorn's socket writes ignore cancellation: a peer that stopped reading once kept the
    server from ever stopping (neither on its stop event nor when cancelled)."""
    monkeypatch.setattr(_server, "GRACEFUL_TIMEOUT_S", 0.5)
    users = Users()
    thread = ServerThread(make_server_config(tmp_path, users, subscriber_buffer=100_000))
    with thread:
        async with await RawWs.connect(thread.base, users.admin, rcvbuf=2048) as stuck:
            await stuck.send({"op": "subscribe", "id": 1})
            async with ws_connect(thread.base, users.bob) as other:
                for _ in range(10):  # about 1 MB of events, far more than the socket buffers
                    ids = [other.next_id() for _ in range(30)]
                    for rid in ids:
                        spec = {"command": ["true"], "name": PAD}
                        await other.send({"op": "submit", "id": rid, "spec": spec})
                    for rid in ids:
                        await other.reply(rid)
            started = time.monotonic()
            await trio.to_thread.run_sync(functools.partial(thread.stop, cancel=cancel, within=15))
            elapsed = time.monotonic() - started
    assert elapsed < 8, elapsed  # without the fix: never
    if not cancel:
        assert "closed 1 connection(s) whose client stopped reading" in caplog.text
