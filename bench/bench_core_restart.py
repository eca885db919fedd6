"""Benchmark 4: restart with 100,000 queued jobs: time until the scheduler accepts work, and RSS.

The store is filled through the public API: a scheduler with one cpu runs a ``sleep`` job that
holds it, and 20 concurrent submitters queue 100,000 jobs that need one cpu each, so they all stay
queued; then that scheduler stops (the ``sleep`` job keeps running, as jobs do across restarts).
Then, in a fresh Python process each time, the benchmark measures the time from process start to
"accepts work": ``open_scheduler`` entered (store opened, 100,000 jobs recovered, the running job
re-adopted) and one ``submit`` acknowledged (durably committed), and that process's peak RSS
(``VmHWM`` right then).  It also shows the time spent in the interpreter start and imports, and
in ``open_scheduler`` alone.

Goal (issue 2): < 3 s and < 300 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
from _common import (
    bench_dir,
    bench_session,
    fmt_rate,
    hold_the_only_cpu,
    line,
    median,
    submit_concurrently,
)

import fetchml

QUEUED = 100_000
SUBMITTERS = 20
REPEATS = 3
GOAL_S = 3.0
GOAL_MB = 300.0

# What runs in the fresh process.  Timings are relative to the process's own start time, read
# from /proc (so the interpreter's start-up counts), and reported as one JSON line.
CHILD = r"""
import os, sys, time
def since_start():
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")
def hwm_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
t_main = time.perf_counter()
import json, trio, fetchml
t_imported = time.perf_counter()
async def main():
    t0 = time.perf_counter()
    async with fetchml.open_scheduler(data_dir=sys.argv[1], cpus=1, gpus=[]) as s:
        t1 = time.perf_counter()
        job = await s.submit({"command": ["/bin/true"]}, user="bench")
        t2 = time.perf_counter()
        # Measured before the status call below, which is not part of "accepts work".
        ready, hwm = since_start(), hwm_kb()
        status = await s.status()
    print(json.dumps({
        "ready_s": ready, "imports_s": t_imported - t_main, "open_s": t1 - t0,
        "submit_s": t2 - t1, "hwm_kb": hwm, "job_id": job.id,
        "queued": status.counts.get("queued", 0), "running": status.counts.get("running", 0),
    }))
trio.run(main)
"""


async def fill(data_dir: Path, jobs: int) -> float:
    """Queue ``jobs`` jobs behind a running blocker; return the submit rate (jobs/s)."""
    spec = fetchml.JobSpec(command=["/bin/true"], resources=fetchml.Resources(cpus=1))
    async with fetchml.open_scheduler(data_dir=str(data_dir), cpus=1, gpus=[]) as scheduler:
        await hold_the_only_cpu(scheduler)
        return jobs / await submit_concurrently(scheduler, spec, jobs, SUBMITTERS)


def restart(data_dir: Path) -> dict[str, float]:
    """Start a fresh scheduler process on ``data_dir``; its figures (see CHILD)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the restarted scheduler failed:\n{result.stderr}")
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    with bench_dir("restart") as data_dir:
        rate = trio.run(fill, data_dir, QUEUED)
        size_mb = (data_dir / "fetchml.db").stat().st_size / 1e6
        wal = data_dir / "fetchml.db-wal"
        wal_mb = wal.stat().st_size / 1e6 if wal.exists() else 0.0
        line(
            f"filled through submit: {QUEUED:,} queued",
            f"{fmt_rate(rate)} jobs/s",
            f"store {size_mb:.0f} MB + WAL {wal_mb:.0f} MB",
        )
        runs = []
        for index in range(REPEATS):
            figures = restart(data_dir)
            expected = QUEUED + index + 1  # each restart leaves its own submit queued
            if figures["queued"] != expected or figures["running"] != 1:
                raise RuntimeError(f"recovered the wrong jobs: {figures}")
            runs.append(figures)
    ready = median([r["ready_s"] for r in runs])
    hwm_mb = max(r["hwm_kb"] for r in runs) / 1024
    line(
        "  of which interpreter start + imports",
        f"{median([r['ready_s'] - r['open_s'] - r['submit_s'] for r in runs]):.2f} s",
        f"(imports alone {median([r['imports_s'] for r in runs]):.2f} s)",
    )
    line("  of which open_scheduler (recovery)", f"{median([r['open_s'] for r in runs]):.2f} s")
    line("  of which the first submit", f"{median([r['submit_s'] * 1e3 for r in runs]):.1f} ms")
    met_time = ready < GOAL_S
    line(
        "process start -> accepts work",
        f"{ready:.2f} s",
        "runs: "
        + ", ".join(f"{r['ready_s']:.2f}" for r in runs)
        + f"; goal < {GOAL_S:g} s: {'met' if met_time else 'MISSED'}",
    )
    met_rss = hwm_mb < GOAL_MB
    line(
        "peak RSS (VmHWM) when accepting work",
        f"{hwm_mb:.0f} MiB",
        f"goal < {GOAL_MB:g} MB: {'met' if met_rss else 'MISSED'}",
    )
    return 0 if met_time and met_rss else 1


if __name__ == "__main__":
    with bench_session(
        f"bench_core_restart: {QUEUED:,} queued jobs + 1 running, fresh process, "
        f"median of {REPEATS}",
        runs_jobs=False,
    ):
        sys.exit(main())
