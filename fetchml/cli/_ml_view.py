"""``ml status`` (table, one job in full, ``--watch``), ``ml logs``, ``ml watch``, ``ml whoami``.

What only streaming commands use (``_ml_follow``, trio) is imported where they use it: the
one-shot commands run over HTTP without it.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fetchml._models import Job, JobState
from fetchml._models import StatusReport as ServerStatus
from fetchml.errors import PermissionDeniedError
from fetchml.protocol import Identity, JobUpdate

from ._ml import UsageError
from ._ml_output import (
    Output,
    detail_lines,
    fmt_memory,
    job_name,
    job_row,
    print_pairs,
    printable,
    rich_table,
    state_label,
)

if TYPE_CHECKING:
    from fetchml.client import Client, Subscription

    from ._ml import AnyClient

__all__ = ["logs", "status", "watch", "whoami"]

# Seconds a live table waits for more events before redrawing, and at most between redraws.
_BATCH_S = 0.05
_REDRAW_S = 1.0


async def status(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    if args.watch and args.jobs:
        raise UsageError("status --watch shows the job list; follow one job with: ml watch JOB")
    if args.watch:
        from fetchml.client import Client

        assert isinstance(client, Client), "--watch follows the jobs over the WebSocket"
        return await _status_watch(client, args, out)
    if args.jobs:
        jobs = [await client.get(job_id) for job_id in args.jobs]
        if len(jobs) == 1:
            if out.json:
                out.emit(jobs[0])
            else:
                print_pairs(out, detail_lines(jobs[0]))
            return 0
    else:
        jobs = await client.list(user=args.user, state=_states(args), limit=args.limit)
    if out.json:
        out.emit(jobs)
    elif not jobs:
        out.line("no jobs")
    else:
        out.table(jobs)
        if out.fancy:
            await _print_summary(client, out)
    return 0


def _states(args: argparse.Namespace) -> list[str] | None:
    if not args.state:
        return None
    return [state for group in args.state for state in group]


async def _print_summary(client: AnyClient, out: Output) -> None:
    try:
        report = await client.status()
    except PermissionDeniedError:
        return
    from rich.markup import escape

    out.console().print(f"[dim]{escape(printable(summary(report)))}[/]")


def summary(report: ServerStatus) -> str:
    """One line: job counts, free resources, and what is wrong with the backend, if anything."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts.items()) if n)
    line = (
        f"{counts or 'nothing queued or running'} · "
        f"{report.cpus_free:g}/{report.cpus_total:g} cpus, "
        f"{fmt_memory(report.memory_mb_free)}/{fmt_memory(report.memory_mb_total)} memory, "
        f"{len(report.gpus_free)}/{len(report.gpus_total)} gpus free"
    )
    if report.backend_status is not None:
        line += f" · {report.backend} backend: {report.backend_status} (nothing starts)"
    return line


class _View:
    """The jobs a ``status --watch`` shows: the newest ``limit`` that match the filters."""

    def __init__(self, args: argparse.Namespace) -> None:
        states = _states(args)
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


async def _status_watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    view = _View(args)
    async with client.subscribe() as events:
        for job in await client.list(user=args.user, state=_states(args), limit=args.limit):
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
    from ._ml_follow import event_json

    async for event in events:
        if isinstance(event, JobUpdate) and view.apply(event.job):
            out.emit(event_json(event))


async def _live_table(events: Subscription, view: _View, out: Output) -> None:
    import trio
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
    import trio

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
    from ._ml_follow import event_json

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


async def logs(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    if args.follow:
        from fetchml.client import Client

        from ._ml_follow import follow_job

        assert isinstance(client, Client), "--follow follows the log over the WebSocket"
        await follow_job(client, await client.get(args.job), out, states=False)
        return 0
    data = await client.logs(args.job)
    if out.json:
        out.emit({"job_id": args.job, "offset": 0, "data": data.decode(errors="replace")})
    else:
        out.raw(data)
    return 0


async def whoami(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    me = await client.whoami()
    if out.json:
        # The identity's own fields (a WebSocket reply also carries ``re`` and ``ok``).
        fields = {name: getattr(me, name) for name in Identity.__struct_fields__}
        out.emit({**fields, "server": client.url})
        return 0
    print_pairs(
        out,
        [
            ("user", me.user + (" (admin)" if me.admin else "")),
            ("roles", ", ".join(me.roles) or "-"),
            ("permissions", ", ".join(me.permissions) or "-"),
            ("server", client.url),
        ],
    )
    return 0
