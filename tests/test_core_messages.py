"""Every actor message, and the job model, round-trips through msgpack (and JSON) unchanged."""

from __future__ import annotations

import typing

import msgspec
import pytest

from fetchml import Job, JobEvent, JobSpec, JobState, Resources, StatusReport
from fetchml.actors import _messages as m
from fetchml.errors import (
    ConflictError,
    FetchMLError,
    InvalidSpecError,
    JobNotFoundError,
)
from fetchml.protocol import ErrorBody

FULL_SPEC = JobSpec(
    command=["python", "train.py", "--lr", "0.1"],
    name="resnet",
    shell=False,
    cwd="/tmp",
    env={"A": "1", "B": ""},
    priority=9,
    resources=Resources(cpus=2.5, memory_mb=2048, gpus=2),
    timeout_s=12.5,
    max_retries=3,
    depends_on=[1, 2],
    tags=["x", "y"],
    experiment="exp-1",
)
SHELL_SPEC = JobSpec(command="echo hi | wc -c", shell=True)

FULL_JOB = Job(
    id=7,
    user="alice",
    spec=FULL_SPEC,
    state=JobState.RUNNING,
    seq=42,
    created_at=1700000000.25,
    started_at=1700000001.5,
    finished_at=None,
    attempts=2,
    requeues=1,
    exit_code=None,
    reason="attempt 1 exited with code 1; retrying",
    gpus=(0, 1),
    cancel_requested=True,
)
DONE_JOB = Job(
    id=8,
    user="bob",
    spec=SHELL_SPEC,
    state=JobState.FAILED,
    created_at=1.0,
    finished_at=2.0,
    exit_code=3,
)
EVENT = JobEvent(seq=43, ts=1700000002.0, job=FULL_JOB)

SAMPLES: list[msgspec.Struct] = [
    m.Submit(spec=FULL_SPEC, user="alice"),
    m.Cancel(job_id=7, user="bob"),
    m.JobReply(job=FULL_JOB),
    m.GetStatus(),
    m.StatusReply(
        report=StatusReport(
            counts={"queued": 3, "running": 1},
            running_by_user={"alice": 1},
            queued_by_user={"bob": 3},
            cpus_total=8.0,
            cpus_free=6.5,
            memory_mb_total=16000,
            memory_mb_free=14000,
            gpus_total=[0, 1],
            gpus_free=[1],
            last_seq=99,
        )
    ),
    m.StatusReply(
        report=StatusReport(
            counts={},
            running_by_user={},
            queued_by_user={},
            cpus_total=0.0,
            cpus_free=-1.0,
            memory_mb_total=0,
            memory_mb_free=-100,
            gpus_total=[],
            gpus_free=[],
            last_seq=5,
            backend="ray",
            backend_status="ray cluster at http://127.0.0.1:8265: unreachable",
        )
    ),
    m.StartJob(job=FULL_JOB),
    m.AdoptJob(job=DONE_JOB),
    m.StopJob(job_id=7, attempt=2),
    m.JobExited(job_id=7, attempt=2, cause="timeout", exit_code=143, finished_at=5.5, detail="x"),
    m.JobExited(job_id=8, attempt=1, cause="vanished", finished_at=6.0),
    m.JobExited(job_id=9, attempt=1, cause="unavailable", finished_at=7.0, detail="no cluster"),
    m.BackendCapacity(cpus=4.0, memory_mb=32000, gpus=2),
    m.BackendCapacity(cpus=0.0, memory_mb=0, gpus=0, problem="ray cluster unreachable"),
    m.Publish(events=(EVENT, JobEvent(seq=44, ts=3.0, job=DONE_JOB))),
    m.Attach(sub_id=3, since=10, job_id=7, user="alice"),
    m.Attach(sub_id=4, since=None),
    m.Attached(sub_id=3),
    m.ReplayNeeded(oldest=17),
    m.Failure(
        body=ErrorBody(
            code="invalid_spec", message="priority: Expected `int` <= 10", field="priority"
        )
    ),
    m.Failure(body=ErrorBody(code="not_found", message="no job with id 5"), job_id=5),
]

MESSAGE_TYPES = set(typing.get_args(m.Message))


def test_every_message_type_has_a_sample() -> None:
    assert {type(sample) for sample in SAMPLES} == MESSAGE_TYPES


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_message_round_trips_through_msgpack_as_the_union(sample: msgspec.Struct) -> None:
    decoder = msgspec.msgpack.Decoder(m.Message)
    decoded = decoder.decode(msgspec.msgpack.encode(sample))
    assert type(decoded) is type(sample)
    assert decoded == sample


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_message_round_trips_through_json_as_the_union(sample: msgspec.Struct) -> None:
    decoded = msgspec.json.decode(msgspec.json.encode(sample), type=m.Message)
    assert decoded == sample


def test_message_is_tagged_with_its_class_name() -> None:
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(m.StopJob(job_id=1, attempt=1)))
    assert raw == {"type": "StopJob", "job_id": 1, "attempt": 1}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (FULL_SPEC, JobSpec),
        (SHELL_SPEC, JobSpec),
        (FULL_JOB, Job),
        (DONE_JOB, Job),
        (EVENT, JobEvent),
    ],
    ids=["spec", "shell-spec", "job", "done-job", "event"],
)
def test_model_round_trips_through_msgpack(
    value: msgspec.Struct, kind: type[msgspec.Struct]
) -> None:
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=kind)
    assert decoded == value
    assert msgspec.json.decode(msgspec.json.encode(value), type=kind) == value


def test_decoded_job_keeps_types() -> None:
    job = msgspec.msgpack.decode(msgspec.msgpack.encode(FULL_JOB), type=Job)
    assert job.state is JobState.RUNNING
    assert job.gpus == (0, 1)
    assert isinstance(job.spec.resources, Resources)
    assert job.terminal is False
    assert DONE_JOB.terminal is True


def test_messages_are_immutable() -> None:
    with pytest.raises(AttributeError):
        m.Cancel(job_id=1, user="a").job_id = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "error",
    [
        InvalidSpecError("resources.gpus: 3 requested", field="resources.gpus"),
        JobNotFoundError(12),
        ConflictError("job 3 has already ended (succeeded)"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_failure_carries_the_error_across_msgpack(error: FetchMLError) -> None:
    failure = msgspec.msgpack.decode(msgspec.msgpack.encode(m.Failure.of(error)), type=m.Message)
    assert isinstance(failure, m.Failure)
    rebuilt = failure.error()
    assert type(rebuilt) is type(error)
    assert rebuilt.message == error.message
    assert getattr(rebuilt, "field", None) == getattr(error, "field", None)
    assert getattr(rebuilt, "job_id", None) == getattr(error, "job_id", None)
