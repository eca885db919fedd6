"""Benchmark (issue 15, part 1): a loop of single submits, and what one submit costs.

Throughput: a trio program submits 1,000 ``/bin/true`` jobs one after the other
(``for ...: await scheduler.submit(...)``, scheduler configured with cpus=8, each job cpus=1)
and then waits until every one has succeeded; the figure is jobs/s from the first submit to the
last success.  The baseline, measured just before each run, is ``trio.run_process(["/bin/true"])``
with 8 at once.  A second baseline, also measured each run, is the floor this process model
allows: the same ``/bin/sh`` supervisor every job runs under (its pid and exit files included),
started with ``trio.run_process`` 8 at once, with no scheduler, store or records.  Unlike
``bench_core_throughput`` (20 concurrent submitters, whose submits share
commits), every submit here waits for a commit of its own while earlier jobs start and end.

Latency of one submit, each against a bare round trip on the same transport, in the same run:

- embedding API: ``scheduler.submit`` vs a request/reply over trio memory channels to an echo task
  (what ``scheduler.submit`` does, minus the scheduler);
- one WebSocket (msgpack ``submit`` frames, one at a time) vs a bare QuartTrio WebSocket echo;
- HTTP keep-alive (``POST /api/v1/jobs``, one at a time on one connection) vs a bare QuartTrio
  JSON POST route.

The latency submits are acknowledged after a durable commit but start nothing: the scheduler has
one cpu, held by a ``sleep`` job, so they queue (as in ``bench_gateway_ws``).  The submit latency
inside the throughput loop (jobs starting and ending meanwhile) is printed too.

Goal (issue 15): sequential rate >= 0.4 x raw rate.
Run: ``.venv/bin/python bench/bench_core_sequential.py``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import trio
from _common import (
    USER,
    bench_dir,
    bench_session,
    fmt_rate,
    hold_the_only_cpu,
    line,
    median,
    percentile,
)
from _gateway_common import (
    HOST,
    bare_server,
    client_frame,
    fetchml_server,
    pipelined_run,
    start_holder,
)
from bench_core_throughput import raw_rate

import fetchml
from fetchml.actors.backends._local import _SUPERVISOR

JOBS = 1_000
CONCURRENCY = 8
REPEATS = 3
GOAL_RATIO = 0.4
LATENCY_SUBMITS = 1_000  # per repeat and transport
HTTP_SUBMITS = 900  # per repeat, on a fresh connection: hypercorn's limit is 1,000 on one
SPEC = {"command": ["/bin/true"], "resources": {"cpus": 1}}
HOLDER = {"command": ["sleep", "600"], "resources": {"cpus": 1}}  # holds the only cpu
BARE_KEY = "not-checked"  # the baselines get the same requests, key included


async def sequential_rate(jobs: int) -> tuple[float, list[float]]:
    """Jobs/s from the first of ``jobs`` sequential submits until all have succeeded, and each
    submit's latency (s)."""
    spec = fetchml.JobSpec(command=["/bin/true"], resources=fetchml.Resources(cpus=1))
    latencies: list[float] = []
    with bench_dir("sequential") as data_dir:
        async with fetchml.open_scheduler(
            data_dir=str(data_dir), cpus=CONCURRENCY, gpus=[], kill_grace_s=1.0
        ) as scheduler:
            since = (await scheduler.status()).last_seq
            ended: dict[int, fetchml.Job] = {}
            async with scheduler.subscribe(since=since, buffer=jobs * 4) as events:
                start = time.perf_counter()
                for _ in range(jobs):
                    sent = time.perf_counter()
                    await scheduler.submit(spec, user=USER)
                    latencies.append(time.perf_counter() - sent)
                async for event in events:
                    if event.job.terminal:
                        ended[event.job.id] = event.job
                        if len(ended) == jobs:
                            break
                elapsed = time.perf_counter() - start
    bad = [job for job in ended.values() if job.state is not fetchml.JobState.SUCCEEDED]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}")
    return jobs / elapsed, latencies


