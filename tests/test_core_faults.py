"""A fault in one request or one job stays there; whatever is in the store, the scheduler starts.

Faults of the server's own code are injected at the seams a bug would come through (a backend,
one handler); stored rows are written as an older version or a damaged disk would have left them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from helpers.core import open_sched, until

import fetchml
from fetchml import ConfigError, InternalError, Job, JobSpec, JobState, Resources, StoreError
from fetchml.actors import LocalBackend, _runtime
from fetchml.actors._scheduler import SchedulerActor
from fetchml.actors.backends import LocalRun
from fetchml.store import DB_NAME

TRUE = ["/bin/true"]


def _store_rows(data_dir: Path, rows: list[tuple[int, str, str, object]]) -> None:
    """Write job rows (id, user, state, data) straight into the store, as a bug or an older
    version could have left them."""
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        for number, (job_id, user, state, data) in enumerate(rows, start=seq + 1):
            conn.execute(
                "INSERT INTO jobs(id, user, state, seq, data) VALUES (?, ?, ?, ?, ?)",
                (job_id, user, state, number, data),
            )


def _encoded(job_id: int, command: list[str], **spec: Any) -> bytes:
    """A queued job's record as msgpack, built without any validation."""
    job = Job(
        id=job_id,
        user="alice",
        spec=JobSpec(command=command, **spec),
        state=JobState.QUEUED,
        created_at=1.0,
    )
    return msgspec.msgpack.encode(job)


async def _normal_job_succeeds(scheduler: fetchml.Scheduler) -> None:
    job = await scheduler.submit({"command": TRUE}, user="alice")
    assert (await scheduler.wait(job.id)).state is JobState.SUCCEEDED


async def test_whatever_is_stored_the_scheduler_starts_and_each_bad_job_ends_with_its_reason(
    data_dir: Path, internal_errors: list[logging.LogRecord]
) -> None:
    with trio.fail_after(20):
        async with open_sched(data_dir) as scheduler:
            await _normal_job_succeeds(scheduler)  # job 1; creates the store
        _store_rows(
            data_dir,
            [
                # A NUL in argv (stored before validation refused it): crashed every start.
                (2, "alice", "queued", _encoded(2, ["echo", "a\0b"])),
                # More cpus than this server has (2): would wait for ever, holding up the queue.
                (3, "alice", "queued", _encoded(3, TRUE, resources=Resources(cpus=500))),
                # Beyond today's bounds: the record no longer decodes.
                (4, "alice", "queued", _encoded(4, TRUE, resources=Resources(cpus=1e308))),
                (5, "bob", "running", b"\xc1 not msgpack"),
                (6, "alice", "queued", _encoded(6, TRUE, depends_on=[4])),
                (7, "carol", "succeeded", b"garbage"),
                (8, "alice", "queued", 12345),
            ],
        )
        async with open_sched(data_dir) as scheduler:
            nul = await scheduler.get(2)
            assert nul.state is JobState.FAILED
            assert nul.reason == "could not start: command[1]: contains a NUL byte (at index 1)"
            big = await scheduler.get(3)
            assert big.state is JobState.FAILED
            assert big.reason is not None
            assert big.reason.startswith("cannot run on this server: resources.cpus: 500")
            for job_id, user in ((4, "alice"), (5, "bob"), (8, "alice")):
                lost = await scheduler.get(job_id)
                assert (lost.state, lost.user) == (JobState.LOST, user)
                assert lost.reason is not None
                assert "its stored record could not be read" in lost.reason
            dependent = await scheduler.get(6)
            assert (dependent.state, dependent.reason) == (JobState.CANCELLED, "dependency 4 lost")
            # A terminal row that cannot be read is shown as lost, and reported once.
            assert (await scheduler.get(7)).state is JobState.LOST
            assert [job.id for job in await scheduler.list(user="carol")] == [7]
            await _normal_job_succeeds(scheduler)
        assert [r.getMessage().startswith("internal error in store") for r in internal_errors] == [
            True
        ]
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            aside = conn.execute("SELECT job_id, data FROM quarantine ORDER BY job_id").fetchall()
        assert [job_id for job_id, _ in aside] == [4, 5, 8]
        assert aside[1][1] == b"\xc1 not msgpack"  # the record itself is kept
        # The next start finds nothing left to set aside.
        async with open_sched(data_dir) as scheduler:
            await _normal_job_succeeds(scheduler)
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 3


