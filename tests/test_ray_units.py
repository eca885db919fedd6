"""The Ray backend's parts that need no cluster: entrypoint quoting, ids, error sorting, the log
pump, the pool's resizing, and the scheduler with a backend whose capacity changes (a fake)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import until, until_state

import fetchml
from fetchml import Job, JobSpec, JobState, Resources
from fetchml._config import SchedulerSettings, make_config
from fetchml.actors import _runtime
from fetchml.actors._queue import Pool
from fetchml.actors.backends import Backend, Capacity, Ended
from fetchml.actors.backends._ray import _instance_id, entrypoint, submission_id
from fetchml.actors.backends._ray_client import (
    RayDuplicate,
    RayNotFound,
    RayRejected,
    RayUnavailable,
    _from_runtime_error,
    _translated,
)
from fetchml.actors.backends._ray_logs import LogPump
from fetchml.errors import BackendUnavailableError, ConfigError

# --- entrypoint and ids -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["plain", "args"],
        ["with space", "it's", 'say "hi"', "$HOME", "`id`", "a;b", "*", ""],
        ["--lr=0.1", "\\back\\slash", "new\nline"],
    ],
)
def test_entrypoint_passes_the_argv_through_the_shell_unchanged(
    argv: list[str], tmp_path: Path
) -> None:
    spec = JobSpec(command=[sys.executable, "-c", "import sys; print(sys.argv[1:])", *argv])
    out = subprocess.run(
        ["/bin/sh", "-c", entrypoint(spec)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == repr(argv)


def test_entrypoint_runs_in_cwd_and_shell_jobs_get_sh(tmp_path: Path) -> None:
    odd = tmp_path / "a dir 'with' quotes"
    odd.mkdir()
    spec = JobSpec(command="pwd; echo $((1 + 2))", shell=True, cwd=str(odd))
    out = subprocess.run(
        ["/bin/sh", "-c", entrypoint(spec)], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[:2] == [str(odd), "3"]
    missing = JobSpec(command=["true"], cwd=str(tmp_path / "nope"))
    failed = subprocess.run(["/bin/sh", "-c", entrypoint(missing)], capture_output=True)
    assert failed.returncode != 0


def test_instance_id_is_made_once_per_data_dir(tmp_path: Path) -> None:
    first = _instance_id(tmp_path / "a")
    assert first == _instance_id(tmp_path / "a")
    assert first != _instance_id(tmp_path / "b")
    assert submission_id(first, 12, 3) == f"fetchml-{first}-12-3"


# --- sorting Ray's errors -----------------------------------------------------------------

_DUPLICATE = (
    "Request failed with status code 500: Traceback (most recent call last):\n"
    "RuntimeError: Request failed with status code 400: Traceback\n"
    "ValueError: Job with submission_id fetchml-x-1-1 already exists. Please use a different"
)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (_DUPLICATE, RayDuplicate),
        ("Request failed with status code 404: Job x does not exist.", RayNotFound),
        ("Request failed with status code 503: unavailable", RayUnavailable),
        ("Request failed with status code 500: No available agent to submit job", RayUnavailable),
        ("Request failed with status code 400: bad runtime_env", RayRejected),
        ("Request failed with status code 500: Traceback ... KeyError", RayRejected),
        ("Version check returned 404. Please ensure the cluster is running Ray", RayUnavailable),
    ],
)
def test_ray_http_errors_are_sorted(text: str, kind: type[Exception]) -> None:
    assert type(_from_runtime_error(RuntimeError(text))) is kind


def test_connection_errors_mean_unavailable() -> None:
    with pytest.raises(RayUnavailable, match="refused"), _translated("asking"):
        raise ConnectionRefusedError("connection refused")
    with pytest.raises(RayUnavailable), _translated("asking"):
        raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:1.")
    with pytest.raises(KeyError), _translated("asking"):
        raise KeyError("a bug stays a bug")


# --- the log pump -------------------------------------------------------------------------


def _stream_of(chunks: list[str], *, then_hang: bool = False) -> Any:
    async def stream(_: str) -> AsyncGenerator[str, None]:
        for chunk in chunks:
            yield chunk
        if then_hang:
            await asyncio.sleep(3600)

    return stream


async def test_log_pump_appends_the_stream_skipping_what_the_file_has(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"earlier attempt\n")
    pump = LogPump(_stream_of(["héllo\n", "wor", "ld\n"]))
    tail = pump.follow("sid", path, 0)
    with trio.fail_after(5):
        await tail.done.wait()
    assert tail.clean
    assert tail.position == len("héllo\nworld\n".encode())
    # The same stream again, for a run whose first 8 bytes are in the file: only the rest.
    again = pump.follow("sid", path, 8)
    with trio.fail_after(5):
        await again.done.wait()
    assert path.read_bytes() == "earlier attempt\nhéllo\nworld\n".encode() + b"orld\n"
    assert again.position == tail.position


async def test_log_pump_cancel_stops_a_stream_and_the_thread_goes(tmp_path: Path) -> None:
    import threading

    pump = LogPump(_stream_of(["line\n"], then_hang=True))
    tail = pump.follow("sid", tmp_path / "log", 0)
    await until(lambda: (tmp_path / "log").exists() and tail.position == 5)
    assert not tail.done.is_set()
    pump.cancel(tail)
    with trio.fail_after(5):
        await tail.done.wait()
    assert not tail.clean
    assert tail.error == "stopped"
    await until(lambda: not any(t.name == "fetchml-ray-logs" for t in threading.enumerate()))
    # Cancelled before it could start: it ends all the same.
    early = pump.follow("sid", tmp_path / "log", 0)
    pump.cancel(early)
    with trio.fail_after(5):
        await early.done.wait()


async def test_log_pump_reports_a_broken_stream(tmp_path: Path) -> None:
    async def broken(_: str) -> AsyncGenerator[str, None]:
        yield "part\n"
        raise RuntimeError("WebSocket connection closed unexpectedly")

    tail = LogPump(broken).follow("sid", tmp_path / "log", 0)
    with trio.fail_after(5):
        await tail.done.wait()
    assert not tail.clean
    assert tail.error is not None
    assert "closed unexpectedly" in tail.error
    assert tail.position == 5


# --- the pool when the capacity changes ---------------------------------------------------


def test_pool_resize_keeps_what_running_jobs_hold() -> None:
    pool = Pool(4, 1000, [0, 1])
    gpu_job = Resources(cpus=1, gpus=2)
    held = pool.take(gpu_job)
    pool.take(Resources(cpus=2, memory_mb=600))
    assert held == (0, 1)
    pool.resize(2, 500, [0])  # a node left: less than what runs now
    assert (pool.cpus_free, pool.free_memory_mb, pool.free_gpus) == (-1, -100, [])
    pool.resize(0, 0, [], known=False)  # the cluster vanished
    assert pool.check_feasible(Resources(cpus=2, gpus=1)) is None  # judged by the last known
    assert pool.check_feasible(Resources(cpus=3)) is not None
    pool.resize(4, 1000, [0, 1])  # back
    assert pool.free_gpus == []  # both still held
    pool.give(gpu_job, held)
    assert pool.free_gpus == [0, 1]
    assert pool.cpus_free == 2


def test_pool_of_unknown_capacity_accepts_any_job_but_starts_none() -> None:
    pool = Pool(0, 0, [], known=False)
    assert pool.check_feasible(Resources(cpus=64, gpus=8)) is None
    pool.resize(8, 100, [0, 1, 2])
    assert pool.check_feasible(Resources(gpus=4)) is not None


def test_ray_settings_parse_and_bad_keys_are_named() -> None:
    config = make_config(backend="ray", ray={"address": "http://head:8265", "poll_interval_s": 2})
    assert config.executor.backend == "ray"
    assert (config.executor.ray.address, config.executor.ray.poll_interval_s) == (
        "http://head:8265",
        2.0,
    )
    assert make_config().executor.backend == "local"
    with pytest.raises(ConfigError, match=r"executor\.ray\.bogus"):
        make_config(backend="ray", ray={"bogus": 1})
    with pytest.raises(ConfigError, match=r"executor\.ray\.poll_interval_s"):
        make_config(ray={"poll_interval_s": 0})


def test_capacity_limits_prefer_explicit_settings() -> None:
    capacity = Capacity(cpus=16, memory_mb=64000, gpus=2)
    assert capacity.limits(SchedulerSettings()) == (16, 64000, (0, 1))
    explicit = SchedulerSettings(cpus=4, memory_mb=100, gpus=[5])
    assert capacity.limits(explicit) == (4, 100, (5,))
    assert Capacity.unavailable("gone").limits(explicit) == (0, 0, ())


# --- the scheduler with a backend whose capacity changes ----------------------------------


@dataclass(eq=False)
class _FakeRun:
    job_id: int
    done: trio.Event = field(default_factory=trio.Event)
    code: int = 0


class _FakeCluster(Backend[_FakeRun]):
    """Runs finish when the test says; the capacity and reachability are the test's to set."""

    def __init__(self) -> None:
        self.capacity_refresh_s = 0.05
        self.now = Capacity.unavailable("fake cluster unreachable")
        self.runs: dict[int, _FakeRun] = {}
        self.unavailable_starts = 0
        self.fail_next_start = False
        self.most_at_once = 0

    async def finish(self, job_id: int) -> None:
        """End the run of ``job_id`` successfully, once it has started: the job is marked
        running when the executor takes it, a moment before the backend's ``start`` runs."""
        await until(lambda: job_id in self.runs)
        self.runs[job_id].done.set()

    async def capacity(self) -> Capacity:
        return self.now

    async def start(self, job: Job) -> _FakeRun:
        if self.now.problem is not None or self.fail_next_start:
            # As a real cluster: gone for the capacity reads too, from now on.
            self.fail_next_start = False
            self.now = Capacity.unavailable("fake cluster unreachable")
            self.unavailable_starts += 1
            raise BackendUnavailableError("fake cluster unreachable")
        run = self.runs[job.id] = _FakeRun(job.id)
        running = sum(not r.done.is_set() for r in self.runs.values())
        self.most_at_once = max(self.most_at_once, running)
        return run

    async def adopt(self, job: Job) -> _FakeRun | Ended:
        return Ended(None)

    async def wait(self, run: _FakeRun) -> int | None:
        await run.done.wait()
        return run.code

    async def terminate(self, run: _FakeRun, grace: float) -> None:
        run.code = 143
        run.done.set()

    def release(self, run: _FakeRun) -> None:
        pass


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> _FakeCluster:
    cluster = _FakeCluster()

    async def make_backend(config: Any) -> _FakeCluster:
        return cluster

    monkeypatch.setattr(_runtime, "_make_backend", make_backend)
    return cluster


