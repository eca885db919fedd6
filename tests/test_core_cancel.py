"""Cancel: queued jobs at once; running ones by SIGTERM to the whole process group, then SIGKILL
after the grace period; errors for finished and unknown jobs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from helpers.core import (
    alive,
    job_processes,
    open_sched,
    sh,
    until,
    until_file,
    until_started,
    until_state,
)

from fetchml import ConflictError, JobNotFoundError, JobState

LONG = ["sleep", "30"]


async def test_cancel_queued_job_at_once(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir, cpus=1) as scheduler:
            blocker = await scheduler.submit({"command": LONG}, user="alice")
            queued = await scheduler.submit({"command": ["true"]}, user="bob")
            start = time.monotonic()
            cancelled = await scheduler.cancel(queued.id, user="bob")
            assert time.monotonic() - start < 0.5
            assert cancelled.state is JobState.CANCELLED
            assert cancelled.reason == "cancelled by bob"
            assert cancelled.attempts == 0
            assert cancelled.started_at is None
            assert await scheduler.get(queued.id) == cancelled
            assert (await scheduler.get(blocker.id)).state is JobState.RUNNING
            await scheduler.cancel(blocker.id, user="alice")
    assert not (data_dir / "jobs" / str(queued.id) / "pid.1").exists()


async def test_cancel_running_job_terms_the_whole_group(data_dir: Path) -> None:
    # The job and a child of its own both trap SIGTERM to leave a mark; the job waits for the
    # child, so both marks are written before the group is gone.
    script = (
        "trap 'wait; echo main >> term; exit 0' TERM; "
        'sh -c \'trap "echo child >> term; exit 0" TERM; '
        "while :; do sleep 0.05; done' & echo $! > child.pid; wait"
    )
    with trio.fail_after(15):
        async with open_sched(data_dir, kill_grace_s=5) as scheduler:
            job = await scheduler.submit(sh(script), user="alice")
            await until_started(scheduler, data_dir, job.id)
            out = data_dir / "jobs" / str(job.id) / "output"
            child = int(await until_file(out / "child.pid"))
            assert alive(child)
            start = time.monotonic()
            cancelled = await scheduler.cancel(job.id, user="alice")
            elapsed = time.monotonic() - start
    # Well inside the 5 s grace: SIGTERM alone did it.
    assert elapsed < 3
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.reason == "cancelled by alice"
    assert cancelled.exit_code == 0  # the job's trap exited 0; the supervisor recorded it
    assert sorted((out / "term").read_text().split()) == ["child", "main"]
    assert not alive(child)
    assert job_processes(data_dir, job.id) == ([], [])


async def test_cancel_plain_running_job_kills_its_children(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(sh("sleep 30 & echo $! > child.pid; wait"), user="a")
            await until_started(scheduler, data_dir, job.id)
            out = data_dir / "jobs" / str(job.id) / "output"
            child = int(await until_file(out / "child.pid"))
            start = time.monotonic()
            cancelled = await scheduler.cancel(job.id, user="a")
            assert time.monotonic() - start < 0.45  # no SIGKILL needed
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.exit_code == 128 + 15
    assert not alive(child)


async def test_cancel_sigkills_after_grace_when_sigterm_is_ignored(data_dir: Path) -> None:
    # The job ignores SIGTERM, and so does its grandchild (inherited through exec).
    script = (
        "trap '' TERM; "
        "sh -c 'sh -c \"echo \\$\\$ > grandchild.pid; exec sleep 30\" & wait' & "
        "echo $$ > main.pid; wait"
    )
    with trio.fail_after(15):
        async with open_sched(data_dir, kill_grace_s=0.5) as scheduler:
            job = await scheduler.submit(sh(script), user="alice")
            await until_started(scheduler, data_dir, job.id)
            out = data_dir / "jobs" / str(job.id) / "output"
            grandchild = int(await until_file(out / "grandchild.pid"))
            main = int(await until_file(out / "main.pid"))
            assert alive(grandchild)
            assert alive(main)
            start = time.monotonic()
            cancelled = await scheduler.cancel(job.id, user="alice")
            elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 3
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.exit_code is None  # the supervisor was killed too: no status
    await until(lambda: not alive(grandchild) and not alive(main), within=2)
    assert job_processes(data_dir, job.id) == ([], [])


async def test_timeout_also_kills_a_job_that_ignores_sigterm(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir, kill_grace_s=0.3) as scheduler:
            job = await scheduler.submit(
                sh("trap '' TERM; sleep 30 & wait", timeout_s=0.2), user="a"
            )
            done = await scheduler.wait(job.id)
    assert done.state is JobState.TIMED_OUT
    assert done.started_at is not None
    assert done.finished_at is not None
    assert 0.45 <= done.finished_at - done.started_at < 3
    assert job_processes(data_dir, job.id) == ([], [])


async def test_concurrent_cancels_of_one_job_both_answered(data_dir: Path) -> None:
    results = []
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": LONG}, user="a")
            await until_started(scheduler, data_dir, job.id)

            async def cancel(user: str) -> None:
                results.append(await scheduler.cancel(job.id, user=user))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel, "a")
                nursery.start_soon(cancel, "admin")
    assert len(results) == 2
    assert results[0] == results[1]
    assert results[0].state is JobState.CANCELLED
    assert results[0].reason in ("cancelled by a", "cancelled by admin")


async def test_cancel_errors(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": ["true"]}, user="a")
            done = await scheduler.wait(job.id)
            with pytest.raises(ConflictError) as conflict:
                await scheduler.cancel(job.id, user="a")
            assert "succeeded" in conflict.value.message
            assert conflict.value.status == 409
            queued = await scheduler.submit({"command": LONG}, user="a")
            await scheduler.cancel(queued.id, user="a")
            with pytest.raises(ConflictError):
                await scheduler.cancel(queued.id, user="a")
            with pytest.raises(JobNotFoundError) as missing:
                await scheduler.cancel(999, user="a")
            assert missing.value.job_id == 999
            assert missing.value.status == 404
            assert await scheduler.get(job.id) == done  # terminal states never change


async def test_cancel_right_after_start_still_terms_the_job(data_dir: Path) -> None:
    # A SIGTERM sent while the supervisor is still starting the job must not be lost (it would
    # leave the job to SIGKILL after the whole grace period).
    with trio.fail_after(20):
        async with open_sched(data_dir, kill_grace_s=3) as scheduler:
            for _ in range(10):
                job = await scheduler.submit({"command": LONG}, user="a")
                await until_state(scheduler, job.id, JobState.RUNNING)
                start = time.monotonic()
                cancelled = await scheduler.cancel(job.id, user="a")
                assert time.monotonic() - start < 1.5
                assert cancelled.state is JobState.CANCELLED
                assert cancelled.exit_code in (None, 128 + 15)  # None: before the trap was set
