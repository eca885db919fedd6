"""Scheduling and running: order, resources, GPUs, environment, limits, dependencies, retries,
timeouts, exit codes and logs — with real processes and a real store."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from helpers.core import open_sched, rss_kib, sh, until_file, until_state

import fetchml
from fetchml import JobState

LONG = ["sleep", "30"]


async def test_priority_order_then_fifo_with_one_cpu(data_dir: Path, tmp_path: Path) -> None:
    order = tmp_path / "order"
    with trio.fail_after(15):
        async with open_sched(data_dir, cpus=1) as scheduler:
            blocker = await scheduler.submit({"command": LONG, "priority": 1}, user="alice")
            await until_state(scheduler, blocker.id, JobState.RUNNING)
            ids = {}
            for name, priority in [("a", 1), ("b", 5), ("c", 10), ("d", 5), ("e", 10), ("f", 1)]:
                job = await scheduler.submit(
                    sh(f"echo {name} >> {order}", priority=priority), user="bob"
                )
                ids[name] = job.id
            status = await scheduler.status()
            assert status.counts == {"running": 1, "queued": 6}
            assert status.cpus_free == 0
            await scheduler.cancel(blocker.id, user="alice")
            done = [await scheduler.wait(job_id) for job_id in ids.values()]
            assert all(job.state is JobState.SUCCEEDED for job in done)
    assert order.read_text().split() == ["c", "e", "b", "d", "a", "f"]
    by_start = sorted(done, key=lambda job: job.started_at or 0)
    assert [job.id for job in by_start] == [ids[n] for n in "cebdaf"]
    # One cpu: each started after the previous one finished.
    for before, after in itertools.pairwise(by_start):
        assert before.finished_at is not None
        assert after.started_at is not None
        assert after.started_at >= before.finished_at


async def test_job_starts_only_when_cpus_and_memory_fit(data_dir: Path) -> None:
    with trio.fail_after(15):
        async with open_sched(data_dir, cpus=2, memory_mb=1000) as scheduler:
            big = await scheduler.submit({"command": LONG, "resources": {"cpus": 2}}, user="alice")
            small = await scheduler.submit({"command": ["true"]}, user="alice")
            # A submit is answered once the pass that queued the job has dispatched and
            # committed: what get() reads now is that decision, and nothing has changed since.
            assert (await scheduler.get(small.id)).state is JobState.QUEUED
            status = await scheduler.status()
            assert status.cpus_free == 0
            await scheduler.cancel(big.id, user="alice")
            assert (await scheduler.wait(small.id)).state is JobState.SUCCEEDED

            hog = await scheduler.submit(
                {"command": LONG, "resources": {"cpus": 0.5, "memory_mb": 600}}, user="alice"
            )
            await until_state(scheduler, hog.id, JobState.RUNNING)
            hungry = await scheduler.submit(
                {"command": ["true"], "resources": {"cpus": 0.5, "memory_mb": 600}},
                user="alice",
            )
            # CPUs are free, memory is not (the submit's own pass decided so).
            assert (await scheduler.get(hungry.id)).state is JobState.QUEUED
            status = await scheduler.status()
            assert status.cpus_free == 1.5
            assert status.memory_mb_free == 400
            await scheduler.cancel(hog.id, user="alice")
            assert (await scheduler.wait(hungry.id)).state is JobState.SUCCEEDED
            status = await scheduler.status()
            assert (status.cpus_free, status.memory_mb_free) == (2, 1000)


async def test_gpu_ids_are_handed_out_and_visible(data_dir: Path) -> None:
    show = sh('printf "%s|%s\\n" "${CUDA_VISIBLE_DEVICES-unset}" "$FETCHML_JOB_ID" > cvd; sleep 30')
    with trio.fail_after(15):
        async with open_sched(data_dir, cpus=4) as scheduler:
            one = await scheduler.submit({**show, "resources": {"gpus": 1}}, user="alice")
            two = await scheduler.submit({**show, "resources": {"gpus": 1}}, user="alice")
            both = await scheduler.submit({**show, "resources": {"gpus": 2}}, user="alice")
            none = await scheduler.submit(
                sh('printf "%s\\n" "${CUDA_VISIBLE_DEVICES-unset}" > cvd'), user="alice"
            )
            one = await until_state(scheduler, one.id, JobState.RUNNING)
            two = await until_state(scheduler, two.id, JobState.RUNNING)
            assert {one.gpus, two.gpus} == {(0,), (1,)}

            def seen(job: fetchml.Job) -> Path:
                return data_dir / "jobs" / str(job.id) / "output" / "cvd"

            assert await until_file(seen(one)) == f"{one.gpus[0]}|{one.id}\n"
            assert await until_file(seen(two)) == f"{two.gpus[0]}|{two.id}\n"
            # A job without GPUs sees CUDA_VISIBLE_DEVICES set to "" (no GPU at all) and is not
            # held up by the 2-GPU job waiting ahead of it.
            done = await scheduler.wait(none.id)
            assert done.state is JobState.SUCCEEDED
            assert done.gpus == ()
            assert seen(none).read_text() == "\n"
            status = await scheduler.status()
            assert status.gpus_total == [0, 1]
            assert status.gpus_free == []

            # The cancel is answered by the pass that freed one's GPU, after its dispatch.
            await scheduler.cancel(one.id, user="alice")
            assert (await scheduler.get(both.id)).state is JobState.QUEUED  # needs both
            await scheduler.cancel(two.id, user="alice")
            running = await until_state(scheduler, both.id, JobState.RUNNING)
            assert running.gpus == (0, 1)
            assert await until_file(seen(both)) == f"0,1|{both.id}\n"
            await scheduler.cancel(both.id, user="alice")
            assert (await scheduler.status()).gpus_free == [0, 1]


async def test_cpu_job_is_not_held_up_by_a_waiting_gpu_job(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir, cpus=4) as scheduler:
            gpu = await scheduler.submit({"command": LONG, "resources": {"gpus": 1}}, user="a")
            wide = await scheduler.submit({"command": LONG, "resources": {"gpus": 2}}, user="a")
            await until_state(scheduler, gpu.id, JobState.RUNNING)
            cpu_only = await scheduler.submit({"command": ["true"]}, user="a")
            # 3 cpus free and no GPU needed: nothing stops it.
            with trio.fail_after(2):
                assert (await scheduler.wait(cpu_only.id)).state is JobState.SUCCEEDED
            assert (await scheduler.get(wide.id)).state is JobState.QUEUED
            await scheduler.cancel(wide.id, user="a")
            await scheduler.cancel(gpu.id, user="a")


async def test_environment_output_dir_and_cwd(data_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    script = (
        'printf "%s\\n" "$FETCHML_JOB_ID" "$FETCHML_OUTPUT_DIR" "$FOO" "$(pwd)" > env.txt; '
        'test -d "$FETCHML_OUTPUT_DIR" && touch "$FETCHML_OUTPUT_DIR/made-it"'
    )
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(
                sh(script, env={"FOO": "bar baz"}, cwd=str(workdir)), user="alice"
            )
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
            # Without cwd, a job runs in its output dir; argv is not a shell.
            plain = await scheduler.submit(
                {"command": ["sh", "-c", "pwd > where; echo '$HOME' > literal"]}, user="alice"
            )
            assert (await scheduler.wait(plain.id)).state is JobState.SUCCEEDED
            missing = await scheduler.submit(
                {"command": ["true"], "cwd": str(tmp_path / "nope")}, user="alice"
            )
            gone = await scheduler.wait(missing.id)
    output = data_dir / "jobs" / str(job.id) / "output"
    job_id, out_dir, foo, cwd = (workdir / "env.txt").read_text().splitlines()
    assert job_id == str(job.id)
    assert Path(out_dir) == output
    assert (output / "made-it").exists()
    assert foo == "bar baz"
    assert Path(cwd) == workdir
    plain_out = data_dir / "jobs" / str(plain.id) / "output"
    assert Path((plain_out / "where").read_text().strip()) == plain_out
    assert (plain_out / "literal").read_text() == "$HOME\n"
    assert gone.state is JobState.FAILED
    assert gone.exit_code == 126


async def test_a_relative_data_dir_works_from_any_job_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make serve` runs with the default data_dir "data", relative to the server's directory,
    # while the job's supervisor runs in the job's own cwd (its output dir by default).
    monkeypatch.chdir(tmp_path)
    with trio.fail_after(10):
        async with open_sched(Path("data")) as scheduler:
            job = await scheduler.submit({"command": ["true"]}, user="alice")
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("command", "state", "code"),
    [
        (["true"], JobState.SUCCEEDED, 0),
        (["false"], JobState.FAILED, 1),
        (["sh", "-c", "exit 42"], JobState.FAILED, 42),
        (["/no/such/program"], JobState.FAILED, 127),
    ],
    ids=["0", "1", "42", "127"],
)
async def test_exit_codes_are_recorded(
    data_dir: Path, command: list[str], state: JobState, code: int
) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": command}, user="alice")
            done = await scheduler.wait(job.id)
    assert done.state is state
    assert done.exit_code == code
    assert done.attempts == 1
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at >= done.started_at >= done.created_at


async def test_shell_jobs(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(
                {"command": "echo one two | wc -w; exit 3", "shell": True}, user="alice"
            )
            done = await scheduler.wait(job.id)
            log = b"".join([chunk async for chunk in scheduler.logs(job.id)])
    assert done.exit_code == 3
    assert log.strip() == b"2"


async def test_per_user_cap_on_running_jobs(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir, cpus=4, max_running_per_user=1) as scheduler:
            a1 = await scheduler.submit({"command": LONG}, user="alice")
            a2 = await scheduler.submit({"command": ["true"]}, user="alice")
            b1 = await scheduler.submit({"command": LONG}, user="bob")
            await until_state(scheduler, a1.id, JobState.RUNNING)
            await until_state(scheduler, b1.id, JobState.RUNNING)
            # b1's submit pass dispatched after a2's: both passes left a2 queued.
            assert (await scheduler.get(a2.id)).state is JobState.QUEUED
            status = await scheduler.status()
            assert status.running_by_user == {"alice": 1, "bob": 1}
            assert status.queued_by_user == {"alice": 1}
            assert status.cpus_free == 2
            await scheduler.cancel(a1.id, user="alice")
            assert (await scheduler.wait(a2.id)).state is JobState.SUCCEEDED
            await scheduler.cancel(b1.id, user="bob")


async def test_dependency_starts_after_success(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir, cpus=2) as scheduler:
            first = await scheduler.submit({"command": ["sleep", "0.3"]}, user="alice")
            second = await scheduler.submit({"command": ["true"]}, user="alice")
            after = await scheduler.submit(
                {"command": ["true"], "depends_on": [first.id, second.id]}, user="alice"
            )
            assert after.state is JobState.QUEUED  # a cpu is free, but it waits
            done_first = await scheduler.wait(first.id)
            done_after = await scheduler.wait(after.id)
            # On a job that already succeeded: starts at once.
            late = await scheduler.submit({"command": ["true"], "depends_on": [first.id]}, user="b")
            assert (await scheduler.wait(late.id)).state is JobState.SUCCEEDED
    assert done_after.state is JobState.SUCCEEDED
    assert done_after.started_at is not None
    assert done_first.finished_at is not None
    assert done_after.started_at >= done_first.finished_at


async def test_failed_dependency_cancels_dependents_in_cascade(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir, cpus=1) as scheduler:
            root = await scheduler.submit({"command": ["sh", "-c", "sleep 0.2; exit 1"]}, user="a")
            child = await scheduler.submit({"command": ["true"], "depends_on": [root.id]}, user="a")
            grandchild = await scheduler.submit(
                {"command": ["true"], "depends_on": [child.id]}, user="a"
            )
            other = await scheduler.submit({"command": ["true"]}, user="a")
            assert (await scheduler.wait(root.id)).state is JobState.FAILED
            c = await scheduler.wait(child.id)
            g = await scheduler.wait(grandchild.id)
            assert (await scheduler.wait(other.id)).state is JobState.SUCCEEDED
            # Submitted after the dependency failed: cancelled at once.
            late = await scheduler.submit({"command": ["true"], "depends_on": [root.id]}, user="a")
    assert c.state is JobState.CANCELLED
    assert c.reason is not None
    assert str(root.id) in c.reason
    assert "failed" in c.reason
    assert g.state is JobState.CANCELLED
    assert g.reason is not None
    assert str(child.id) in g.reason
    assert "cancelled" in g.reason
    assert c.attempts == g.attempts == 0
    assert late.state is JobState.CANCELLED
    assert late.reason is not None
    assert str(root.id) in late.reason


async def test_cancelled_dependency_cancels_dependent(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            running = await scheduler.submit({"command": LONG}, user="a")
            waiting = await scheduler.submit(
                {"command": ["true"], "depends_on": [running.id]}, user="a"
            )
            await scheduler.cancel(running.id, user="a")
            done = await scheduler.wait(waiting.id)
            # A queued dependency cancelled by hand works the same way.
            blocked = await scheduler.submit(
                {"command": LONG, "depends_on": [waiting.id]}, user="a"
            )
    assert done.state is JobState.CANCELLED
    assert done.reason == f"dependency {running.id} cancelled"
    assert blocked.state is JobState.CANCELLED


async def test_retries_count_attempts_and_succeed_later(data_dir: Path) -> None:
    # Each attempt bumps a counter in the output dir (the default cwd); the third one succeeds.
    script = 'n=$(( $(cat count 2>/dev/null || echo 0) + 1 )); echo $n > count; test "$n" -ge 3'
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            ok = await scheduler.submit(sh(script, max_retries=2), user="a")
            short = await scheduler.submit(sh(script, max_retries=1), user="a")
            never = await scheduler.submit({"command": ["false"]}, user="a")
            done_ok = await scheduler.wait(ok.id)
            done_short = await scheduler.wait(short.id)
            done_never = await scheduler.wait(never.id)
    assert done_ok.state is JobState.SUCCEEDED
    assert done_ok.attempts == 3
    assert done_ok.exit_code == 0
    assert done_short.state is JobState.FAILED
    assert done_short.attempts == 2
    assert done_short.exit_code == 1
    assert done_never.state is JobState.FAILED
    assert done_never.attempts == 1


async def test_cancellation_never_spends_a_retry(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": LONG, "max_retries": 3}, user="a")
            # Answered by the pass that ended the job (a retry would have been decided there);
            # an ended job is out of the scheduler's memory, so no later pass can touch it.
            cancelled = await scheduler.cancel(job.id, user="a")
            again = await scheduler.get(job.id)
    assert cancelled.state is JobState.CANCELLED
    assert again == cancelled
    assert again.attempts == 1


async def test_timeout_gives_timed_out(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(
                {"command": LONG, "timeout_s": 0.3, "max_retries": 2}, user="a"
            )
            quick = await scheduler.submit({"command": ["true"], "timeout_s": 5}, user="a")
            done = await scheduler.wait(job.id)
            assert (await scheduler.wait(quick.id)).state is JobState.SUCCEEDED
    assert done.state is JobState.TIMED_OUT
    assert done.reason is not None
    assert "timed out" in done.reason
    assert done.attempts == 1
    assert done.started_at is not None
    assert done.finished_at is not None
    assert 0.25 <= done.finished_at - done.started_at < 2


async def test_logs_capture_stdout_and_stderr(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(sh("echo out; echo err >&2; echo out2"), user="a")
            await scheduler.wait(job.id)
            log = b"".join([chunk async for chunk in scheduler.logs(job.id)])
            tail = b"".join([chunk async for chunk in scheduler.logs(job.id, offset=4)])
            with pytest.raises(fetchml.JobNotFoundError):
                async for _ in scheduler.logs(999):
                    pass
    assert log == b"out\nerr\nout2\n"
    assert tail == b"err\nout2\n"
    assert scheduler.log_path(job.id).read_bytes() == log


async def test_logs_follow_a_running_job(data_dir: Path) -> None:
    script = "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second"
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(sh(script), user="a")
            chunks: list[bytes] = []
            async for chunk in scheduler.logs(job.id, follow=True):
                chunks.append(chunk)
                if b"".join(chunks) == b"first\n":
                    # Seen while the job still runs; now let it finish.
                    assert (await scheduler.get(job.id)).state is JobState.RUNNING
                    (data_dir / "jobs" / str(job.id) / "output" / "go").touch()
            # The iteration ended by itself because the job did.
            assert (await scheduler.get(job.id)).state is JobState.SUCCEEDED
    assert b"".join(chunks) == b"first\nsecond\n"


async def test_a_loud_job_does_not_grow_server_memory(data_dir: Path) -> None:
    size = 50_000_000
    with trio.fail_after(30):
        async with open_sched(data_dir) as scheduler:
            before = rss_kib()
            job = await scheduler.submit(sh(f"head -c {size} /dev/zero | tr '\\0' x"), user="a")
            done = await scheduler.wait(job.id)
            total = 0
            async for chunk in scheduler.logs(job.id):
                total += len(chunk)
            after = rss_kib()
    assert done.state is JobState.SUCCEEDED
    assert total == size
    assert scheduler.log_path(job.id).stat().st_size == size
    assert after - before < 20_000, f"RSS grew from {before} KiB to {after} KiB"


async def test_wait_returns_terminal_jobs(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": ["sleep", "0.2"]}, user="a")
            done = await scheduler.wait(job.id)
            assert done.terminal
            assert done.state is JobState.SUCCEEDED
            assert await scheduler.wait(job.id) == done  # already terminal: at once
            assert await scheduler.get(job.id) == done
            with pytest.raises(fetchml.JobNotFoundError):
                await scheduler.wait(999)


async def test_list_filters(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            a = await scheduler.submit({"command": ["true"]}, user="alice")
            b = await scheduler.submit({"command": ["false"]}, user="bob")
            c = await scheduler.submit({"command": ["true"]}, user="alice")
            for job in (a, b, c):
                await scheduler.wait(job.id)
            assert [j.id for j in await scheduler.list()] == [c.id, b.id, a.id]
            assert [j.id for j in await scheduler.list(user="alice")] == [c.id, a.id]
            assert [j.id for j in await scheduler.list(states=["failed"])] == [b.id]
            assert [j.id for j in await scheduler.list(limit=1)] == [c.id]
            assert [j.id for j in await scheduler.list(before_id=c.id)] == [b.id, a.id]


async def test_methods_of_a_stopped_scheduler_raise_scheduler_closed(data_dir: Path) -> None:
    outcome: list[BaseException] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_sched(data_dir) as scheduler:
            job = await scheduler.submit({"command": LONG}, user="a")
            await until_state(scheduler, job.id, JobState.RUNNING)

            async def waiter() -> None:
                try:
                    await scheduler.wait(job.id)
                except fetchml.SchedulerClosedError as exc:
                    outcome.append(exc)

            nursery.start_soon(waiter)
            await trio.sleep(0.05)
        # The job outlives the scheduler; a wait in progress learns the scheduler stopped.
        assert len(outcome) == 1
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: scheduler.get(job.id),
            lambda: scheduler.list(),
            lambda: scheduler.wait(job.id),
            lambda: scheduler.submit({"command": ["true"]}, user="a"),
            lambda: scheduler.cancel(job.id, user="a"),
            lambda: scheduler.status(),
        ]
        for call in calls:
            with pytest.raises(fetchml.SchedulerClosedError):
                await call()
