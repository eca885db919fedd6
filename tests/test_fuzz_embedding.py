"""Hostile job specs through the embedding API (``fetchml.open_scheduler``) never break it.

Every example opens the scheduler on the same data dir (so each one is also a restart over
everything stored before), submits one hostile spec and checks the outcome: a Job, or an
``InvalidSpecError`` / ``InvalidRequestError`` naming the field, nothing else.  Then the scheduler
still answers ``status``, and a normal job (``/bin/true``) runs to ``succeeded``.

Random specs are run as processes.  They are made harmless (``strategies.harmless``), the
scheduler's ``PATH`` points at an empty folder, relative working directories land in a scratch
folder, and every job process is killed at the end.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import kill_everything_under, open_sched
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    NORMAL_JOB,
    REGRESSIONS,
    Case,
    Regression,
    any_values,
    cases,
    field_under,
    harmless,
    hostile_texts,
    label,
    materialize,
    nameable,
    numbers,
    reported,
)

import fetchml
from fetchml import (
    ConflictError,
    FetchMLError,
    InvalidRequestError,
    InvalidSpecError,
    Job,
    JobSpec,
    JobState,
    Resources,
)

WITHIN = 30.0  # one example, at most (a hang fails it)

# Each example is a whole scheduler start and stop (about 0.35 s on two cores, most of it the
# tracking worker's start-up), so the counts are modest: the same hostile specs (``cases``) also
# go through the gateway's HTTP and WebSocket fuzz tests (150 examples each, on one server), and
# every crasher found so far is pinned below as a regression test.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The data dir; the scheduler finds no program on ``PATH`` and starts in a scratch dir."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.chdir(scratch)
    try:
        yield tmp_path / "data"
    finally:
        kill_everything_under(tmp_path)


# ---- checks -------------------------------------------------------------------------------


def check_refusal(exc: FetchMLError, top: str | None, *, user_ok: bool) -> None:
    """A refusal must be a client error that names what is wrong."""
    assert isinstance(exc.message, str), exc
    assert exc.message, exc
    if not user_ok and not isinstance(exc, InvalidSpecError):
        assert isinstance(exc, InvalidRequestError), f"{type(exc).__name__}: {exc}"
        assert exc.field == "user", f"{type(exc).__name__} field={exc.field!r}: {exc}"
        return
    assert isinstance(exc, InvalidSpecError), f"not an invalid spec: {type(exc).__name__}: {exc}"
    assert exc.code == "invalid_spec"
    if top is not None and nameable(top):
        assert field_under(exc.field, top), f"field {exc.field!r} is not under {top!r}: {exc}"


async def still_works(scheduler: fetchml.Scheduler) -> None:
    """The scheduler answers and runs a normal job to ``succeeded``."""
    status = await scheduler.status()
    assert status.cpus_total > 0
    job = await scheduler.submit(NORMAL_JOB, user="fuzz-normal")
    done = await scheduler.wait(job.id)
    assert done.state is JobState.SUCCEEDED, done


async def cancel_quietly(scheduler: fetchml.Scheduler, job: Job) -> None:
    try:
        cancelled = await scheduler.cancel(job.id, user=job.user)
    except ConflictError:
        return  # it had already ended
    assert cancelled.terminal, cancelled


async def submit_once(data: Path, spec: Any, *, user: Any = "alice") -> Job | FetchMLError:
    """Open the scheduler on ``data``, submit ``spec`` once, check the scheduler still works.

    Returns the job (already cancelled) or the error; anything else raised fails the test.
    """
    outcome: Job | FetchMLError
    with trio.fail_after(WITHIN):
        async with open_sched(data) as scheduler:
            try:
                outcome = await scheduler.submit(spec, user=user)
            except FetchMLError as exc:
                outcome = exc
            else:
                assert isinstance(outcome, Job), outcome
                assert outcome.id >= 1
                assert outcome.user == user
                # Or cancelled at once: it depends on a job an earlier example cancelled.
                cancelled = outcome.state is JobState.CANCELLED and (
                    outcome.reason or ""
                ).startswith("dependency ")
                assert cancelled or outcome.state in (JobState.QUEUED, JobState.RUNNING), outcome
                await cancel_quietly(scheduler, outcome)
            await still_works(scheduler)
    return outcome


def run_case(data: Path, case: Case) -> None:
    with reported(case=case):
        outcome = trio.run(submit_once, data, materialize(case.spec))
        label(type(outcome).__name__)
        if isinstance(outcome, FetchMLError):
            check_refusal(outcome, case.top, user_ok=True)


# ---- properties ---------------------------------------------------------------------------


@FUZZ
@given(case=cases)
def test_hostile_spec_dicts(data: Path, case: Case) -> None:
    run_case(data, case)


hostile_users: st.SearchStrategy[Any] = st.one_of(
    hostile_texts, any_values, st.sampled_from(("", "\x00", "\ud800", "a" * 10_000, 0, None))
)


@settings(FUZZ, max_examples=30)
@given(user=hostile_users)
def test_hostile_users(data: Path, user: Any) -> None:
    with reported(user=user):
        user = materialize(user)
        outcome = trio.run(lambda: submit_once(data, harmless({"command": ["true"]}), user=user))
        if isinstance(outcome, FetchMLError):
            check_refusal(outcome, None, user_ok=False)


class Colour(enum.Enum):
    RED = 1


# Values only Python can hand over: no wire format carries them.
python_only: st.SearchStrategy[Any] = st.sampled_from(
    (
        b"bytes",
        b"\x00",
        bytearray(b"x"),
        memoryview(b"x"),
        ("fz-a", "b"),
        {"fz-a"},
        frozenset({1}),
        1 + 2j,
        decimal.Decimal("1e999"),
        decimal.Decimal("NaN"),
        datetime.datetime(2026, 1, 1),
        datetime.timedelta(days=1),
        Path("/tmp"),
        Colour.RED,
        range(3),
        object(),
        float("nan"),
        ...,
        NotImplemented,
        print,
    )
)

_struct_fields: dict[str, st.SearchStrategy[Any]] = {
    "command": st.one_of(
        st.builds(lambda v: ["true", v], st.one_of(hostile_texts, python_only)),
        st.builds(lambda v: [v], st.text(max_size=5)),
        python_only,
    ),
    "name": st.one_of(hostile_texts, python_only, numbers),
    "shell": st.one_of(python_only, numbers),
    "cwd": st.one_of(hostile_texts, python_only),
    "env": st.one_of(
        st.dictionaries(hostile_texts.filter(lambda k: isinstance(k, str)), hostile_texts),
        st.builds(lambda v: {"FZ_A": v}, python_only),
        python_only,
    ),
    "priority": st.one_of(numbers, python_only),
    "resources": st.one_of(
        st.builds(lambda v: Resources(cpus=v), st.one_of(numbers, python_only)),
        st.builds(lambda v: Resources(memory_mb=v), st.one_of(numbers, python_only)),
        st.builds(lambda v: Resources(gpus=v), st.one_of(numbers, python_only)),
        python_only,
    ),
    "timeout_s": st.one_of(numbers, python_only),
    "max_retries": st.one_of(numbers, python_only),
    "depends_on": st.one_of(st.lists(numbers, max_size=3), python_only),
    "tags": st.one_of(st.lists(st.one_of(hostile_texts, python_only), max_size=3), python_only),
    "experiment": st.one_of(hostile_texts, python_only),
}


@st.composite
def struct_specs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """(the hostile field, the keyword arguments of a JobSpec built with it)."""
    name = draw(st.sampled_from(sorted(_struct_fields)))
    value = materialize(draw(_struct_fields[name]))
    fields: dict[str, Any] = {"command": ["true"], name: value}
    return name, harmless(fields)


@settings(FUZZ, max_examples=50)
@given(built=struct_specs())
def test_hostile_jobspec_structs(data: Path, built: tuple[str, dict[str, Any]]) -> None:
    top, fields = built
    with reported(fields=fields):
        spec = JobSpec(**fields)  # the constructor checks nothing
        outcome = trio.run(submit_once, data, spec)
        if isinstance(outcome, FetchMLError):
            check_refusal(outcome, top, user_ok=True)


@settings(FUZZ, max_examples=25)
@given(value=python_only, top=st.sampled_from(sorted(_struct_fields)))
def test_python_only_values_in_dicts(data: Path, value: Any, top: str) -> None:
    with reported(top=top, value=value):
        outcome = trio.run(submit_once, data, harmless({"command": ["true"], top: value}))
        if isinstance(outcome, FetchMLError):
            check_refusal(outcome, top, user_ok=True)


# ---- the known crashers -------------------------------------------------------------------


def check_regression(regression: Regression, outcome: Job | FetchMLError) -> None:
    if not regression.refused:
        if isinstance(outcome, FetchMLError):
            check_refusal(outcome, None, user_ok=True)
        return
    assert isinstance(outcome, InvalidSpecError), f"not refused as an invalid spec: {outcome!r}"
    if regression.field is not None:
        assert field_under(outcome.field, regression.field), (
            f"field {outcome.field!r}, expected {regression.field!r}: {outcome}"
        )


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression_dict(data: Path, name: str) -> None:
    regression = REGRESSIONS[name]
    outcome = trio.run(submit_once, data, materialize(regression.spec))
    check_regression(regression, outcome)


def _struct_of(spec: dict[str, Any]) -> JobSpec:
    fields = dict(spec)
    if isinstance(fields.get("resources"), dict):
        fields["resources"] = Resources(**fields["resources"])
    return JobSpec(**fields)


STRUCT_REGRESSIONS = [
    name
    for name, regression in REGRESSIONS.items()
    if isinstance(regression.spec, dict)
    and set(regression.spec) <= set(JobSpec.__struct_fields__)
    and set(regression.spec.get("resources", {})) <= set(Resources.__struct_fields__)
]


@pytest.mark.parametrize("name", STRUCT_REGRESSIONS)
def test_regression_struct(data: Path, name: str) -> None:
    regression = REGRESSIONS[name]
    outcome = trio.run(submit_once, data, _struct_of(materialize(regression.spec)))
    check_regression(regression, outcome)


# JobSpec fields that only Python can hand over, found by the properties: (fields, field).
PYTHON_REGRESSIONS: dict[str, tuple[dict[str, Any], str]] = {
    "a complex cwd": ({"cwd": 1 + 2j}, "cwd"),
    "bytes in argv": ({"command": ["fz-true", b"x"]}, "command"),
    "an object as an env value": ({"env": {"FZ_A": object()}}, "env"),
    "a Decimal timeout": ({"timeout_s": decimal.Decimal("1e999")}, "timeout_s"),
    "a complex cpus": ({"resources": Resources(cpus=1j)}, "resources"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", list(PYTHON_REGRESSIONS))
def test_regression_python_values(data: Path, name: str) -> None:
    fields, top = PYTHON_REGRESSIONS[name]
    spec = JobSpec(**{"command": ["fz-true"], **fields})
    outcome = trio.run(submit_once, data, spec)
    assert isinstance(outcome, InvalidSpecError), f"not refused as an invalid spec: {outcome!r}"
    check_refusal(outcome, top, user_ok=True)


HOSTILE_USERS: dict[str, Any] = {
    "nul": "a\x00b",
    "surrogate": "a\ud800b",
    "low surrogate": "\udc80",
    "empty": "",
    "very long": "u" * 100_000,
    "int": 5,
    "None": None,
    "bytes": b"alice",
}


@pytest.mark.parametrize("name", list(HOSTILE_USERS))
def test_regression_user(data: Path, name: str) -> None:
    user = HOSTILE_USERS[name]
    outcome = trio.run(lambda: submit_once(data, harmless({"command": ["true"]}), user=user))
    if isinstance(outcome, FetchMLError):
        check_refusal(outcome, None, user_ok=False)
    elif name in ("nul", "surrogate", "low surrogate", "empty", "int", "None", "bytes"):
        raise AssertionError(f"user {user!r} was accepted: {outcome!r}")


def test_restart_over_every_regression(data: Path) -> None:
    """Every regression spec submitted in one session (those accepted stay queued), then a
    restart on the same data dir comes up, answers and runs a normal job."""

    async def first() -> list[int]:
        accepted = []
        with trio.fail_after(60):
            async with open_sched(data, cpus=0) as scheduler:  # nothing starts: all stay queued
                for regression in REGRESSIONS.values():
                    try:
                        job = await scheduler.submit(materialize(regression.spec), user="alice")
                    except FetchMLError:
                        continue
                    accepted.append(job.id)
        return accepted

    async def second(accepted: list[int]) -> None:
        with trio.fail_after(WITHIN):
            async with open_sched(data) as scheduler:
                for job_id in accepted:
                    job = await scheduler.get(job_id)
                    assert job.id == job_id
                    await cancel_quietly(scheduler, job)
                await still_works(scheduler)

    accepted = trio.run(first)
    trio.run(second, accepted)


def test_regressions_hold_the_values_they_name() -> None:
    """A sanity check of the regression table (and of ``harmless``)."""
    assert math.isnan(REGRESSIONS["cpus nan"].spec["resources"]["cpus"])
    assert REGRESSIONS["nul in argv item"].spec["command"] == ["fz-echo", "a\x00b"]