async def supervised_rate(jobs: int, concurrency: int) -> float:
    """Processes/s of ``/bin/true`` under the local backend's supervisor, ``concurrency`` at
    once: each writes its pid and exit files, as every job's does."""

    async def worker(folder: Path, count: int) -> None:
        for attempt in range(count):
            argv = ["/bin/sh", "-c", _SUPERVISOR, "fetchml-job", str(folder), str(attempt)]
            await trio.run_process([*argv, str(folder), "/bin/true"])

    with bench_dir("supervised") as data_dir:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(concurrency):
                folder = data_dir / str(index)
                folder.mkdir()
                count = jobs // concurrency + (index < jobs % concurrency)
                nursery.start_soon(worker, folder, count)
        return jobs / (time.perf_counter() - start)


async def embedded_latencies(count: int) -> list[float]:
    """Latency (s) of ``count`` submits through the embedding API that only queue."""
    latencies = []
    with bench_dir("latency") as data_dir:
        async with fetchml.open_scheduler(
            data_dir=str(data_dir), cpus=1, gpus=[], kill_grace_s=1.0
        ) as scheduler:
            await hold_the_only_cpu(scheduler)
            spec = fetchml.JobSpec(command=["/bin/true"], resources=fetchml.Resources(cpus=1))
            for _ in range(count):
                sent = time.perf_counter()
                await scheduler.submit(spec, user=USER)
                latencies.append(time.perf_counter() - sent)
    return latencies


async def channel_latencies(count: int) -> list[float]:
    """Latency (s) of ``count`` request/reply round trips to an echo task over memory channels,
    a fresh reply channel each, as ``scheduler.submit`` makes them."""
    inbox_send, inbox_recv = trio.open_memory_channel[
        tuple[object, trio.MemorySendChannel[object]]
    ](1024)

    async def echo() -> None:
        async for message, reply in inbox_recv:
            with reply:
                reply.send_nowait(message)

    latencies = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        for _ in range(count):
            sent = time.perf_counter()
            reply_send, reply_recv = trio.open_memory_channel[object](1)
            with reply_recv:
                await inbox_send.send((SPEC, reply_send))
                await reply_recv.receive()
            latencies.append(time.perf_counter() - sent)
        nursery.cancel_scope.cancel()
    return latencies


def ws_latencies(port: int, key: str, count: int, first_id: int) -> list[float]:
    """Round trips (s) of ``count`` submit frames sent one at a time on one WebSocket."""
    frames = []
    for rid in range(first_id, first_id + count):
        payload = msgspec.msgpack.encode({"op": "submit", "id": rid, "spec": SPEC})
        frames.append((rid, client_frame(payload)))
    result = pipelined_run(port, key, [frames], window=1)
    return list(result.rtts)


def http_latencies(port: int, key: str, count: int) -> list[float]:
    """Latencies (s) of ``count`` ``POST /api/v1/jobs`` sent one at a time on one keep-alive
    connection (hypercorn serves at most 1,000 requests on one)."""
    body = json.dumps(SPEC, separators=(",", ":")).encode()
    request = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies = []
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        for _ in range(count):
            sent = time.perf_counter()
            sock.sendall(request)
            while (head_end := buf.find(b"\r\n\r\n")) < 0 or len(buf) < head_end + 4 + (
                size := _content_length(bytes(buf[:head_end]))
            ):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("the server closed the keep-alive connection")
                buf += chunk
            latencies.append(time.perf_counter() - sent)
            if not buf.startswith(b"HTTP/1.1 2"):
                raise RuntimeError(f"bad response: {bytes(buf[:300])!r}")
            del buf[: head_end + 4 + size]
    return latencies


def _content_length(head: bytes) -> int:
    marker = head.lower().find(b"content-length:")
    return int(head[marker + 15 : head.find(b"\r\n", marker)]) if marker >= 0 else 0


def gateway_latencies(folder: Path) -> dict[str, list[float]]:
    """Pooled latencies over REPEATS of: bare WS echo, WS submit, bare HTTP POST, HTTP submit."""
    found: dict[str, list[float]] = {"ws bare": [], "ws": [], "http bare": [], "http": []}
    for name in ("bare", "fetchml"):
        (folder / name).mkdir()
    with (
        bare_server(folder / "bare") as bare,
        fetchml_server(folder / "fetchml", scheduler={"cpus": 1, "memory_mb": 0}) as (
            ours,
            keys,
            _,
        ),
    ):
        start_holder(ours.port, keys, HOLDER)
        ws_latencies(bare.port, BARE_KEY, 200, 10)  # warm-ups
        ws_latencies(ours.port, keys.alice, 200, 10)
        for repeat in range(REPEATS):
            first = 1_000 + repeat * LATENCY_SUBMITS
            found["ws bare"] += ws_latencies(bare.port, BARE_KEY, LATENCY_SUBMITS, first)
            found["ws"] += ws_latencies(ours.port, keys.alice, LATENCY_SUBMITS, first)
            found["http bare"] += http_latencies(bare.port, BARE_KEY, HTTP_SUBMITS)
            found["http"] += http_latencies(ours.port, keys.alice, HTTP_SUBMITS)
    return found


