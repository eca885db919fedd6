"""Durability and restart: what was acknowledged survives SIGKILL of the host, running jobs are
re-adopted (never run twice), exits recorded while down are collected, vanished runs are requeued
or marked lost, and the queue comes back in the same order."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from helpers.core import (
    HOST,
    PYTHON,
    alive,
    job_processes,
    kill_job_group,
    open_sched,
    sh,
    until,
    until_file,
    until_started,
    until_state,
)

import fetchml
from fetchml import JobState

WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.02; done; "


def _output(data_dir: Path, job_id: int) -> Path:
    return data_dir / "jobs" / str(job_id) / "output"


async def _run_host_until_killed(
    data_dir: Path, runs: Path, stderr_path: Path, min_acks: int
) -> tuple[int, list[int]]:
    """Start the host, let it acknowledge ``min_acks`` submits while its long job runs, SIGKILL
    it mid-storm; return (long job id, every id it acknowledged)."""
    long_id: int | None = None
    acks: list[int] = []
    buffer = b""

    def take_lines(data: bytes | bytearray) -> None:
        nonlocal buffer, long_id
        buffer += data
        *lines, buffer = buffer.split(b"\n")  # a torn last line was never acknowledged
        for line in lines:
            kind, _, value = line.decode().partition(" ")
            if kind == "long":
                long_id = int(value)
            elif kind == "ack":
                acks.append(int(value))

    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [PYTHON, str(HOST), str(data_dir), str(runs)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            while True:
                data = await process.stdout.receive_some(65536)
                assert data, "host exited early; see its stderr in " + str(stderr_path)
                take_lines(data)
                if (
                    long_id is not None
                    and len(acks) >= min_acks
                    and (_output(data_dir, long_id) / "pid").exists()
                ):
                    break
            process.kill()  # SIGKILL, mid-storm
            # What it wrote before dying is still in the pipe: those were acknowledged too.
            while data := await process.stdout.receive_some(65536):
                take_lines(data)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
    assert process.returncode == -9
    assert long_id is not None
    return long_id, acks


async def test_sigkill_during_submit_storm_loses_nothing_and_keeps_the_long_job(
    data_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    long_id, acks = await _run_host_until_killed(data_dir, runs, tmp_path / "host.err", 150)
    long_pid = int((_output(data_dir, long_id) / "pid").read_text())
    assert alive(long_pid)  # the job outlived its server

    settings = {"cpus": 2, "gpus": [], "kill_grace_s": 0.5}
    with trio.fail_after(30):
        async with open_sched(data_dir, **settings) as scheduler:
            # Every acknowledged submit is there.
            for job_id in acks:
                job = await scheduler.get(job_id)
                assert job.spec.command.startswith('echo "$FETCHML_JOB_ID"')
            stored = await scheduler.list(limit=10_000)
            assert {job.id for job in stored} >= {long_id, *acks}
            # The long job was re-adopted: still running, the same single process.
            long = await scheduler.get(long_id)
            assert long.state is JobState.RUNNING
            assert long.attempts == 1
            assert long.requeues == 0
            supervisors, workers = job_processes(data_dir, long_id)
            assert workers == [long_pid]
            assert len(supervisors) == 1
            # Let the storm's jobs drain, then check the long job still is the same process.
            await until(lambda: _only_long_left(scheduler), within=20)
            assert job_processes(data_dir, long_id) == (supervisors, [long_pid])
            assert (await scheduler.get(long_id)).state is JobState.RUNNING
            everything = await scheduler.list(limit=10_000)
            others = [job for job in everything if job.id != long_id]
            assert all(job.state is JobState.SUCCEEDED for job in others), Counter(
                (job.state.value, job.reason) for job in others
            )
            # Cancel the adopted job: SIGTERM reaches it through its group; the status its
            # supervisor records is collected.
            cancelled = await scheduler.cancel(long_id, user="alice")
            assert cancelled.state is JobState.CANCELLED
            assert cancelled.exit_code == 128 + 15
            await until(lambda: not alive(long_pid), within=2)
    # No job ran twice: each id is in the runs file exactly once.
    counts = Counter(int(line) for line in runs.read_text().split())
    assert set(counts) == {job.id for job in others}
    assert set(counts.values()) == {1}
    # The final state is durable.
    with trio.fail_after(10):
        async with open_sched(data_dir, **settings) as scheduler:
            assert await scheduler.get(long_id) == cancelled
            status = await scheduler.status()
            assert status.counts == {}
            assert status.cpus_free == 2


async def _only_long_left(scheduler: fetchml.Scheduler) -> bool:
    return (await scheduler.status()).counts == {"running": 1}


async def test_exits_while_down_are_collected_and_running_jobs_readopted(data_dir: Path) -> None:
    count_runs = "echo run >> runs; "
    specs = {
        "fails": sh(count_runs + WAIT_FOR_GO + "exit 7"),
        "succeeds": sh(count_runs + WAIT_FOR_GO + "exit 0"),
        "outlives": sh(count_runs + WAIT_FOR_GO + "sleep 0.3; exit 3", priority=10),
    }
    with trio.fail_after(20):
        async with open_sched(data_dir, cpus=3) as scheduler:
            jobs = {name: await scheduler.submit(spec, user="a") for name, spec in specs.items()}
            for job in jobs.values():
                await until_started(scheduler, data_dir, job.id)
        # The server is down; every job is still running.  Let them all end.
        for job in jobs.values():
            (_output(data_dir, job.id) / "go").touch()
        for name in ("fails", "succeeds"):
            exit_file = data_dir / "jobs" / str(jobs[name].id) / "exit.1"
            assert await until_file(exit_file) in ("7\n", "0\n")
        assert not (data_dir / "jobs" / str(jobs["outlives"].id) / "exit.1").exists()
        async with open_sched(data_dir, cpus=3) as scheduler:
            done = {name: await scheduler.wait(job.id) for name, job in jobs.items()}
    assert done["fails"].state is JobState.FAILED
    assert done["fails"].exit_code == 7
    assert done["succeeds"].state is JobState.SUCCEEDED
    assert done["succeeds"].exit_code == 0
    assert done["outlives"].state is JobState.FAILED
    assert done["outlives"].exit_code == 3
    for name, job in done.items():
        assert job.attempts == 1, name
        assert job.requeues == 0, name
        assert (_output(data_dir, job.id) / "runs").read_text() == "run\n", name


async def test_vanished_run_is_requeued_then_lost(data_dir: Path) -> None:
    spec = sh("echo run >> runs; exec sleep 30")
    with trio.fail_after(20):
        async with open_sched(data_dir, max_requeues=1) as scheduler:
            job = await scheduler.submit(spec, user="a")
            await until_started(scheduler, data_dir, job.id)
        kill_job_group(data_dir, job.id, attempt=1)  # gone while the server is down
        async with open_sched(data_dir, max_requeues=1) as scheduler:
            # Requeued without spending a retry, and started again (attempt 2).
            await until(lambda: _attempt_running(scheduler, job.id, 2))
            again = await until_started(scheduler, data_dir, job.id)
            assert again.requeues == 1
            assert again.attempts == 2
            history = [event.job async for event in _events_until(scheduler, job.id, again.seq)]
            requeued = [j for j in history if j.state is JobState.QUEUED and j.requeues == 1]
            assert len(requeued) == 1
            assert requeued[0].reason is not None
            assert "vanished" in requeued[0].reason
            supervisors, workers = job_processes(data_dir, job.id)
            assert len(supervisors) == len(workers) == 1
        kill_job_group(data_dir, job.id, attempt=2)
        async with open_sched(data_dir, max_requeues=1) as scheduler:
            lost = await scheduler.wait(job.id)
            assert lost.state is JobState.LOST
            assert lost.reason is not None
            assert "vanished" in lost.reason
            assert lost.attempts == 2
            # Resources came back.
            assert (await scheduler.status()).cpus_free == 2
    assert (_output(data_dir, job.id) / "runs").read_text() == "run\nrun\n"


async def _attempt_running(scheduler: fetchml.Scheduler, job_id: int, attempt: int) -> bool:
    job = await scheduler.get(job_id)
    return job.state is JobState.RUNNING and job.attempts == attempt


async def _events_until(
    scheduler: fetchml.Scheduler, job_id: int, seq: int
) -> AsyncIterator[fetchml.JobEvent]:
    async with scheduler.subscribe(job_id=job_id, since=0) as events:
        async for event in events:
            yield event
            if event.seq >= seq:
                return


async def test_requeue_after_vanishing_does_not_spend_a_retry(data_dir: Path) -> None:
    # Attempt 1 vanishes (killed while the server is down), attempt 2 fails, attempt 3 succeeds:
    # with max_retries=1 that is one failure, one retry.
    script = (
        "n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; "
        'if [ "$n" -eq 1 ]; then exec sleep 30; fi; test "$n" -ge 3'
    )
    with trio.fail_after(20):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(sh(script, max_retries=1), user="a")
            await until_started(scheduler, data_dir, job.id)
        kill_job_group(data_dir, job.id, attempt=1)
        async with open_sched(data_dir) as scheduler:
            done = await scheduler.wait(job.id)
    assert done.state is JobState.SUCCEEDED, done.reason
    assert done.requeues == 1
    assert done.attempts == 3


async def test_run_without_a_pid_file_is_found_not_started_twice(data_dir: Path) -> None:
    # The server died after starting the supervisor but before it wrote its pid file (a window of
    # about a process start).  The run is still going: it must be adopted, not run again.
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(sh("echo run >> runs; " + WAIT_FOR_GO), user="a")
            await until_started(scheduler, data_dir, job.id)
        (data_dir / "jobs" / str(job.id) / "pid.1").unlink()
        supervisors = job_processes(data_dir, job.id)[0]
        assert len(supervisors) == 1
        async with open_sched(data_dir) as scheduler:
            await trio.sleep(0.2)
            again = await scheduler.get(job.id)
            assert again.state is JobState.RUNNING
            assert (again.attempts, again.requeues) == (1, 0)
            assert job_processes(data_dir, job.id)[0] == supervisors  # one run, the same
            (_output(data_dir, job.id) / "go").touch()
            done = await scheduler.wait(job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 1
    assert (_output(data_dir, job.id) / "runs").read_text() == "run\n"


async def test_queued_jobs_come_back_in_the_same_order(data_dir: Path, tmp_path: Path) -> None:
    order = tmp_path / "order"
    plan = [("a", 1), ("b", 5), ("c", 10), ("d", 5), ("e", 10), ("f", 1), ("g", 5)]
    with trio.fail_after(20):
        async with open_sched(data_dir, cpus=1) as scheduler:
            blocker = await scheduler.submit({"command": ["sleep", "30"]}, user="a")
            await until_started(scheduler, data_dir, blocker.id)
            ids = {
                name: (
                    await scheduler.submit(sh(f"echo {name} >> {order}", priority=p), user="b")
                ).id
                for name, p in plan
            }
        blocker_pid = job_processes(data_dir, blocker.id)[1]
        async with open_sched(data_dir, cpus=1) as scheduler:
            assert (await scheduler.status()).counts == {"running": 1, "queued": len(plan)}
            # The blocker was adopted, not restarted.
            assert job_processes(data_dir, blocker.id)[1] == blocker_pid
            assert (await scheduler.get(blocker.id)).attempts == 1
            await scheduler.cancel(blocker.id, user="a")
            done = [await scheduler.wait(job_id) for job_id in ids.values()]
    assert all(job.state is JobState.SUCCEEDED for job in done)
    assert order.read_text().split() == ["c", "e", "b", "d", "g", "a", "f"]


async def test_timeout_still_applies_after_restart(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": ["sleep", "30"], "timeout_s": 0.6}, user="a")
            await until_started(scheduler, data_dir, job.id)
        async with open_sched(data_dir) as scheduler:
            done = await scheduler.wait(job.id)
    assert done.state is JobState.TIMED_OUT
    assert done.started_at is not None
    assert done.finished_at is not None
    assert 0.55 <= done.finished_at - done.started_at < 2.5


async def test_restart_with_nothing_running_is_quiet(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": ["true"]}, user="a")
            done = await scheduler.wait(job.id)
            last = (await scheduler.status()).last_seq
        async with open_sched(data_dir) as scheduler:
            assert await scheduler.get(job.id) == done
            status = await scheduler.status()
            assert status.last_seq == last  # recovery itself changed nothing
            assert status.counts == {}
            new = await scheduler.submit({"command": ["true"]}, user="a")
            assert new.id == job.id + 1
            assert new.seq == last + 1
            assert (await until_state(scheduler, new.id, JobState.SUCCEEDED)).exit_code == 0
