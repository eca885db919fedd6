"""Bad job specs are refused with an error naming the field, and nothing is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.core import open_sched

import fetchml
from fetchml import InvalidRequestError, InvalidSpecError, JobSpec, JobState, validate_spec

OK = {"command": ["true"]}

# (spec, field the error must name)
BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({}, "command"),
    ({"name": "x"}, "command"),
    ({"command": []}, "command"),
    ({"command": [""]}, "command"),
    ({"command": "echo hi"}, "command"),  # a string without shell: true
    ({"command": "   ", "shell": True}, "command"),
    ({"command": 5}, "command"),
    ({"command": ["echo", 5]}, "command"),
    ({**OK, "priority": 0}, "priority"),
    ({**OK, "priority": 11}, "priority"),
    ({**OK, "priority": "5"}, "priority"),
    ({**OK, "priority": 5.5}, "priority"),
    ({**OK, "resources": {"cpus": -1}}, "resources.cpus"),
    ({**OK, "resources": {"cpus": "2"}}, "resources.cpus"),
    ({**OK, "resources": {"memory_mb": -5}}, "resources.memory_mb"),
    ({**OK, "resources": {"gpus": -1}}, "resources.gpus"),
    ({**OK, "resources": {"gpus": 1.5}}, "resources.gpus"),
    ({**OK, "resources": {"tpus": 1}}, "resources.tpus"),
    ({**OK, "resources": 4}, "resources"),
    ({**OK, "bogus": 1}, "bogus"),
    ({**OK, "timeout_s": 0}, "timeout_s"),
    ({**OK, "timeout_s": -3}, "timeout_s"),
    ({**OK, "max_retries": -1}, "max_retries"),
    ({**OK, "env": "A=1"}, "env"),
    ({**OK, "env": {"A": 1}}, "env"),
    ({**OK, "env": {"A=B": "1"}}, "env"),
    ({**OK, "cwd": 3}, "cwd"),
    ({**OK, "shell": "yes"}, "shell"),
    ({**OK, "depends_on": [0]}, "depends_on[0]"),
    ({**OK, "depends_on": ["1"]}, "depends_on[0]"),
    ({**OK, "depends_on": 1}, "depends_on"),
    ({**OK, "tags": ["x" * 201]}, "tags[0]"),
    ({**OK, "name": "n" * 201}, "name"),
]


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_validate_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        validate_spec(spec)
    error = info.value
    assert error.field is not None
    assert error.field.startswith(field), (error.field, error.message)
    # The message starts with the field, so it reads well on its own.
    assert error.message.split(":")[0].startswith(field.split("[")[0]), error.message
    assert error.code == "invalid_spec"
    assert error.status == 400


def test_validate_spec_accepts_a_full_spec_and_applies_defaults() -> None:
    spec = validate_spec({"command": ["python", "-c", "pass"]})
    assert spec.priority == 5
    assert spec.resources.cpus == 1
    assert spec.resources.gpus == 0
    assert spec.max_retries == 0
    assert spec.depends_on == []
    shell = validate_spec({"command": "echo $HOME", "shell": True})
    assert shell.argv() == ["/bin/sh", "-c", "echo $HOME"]


def test_validate_spec_rechecks_a_struct_built_in_python() -> None:
    # Struct constructors do not check constraints; validate_spec must.
    with pytest.raises(InvalidSpecError) as info:
        validate_spec(JobSpec(command=["true"], priority=0))
    assert info.value.field == "priority"


async def _assert_refused(
    scheduler: fetchml.Scheduler, spec: Any, field: str, words: tuple[str, ...] = ()
) -> None:
    with pytest.raises(InvalidSpecError) as info:
        await scheduler.submit(spec, user="alice")
    assert info.value.field == field, info.value.message
    assert field in info.value.message
    for word in words:
        assert word in info.value.message


async def test_submit_refuses_bad_specs_and_stores_nothing(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            for spec, field in BAD_SPECS:
                with pytest.raises(InvalidSpecError) as info:
                    await scheduler.submit(spec, user="alice")
                assert info.value.field is not None
                assert info.value.field.startswith(field)
            # More than the server has (2 cpus, 1000 MB, GPUs [0, 1]).
            await _assert_refused(
                scheduler, {**OK, "resources": {"gpus": 3}}, "resources.gpus", ("3", "2")
            )
            await _assert_refused(scheduler, {**OK, "resources": {"cpus": 2.5}}, "resources.cpus")
            await _assert_refused(
                scheduler, {**OK, "resources": {"memory_mb": 1001}}, "resources.memory_mb"
            )
            await _assert_refused(scheduler, {**OK, "depends_on": [999]}, "depends_on[0]", ("999",))
            assert await scheduler.list() == []
            status = await scheduler.status()
            assert status.last_seq == 0
            assert status.counts == {}
            # The first job accepted afterwards still gets id 1: no id was spent.
            job = await scheduler.submit(OK, user="alice")
            assert job.id == 1
            assert job.state is JobState.QUEUED or job.state is JobState.RUNNING
            await _assert_refused(scheduler, {**OK, "depends_on": [1, 2]}, "depends_on[1]", ("2",))
            assert [j.id for j in await scheduler.list()] == [1]
        async with open_sched(data_dir) as scheduler:
            # Nothing half-stored came back either.
            assert [j.id for j in await scheduler.list()] == [1]


async def test_submit_accepts_exactly_what_the_server_has(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            job = await scheduler.submit(
                {"command": ["true"], "resources": {"cpus": 2, "memory_mb": 1000, "gpus": 2}},
                user="alice",
            )
            done = await scheduler.wait(job.id)
            assert done.state is JobState.SUCCEEDED
            assert done.gpus == (0, 1)


async def test_bad_arguments_to_the_api(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            with pytest.raises(InvalidRequestError) as info:
                await scheduler.submit(OK, user="")
            assert info.value.field == "user"
            with pytest.raises(InvalidRequestError):
                await scheduler.get(0)
            with pytest.raises(InvalidRequestError):
                await scheduler.get(True)
            with pytest.raises(InvalidRequestError) as info:
                await scheduler.list(states=["bogus"])
            assert info.value.field == "states"
            with pytest.raises(InvalidRequestError) as info:
                await scheduler.list(limit=0)
            assert info.value.field == "limit"
            with pytest.raises(fetchml.JobNotFoundError):
                await scheduler.get(5)
            assert await scheduler.list() == []