async def test_an_unreachable_cluster_queues_jobs_and_says_so(
    data_dir: Path, fake_cluster: _FakeCluster
) -> None:
    with trio.fail_after(10):
        async with fetchml.open_scheduler(data_dir=str(data_dir)) as scheduler:
            job = await scheduler.submit({"command": ["x"], "resources": {"gpus": 4}}, user="a")
            free = await scheduler.submit({"command": ["x"], "resources": {"cpus": 0}}, user="a")
            # The backend's problem was the scheduler's first message, and each submit is
            # answered after its own pass's dispatch: no pass dispatches while it stands.
            assert (await scheduler.get(job.id)).state is JobState.QUEUED
            assert (await scheduler.get(free.id)).state is JobState.QUEUED  # even needing nothing
            assert fake_cluster.unavailable_starts == 0
            status = await scheduler.status()
            assert status.backend_status == "fake cluster unreachable"
            assert status.cpus_total == 0
            fake_cluster.now = Capacity(cpus=8, memory_mb=1000, gpus=4)
            await until_state(scheduler, job.id, JobState.RUNNING)
            status = await scheduler.status()
            assert status.backend_status is None
            assert (status.cpus_total, status.gpus_total) == (8, [0, 1, 2, 3])
            await fake_cluster.finish(job.id)
            assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
            await until_state(scheduler, free.id, JobState.RUNNING)
            await fake_cluster.finish(free.id)
            too_big = {"command": ["x"], "resources": {"gpus": 5}}
            with pytest.raises(fetchml.InvalidSpecError):
                await scheduler.submit(too_big, user="a")


