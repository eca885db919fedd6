"""Benchmark: Fetch ML in front of Ray against submitting straight to Ray, on one cluster.

1. ``--jobs`` (200) no-op jobs (``true``, 1 CPU each) submitted straight to Ray with
   ``JobSubmissionClient`` (submit all, then wait for all), and the same jobs through Fetch ML on
   the same cluster (queued all at once; Fetch ML starts what fits).  Figure: jobs/s from the
   first submit to the last end; goal: Fetch ML >= 0.8 x direct.
2. ``--bulk`` (2,000) jobs queued through Fetch ML at once: every one must succeed, with no Ray
   error, and Ray must never hold more of them than the cluster has CPUs.  On a small machine this
   takes long (each Ray job starts a Ray worker process: about 1 job/s on 2 cores), so after
   ``--bulk-limit-s`` the jobs still queued are cancelled and what completed is reported
   (``--bulk-limit-s 0``: no limit).

By default it starts its own two-node loopback cluster (tests/helpers/ray_cluster.py: 4 CPUs,
2 GPUs that Ray only counts); ``--address http://host:8265`` uses a running one instead.
Run: ``.venv/bin/python bench/bench_ray.py`` (needs ``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from _common import USER, line

import fetchml
from fetchml import JobState
from fetchml.actors.backends._ray import INSTANCE_FILE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

GOAL_RATIO = 0.8
NOOP = ["true"]


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--bulk", type=int, default=2000)
    parser.add_argument("--bulk-limit-s", type=float, default=90.0)
    parser.add_argument("--address", help="a running cluster's dashboard URL")
    parser.add_argument("--poll", type=float, default=None, help="executor.ray.poll_interval_s")
    return parser.parse_args()


def _terminal(status: Any) -> bool:
    return str(status) in ("SUCCEEDED", "FAILED", "STOPPED")


def direct_rate(client: Any, jobs: int, tag: str) -> tuple[float, int]:
    """Submit ``jobs`` no-op jobs straight to Ray, wait for all; (jobs/s, how many failed)."""
    start = time.perf_counter()
    ids = {
        client.submit_job(entrypoint="true", entrypoint_num_cpus=1, submission_id=f"{tag}-{i}")
        for i in range(jobs)
    }
    while True:
        states = {j.submission_id: str(j.status) for j in client.list_jobs() if j.submission_id}
        mine = [states.get(i) for i in ids]
        if all(s is not None and _terminal(s) for s in mine):
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    return jobs / elapsed, sum(s != "SUCCEEDED" for s in mine)


async def fetchml_run(
    settings: dict[str, Any], data_dir: Path, jobs: int, *, limit_s: float, watch: Any = None
) -> tuple[float, int, int, float]:
    """Queue ``jobs`` no-op jobs at once, wait for all (or ``limit_s``, then cancel the rest).

    Returns (jobs/s of the completed, completed, not succeeded, seconds).
    """
    spec = fetchml.JobSpec(command=NOOP)
    ended: dict[int, fetchml.Job] = {}
    async with fetchml.open_scheduler(data_dir=str(data_dir), **settings) as scheduler:
        since = (await scheduler.status()).last_seq
        start = time.perf_counter()
        async with (
            scheduler.subscribe(since=since, buffer=jobs * 4 + 100) as events,
            trio.open_nursery() as nursery,
        ):
            ids = [(await scheduler.submit(spec, user=USER)).id for _ in range(jobs)]
            line(f"  {jobs:,} queued in", f"{time.perf_counter() - start:.1f} s")
            if watch is not None:
                nursery.start_soon(watch)
            with trio.move_on_after(limit_s if limit_s > 0 else float("inf")):
                async for event in events:
                    if event.job.terminal:
                        ended[event.job.id] = event.job
                        if len(ended) == jobs:
                            break
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        # Past the limit: cancel what is left, all at once (queued ones end at once, running
        # ones when Ray has stopped them).
        async with trio.open_nursery() as nursery:
            for job_id in ids:
                if job_id not in ended:
                    nursery.start_soon(_cancel, scheduler, job_id)
    bad = sum(job.state is not JobState.SUCCEEDED for job in ended.values())
    return len(ended) / elapsed, len(ended), bad, elapsed


async def _cancel(scheduler: fetchml.Scheduler, job_id: int) -> None:
    with contextlib.suppress(fetchml.ConflictError):  # it ended meanwhile
        await scheduler.cancel(job_id, user=USER)


async def bulk(client: Any, settings: dict[str, Any], root: Path, args: argparse.Namespace) -> int:
    data_dir = root / "bulk"
    most = 0
    cpus = 0.0

    async def watch() -> None:
        nonlocal most
        instance = (data_dir / INSTANCE_FILE).read_text().strip()
        prefix = f"fetchml-{instance}-"
        while True:
            listed = await trio.to_thread.run_sync(client.list_jobs)
            live = sum(
                (j.submission_id or "").startswith(prefix) and not _terminal(j.status)
                for j in listed
            )
            most = max(most, live)
            await trio.sleep(5)

    async with fetchml.open_scheduler(data_dir=str(data_dir), **settings) as scheduler:
        cpus = (await scheduler.status()).cpus_total
    rate, done, bad, elapsed = await fetchml_run(
        settings, data_dir, args.bulk, limit_s=args.bulk_limit_s, watch=watch
    )
    limit = args.bulk_limit_s
    note = "all of them" if done == args.bulk else f"the rest cancelled at the {limit:g} s limit"
    line(f"{args.bulk:,} queued at once through Fetch ML", f"{done:,} done", f"in {elapsed:.0f} s")
    line("  rate while draining the queue", f"{rate:.2f} jobs/s", note)
    line("  failed or not succeeded", f"{bad}", "goal: 0")
    line("  most Fetch ML jobs live in Ray at once", f"{most}", f"cluster CPUs: {cpus:g}")
    return 0 if bad == 0 and most <= cpus else 1


async def compare(client: Any, settings: dict[str, Any], root: Path, jobs: int) -> bool:
    warm = await trio.to_thread.run_sync(direct_rate, client, 8, f"warm-{time.time_ns()}")
    del warm
    direct, direct_bad = await trio.to_thread.run_sync(
        direct_rate, client, jobs, f"direct-{time.time_ns()}"
    )
    ours, _, ours_bad, _ = await fetchml_run(settings, root / "compare", jobs, limit_s=0)
    line(f"direct JobSubmissionClient, {jobs} x true", f"{direct:.2f} jobs/s", f"{direct_bad} bad")
    line(f"through Fetch ML, {jobs} x true", f"{ours:.2f} jobs/s", f"{ours_bad} bad")
    ratio = ours / direct
    met = ratio >= GOAL_RATIO and direct_bad == ours_bad == 0
    line(
        "ratio Fetch ML / direct",
        f"{ratio:.2f}",
        f"goal >= {GOAL_RATIO}: {'met' if met else 'MISSED'}",
    )
    return met


async def main(args: argparse.Namespace, address: str, root: Path) -> int:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    ray: dict[str, Any] = {"address": address}
    if args.poll is not None:
        ray["poll_interval_s"] = args.poll
    settings = {"backend": "ray", "ray": ray}
    met = await compare(client, settings, root, args.jobs) if args.jobs else True
    code = await bulk(client, settings, root, args) if args.bulk else 0
    return 0 if met and code == 0 else 1


def run() -> int:
    args = _args()
    try:
        import ray.job_submission  # noqa: F401
    except ImportError:
        print("bench_ray: skipped, Ray is not installed (pip install -e '.[ray]')")
        return 0
    with tempfile.TemporaryDirectory(prefix="fetchml-bench-ray-") as tmp:
        root = Path(tmp)
        if args.address:
            print(f"bench_ray: cluster at {args.address}", flush=True)
            return trio.run(main, args, args.address, root)
        from helpers.ray_cluster import start_cluster, stop_cluster

        started = time.perf_counter()
        cluster = start_cluster(root / "ray")
        try:
            print(
                f"bench_ray: loopback cluster of 2 nodes (4 CPUs) up in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
            return trio.run(main, args, cluster.address, root)
        finally:
            stop_cluster(cluster)


if __name__ == "__main__":
    sys.exit(run())
