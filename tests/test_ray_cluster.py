"""The Ray backend against a real two-node Ray cluster on loopback (see helpers/ray_cluster.py).

The cluster is started once for the session (about 15 s, ``ray_cluster`` in conftest.py, shared
with test_tracking_ray.py) and stopped at its end; without Ray installed
(``pip install -e '.[ray]'``) the module is skipped.  Jobs are tiny, but each Ray job costs a Ray
worker process start, so the whole module takes a minute or two on 2 cores.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import until, until_state

pytest.importorskip(
    "ray.job_submission",
    reason="Ray is not installed: pip install -e '.[ray]' to run the Ray backend tests",
)

from helpers.ray_cluster import (
    GPUS,
    HEAD_CPUS,
    NODE_ENV,
    WORKER_CPUS,
    RayCluster,
    loopback_violations,
)
from ray.job_submission import JobSubmissionClient

import fetchml
from fetchml import JobState
from fetchml.actors.backends._ray import INSTANCE_FILE, submission_id

CLUSTER_CPUS = HEAD_CPUS + WORKER_CPUS
WITHIN = 60.0  # generous: the machine may be busy with other tests


@pytest.fixture(scope="module")
def cluster(ray_cluster: RayCluster) -> RayCluster:
    """The session's Ray cluster (conftest.py), shared with the other Ray tests."""
    return ray_cluster


@pytest.fixture(scope="module")
def ray_jobs(cluster: RayCluster) -> JobSubmissionClient:
    return JobSubmissionClient(cluster.address)


def settings(address: str, **extra: Any) -> dict[str, Any]:
    ray = {"address": address, "poll_interval_s": 0.5, "capacity_interval_s": 0.5}
    return {"backend": "ray", "ray": ray, **extra}


@contextlib.asynccontextmanager
async def ray_sched(data_dir: Path, address: str, **extra: Any) -> AsyncIterator[Any]:
    async with fetchml.open_scheduler(data_dir=str(data_dir), **settings(address, **extra)) as s:
        yield s


def ray_id(data_dir: Path, job_id: int, attempt: int = 1) -> str:
    return submission_id((data_dir / INSTANCE_FILE).read_text().strip(), job_id, attempt)


def ray_status(jobs: JobSubmissionClient, sid: str) -> str | None:
    """Ray's status of the job, or None if Ray does not know it (yet)."""
    try:
        return str(jobs.get_job_status(sid))
    except RuntimeError:
        return None


def in_ray_state(jobs: JobSubmissionClient, sid: str, state: str) -> Callable[[], Awaitable[bool]]:
    """A predicate for ``until``: whether Ray says the job is in ``state`` (asked off the loop)."""

    async def check() -> bool:
        return await trio.to_thread.run_sync(ray_status, jobs, sid) == state

    return check


def log_of(data_dir: Path, job_id: int) -> str:
    path = data_dir / "jobs" / str(job_id) / "log"
    return path.read_text() if path.exists() else ""


def lines_of(data_dir: Path, job_id: int) -> list[str]:
    """The job's log lines (Ray adds a few of its own, one of them quoting the command)."""
    return log_of(data_dir, job_id).splitlines()


def sh(script: str, **fields: Any) -> dict[str, Any]:
    return {"command": script, "shell": True, **fields}


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listeners")
def test_every_ray_listener_is_on_loopback(cluster: RayCluster) -> None:
    bad, listeners = loopback_violations(cluster)
    assert listeners >= 5  # gcs, raylets, dashboard, agents …
    assert bad == []


async def test_gpu_job_lands_on_the_gpu_node_and_cpu_jobs_run(
    cluster: RayCluster, data_dir: Path, tmp_path: Path
) -> None:
    probe = f"echo node=${NODE_ENV} cuda=${{CUDA_VISIBLE_DEVICES-unset}} job=$FETCHML_JOB_ID"
    with trio.fail_after(WITHIN):
        async with ray_sched(data_dir, cluster.address) as scheduler:
            status = await scheduler.status()
            assert (status.backend, status.backend_status) == ("ray", None)
            assert (status.cpus_total, len(status.gpus_total)) == (CLUSTER_CPUS, GPUS)
            gpu = await scheduler.submit(sh(probe, resources={"gpus": 1}), user="alice")
            script = (
                "import os, sys; print('|'.join([*sys.argv[1:], os.getcwd(), os.environ['A']]))"
            )
            cpu = await scheduler.submit(
                {
                    "command": [sys.executable, "-c", script, "it's", "a b", "$HOME"],
                    "cwd": str(tmp_path),
                    "env": {"A": "hi there"},
                },
                user="bob",
            )
            shell = await scheduler.submit(sh("echo greeting=$A", env={"A": "yo"}), user="bob")
            for job in (gpu, cpu, shell):
                assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
    assert f"node=gpu cuda=0 job={gpu.id}" in lines_of(data_dir, gpu.id)
    assert f"it's|a b|$HOME|{tmp_path}|hi there" in lines_of(data_dir, cpu.id)
    assert "greeting=yo" in lines_of(data_dir, shell.id)


