"""``ml status`` (table, one job in full), ``ml logs``, ``ml whoami``: the one-shot views.

They run over HTTP without an event loop; what only streaming uses (``status --watch`` in
``_ml_watch``, ``logs -f`` in ``_ml_follow``) is imported when it is asked for.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fetchml._models import StatusReport as ServerStatus
from fetchml.errors import PermissionDeniedError
from fetchml.protocol import Identity

from ._ml import UsageError
from ._ml_output import (
    Output,
    detail_lines,
    fmt_memory,
    print_pairs,
    printable,
)

if TYPE_CHECKING:
    from ._ml import AnyClient

__all__ = ["logs", "states_of", "status", "summary", "whoami"]


async def status(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    if args.watch and args.jobs:
        raise UsageError("status --watch shows the job list; follow one job with: ml watch JOB")
    if args.watch:
        from fetchml.client import Client

        from ._ml_watch import status_watch

        assert isinstance(client, Client), "--watch follows the jobs over the WebSocket"
        return await status_watch(client, args, out)
    if args.jobs:
        jobs = [await client.get(job_id) for job_id in args.jobs]
        if len(jobs) == 1:
            if out.json:
                out.emit(jobs[0])
            else:
                print_pairs(out, detail_lines(jobs[0]))
            return 0
    else:
        jobs = await client.list(user=args.user, state=states_of(args), limit=args.limit)
    if out.json:
        out.emit(jobs)
    elif not jobs:
        out.line("no jobs")
    else:
        out.table(jobs)
        if out.fancy:
            await _print_summary(client, out)
    return 0


def states_of(args: argparse.Namespace) -> list[str] | None:
    """The ``--state`` filter of ``args``, flattened (None: no filter)."""
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
