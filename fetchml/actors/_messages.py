"""Every message the actors exchange, in one place.

Messages are frozen msgspec structs with a type tag, so each one round-trips through msgpack as
a member of :data:`Message`; that keeps the door open to moving an actor (the executor first) to
another process.  What is *not* a message is the local plumbing around it: an :class:`Envelope`
carries a message plus the channels to answer on, which are in-process by nature.

Requests get exactly one terminal reply: the result message, or a :class:`Failure`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import msgspec
import trio

from .._models import Job, JobEvent, JobSpec, StatusReport
from ..errors import FetchMLError, SchedulerClosedError
from ..protocol import ErrorBody

__all__ = [
    "INTERNAL_MESSAGE",
    "AdoptJob",
    "Attach",
    "Attached",
    "BackendCapacity",
    "Cancel",
    "Envelope",
    "ExitCause",
    "Failure",
    "GetStatus",
    "JobExited",
    "JobReply",
    "Message",
    "Publish",
    "ReplayNeeded",
    "StartJob",
    "StatusReply",
    "StopJob",
    "Submit",
    "call",
]


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Base of all messages: immutable, tagged with the class name on the wire."""


# --- requests to the scheduler -------------------------------------------------------------


class Submit(_Msg, frozen=True, kw_only=True):
    """Queue a validated spec for ``user``.  Reply: the stored :class:`Job`, or a Failure.

    ``visible_owners`` is whose jobs ``user`` may name in ``depends_on`` (None: anyone's); a
    dependency on another job is refused as unknown, like a missing one.
    """

    spec: JobSpec
    user: str
    visible_owners: tuple[str, ...] | None = None


class Cancel(_Msg, frozen=True, kw_only=True):
    """Cancel a job on behalf of ``user``.  Reply: the job once it is terminal, or a Failure."""

    job_id: int
    user: str


class JobReply(_Msg, frozen=True, kw_only=True):
    """The job a :class:`Submit` stored or a :class:`Cancel` finished."""

    job: Job


class GetStatus(_Msg, frozen=True, kw_only=True):
    """Ask for the queue summary.  Reply: :class:`StatusReport`."""


class StatusReply(_Msg, frozen=True, kw_only=True):
    """The answer to :class:`GetStatus`."""

    report: StatusReport


# --- executor ↔ scheduler ------------------------------------------------------------------

# "unavailable": the backend could not be reached to start the run; it is retried later.
# "error": a fault of the executor's own while it started or followed the run (the job fails).
ExitCause = Literal["exit", "timeout", "cancel", "vanished", "spawn_failed", "unavailable", "error"]

# The message of every internal_error reply: the details go to the server log, never the wire.
INTERNAL_MESSAGE = "internal server error (the details are in the server log)"


class StartJob(_Msg, frozen=True, kw_only=True):
    """Start ``job`` (already committed as running, attempt ``job.attempts``)."""

    job: Job


class AdoptJob(_Msg, frozen=True, kw_only=True):
    """Follow ``job``, which a previous server process started, until it ends."""

    job: Job


class StopJob(_Msg, frozen=True, kw_only=True):
    """Stop the run of ``job_id``: SIGTERM to its process group, SIGKILL after the grace."""

    job_id: int
    attempt: int


class JobExited(_Msg, frozen=True, kw_only=True):
    """A run ended.  ``exit_code`` is None when no status was recorded."""

    job_id: int
    attempt: int
    cause: ExitCause
    exit_code: int | None = None
    finished_at: float
    detail: str | None = None


class BackendCapacity(_Msg, frozen=True, kw_only=True):
    """The backend's capacity changed (a node joined or left, the cluster vanished or returned).

    ``problem`` is None while the backend works, else why it can run nothing (totals are then 0).
    """

    cpus: float
    memory_mb: int
    gpus: int
    problem: str | None = None


# --- notifier ------------------------------------------------------------------------------


class Publish(_Msg, frozen=True, kw_only=True):
    """Committed events, in seq order, to fan out."""

    events: tuple[JobEvent, ...]


class Attach(_Msg, frozen=True, kw_only=True):
    """Register subscriber ``sub_id`` for events after ``since`` (None: from now on) that match.

    The envelope carries the subscriber's event channel.  Reply: :class:`Attached` when the
    notifier could hand over every event after ``since`` itself, else :class:`ReplayNeeded`.
    """

    sub_id: int
    since: int | None
    job_id: int | None = None
    user: str | None = None


class Attached(_Msg, frozen=True, kw_only=True):
    sub_id: int


class ReplayNeeded(_Msg, frozen=True, kw_only=True):
    """The notifier no longer holds events up to ``oldest``; replay them from the store first."""

    oldest: int


# --- errors --------------------------------------------------------------------------------


class Failure(_Msg, frozen=True, kw_only=True):
    """The terminal reply of a request that failed: the error as the wire carries it, and the
    job it was about (the wire leaves that out: a client knows what it asked for)."""

    body: ErrorBody
    job_id: int | None = None

    @classmethod
    def of(cls, exc: FetchMLError) -> Failure:
        job_id = getattr(exc, "job_id", None)
        return cls(body=ErrorBody.of(exc), job_id=job_id if isinstance(job_id, int) else None)

    def error(self, *, job_id: int | None = None) -> FetchMLError:
        """The exception this failure stands for, rebuilt on the caller's side (``job_id``: the
        job the request was about, if the failure does not name one)."""
        return self.body.error(job_id=self.job_id if self.job_id is not None else job_id)


Message = (
    Submit
    | Cancel
    | JobReply
    | GetStatus
    | StatusReply
    | StartJob
    | AdoptJob
    | StopJob
    | JobExited
    | BackendCapacity
    | Publish
    | Attach
    | Attached
    | ReplayNeeded
    | Failure
)

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Envelope(Generic[M]):
    """A message in an actor's inbox, with where to answer.

    ``reply`` takes the one terminal reply (buffer 1, so answering never blocks); ``stream`` is
    local plumbing a message needs besides its reply (for :class:`Attach`: the subscriber's sink).
    """

    msg: M
    reply: trio.MemorySendChannel[Message] | None = None
    stream: object = None

    def answer(self, result: Message) -> None:
        """Send the terminal reply and close the reply channel.  Never blocks."""
        if self.reply is None:
            return
        # The caller may have given up waiting (cancelled): then nobody is left to tell.
        with self.reply, contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.reply.send_nowait(result)


# One slot: the reply is the only thing ever sent on it.
_REPLY_BUFFER = 1


async def call(
    inbox: trio.MemorySendChannel[Envelope[M]], msg: M, *, stream: object = None
) -> Message:
    """Send ``msg`` (with ``stream`` plumbing, if any) to an actor and wait for its terminal reply.

    Waits on a full inbox (back-pressure) and then on the reply.  Raises
    :class:`SchedulerClosedError` if the actor has stopped or stops before answering; a
    :class:`Failure` reply is returned as is (the caller raises ``failure.error()``).
    """
    reply_send, reply_recv = trio.open_memory_channel[Message](_REPLY_BUFFER)
    with reply_recv:
        try:
            await inbox.send(Envelope(msg, reply_send, stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reply_send.close()
            raise SchedulerClosedError("the scheduler has stopped") from None
        try:
            return await reply_recv.receive()
        except trio.EndOfChannel:
            raise SchedulerClosedError("the scheduler stopped before answering") from None