async def test_failing_cancelled_and_timed_out_jobs(
    cluster: RayCluster, ray_jobs: JobSubmissionClient, data_dir: Path
) -> None:
    with trio.fail_after(WITHIN):
        async with ray_sched(data_dir, cluster.address) as scheduler:
            failing = await scheduler.submit(sh("echo oops >&2; exit 3"), user="alice")
            slow = await scheduler.submit({"command": ["sleep", "60"]}, user="alice")
            late = await scheduler.submit({"command": ["sleep", "60"], "timeout_s": 2}, user="bob")
            await until_state(scheduler, slow.id, JobState.RUNNING, within=WITHIN)
            sid = ray_id(data_dir, slow.id)
            await until(in_ray_state(ray_jobs, sid, "RUNNING"), within=WITHIN)
            cancelled = await scheduler.cancel(slow.id, user="alice")
            assert cancelled.state is JobState.CANCELLED
            assert ray_status(ray_jobs, sid) == "STOPPED"
            done = await scheduler.wait(failing.id)
            assert (done.state, done.exit_code) == (JobState.FAILED, 3)
            assert "oops" in lines_of(data_dir, failing.id)
            timed_out = await scheduler.wait(late.id)
            assert timed_out.state is JobState.TIMED_OUT
    assert ray_status(ray_jobs, ray_id(data_dir, late.id)) == "STOPPED"


async def test_logs_stream_into_the_log_file_while_the_job_runs(
    cluster: RayCluster, data_dir: Path
) -> None:
    with trio.fail_after(WITHIN):
        async with ray_sched(data_dir, cluster.address) as scheduler:
            job = await scheduler.submit(sh("echo first; sleep 4; echo second"), user="alice")
            await until(lambda: "first" in lines_of(data_dir, job.id), within=WITHIN)
            assert (await scheduler.get(job.id)).state is JobState.RUNNING
            assert "second" not in lines_of(data_dir, job.id)
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
    lines = lines_of(data_dir, job.id)
    assert (lines.count("first"), lines.count("second")) == (1, 1)


async def test_a_restart_reconciles_ray_jobs_running_and_ended_meanwhile(
    cluster: RayCluster, ray_jobs: JobSubmissionClient, data_dir: Path
) -> None:
    with trio.fail_after(WITHIN):
        async with ray_sched(data_dir, cluster.address) as scheduler:
            job = await scheduler.submit(sh("echo start; sleep 8; echo end"), user="alice")
            quick = await scheduler.submit(sh("echo begun; sleep 3; echo over; exit 4"), user="b")
            await until(lambda: "begun" in lines_of(data_dir, quick.id), within=WITHIN)
        # The server is gone; the Ray jobs run on, and one of them ends meanwhile.
        assert "over" not in lines_of(data_dir, quick.id)
        await until(in_ray_state(ray_jobs, ray_id(data_dir, quick.id), "FAILED"), within=WITHIN)
        assert ray_status(ray_jobs, ray_id(data_dir, job.id)) == "RUNNING"
        async with ray_sched(data_dir, cluster.address) as scheduler:
            adopted = await scheduler.get(job.id)
            assert (adopted.state, adopted.attempts, adopted.requeues) == (JobState.RUNNING, 1, 0)
            ended = await scheduler.wait(quick.id)
            done = await scheduler.wait(job.id)
    assert (done.state, done.attempts, done.requeues) == (JobState.SUCCEEDED, 1, 0)
    assert (ended.state, ended.exit_code, ended.requeues) == (JobState.FAILED, 4, 0)
    assert "over" in lines_of(data_dir, quick.id)  # copied on adoption
    lines = lines_of(data_dir, job.id)
    assert (lines.count("start"), lines.count("end")) == (1, 1)
    prefix = ray_id(data_dir, job.id, 0)[:-1]
    ours = [j for j in ray_jobs.list_jobs() if (j.submission_id or "").startswith(prefix)]
    assert [j.submission_id for j in ours] == [ray_id(data_dir, job.id)]


