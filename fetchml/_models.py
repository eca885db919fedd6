"""The job model: what a user submits (:class:`JobSpec`), what the server tracks (:class:`Job`) and
what subscribers receive (:class:`JobEvent`).

These are msgspec structs: immutable, msgpack- and JSON-encodable, and validated on decode with
precise error paths.  The same structs serve the WebSocket (msgpack), HTTP (JSON), the store
(msgpack blobs) and the embedding API.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from .errors import InvalidSpecError

__all__ = [
    "TERMINAL_STATES",
    "Job",
    "JobEvent",
    "JobSpec",
    "JobState",
    "Resources",
    "validate_spec",
]

# 0 cpus is allowed (a job that only waits, as in Ray); negative is not.
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Priority = Annotated[int, msgspec.Meta(ge=1, le=10)]
# SQLite's INTEGER range: a larger id names no job and would overflow the store.
JobId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(max_length=200)]


class JobState(enum.StrEnum):
    """Where a job is in its life.  ``queued`` → ``running`` → a terminal state."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.LOST}
)


class Resources(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a job needs while it runs.

    ``memory_mb = 0`` means "not stated" and reserves nothing.
    """

    cpus: NonNegFloat = 1.0
    memory_mb: NonNegInt = 0
    gpus: NonNegInt = 0


class JobSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A job as submitted.

    ``command`` is an argv list; a single string is accepted only with ``shell=True`` and then run
    by ``/bin/sh -c``.  ``priority`` runs 1 to 10, higher first.
    """

    command: list[str] | str
    name: Name | None = None
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    priority: Priority = 5
    resources: Resources = msgspec.field(default_factory=Resources)
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    depends_on: list[JobId] = msgspec.field(default_factory=list)
    tags: list[Name] = msgspec.field(default_factory=list)
    experiment: Name | None = None

    def argv(self) -> list[str]:
        """The argv the executor starts (``/bin/sh -c`` for shell jobs)."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the server tracks it.  Replaced (never mutated) on every state change.

    ``seq`` is the sequence number of the event that announced this version of the job, so
    ``subscribe(job_id=..., since=job.seq)`` continues exactly after it.  ``attempts`` counts the
    runs started; ``requeues`` counts runs lost without an exit status and put back in the queue
    (they do not spend a retry).  ``cancel_requested`` marks a running job being stopped: it turns
    ``cancelled`` when its process has ended.
    """

    id: int
    user: str
    spec: JobSpec
    state: JobState
    seq: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    requeues: int = 0
    exit_code: int | None = None
    reason: str | None = None
    gpus: tuple[int, ...] = ()
    cancel_requested: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class JobEvent(msgspec.Struct, frozen=True, kw_only=True, tag="job"):
    """A job changed state.  ``seq`` is store-assigned and increases monotonically."""

    seq: int
    ts: float
    job: Job


_spec_decoder = msgspec.json.Decoder(JobSpec)


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_NAMED = re.compile(r"^Object (?P<what>missing required|contains unknown) field `(?P<name>[^`]+)`$")


def describe_validation_error(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """Split a msgspec validation error into (field path, message that starts with the field).

    msgspec reports ``Expected `int` >= 1 - at `$.priority``` or ``Object contains unknown field
    `foo` - at `$.resources```; callers want ``priority`` / ``resources.foo`` as the field.
    """
    text = str(exc)
    match = _AT.search(text)
    path = match.group("path").lstrip(".") if match else ""
    detail = text[: match.start()] if match else text
    named = _NAMED.match(detail)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
        detail = (
            "required field is missing"
            if named.group("what") == "missing required"
            else ("unknown field")
        )
    field = path or None
    return field, (f"{field}: {detail}" if field else detail)


def _invalid(exc: msgspec.ValidationError) -> InvalidSpecError:
    field, message = describe_validation_error(exc)
    return InvalidSpecError(message, field=field)


def validate_spec(spec: JobSpec | Mapping[str, Any]) -> JobSpec:
    """Validate ``spec`` (a :class:`JobSpec` or a plain mapping) and return a checked JobSpec.

    Struct constructors do not check constraints, so a JobSpec built in Python is re-validated
    through msgspec as if it had been decoded.  Raises :class:`InvalidSpecError` naming the field.
    """
    data = msgspec.to_builtins(spec) if isinstance(spec, JobSpec) else spec
    try:
        checked = msgspec.convert(data, JobSpec, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None
    command = checked.command
    if isinstance(command, str):
        if not checked.shell:
            raise InvalidSpecError(
                "command: a single string needs shell: true; otherwise give an argv list",
                field="command",
            )
        if not command.strip():
            raise InvalidSpecError("command: must not be empty", field="command")
    elif not command or not command[0]:
        raise InvalidSpecError("command: must be a non-empty argv list", field="command")
    for key in checked.env:
        if not key or "=" in key or "\0" in key:
            raise InvalidSpecError(f"env: invalid variable name {key!r}", field=f"env.{key}")
    if len(set(checked.depends_on)) != len(checked.depends_on):
        raise InvalidSpecError("depends_on: lists a job twice", field="depends_on")
    return checked


def decode_spec_json(data: bytes) -> JobSpec:
    """Decode and validate a JSON job spec.  Raises :class:`InvalidSpecError`."""
    try:
        return validate_spec(_spec_decoder.decode(data))
    except msgspec.DecodeError as exc:
        raise InvalidSpecError(str(exc)) from None
