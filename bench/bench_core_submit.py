"""Benchmark 2: durable submit throughput through ``scheduler.submit``.

20 concurrent submitters queue 10,000 jobs while nothing can start: the scheduler has one cpu,
held by a ``sleep`` job started first, and every submitted job needs one cpu, so all of them stay
queued.  Every submit returns only after its job is committed (``synchronous=full``, the default).
The figure is jobs/s from the first submit to the last acknowledgement.  The baseline, measured on
the same disk in the same run, is raw SQLite: one row per transaction, WAL, ``synchronous=FULL``
(what a submit would cost without group commit).

Goal (issue 2): >= 5,000 jobs/s.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import trio
from _common import (
    USER,
    bench_dir,
    bench_session,
    fmt_rate,
    hold_the_only_cpu,
    line,
    median,
    submit_concurrently,
)

import fetchml

JOBS = 10_000
SUBMITTERS = 20
REPEATS = 3
GOAL = 5_000
SQLITE_SECONDS = 1.0


def sqlite_tx_rate(data_dir: Path, seconds: float) -> float:
    """Transactions/s of one-row inserts, each its own durable transaction (WAL, FULL)."""
    conn = sqlite3.connect(data_dir / "raw.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        row = b"x" * 300  # about the size of a stored job
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (data) VALUES (?)", (row,))
            conn.execute("COMMIT")
            count += 1
            if count % 64 == 0 and time.perf_counter() >= deadline:
                break
        return count / (time.perf_counter() - start)
    finally:
        conn.close()


async def submit_rate(jobs: int) -> float:
    """Jobs/s of ``jobs`` durable submits by SUBMITTERS concurrent tasks; none of them starts."""
    spec = fetchml.JobSpec(command=["/bin/true"], resources=fetchml.Resources(cpus=1))
    with bench_dir("submit") as data_dir:
        async with fetchml.open_scheduler(
            data_dir=str(data_dir), cpus=1, gpus=[], kill_grace_s=1.0
        ) as scheduler:
            blocker = await hold_the_only_cpu(scheduler)
            elapsed = await submit_concurrently(scheduler, spec, jobs, SUBMITTERS)

            status = await scheduler.status()
            queued = status.counts.get("queued", 0)
            if queued != jobs:
                raise RuntimeError(f"expected {jobs} queued jobs, found {queued}")
            await scheduler.cancel(blocker.id, user=USER)
    return jobs / elapsed


async def main() -> int:
    ours: list[float] = []
    raw: list[float] = []
    for _ in range(REPEATS):
        with bench_dir("sqlite") as data_dir:
            raw.append(sqlite_tx_rate(data_dir, SQLITE_SECONDS))
        ours.append(await submit_rate(JOBS))
    ours_median = median(ours)
    line(
        "baseline SQLite 1 row/tx, WAL, FULL",
        f"{fmt_rate(median(raw))} tx/s",
        "runs: " + ", ".join(fmt_rate(r) for r in raw),
    )
    met = ours_median >= GOAL
    line(
        "scheduler.submit, durable",
        f"{fmt_rate(ours_median)} jobs/s",
        "runs: " + ", ".join(fmt_rate(r) for r in ours),
    )
    line(
        "ratio submit / baseline",
        f"{ours_median / median(raw):.2f}",
        f"goal >= {fmt_rate(GOAL)} jobs/s: {'met' if met else 'MISSED'}",
    )
    return 0 if met else 1


if __name__ == "__main__":
    with bench_session(
        f"bench_core_submit: {JOBS:,} jobs by {SUBMITTERS} concurrent submitters, "
        f"none running, synchronous=full, median of {REPEATS}",
        runs_jobs=False,
    ):
        sys.exit(trio.run(main))
