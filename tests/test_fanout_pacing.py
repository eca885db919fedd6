"""Paced batching subscriptions: a subscription opened with ``batch`` sends at most about one
frame per tick of the server's pacer, everything that came meanwhile in it; others are not paced.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers.gateway import HIGH_LIMITS, Users, Ws, make_server_config, serve, ws_connect
from test_fanout_batch import _burst, _flatten, _settle

from fetchml.gateway import _pacing
from fetchml.gateway._pacing import FramePacer

TICK_S = 1.0  # long, so that a burst of events falls within a tick or two


async def test_waiters_share_one_tick_on_a_multiple_of_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = FramePacer(0.5)
    woke: list[float] = []

    async def waiter() -> None:
        await pacer.next_tick()
        woke.append(trio.current_time())

    with trio.fail_after(5):
        await trio.sleep(0.3)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter)
    tick = (start // 0.5 + 1) * 0.5
    assert woke == [tick] * 3


async def test_the_others_wake_when_the_one_sleeping_for_them_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = FramePacer(10.0)
    woke: list[float] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            leader = trio.CancelScope()

            async def lead() -> None:
                with leader:
                    await pacer.next_tick()

            async def follow() -> None:
                await pacer.next_tick()
                woke.append(trio.current_time())

            nursery.start_soon(lead)
            await trio.sleep(0.1)  # the leader sleeps for the tick now
            nursery.start_soon(follow)
            await trio.sleep(1.0)
            start = trio.current_time()
            leader.cancel()
    assert woke == [start]  # woken at once, long before the tick at 10 s
    # The next wait sleeps for a tick of its own.
    with trio.fail_after(20):
        await pacer.next_tick()
    assert trio.current_time() % 10.0 == pytest.approx(0.0, abs=1e-9)


def test_the_interval_must_be_positive() -> None:
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="interval_s"):
            FramePacer(bad)


async def _collect(ws: Ws, last_seq: int, within: float = 60.0) -> list[dict[str, object]]:
    frames: list[dict[str, object]] = []
    with trio.fail_after(within):
        while not any(e["seq"] == last_seq for e in _flatten(frames)):
            frames.append(await ws.event(within))
    return frames


async def test_a_batching_subscriber_gets_about_a_frame_per_tick(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events one after the other (each submit awaited) come to a batching subscriber in about
    a frame per tick, together exactly the events a subscriber without batch gets a frame each."""
    monkeypatch.setattr(_pacing, "FRAME_INTERVAL_S", TICK_S)
    users = Users()
    config = make_server_config(tmp_path, users, limits=HIGH_LIMITS)
    async with (
        serve(config) as base,
        ws_connect(base, users.admin) as batched,
        ws_connect(base, users.admin) as plain,
        ws_connect(base, users.bob) as submitter,
    ):
        since = (await batched.ok("subscribe", batch=True))["since"]
        assert (await plain.ok("subscribe"))["since"] == since
        started = time.monotonic()
        for _ in range(8):
            await _burst(submitter, 1)
        last = await _settle(submitter)
        paced = await _collect(batched, last)
        elapsed = time.monotonic() - started
        each = await _collect(plain, last)
    assert {frame["ev"] for frame in each} == {"job"}
    assert len(each) == last - since == 24  # queued, running, succeeded of 8 jobs
    assert _flatten(paced) == each
    # At most a frame per tick passed, and one at once at the start.
    assert len(paced) <= elapsed / TICK_S + 2, (len(paced), elapsed)