def latency_line(label: str, ours: Sequence[float], bare: Sequence[float]) -> None:
    ms = [s * 1e3 for s in ours]
    bare_ms = [s * 1e3 for s in bare]
    line(
        label,
        f"{percentile(ms, 50):.2f} / {percentile(ms, 99):.2f} ms",
        f"bare {percentile(bare_ms, 50):.2f} / {percentile(bare_ms, 99):.2f} ms (p50 / p99)",
    )


def cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its reaped children (the jobs)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


async def main() -> int:
    raw: list[float] = []
    floor: list[float] = []
    ours: list[float] = []
    raw_cpu: list[float] = []  # CPU seconds per process / per job: steadier than rates
    our_cpu: list[float] = []
    loop_latencies: list[float] = []
    await raw_rate(200, CONCURRENCY)  # warm-up: page cache, trio's process machinery
    for _ in range(REPEATS):
        cpu = cpu_seconds()
        raw.append(await raw_rate(JOBS, CONCURRENCY))
        raw_cpu.append((cpu_seconds() - cpu) / JOBS)
        floor.append(await supervised_rate(JOBS, CONCURRENCY))
        cpu = cpu_seconds()
        rate, latencies = await sequential_rate(JOBS)
        our_cpu.append((cpu_seconds() - cpu) / JOBS)
        ours.append(rate)
        loop_latencies += latencies
    embedded: list[float] = []
    channel: list[float] = []
    for _ in range(REPEATS):
        channel += await channel_latencies(LATENCY_SUBMITS)
        embedded += await embedded_latencies(LATENCY_SUBMITS)
    with bench_dir("gateway") as folder:
        gateway = await trio.to_thread.run_sync(gateway_latencies, folder)
    ratio = median([o / r for o, r in zip(ours, raw, strict=True)])
    line(
        "baseline trio.run_process(/bin/true), 8 at once",
        f"{fmt_rate(median(raw))} proc/s",
        "runs: " + ", ".join(fmt_rate(r) for r in raw),
    )
    line(
        "floor: the job supervisor alone, 8 at once",
        f"{fmt_rate(median(floor))} proc/s",
        f"{median([f / r for f, r in zip(floor, raw, strict=True)]):.2f} of the baseline; runs: "
        + ", ".join(fmt_rate(f) for f in floor),
    )
    line(
        "sequential submits, end to end",
        f"{fmt_rate(median(ours))} jobs/s",
        "runs: " + ", ".join(fmt_rate(r) for r in ours),
    )
    latency_line("  one submit in that loop (jobs running)", loop_latencies, channel)
    line(
        "  CPU per job, jobs included (steadier)",
        f"{median(our_cpu) * 1e3:.2f} ms",
        f"raw {median(raw_cpu) * 1e3:.2f} ms per process; machine: {os.cpu_count()} cpus",
    )
    print("  single-submit latency, job queued (p50 / p99), against a bare round trip:")
    latency_line("  embedding API scheduler.submit", embedded, channel)
    latency_line("  one WebSocket, submit frame", gateway["ws"], gateway["ws bare"])
    latency_line("  HTTP keep-alive, POST /api/v1/jobs", gateway["http"], gateway["http bare"])
    met = ratio >= GOAL_RATIO
    verdict = "met" if met else "MISSED"
    line(
        "ratio sequential / baseline (median of pairs)",
        f"{ratio:.2f}",
        f"goal >= {GOAL_RATIO}: {verdict}",
    )
    return 0 if met else 1


if __name__ == "__main__":
    with bench_session(
        f"bench_core_sequential: {JOBS:,} x /bin/true submitted one at a time, "
        f"{CONCURRENCY} at once, median of {REPEATS}; latency of one submit per transport"
    ):
        sys.exit(trio.run(main))
