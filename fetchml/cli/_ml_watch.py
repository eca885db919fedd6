"""``ml status --watch`` (a live table, or lines, from events) and ``ml watch``: the views that
stream, over the WebSocket."""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from typing import Any

import trio

from fetchml._models import Job, JobState
from fetchml.client import Client, Subscription
from fetchml.protocol import JobUpdate

from ._ml_follow import event_json
from ._ml_output import Output, job_name, job_row, rich_table, state_label
from ._ml_view import states_of

__all__ = ["change_line", "status_watch", "watch"]

# Seconds a live table waits for more events before redrawing, and at most between redraws.
_BATCH_S = 0.05
_REDRAW_S = 1.0


class _View:
    """The jobs a ``status --watch`` shows: the newest ``limit`` that match the filters."""

    def __init__(self, args: argparse.Namespace) -> None:
        states = states_of(args)
        self._states = None if states is None else {JobState(s) for s in states}
        self._user: str | None = args.user
        self._limit: int = args.limit
        self.jobs: dict[int, Job] = {}

    def matches(self, job: Job) -> bool:
        return (self._states is None or job.state in self._states) and (
            self._user is None or job.user == self._user
        )

    def apply(self, job: Job) -> bool:
        """Take a job's new version; returns whether the view changed."""
        known = self.jobs.get(job.id)
        if known is not None and known.seq >= job.seq:
            return False
        if self.matches(job):
            self.jobs[job.id] = job
            for stale in sorted(self.jobs, reverse=True)[self._limit :]:
                del self.jobs[stale]
            return True
        return self.jobs.pop(job.id, None) is not None

    def newest_first(self) -> list[Job]:
        return [self.jobs[i] for i in sorted(self.jobs, reverse=True)]


async def status_watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    view = _View(args)
    async with client.subscribe() as events:
        for job in await client.list(user=args.user, state=states_of(args), limit=args.limit):
            view.apply(job)
        if out.json:
            for job in reversed(view.newest_first()):
                out.emit({"type": "job", "seq": job.seq, "job": job})
            await _json_stream(events, view, out)
        elif out.fancy:
            await _live_table(events, view, out)
        else:
            out.table(view.newest_first())
            await _change_lines(events, view.apply, out, last={})
    return 0


async def _json_stream(events: Subscription, view: _View, out: Output) -> None:
    async for event in events:
        if isinstance(event, JobUpdate) and view.apply(event.job):
            out.emit(event_json(event))


async def _live_table(events: Subscription, view: _View, out: Output) -> None:
    from rich.live import Live

    def render() -> Any:
        rows = [job_row(job, time.time()) for job in view.newest_first()]
        table = rich_table(rows, out.console().width)
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        table.caption = f"live · {len(view.jobs)} jobs · {stamp} · Ctrl-C to quit"
        return table

    with Live(render(), console=out.console(), auto_refresh=False) as live:
        while True:
            with trio.move_on_after(_REDRAW_S):
                event = await _next(events)
                if event is None:
                    return
                if isinstance(event, JobUpdate):
                    view.apply(event.job)
                await _drain(events, view)
            live.update(render(), refresh=True)


async def _next(events: Subscription) -> Any:
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


async def _drain(events: Subscription, view: _View) -> None:
    """Apply whatever else arrives within a moment, so a burst is drawn once."""
    with trio.move_on_after(_BATCH_S):
        while (event := await _next(events)) is not None:
            if isinstance(event, JobUpdate):
                view.apply(event.job)


def change_line(job: Job) -> str:
    """One line for a job's new state: time, id, user, name, state (and why it ended)."""
    if job.state is JobState.RUNNING:
        ts = job.started_at or job.created_at
    else:
        ts = job.finished_at or job.created_at
    stamp = datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")
    detail = f"  ({job.reason})" if job.terminal and job.reason else ""
    name = job_name(job, 30)
    return f"{stamp}  job {job.id:<5} {job.user:<12} {name:<30}  {state_label(job)}{detail}"


async def _change_lines(
    events: Subscription, keep: Callable[[Job], bool], out: Output, last: dict[int, str]
) -> Job | None:
    """Print a line per state change (or a JSON line per event) until ``keep`` returns False."""
    async for event in events:
        if not isinstance(event, JobUpdate):
            continue
        job = event.job
        label = state_label(job)
        if last.get(job.id) != label:
            last[job.id] = label
            if out.json:
                out.emit(event_json(event))
            else:
                out.line(change_line(job))
        if not keep(job):
            return job
    return None


async def watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    """One line per state change, live; with a JOB, until that job has ended."""
    async with client.subscribe(args.job, since=args.since) as events:
        last: dict[int, str] = {}
        if args.job is not None and args.since is None:
            job = await client.get(args.job)
            last[job.id] = state_label(job)
            if out.json:
                out.emit({"type": "job", "seq": job.seq, "job": job})
            else:
                out.line(change_line(job))
            if job.terminal:
                return 0
        await _change_lines(events, lambda job: not (args.job and job.terminal), out, last)
    return 0
