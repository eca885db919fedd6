"""Benchmark: HTTP job submits over 20 keep-alive connections, against a bare QuartTrio route.

``POST /api/v1/jobs`` with a JSON job spec and ``Authorization: Bearer <key>``, 20 connections
each with one request in flight, for a fixed time; the figure is 201 responses per second.  The
baseline, in the same run and with the same client and request, is a bare QuartTrio route that
parses the JSON body and answers 201 with it.  The client is wrk (one thread, a Lua script for
the POST) when it is installed, else a lean Python client in this process; the baseline always
gets the same one.  Runs alternate between the two servers; medians of 3.

No job runs (as in bench_gateway_ws.py): the scheduler has one cpu, held by a ``sleep`` job, and
every bench job needs one cpu, so the server only stores (durably) and acknowledges.

Then, for the cost of auth per request once the key is cached: ``GET /health`` (no auth) against
``GET /api/v1/whoami`` (auth, then a small reply) on the same server; the difference in server CPU
per request bounds auth's end-to-end cost from above (bench_auth.py measures the auth actor alone).
A WebSocket authenticates once per connection, so its requests pay nothing for auth.

Goal (issue 3): >= 1,200 submits/s and >= 0.5 x the bare route; auth < 50 us per request.
Run: ``.venv/bin/python bench/bench_gateway_http.py [--client wrk|python]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import fmt_rate, line, median, percentile
from _gateway_common import (
    HOST,
    Server,
    bare_server,
    fetchml_server,
    http_run,
    session,
    start_holder,
    ws_call,
)

CONNECTIONS = 20
DURATION_S = 5
WARMUP_S = 2
REPEATS = 3
AUTH_DURATION_S = 3
AUTH_REPEATS = 2
GOAL_RATE = 1_200
GOAL_RATIO = 0.5
PATH = "/api/v1/jobs"
HOLDER = {"command": ["sleep", "600"], "resources": {"cpus": 1}}  # holds the only cpu
BARE_KEY = "not-checked"  # the baseline gets the same request, key included


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per response


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    key: str
    body: bytes | None = None

    def raw(self, port: int) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        head += f"Authorization: Bearer {self.key}\r\n"
        if self.body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return (head + "\r\n").encode() + (self.body or b"")

    def lua(self) -> str:
        script = f"wrk.method = {json.dumps(self.method)}\n"
        script += f'wrk.headers["Authorization"] = "Bearer {self.key}"\n'
        if self.body is not None:
            script += f"wrk.body = {json.dumps(self.body.decode())}\n"
            script += 'wrk.headers["Content-Type"] = "application/json"\n'
        return script


def run_wrk(folder: Path, port: int, request: Request, duration: int) -> tuple[int, Run]:
    script = folder / f"{request.method}-{port}-{request.path.replace('/', '_')}.lua"
    script.write_text(request.lua())
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*argv, f"http://{HOST}:{port}{request.path}"],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw failures:\n{out}")
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return count, Run(rate, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"), 0.0)


def _wrk_ms(out: str, pct: str) -> float:
    match = re.search(rf"^\s+{pct}\s+([\d.]+)(us|ms|s)\b", out, re.M)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_python(port: int, request: Request, duration: int) -> tuple[int, Run]:
    result = http_run(port, request.raw(port), connections=CONNECTIONS, duration=duration)
    if result.bad:
        raise RuntimeError(f"{result.bad} non-2xx responses, e.g. {result.bad_sample[:300]!r}")
    ms = [s * 1e3 for s in result.latencies]
    return result.count, Run(result.rate, median(ms), percentile(ms, 99), 0.0)


def main(folder: Callable[[str], Path], client: str) -> int:
    work = folder("client")
    bare_runs: list[Run] = []
    our_runs: list[Run] = []
    health_runs: list[Run] = []
    whoami_runs: list[Run] = []
    with (
        bare_server(folder("bare")) as bare,
        fetchml_server(folder("fetchml"), scheduler={"cpus": 1, "memory_mb": 0}) as (ours, keys, _),
    ):
        start_holder(ours.port, keys, HOLDER)
        spec = {"command": ["/bin/true"], "resources": {"cpus": 1}}
        body = json.dumps(spec, separators=(",", ":")).encode()

        def measure(server: Server, request: Request, duration: int) -> Run:
            cpu = server.cpu_seconds()
            if client == "wrk":
                count, run = run_wrk(work, server.port, request, duration)
            else:
                count, run = run_python(server.port, request, duration)
            run.cpu_us = (server.cpu_seconds() - cpu) / count * 1e6
            return run

        bare_submit = Request("POST", PATH, BARE_KEY, body)
        our_submit = Request("POST", PATH, keys.alice, body)
        health = Request("GET", "/health", keys.alice)
        whoami = Request("GET", "/api/v1/whoami", keys.alice)
        measure(bare, bare_submit, WARMUP_S)
        measure(ours, our_submit, WARMUP_S)
        for _ in range(REPEATS):
            bare_runs.append(measure(bare, bare_submit, DURATION_S))
            our_runs.append(measure(ours, our_submit, DURATION_S))
        for _ in range(AUTH_REPEATS):
            health_runs.append(measure(ours, health, AUTH_DURATION_S))
            whoami_runs.append(measure(ours, whoami, AUTH_DURATION_S))
        status = ws_call(ours.port, keys.admin, {"op": "status", "id": 2}).status
        assert status is not None
    bare_rate = median([r.rate for r in bare_runs])
    our_rate = median([r.rate for r in our_runs])
    ratio = our_rate / bare_rate
    report("baseline bare QuartTrio JSON POST route", "req/s", bare_runs)
    report("fetchml POST /api/v1/jobs, durable", "jobs/s", our_runs)
    line("job states after the runs", "", f"{status['counts']} (the running one is the holder)")
    rate_met = our_rate >= GOAL_RATE
    ratio_met = ratio >= GOAL_RATIO
    line("submit rate", f"{fmt_rate(our_rate)} /s", f"goal >= {GOAL_RATE:,}: {_verdict(rate_met)}")
    verdict = f"goal >= {GOAL_RATIO}: {_verdict(ratio_met)}"
    line("ratio submit / bare route", f"{ratio:.2f}", verdict)
    cpu_ratio = median([r.cpu_us for r in bare_runs]) / median([r.cpu_us for r in our_runs])
    line("ratio of server CPU per request, bare / submit", f"{cpu_ratio:.2f}", "(steadier)")
    print("auth in the request path (fetchml server, cached key):", flush=True)
    report("GET /health (no auth)", "req/s", health_runs)
    report("GET /api/v1/whoami (auth + a small reply)", "req/s", whoami_runs)
    extra = median([r.cpu_us for r in whoami_runs]) - median([r.cpu_us for r in health_runs])
    spread = max(r.cpu_us for r in health_runs) - min(r.cpu_us for r in health_runs)
    line(
        "server CPU per request, whoami - health",
        f"{extra:+.0f} us",
        f"auth + whoami's reply, an upper bound; run-to-run spread of health alone {spread:.0f} us",
    )
    return 0 if rate_met and ratio_met else 1


def report(label: str, unit: str, runs: list[Run]) -> None:
    rates = [r.rate for r in runs]
    line(label, f"{fmt_rate(median(rates))} {unit}", "runs: " + ", ".join(map(fmt_rate, rates)))
    line(
        "",
        "",
        f"latency p50 {median([r.p50_ms for r in runs]):.1f} ms, "
        f"p99 {median([r.p99_ms for r in runs]):.1f} ms (medians over runs); "
        f"server CPU {median([r.cpu_us for r in runs]):.0f} us/req",
    )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator (default: wrk if installed)",
    )
    args = parser.parse_args()
    with session(
        f"bench_gateway_http: POST {PATH}, {CONNECTIONS} keep-alive connections, "
        f"{DURATION_S:g} s runs, median of {REPEATS}, client {args.client}"
    ) as folder:
        sys.exit(main(folder, args.client))
