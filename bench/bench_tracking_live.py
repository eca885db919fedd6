"""Benchmark of live metrics: from ``track.log`` in a job to a WebSocket subscriber, at
10,000 points/s, next to the job's log lines over the same connection as the baseline.

Run: ``python bench/bench_tracking_live.py [--quick]`` (``--quick``: 5 s instead of 20 s).
One ``fetchml serve`` subprocess (its default tracking settings: a track file is read every
0.25 s, every 0.05 s while someone watches its job live) runs one job that, once the bench has
subscribed, logs 10 metrics per step at 1,000 steps/s with ``fetchml.track`` (which buffers up
to 0.1 s in the job) and prints one line with the wall clock every
10 ms.  The bench (``fetchml.client``, one connection, ``subscribe(job, logs=True,
metrics=True)``) takes, for each point, *the time it is received* minus *the time the job logged
it* (the point's own ``time``: both clocks are this machine's), and the same for each log line
(the baseline: a job's output pushed live, the path users already know).  Medians and p99 of
both, the points/s delivered, and the events per second (several points per event).

Goal: metric p99 under 500 ms at 10,000 points/s.  Exits 1 if it is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio
from _common import line, median, percentile
from _gateway_common import HOST, fetchml_server, session

import fetchml.client

RATE = 10_000  # points/s
METRICS = 10
GOAL_P99_S = 0.5

JOB = """
import os, sys, time
from fetchml import track
go, seconds = sys.argv[1], float(sys.argv[2])
while not os.path.exists(go):
    time.sleep(0.005)
steps_per_s = RATE // METRICS
start = time.time()
step = 0
next_print = start
while True:
    now = time.time()
    if now - start >= seconds:
        break
    due = int((now - start) * steps_per_s)
    while step < due:
        track.log({f"m{k}": step * 0.001 + k for k in range(METRICS)}, step=step)
        step += 1
    if now >= next_print:
        print(f"T {time.time():.6f}", flush=True)
        next_print += 0.01
    time.sleep(0.001)
track.flush()
""".replace("RATE", str(RATE)).replace("METRICS", str(METRICS))


async def measure(
    url: str, key: str, go: Path, seconds: float
) -> tuple[list[float], list[float], int, int]:
    """Queue the job, subscribe, let it go; (point latencies, log-line latencies, points
    stored, metric events)."""
    points: list[float] = []
    lines: list[float] = []
    events = 0
    pending = b""
    async with fetchml.client.connect(url, key) as client:
        spec = {"command": [sys.executable, "-c", JOB, str(go), str(seconds)], "name": "live"}
        job = await client.submit(spec)
        async with client.subscribe(job.id, logs=True, metrics=True) as stream:
            await trio.Path(go).touch()
            async for event in stream:
                now = time.time()
                if isinstance(event, fetchml.client.MetricPoints):
                    events += 1
                    # The server's own system samples (sys/...) are delivered too, but are not
                    # counted in the run's stored points: only the job's points are compared.
                    points.extend(
                        now - p.time for p in event.points if not p.name.startswith("sys/")
                    )
                elif isinstance(event, fetchml.client.LogChunk):
                    pending += event.data
                    *whole, pending = pending.split(b"\n")
                    lines.extend(now - float(w.split()[1]) for w in whole if w.startswith(b"T "))
                elif isinstance(event, fetchml.client.JobUpdate) and event.job.terminal:
                    break  # reported once every point is stored and handed out
        stored = (await client.metrics(job.id)).points
    return points, lines, stored, events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s of logging instead of 20 s")
    seconds = 5.0 if parser.parse_args().quick else 20.0
    with session("live metrics: track.log in a job -> WebSocket subscriber") as folder:
        place = folder("live")
        with fetchml_server(place, scheduler={"cpus": 2}) as (server, keys, _):
            url = f"http://{HOST}:{server.port}"
            got = trio.run(measure, url, keys.alice, place / "go", seconds)
    latencies, log_latencies, stored, events = got
    count = len(latencies)
    if not latencies or not log_latencies:
        print("  no points or no log lines arrived")
        return 1
    line("points delivered live", f"{count:,}", f"of {stored:,} stored, in {seconds:.0f} s")
    line("metric events", f"{events / seconds:,.1f}/s", f"{count / max(events, 1):,.0f} pts each")
    line(
        "point latency",
        f"p50 {median(latencies) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms",
        f"goal p99 < {GOAL_P99_S * 1000:.0f} ms",
    )
    line(
        "baseline: log line latency",
        f"p50 {median(log_latencies) * 1000:.0f} ms, "
        f"p99 {percentile(log_latencies, 99) * 1000:.0f} ms",
        "same job, same connection",
    )
    met = percentile(latencies, 99) < GOAL_P99_S and count == stored
    print("  goal met" if met else "  GOAL MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
