"""Following one job live: its state changes and its log, from pushed events (no polling).

Used by ``ml queue --wait`` (states and log) and ``ml logs -f`` (log only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fetchml._models import Job, JobState
from fetchml.protocol import JobUpdate, LogChunk, LogEnd

from ._ml_output import Output

if TYPE_CHECKING:
    from fetchml.client import Client

__all__ = ["event_json", "exit_status", "follow_job"]

EXIT_TIMED_OUT = 124
EXIT_LOST = 125
EXIT_CANCELLED = 143


def exit_status(job: Job) -> int:
    """What ``ml queue --wait`` exits with for a job that has ended (see ``ml --help``)."""
    if job.state is JobState.SUCCEEDED:
        return 0
    if job.state is JobState.TIMED_OUT:
        return EXIT_TIMED_OUT
    if job.state is JobState.CANCELLED:
        return EXIT_CANCELLED
    if job.state is JobState.LOST:
        return EXIT_LOST
    code = job.exit_code
    if code is None or code == 0:
        return 1
    if code < 0:
        return min(128 - code, 255)
    return code if code <= 255 else 1


def event_json(event: JobUpdate | LogChunk | LogEnd) -> dict[str, Any]:
    """The JSON-lines form of an event (``type`` job, log or log_end)."""
    if isinstance(event, JobUpdate):
        return {"type": "job", "seq": event.seq, "job": event.job}
    if isinstance(event, LogChunk):
        return {
            "type": "log",
            "job_id": event.job_id,
            "offset": event.offset,
            "data": event.data.decode(errors="replace"),
        }
    return {"type": "log_end", "job_id": event.job_id, "offset": event.offset}


class _Spinner:
    """A stderr spinner shown while the job waits in the queue (terminals only)."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._status: Any = None

    def show(self, text: str) -> None:
        if not self._out.err_tty or self._out.json:
            return
        if self._status is None:
            from rich.console import Console

            self._status = Console(stderr=True).status(text)
            self._status.start()
        else:
            self._status.update(text)

    def hide(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


async def follow_job(
    client: Client, job: Job, out: Output, *, states: bool, since: int | None = None
) -> Job:
    """Print the job's log (and, with ``states``, its state changes) until it has ended.

    Returns the job's final version.  ``since``: the seq to replay state changes after.
    """
    spinner = _Spinner(out)
    last_label = None
    final: Job | None = job if job.terminal else None
    log_done = False
    try:
        async with client.subscribe(job.id, since=since, logs=True) as events:
            if states:
                last_label = _announce(out, spinner, job, None)
            async for event in events:
                if isinstance(event, JobUpdate):
                    if states:
                        last_label = _announce(out, spinner, event.job, last_label)
                    final = event.job if event.job.terminal else final
                    continue
                if not isinstance(event, LogChunk | LogEnd):
                    continue  # not asked for (metric points)
                if states or not out.json:
                    spinner.hide()
                _print_log(out, event)
                if isinstance(event, LogEnd):
                    log_done = True
                if log_done:
                    final = final or await _ended(client, job.id)
                    if final is not None:
                        break
        if final is None:  # the stream ended without the job ending
            final = await client.get(job.id)
        if states:
            _announce(out, spinner, final, last_label)
    finally:
        spinner.hide()
    return final


async def _ended(client: Client, job_id: int) -> Job | None:
    job = await client.get(job_id)
    return job if job.terminal else None


def _print_log(out: Output, event: LogChunk | LogEnd) -> None:
    if out.json:
        out.emit(event_json(event))
    elif isinstance(event, LogChunk):
        out.raw(event.data)


def _announce(out: Output, spinner: _Spinner, job: Job, last: str | None) -> str:
    """Report a state change (a JSON line, or a note on stderr); returns the state shown."""
    label = "cancelling" if job.state is JobState.RUNNING and job.cancel_requested else job.state
    label = str(label)
    if label == last:
        return label
    if out.json:
        out.emit({"type": "job", "seq": job.seq, "job": job})
        return label
    if job.state is JobState.QUEUED:
        spinner.show(f"job {job.id} queued; waiting for resources")
        if not out.err_tty:
            out.note(f"job {job.id} queued")
        return label
    spinner.hide()
    detail = f": {job.reason}" if job.terminal and job.reason else ""
    out.note(f"job {job.id} {label}{detail}")
    return label