async def test_a_start_on_an_unreachable_cluster_requeues_without_spending_a_retry(
    data_dir: Path, fake_cluster: _FakeCluster
) -> None:
    fake_cluster.now = Capacity(cpus=2, memory_mb=1000, gpus=0)
    with trio.fail_after(10):
        async with fetchml.open_scheduler(data_dir=str(data_dir)) as scheduler:
            fake_cluster.fail_next_start = True  # it goes away just as the job starts
            job = await scheduler.submit({"command": ["x"], "max_retries": 0}, user="a")
            await until(lambda: fake_cluster.unavailable_starts == 1)
            # The executor reports the capacity (none) before the run's end, so the pass that
            # requeues the job already knows and does not start it again: back to queued it
            # stays, in the same commit.
            queued = await until_state(scheduler, job.id, JobState.QUEUED)
            assert queued.state is JobState.QUEUED
            assert (queued.attempts, queued.requeues) == (0, 0)
            assert queued.reason is not None
            assert "fake cluster unreachable" in queued.reason
            assert fake_cluster.unavailable_starts == 1  # not retried at once: capacity is 0
            assert (await scheduler.status()).backend_status is not None
            fake_cluster.now = Capacity(cpus=2, memory_mb=1000, gpus=0)  # back
            await until_state(scheduler, job.id, JobState.RUNNING)
            await fake_cluster.finish(job.id)
            done = await scheduler.wait(job.id)
            assert (done.state, done.attempts, done.requeues) == (JobState.SUCCEEDED, 1, 0)


async def test_the_cluster_capacity_bounds_what_runs_at_once(
    data_dir: Path, fake_cluster: _FakeCluster
) -> None:
    fake_cluster.now = Capacity(cpus=3, memory_mb=1000, gpus=0)
    with trio.fail_after(15):
        async with fetchml.open_scheduler(data_dir=str(data_dir)) as scheduler:
            jobs = [await scheduler.submit({"command": ["x"]}, user="a") for _ in range(12)]
            while len(fake_cluster.runs) < len(jobs):
                await until(lambda: any(not r.done.is_set() for r in fake_cluster.runs.values()))
                for run in list(fake_cluster.runs.values()):
                    run.done.set()
                await trio.sleep(0.02)
            fake_cluster.now = Capacity(cpus=1, memory_mb=1000, gpus=0)  # nodes left
            for run in fake_cluster.runs.values():
                run.done.set()
            for job in jobs:
                assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED
    assert fake_cluster.most_at_once == 3
