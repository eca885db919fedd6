"""Paced frames for batching subscriptions: one shared tick for every subscriber of a server.

A subscription opened with ``batch`` sends a frame, then waits for the next tick of the server's
:class:`FramePacer` before it sends another, with everything that came meanwhile in it.  So a
subscriber costs the server at most about one frame per tick however fast events come (frames per
second ~ subscribers x ticks per second, not subscribers x events per second), which leaves the
event loop time for the connections that submit; the price is that an event coming less than a
tick after the subscriber's last frame waits for the tick (:data:`FRAME_INTERVAL_S` at most).  An
event after a quiet spell goes out at once.
"""

from __future__ import annotations

import trio

__all__ = ["FRAME_INTERVAL_S", "FramePacer"]

# The tick of paced subscriptions: the most an event waits behind the subscriber's last frame.
# 0.1 s keeps 1,000 batching subscribers at ~10,000 frames/s at most, which one core sends while
# still serving submits (bench/bench_gateway_fanout.py), and well inside a 250 ms p99.
FRAME_INTERVAL_S = 0.1


class FramePacer:
    """Ticks every :attr:`interval_s` seconds of trio's clock, shared by the subscriptions of
    one server (one trio run).

    No task of its own: the first subscription to wait for a tick sleeps until it and wakes
    the others, so an idle server has no timer and a busy one has a single timer for all.
    """

    def __init__(self, interval_s: float | None = None) -> None:
        """Tick every ``interval_s`` seconds (:data:`FRAME_INTERVAL_S` by default, read now).
        Raises ValueError for an interval that is not positive."""
        if interval_s is None:
            interval_s = FRAME_INTERVAL_S
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self.interval_s = interval_s
        self._tick: trio.Event | None = None

    async def next_tick(self) -> None:
        """Wait for the next tick (a multiple of the interval on trio's clock).

        Waits on the clock, or on the subscription that sleeps for everyone; if that one is
        cancelled (unsubscribed, its connection closed) the others wake early, which costs one
        frame sent a little sooner.  Raises only cancellation.
        """
        tick = self._tick
        if tick is not None:
            await tick.wait()
            return
        tick = self._tick = trio.Event()
        try:
            interval = self.interval_s
            await trio.sleep_until((trio.current_time() // interval + 1) * interval)
        finally:
            self._tick = None
            tick.set()
