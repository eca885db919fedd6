"""Starting a run and its follow-up file work in one worker thread (``Backend.start_then``).

Real subprocesses, real files: the local backend calls ``after`` in the thread that started the
supervisor, once it has started; a fault of ``after`` never makes a started run look unstarted;
the base class (any other backend) starts, then calls ``after`` in a worker thread.  Through the
scheduler, a running job's manifest is on disk, and one for the end replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest
import trio
from helpers.core import until

import fetchml
from fetchml._models import Job, JobSpec, JobState
from fetchml.actors.backends import Backend, Ended, LocalBackend
from fetchml.actors.backends._local import LocalRun


def _job(job_id: int, command: list[str]) -> Job:
    return Job(
        id=job_id,
        user="alice",
        spec=JobSpec(command=command),
        state=JobState.RUNNING,
        created_at=0.0,
        attempts=1,
    )


async def test_after_runs_in_the_starting_thread_once_the_run_started(data_dir: Path) -> None:
    backend = LocalBackend(data_dir)
    seen: list[tuple[int, bool]] = []

    def after() -> None:
        # The log file is opened for the supervisor just before it is started.
        seen.append((threading.get_ident(), (data_dir / "jobs" / "1" / "log").exists()))

    with trio.fail_after(10):
        run = await backend.start_then(_job(1, ["/bin/true"]), after)
        assert await backend.wait(run) == 0
    [(thread, started)] = seen
    assert thread != threading.get_ident()  # a worker thread, not the event loop's
    assert started


async def test_a_fault_after_the_start_keeps_the_run(
    data_dir: Path, internal_errors: list[logging.LogRecord]
) -> None:
    backend = LocalBackend(data_dir)

    def after() -> None:
        raise RuntimeError("a bug after the start")

    with trio.fail_after(10):
        run = await backend.start_then(_job(2, ["/bin/sh", "-c", "exit 3"]), after)
        assert isinstance(run, LocalRun)
        assert await backend.wait(run) == 3  # the run was followed to its end all the same
    assert [r.fetchml_internal_error for r in internal_errors] == ["executor"]  # type: ignore[attr-defined]


class _Recording(Backend[int]):
    """A backend with only ``start``: the base class's ``start_then`` must serve it."""

    def __init__(self) -> None:
        self.order: list[str] = []

    async def start(self, job: Job) -> int:
        self.order.append("start")
        return job.id

    async def adopt(self, job: Job) -> int | Ended:
        return Ended(None)

    async def wait(self, run: int) -> int | None:
        return 0

    async def terminate(self, run: int, grace: float) -> None:
        return None

    def release(self, run: int) -> None:
        return None


async def test_the_base_class_starts_then_calls_after_in_a_worker_thread() -> None:
    backend = _Recording()
    loop_thread = threading.get_ident()

    def after() -> None:
        backend.order.append("after" if threading.get_ident() != loop_thread else "on the loop")

    with trio.fail_after(10):
        assert await backend.start_then(_job(3, ["/bin/true"]), after) == 3
    assert backend.order == ["start", "after"]


async def test_a_running_jobs_manifest_is_written_and_its_end_replaces_it(
    data_dir: Path,
) -> None:
    manifest = data_dir / "jobs" / "1" / "output" / "run_manifest.json"
    with trio.fail_after(20):
        async with fetchml.open_scheduler(data_dir=str(data_dir), cpus=1, gpus=[]) as scheduler:
            job = await scheduler.submit({"command": ["sleep", "30"]}, user="alice")
            await until(manifest.exists, within=10)
            running = json.loads(manifest.read_text())
            assert (running["job_id"], running["attempt"], running["end"]) == (job.id, 1, None)
            assert running["host"] == os.uname().nodename
            ended = await scheduler.cancel(job.id, user="alice")
            assert ended.state is JobState.CANCELLED
    final = json.loads(manifest.read_text())
    assert final["end"] == "cancel"
    assert final["outputs"] == []


@pytest.mark.parametrize("jobs", [20])
async def test_many_short_jobs_each_leave_a_finished_manifest(data_dir: Path, jobs: int) -> None:
    with trio.fail_after(30):
        async with fetchml.open_scheduler(data_dir=str(data_dir), cpus=4, gpus=[]) as scheduler:
            submitted = [
                await scheduler.submit({"command": ["/bin/true"]}, user="alice")
                for _ in range(jobs)
            ]
            for job in submitted:
                assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
    for job in submitted:
        path = data_dir / "jobs" / str(job.id) / "output" / "run_manifest.json"
        written = json.loads(path.read_text())
        assert (written["end"], written["exit_code"]) == ("exit", 0)