class _FaultyBackend(LocalBackend):
    """The local backend with a bug: following a job named ``boom`` fails, and starting one
    named ``nostart`` fails with an error no backend should raise."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.names: dict[int, str | None] = {}

    async def start_then(self, job: Job, after: Callable[[], None]) -> LocalRun:
        # What the executor calls to start a run (start itself is start_then with nothing after).
        if job.spec.name == "nostart":
            raise RuntimeError("a bug in start")
        self.names[job.id] = job.spec.name
        return await super().start_then(job, after)

    async def wait(self, run: LocalRun) -> int | None:
        if self.names.get(run.job_id) == "boom":
            await trio.sleep(0.05)
            raise RuntimeError("a bug in wait")
        return await super().wait(run)


@pytest.fixture
def faulty_backend(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> _FaultyBackend:
    backend = _FaultyBackend(data_dir)

    async def make_backend(config: Any) -> _FaultyBackend:
        return backend

    monkeypatch.setattr(_runtime, "_make_backend", make_backend)
    return backend


async def test_a_fault_while_running_one_job_fails_that_job_and_the_executor_goes_on(
    data_dir: Path, faulty_backend: _FaultyBackend, internal_errors: list[logging.LogRecord]
) -> None:
    with trio.fail_after(20):
        async with open_sched(data_dir) as scheduler:
            boom = await scheduler.submit({"command": ["sleep", "30"], "name": "boom"}, user="a")
            nostart = await scheduler.submit({"command": TRUE, "name": "nostart"}, user="a")
            ended = await scheduler.wait(boom.id)
            assert ended.state is JobState.FAILED
            assert ended.reason == (
                "internal error while running the job (the details are in the server log)"
            )
            failed = await scheduler.wait(nostart.id)
            assert failed.state is JobState.FAILED
            assert failed.reason == (
                "could not start: internal error (the details are in the server log)"
            )
            # The run the fault left behind was stopped, not left running unaccounted for.
            pid_file = data_dir / "jobs" / str(boom.id) / "exit.1"
            await until(pid_file.exists, within=10)
            await _normal_job_succeeds(scheduler)
            assert (await scheduler.status()).cpus_free == 2
    where = sorted(getattr(r, "fetchml_internal_error", "") for r in internal_errors)
    assert where == ["executor", "executor"]
    assert all(r.exc_info for r in internal_errors)  # with the traceback


async def test_a_fault_while_handling_one_request_answers_only_that_request(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, internal_errors: list[logging.LogRecord]
) -> None:
    original = SchedulerActor._submit

    def buggy_submit(self: SchedulerActor, spec: JobSpec, *args: Any) -> Job:
        if spec.name == "boom":
            raise KeyError("a bug in submit")
        return original(self, spec, *args)

    monkeypatch.setattr(SchedulerActor, "_submit", buggy_submit)
    results: dict[str, Any] = {}
    with trio.fail_after(20):
        async with open_sched(data_dir) as scheduler:

            async def submit(name: str) -> None:
                try:
                    results[name] = await scheduler.submit(
                        {"command": TRUE, "name": name}, user="alice"
                    )
                except fetchml.FetchMLError as exc:
                    results[name] = exc

            async with trio.open_nursery() as nursery:  # both in one pass, most likely
                for name in ("before", "boom", "after"):
                    nursery.start_soon(submit, name)
            assert isinstance(results["boom"], InternalError)
            assert results["boom"].code == "internal_error"
            assert "a bug" not in results["boom"].message  # the details stay in the log
            for name in ("before", "after"):
                assert (await scheduler.wait(results[name].id)).state is JobState.SUCCEEDED
            await _normal_job_succeeds(scheduler)
    assert len(internal_errors) == 1
    assert "submit by alice" in internal_errors[0].getMessage()


async def test_open_scheduler_raises_setup_errors_as_they_are(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def no_backend(config: Any) -> LocalBackend:
        raise ConfigError("executor.backend: ray is not installed")

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(StoreError):
        async with open_sched(not_a_dir / "data"):
            pytest.fail("started on a store that cannot be opened")
    with pytest.raises(KeyError):  # the caller's own error, not an exception group
        async with open_sched(data_dir):
            raise KeyError("mine")
    monkeypatch.setattr(_runtime, "_make_backend", no_backend)
    with pytest.raises(ConfigError, match="ray is not installed"):
        async with open_sched(data_dir):
            pytest.fail("started without a backend")


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("", "user: must be a non-empty string"),
        ("a\0b", "user: contains a NUL byte (at index 1)"),
        ("\ud800", "user: not valid Unicode (a lone surrogate at index 0)"),
        ("u" * 201, "user: longer than 200 characters"),
    ],
)
async def test_a_hostile_user_name_is_refused_naming_the_field(
    data_dir: Path, user: str, message: str
) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            with pytest.raises(fetchml.InvalidRequestError) as info:
                await scheduler.submit({"command": TRUE}, user=user)
            assert (info.value.field, info.value.message) == ("user", message)
            assert await scheduler.list() == []
