"""``ml`` pieces without a server: option values, spec building, exit codes, formatting."""

from __future__ import annotations

import argparse
import shlex

import pytest

from fetchml import Job, JobSpec, JobState
from fetchml.cli._ml import exit_code_for
from fetchml.cli._ml_args import build_parser, duration_s, env_pair, memory_mb
from fetchml.cli._ml_follow import exit_status
from fetchml.cli._ml_jobs import build_spec
from fetchml.cli._ml_output import fmt_duration, fmt_resources, plain_table
from fetchml.client import ConnectionLostError, ServerUnreachableError
from fetchml.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FetchMLError,
    InvalidSpecError,
    JobNotFoundError,
    PermissionDeniedError,
    SubscriberDroppedError,
)


@pytest.mark.parametrize(
    ("text", "mb"), [("8G", 8192), ("512M", 512), ("1.5GiB", 1536), ("4096", 4096), ("1T", 1 << 20)]
)
def test_memory(text: str, mb: int) -> None:
    assert memory_mb(text) == mb


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("2h", 7200), ("30s", 30), ("1h30m", 5400), ("45", 45)]
)
def test_duration(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("bad", ["8X", "", "G"])
def test_bad_memory(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        memory_mb(bad)


@pytest.mark.parametrize("bad", ["soon", "0", "1h-2", "m"])
def test_bad_duration(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s(bad)


def test_env_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_pair("A=b=c") == ("A", "b=c")
    monkeypatch.setenv("FROM_HERE", "x")
    assert env_pair("FROM_HERE") == ("FROM_HERE", "x")
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    with pytest.raises(argparse.ArgumentTypeError):
        env_pair("NOT_SET_HERE")


def test_queue_options_build_the_spec() -> None:
    line = (
        "queue --name n --priority 9 --cpu 2 --memory 8G --gpu 1 --timeout 2h --retries 2 "
        "--after 3 --after 4 --tag a --tag b --env K=V --experiment e -- python x.py --lr 3"
    )
    args = build_parser("0").parse_args(shlex.split(line))
    args.command = args.command[1:]
    spec = build_spec(args)
    assert spec == {
        "command": ["python", "x.py", "--lr", "3"],
        "resources": {"cpus": 2.0, "memory_mb": 8192, "gpus": 1},
        "name": "n",
        "priority": 9,
        "timeout_s": 7200.0,
        "max_retries": 2,
        "depends_on": [3, 4],
        "tags": ["a", "b"],
        "env": {"K": "V"},
        "experiment": "e",
    }
    shell = build_parser("0").parse_args(["queue", "--shell", "echo", "a", "|", "wc"])
    assert build_spec(shell)["command"] == "echo a | wc"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidSpecError("x"), 2),
        (ConfigError("x"), 2),
        (ServerUnreachableError("x", url="u"), 3),
        (ConnectionLostError("x", url="u"), 3),
        (SubscriberDroppedError("x"), 3),
        (AuthError("x"), 4),
        (PermissionDeniedError("x", permission="jobs:create"), 5),
        (JobNotFoundError(1), 6),
        (ConflictError("x"), 7),
        (FetchMLError("x"), 1),
    ],
)
def test_exit_codes(error: FetchMLError, code: int) -> None:
    assert exit_code_for(error) == code


def _job(state: JobState, exit_code: int | None = None) -> Job:
    return Job(
        id=1,
        user="u",
        spec=JobSpec(command=["x"]),
        state=state,
        created_at=0.0,
        exit_code=exit_code,
    )


@pytest.mark.parametrize(
    ("state", "exit_code", "status"),
    [
        (JobState.SUCCEEDED, 0, 0),
        (JobState.FAILED, 3, 3),
        (JobState.FAILED, 137, 137),
        (JobState.FAILED, -9, 137),
        (JobState.FAILED, None, 1),
        (JobState.TIMED_OUT, 143, 124),
        (JobState.CANCELLED, None, 143),
        (JobState.LOST, None, 125),
    ],
)
def test_wait_exit_status(state: JobState, exit_code: int | None, status: int) -> None:
    assert exit_status(_job(state, exit_code)) == status


def test_formatting() -> None:
    assert [fmt_duration(s) for s in (5, 192, 7500, 270000)] == ["5s", "3m12s", "2h05m", "3d03h"]
    assert fmt_resources(JobSpec(command=["x"]).resources) == "1cpu"
    assert plain_table(("A", "BB"), [("xyz", "1")]) == ["A    BB", "xyz  1"]
