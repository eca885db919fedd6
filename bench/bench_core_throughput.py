"""Benchmark 1: end-to-end throughput of no-op jobs through the embedded scheduler.

2,000 jobs of ``/bin/true`` (scheduler configured with cpus=8, each job cpus=1, so 8 run at once)
are submitted by 20 concurrent submitters and waited for until every one has succeeded; the figure
is jobs/s from the first submit to the last success.  The baseline, measured in the same run, is
the raw rate of ``trio.run_process(["/bin/true"])`` with 8 at once.  Each job costs two process
starts here (the per-job ``/bin/sh`` supervisor, then ``/bin/true``), plus its commits.

Goal (issue 2): scheduler rate >= 0.4 x raw rate.
"""

from __future__ import annotations

import sys
import time

import trio
from _common import USER, bench_dir, bench_session, fmt_rate, line, median

import fetchml

JOBS = 2_000
CONCURRENCY = 8
SUBMITTERS = 20
REPEATS = 3
GOAL_RATIO = 0.4


async def raw_rate(jobs: int, concurrency: int) -> float:
    """Processes/s of ``trio.run_process(["/bin/true"])``, ``concurrency`` at once."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await trio.run_process(["/bin/true"])

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(worker, jobs // concurrency + (index < jobs % concurrency))
    return jobs / (time.perf_counter() - start)


async def scheduler_rate(jobs: int, concurrency: int) -> float:
    """Jobs/s from the first submit until all ``jobs`` no-op jobs have succeeded."""
    spec = fetchml.JobSpec(command=["/bin/true"], resources=fetchml.Resources(cpus=1))
    with bench_dir("throughput") as data_dir:
        async with fetchml.open_scheduler(
            data_dir=str(data_dir), cpus=concurrency, gpus=[], kill_grace_s=1.0
        ) as scheduler:
            since = (await scheduler.status()).last_seq
            ended: dict[int, fetchml.Job] = {}

            async def submitter(count: int) -> None:
                for _ in range(count):
                    await scheduler.submit(spec, user=USER)

            start = time.perf_counter()
            async with (
                scheduler.subscribe(since=since, buffer=jobs * 4) as events,
                trio.open_nursery() as nursery,
            ):
                for index in range(SUBMITTERS):
                    count = jobs // SUBMITTERS + (index < jobs % SUBMITTERS)
                    nursery.start_soon(submitter, count)
                async for event in events:
                    if event.job.terminal:
                        ended[event.job.id] = event.job
                        if len(ended) == jobs:
                            break
            elapsed = time.perf_counter() - start
            bad = [job for job in ended.values() if job.state is not fetchml.JobState.SUCCEEDED]
            if bad:
                raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]}")
    return jobs / elapsed


async def main() -> int:
    raw: list[float] = []
    ours: list[float] = []
    await raw_rate(200, CONCURRENCY)  # warm-up: page cache, trio's process machinery
    for _ in range(REPEATS):
        raw.append(await raw_rate(JOBS, CONCURRENCY))
        ours.append(await scheduler_rate(JOBS, CONCURRENCY))
    raw_median, ours_median = median(raw), median(ours)
    # Each scheduler run is compared with the baseline run just before it (the machine's load
    # drifts), and the median of those ratios is the figure.
    ratio = median([o / r for o, r in zip(ours, raw, strict=True)])
    line(
        "baseline trio.run_process(/bin/true), 8 at once",
        f"{fmt_rate(raw_median)} proc/s",
        "runs: " + ", ".join(fmt_rate(r) for r in raw),
    )
    line(
        "scheduler end to end (submit -> succeeded)",
        f"{fmt_rate(ours_median)} jobs/s",
        "runs: " + ", ".join(fmt_rate(r) for r in ours),
    )
    met = ratio >= GOAL_RATIO
    line(
        "ratio scheduler / baseline (median of pairs)",
        f"{ratio:.2f}",
        f"goal >= {GOAL_RATIO}: {_verdict(met)}",
    )
    return 0 if met else 1


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    with bench_session(
        f"bench_core_throughput: {JOBS:,} x /bin/true, {CONCURRENCY} at once, "
        f"{SUBMITTERS} submitters, median of {REPEATS}"
    ):
        sys.exit(trio.run(main))
