"""Benchmark: WebSocket submits with durable acknowledgements, against a bare WebSocket echo.

20 connections each send their share of 20,000 ``submit`` frames (msgpack), at most 50 unanswered
per connection; a run ends when every submit is acknowledged (the reply comes after the job is
committed with the store's default ``synchronous=full``).  The baseline, in the same run and with
the same client, frames and pipelining, is a bare QuartTrio WebSocket echo on hypercorn.

No job runs: the scheduler has one cpu, held by a ``sleep`` job submitted first, and every bench
job needs one cpu, so it stays queued (a dispatch pass gives up at the first job that does not
fit) and the server only stores and acknowledges.  No bench job has ``depends_on``: the gateway
looks each dependency up in the store, a cost of its own.

Each repeat runs on a fresh server and data dir, so every run stores the same 22,000 jobs (the
warm-up's included).  Besides rates, the server's CPU time per message is printed: rates move
with whatever else runs on the machine, CPU per message much less.

Goal (issue 3): >= 3,000 submits/s and >= 0.4 x the echo rate.
Run: ``.venv/bin/python bench/bench_gateway_ws.py``.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from _common import fmt_rate, line, median, percentile
from _gateway_common import (
    PipelineResult,
    Server,
    bare_server,
    client_frame,
    fetchml_server,
    pipelined_run,
    session,
    start_holder,
    ws_call,
)

JOBS = 20_000
CONNECTIONS = 20
WINDOW = 50
REPEATS = 3
WARMUP = 2_000
GOAL_RATE = 3_000
GOAL_RATIO = 0.4
HOLDER = {"command": ["sleep", "600"], "resources": {"cpus": 1}}  # holds the only cpu
BARE_KEY = "not-checked"  # the baseline gets the same upgrade request, key included


@dataclass
class Run:
    result: PipelineResult
    cpu_s: float  # server CPU seconds per request


def build_frames(jobs: int, first_id: int) -> list[list[tuple[int, bytes]]]:
    """Per connection, ``(id, frame)`` of its submits; ids are unique over the whole run."""
    spec = {"command": ["/bin/true"], "resources": {"cpus": 1}}
    frames: list[list[tuple[int, bytes]]] = [[] for _ in range(CONNECTIONS)]
    for index in range(jobs):
        rid = first_id + index
        payload = msgspec.msgpack.encode({"op": "submit", "id": rid, "spec": spec})
        frames[index % CONNECTIONS].append((rid, client_frame(payload)))
    return frames


def run(
    server: Server, key: str, jobs: int, first_id: int, ssl_context: ssl.SSLContext | None = None
) -> Run:
    frames = build_frames(jobs, first_id)
    cpu = server.cpu_seconds()
    result = pipelined_run(server.port, key, frames, window=WINDOW, ssl_context=ssl_context)
    cpu = server.cpu_seconds() - cpu
    if result.errors:
        raise RuntimeError(f"{result.errors} errors, e.g. {result.first_error}")
    return Run(result, cpu / result.count)


def submit_run(folder: Path) -> tuple[Run, dict[str, int]]:
    """A fresh server and data dir: a warm-up, then JOBS submits; (run, job states after)."""
    with fetchml_server(folder, scheduler={"cpus": 1, "memory_mb": 0}) as (server, keys, _):
        start_holder(server.port, keys, HOLDER)
        run(server, keys.alice, WARMUP, 1_000)
        result = run(server, keys.alice, JOBS, 1_000_000)
        status = ws_call(server.port, keys.admin, {"op": "status", "id": 2}).status
        assert status is not None
        return result, status["counts"]


def main(folder: Callable[[str], Path]) -> int:
    echo: list[Run] = []
    submits: list[Run] = []
    with bare_server(folder("bare")) as bare:
        run(bare, BARE_KEY, WARMUP, 1_000)
        for _ in range(REPEATS):
            echo.append(run(bare, BARE_KEY, JOBS, 1_000_000))
            result, counts = submit_run(folder("fetchml"))
            submits.append(result)
    echo_rate = median([r.result.rate for r in echo])
    our_rate = median([r.result.rate for r in submits])
    ratio = our_rate / echo_rate
    report("baseline bare QuartTrio WS echo", "msg/s", echo)
    report("fetchml WS submit, durable ack", "jobs/s", submits)
    line("job states after the last run", "", f"{counts} (the running one is the holder)")
    rate_met = our_rate >= GOAL_RATE
    ratio_met = ratio >= GOAL_RATIO
    line("submit rate", f"{fmt_rate(our_rate)} /s", f"goal >= {GOAL_RATE:,}: {_verdict(rate_met)}")
    line("ratio submit / echo", f"{ratio:.2f}", f"goal >= {GOAL_RATIO}: {_verdict(ratio_met)}")
    cpu_ratio = median([r.cpu_s for r in echo]) / median([r.cpu_s for r in submits])
    line("ratio of server CPU per message, echo / submit", f"{cpu_ratio:.2f}", "(steadier)")
    return 0 if rate_met and ratio_met else 1


def report(label: str, unit: str, runs: list[Run]) -> None:
    rates = [r.result.rate for r in runs]
    line(label, f"{fmt_rate(median(rates))} {unit}", "runs: " + ", ".join(map(fmt_rate, rates)))
    middle = sorted(runs, key=lambda r: r.result.rate)[len(runs) // 2].result
    ms = [r * 1e3 for r in middle.rtts]
    cpu_us = median([r.cpu_s for r in runs]) * 1e6
    line(
        "",
        "",
        f"rtt p50 {median(ms):.0f} ms, p99 {percentile(ms, 99):.0f} ms; "
        f"server CPU {cpu_us:.0f} us/msg",
    )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    with session(
        f"bench_gateway_ws: {JOBS:,} submits over {CONNECTIONS} WebSockets, {WINDOW} in flight "
        f"each, median of {REPEATS}"
    ) as folder:
        sys.exit(main(folder))