async def test_a_run_already_submitted_is_followed_not_started_twice(
    cluster: RayCluster, ray_jobs: JobSubmissionClient, data_dir: Path
) -> None:
    with trio.fail_after(WITHIN):
        async with ray_sched(data_dir, cluster.address) as scheduler:
            # As if a submit got through but its reply was lost: the id is taken already.
            ray_jobs.submit_job(entrypoint="echo the first one", submission_id=ray_id(data_dir, 1))
            job = await scheduler.submit(sh("echo the second one"), user="alice")
            assert job.id == 1
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
    assert "the first one" in lines_of(data_dir, job.id)
    assert "the second one" not in lines_of(data_dir, job.id)


async def test_a_queue_deeper_than_the_cluster_runs_only_what_fits(
    cluster: RayCluster, ray_jobs: JobSubmissionClient, data_dir: Path
) -> None:
    jobs_count = 2 * CLUSTER_CPUS  # twice what fits: at least half of them wait their turn
    most = 0
    with trio.fail_after(2 * WITHIN):
        async with ray_sched(data_dir, cluster.address) as scheduler:
            jobs = [
                await scheduler.submit({"command": ["sleep", "0.5"], "priority": 1 + i % 3}, user=u)
                for i, u in enumerate(["alice", "bob"] * (jobs_count // 2))
            ]
            prefix = ray_id(data_dir, 1, 0).rsplit("-", 2)[0]
            while True:
                listed = await trio.to_thread.run_sync(ray_jobs.list_jobs)
                ours = [j for j in listed if (j.submission_id or "").startswith(prefix)]
                live = sum(not j.status.is_terminal() for j in ours)
                most = max(most, live)
                if len(ours) == jobs_count and live == 0:
                    break
                await trio.sleep(0.2)
            done = [await scheduler.wait(job.id) for job in jobs]
    assert all(job.state is JobState.SUCCEEDED for job in done)
    assert 1 < most <= CLUSTER_CPUS


class _Proxy:
    """A TCP proxy to the dashboard that the test can take down and bring back up."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def up(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._scope = trio.CancelScope()
        nursery.start_soon(self._serve, listeners, self._scope)

    def down(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _serve(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream("127.0.0.1", self.target) as server,
            trio.open_nursery() as nursery,
        ):

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async for chunk in src:
                        await dst.send_all(chunk)
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)


async def test_the_cluster_going_away_and_coming_back(cluster: RayCluster, data_dir: Path) -> None:
    dashboard_port = int(cluster.address.rsplit(":", 1)[1])
    proxy = _Proxy(dashboard_port)
    with trio.fail_after(2 * WITHIN):
        async with trio.open_nursery() as nursery:
            await proxy.up(nursery)
            address = f"http://127.0.0.1:{proxy.port}"
            async with ray_sched(data_dir, address) as scheduler:
                job = await scheduler.submit(sh("echo one; sleep 4; echo two"), user="alice")
                await until(lambda: "one" in lines_of(data_dir, job.id), within=WITHIN)
                proxy.down()

                async def unreachable() -> bool:
                    return (await scheduler.status()).backend_status is not None

                await until(unreachable, within=10)
                status = await scheduler.status()
                assert status.backend_status is not None
                assert "unreachable" in status.backend_status
                assert status.cpus_total == 0
                later = await scheduler.submit(sh("echo later"), user="bob")
                await trio.sleep(5)  # the Ray job ends meanwhile
                assert (await scheduler.get(job.id)).state is JobState.RUNNING
                assert (await scheduler.get(later.id)).state is JobState.QUEUED
                await proxy.up(nursery)
                assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
                assert (await scheduler.wait(later.id)).state is JobState.SUCCEEDED
                assert (await scheduler.status()).backend_status is None
            nursery.cancel_scope.cancel()
    lines = lines_of(data_dir, job.id)
    assert (lines.count("one"), lines.count("two")) == (1, 1)
    assert "later" in lines_of(data_dir, later.id)
