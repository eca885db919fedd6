"""``ml metrics``, ``ml experiments``, ``ml runs``, ``ml compare``, ``ml export``, ``ml outcome``:
experiment tracking, read over the HTTP API.

The row builders here return plain strings straight from the server; :func:`show_table` and
:func:`print_pairs` make every cell safe for a terminal (no control characters or escape
sequences of a metric or param name reach it raw).  plotext is imported only to draw a chart.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec
import trio

from fetchml._models import Job
from fetchml.client import Buckets, Client, MetricSummary, RunInfo, RunRow
from fetchml.errors import NotFoundError

from ._ml import UsageError
from ._ml_output import Output, fmt_duration, print_pairs, printable

__all__ = [
    "chart",
    "compare",
    "compare_json",
    "compare_rows",
    "differing",
    "experiments",
    "export",
    "export_table",
    "export_text",
    "fmt_number",
    "fmt_value",
    "metric_of",
    "metric_rows",
    "metrics",
    "outcome",
    "run_rows",
    "runs",
    "show_table",
    "summary_line",
]

METRIC_HEADER: Final = ("METRIC", "COUNT", "LAST", "STEP", "MIN", "MAX")
EXPERIMENT_HEADER: Final = ("EXPERIMENT", "RUNS", "LAST RUN")
RUN_HEADER: Final = ("JOB", "NAME", "USER", "STATE")
# The most runs one request asks for (the server's cap) and the widest series asked for.
PAGE_MAX: Final = 1000
POINTS_MAX: Final = 10_000
NARRATIVE: Final = (
    ("hypothesis", "hypothesis"),
    ("intent", "intent"),
    ("expected", "expected_outcome"),
)
_STATS: Final = ("last", "min", "max", "count")
_NAME_WIDTH: Final = 30


# --- formatting ------------------------------------------------------------------------------


def fmt_number(value: float) -> str:
    """A metric value, short: ``0.0003``, ``2.3``, ``1e+06``, ``600``."""
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def fmt_value(value: Any) -> str:
    """A param, tag or summary value as text (strings as they are, JSON for the rest)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return msgspec.json.encode(value).decode()
    if isinstance(value, int | float):
        return fmt_number(value)
    return msgspec.json.encode(value).decode()


def _exact(value: Any) -> str:
    """A value for a file: strings as they are, numbers in full precision, else JSON."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _short(text: str | None, width: int = _NAME_WIDTH) -> str:
    text = text or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _pairs_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={fmt_value(value)}" for key, value in sorted(values.items()))


def metric_of(run: RunInfo, name: str) -> MetricSummary | None:
    """The summary of metric ``name`` of the run, None if it has none."""
    return next((m for m in run.metrics if m.name == name), None)


def metric_rows(run: RunInfo) -> list[tuple[str, ...]]:
    """One row per metric of the run, under :data:`METRIC_HEADER`."""
    return [
        (
            m.name,
            str(m.count),
            fmt_number(m.last),
            str(m.last_step),
            fmt_number(m.min),
            fmt_number(m.max),
        )
        for m in run.metrics
    ]


def summary_line(metric: MetricSummary, series: Buckets | None = None) -> str:
    """``loss: last 0.1 at step 599, min 0.09, max 2.3, 600 points`` (and how they were shown)."""
    text = (
        f"{metric.name}: last {fmt_number(metric.last)} at step {metric.last_step}, "
        f"min {fmt_number(metric.min)}, max {fmt_number(metric.max)}, {metric.count} points"
    )
    if series is not None and series.downsampled:
        text += f" (drawn as {len(series.step)} buckets: min, max and last of each)"
    return text


def differing(values: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every mapping (missing counts as a value)."""
    keys = sorted({key for mapping in values for key in mapping})

    def seen(mapping: Mapping[str, Any], key: str) -> bytes | None:
        return msgspec.json.encode(mapping[key]) if key in mapping else None

    return [key for key in keys if len({seen(m, key) for m in values}) > 1]


def run_rows(
    found: Sequence[RunRow], sort: str | None
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and rows of ``ml runs``: job, name, user, state, the params that vary
    between the runs, and the sort metric's last value."""
    varying = differing([run.params for run in found])
    header = (*RUN_HEADER, *varying, *([sort] if sort else []))
    rows = []
    for run in found:
        cells = [str(run.job_id), _short(run.name), run.user, run.state or "-"]
        cells += [fmt_value(run.params[k]) if k in run.params else "-" for k in varying]
        if sort:
            metric = run.metrics.get(sort)
            cells.append(fmt_number(metric.last) if metric is not None else "-")
        rows.append(tuple(cells))
    return header, rows


def compare_rows(
    found: Sequence[RunInfo], jobs: Sequence[Job]
) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The table of ``ml compare``: a column per run; rows for the job, the params that differ,
    then last, min and max of every metric (``-`` where a run lacks it)."""
    header = ("", *(f"job {run.job_id}" for run in found))
    rows: list[tuple[str, ...]] = [
        ("name", *(_short(job.spec.name) for job in jobs)),
        ("user", *(job.user for job in jobs)),
        ("state", *(job.state.value for job in jobs)),
        ("experiment", *(run.experiment or "-" for run in found)),
    ]
    for key in differing([run.params for run in found]):
        rows.append(
            (f"param {key}", *(fmt_value(r.params[key]) if key in r.params else "-" for r in found))
        )
    for name in sorted({m.name for run in found for m in run.metrics}):
        summaries = [metric_of(run, name) for run in found]
        for stat in ("last", "min", "max"):
            rows.append(
                (
                    f"{name} {stat}",
                    *(fmt_number(getattr(s, stat)) if s is not None else "-" for s in summaries),
                )
            )
    return header, rows


def compare_json(found: Sequence[RunInfo], jobs: Sequence[Job]) -> dict[str, Any]:
    """What ``ml compare --json`` prints: each run in full, and the params that differ."""
    return {
        "differing_params": differing([run.params for run in found]),
        "runs": [
            {
                **msgspec.to_builtins(run),
                "name": job.spec.name,
                "user": job.user,
                "state": job.state.value,
            }
            for run, job in zip(found, jobs, strict=True)
        ],
    }


def export_table(found: Sequence[RunRow]) -> tuple[list[str], list[dict[str, Any]]]:
    """One flat row per run: job_id, name, user, state, outcome, ``params.<key>`` and
    ``metric.<stat>.<name>`` for stat in last, min, max, count (None where a run lacks it)."""
    params = sorted({key for run in found for key in run.params})
    names = sorted({name for run in found for name in run.metrics})
    metric_columns = [(stat, name) for stat in _STATS for name in names]
    columns = ["job_id", "name", "user", "state", "outcome"]
    columns += [f"params.{key}" for key in params]
    columns += [f"metric.{stat}.{name}" for stat, name in metric_columns]
    rows = []
    for run in found:
        row: dict[str, Any] = {
            "job_id": run.job_id,
            "name": run.name,
            "user": run.user,
            "state": run.state,
            "outcome": run.outcome,
        }
        row.update({f"params.{key}": run.params.get(key) for key in params})
        for stat, name in metric_columns:
            metric = run.metrics.get(name)
            row[f"metric.{stat}.{name}"] = None if metric is None else getattr(metric, stat)
        rows.append(row)
    return columns, rows


def export_text(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], fmt: str, *, safe: bool = False
) -> str:
    """The rows as CSV (a header line, empty cells for None) or as a JSON list; ``safe``:
    every CSV cell escaped for a terminal."""
    if fmt == "json":
        return msgspec.json.encode(list(rows)).decode() + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def cell(value: Any) -> str:
        text = "" if value is None else _exact(value)
        return printable(text) if safe else text

    writer.writerow([cell(c) for c in columns])
    for row in rows:
        writer.writerow([cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def chart(series: Buckets, *, width: int, height: int, color: bool) -> str:
    """The series drawn with plotext, ``width`` by ``height`` characters: the last value of each
    bucket, and when downsampled the min and max of each (so spikes show)."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    if series.downsampled:
        plt.plot(series.step, series.max, color="gray", marker="braille")
        plt.plot(series.step, series.min, color="gray", marker="braille")
    plt.plot(series.step, series.last, color="cyan", marker="braille")
    plt.xlabel("step")
    drawn: str = plt.build()
    plt.clear_figure()
    return drawn if color else str(plt.uncolorize(drawn))


def show_table(
    out: Output,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Iterable[int] = (),
) -> None:
    """A table of server strings: rich on a terminal, aligned plain text otherwise; every cell
    escaped for the terminal (and, for rich, as markup)."""
    safe_header = [printable(h) for h in header]
    safe_rows = [[printable(cell) for cell in row] for row in rows]
    if not out.fancy:
        from ._ml_output import plain_table

        for line in plain_table(safe_header, safe_rows):
            out.line(line)
        return
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 1)
    )
    aligned = set(right)
    for index, title in enumerate(safe_header):
        table.add_column(escape(title), justify="right" if index in aligned else "left")
    for row in safe_rows:
        table.add_row(*(escape(cell) for cell in row))
    out.console().print(table)


# --- commands --------------------------------------------------------------------------------


async def metrics(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Without names: the run's metric summaries, params, tags, summary and narrative.  With
    names: a chart of each series, as wide as the terminal, and its summary line."""
    run = await client.metrics(args.job)
    if args.names:
        return await _charts(client, run, args, out)
    if out.json:
        out.emit(run)
        return 0
    counts = f"{run.points} points"
    if run.invalid or run.dropped:
        counts += f" ({run.invalid} invalid lines, {run.dropped} dropped)"
    out.line(printable(f"job {run.job_id}, experiment {run.experiment or '-'}: {counts}"))
    if run.metrics:
        show_table(out, METRIC_HEADER, metric_rows(run), right=range(1, 6))
    else:
        out.line("no metrics logged")
    pairs = [
        (label, _pairs_text(values))
        for label, values in (("params", run.params), ("tags", run.tags), ("summary", run.summary))
        if values
    ]
    pairs += _narrative_pairs(run)
    if pairs:
        out.line()
        print_pairs(out, pairs)
    return 0


def _narrative_pairs(run: RunInfo, indent: str = "") -> list[tuple[str, str]]:
    """The narrative of the run that is set, and its outcome, as (label, text)."""
    texts = [(label, run.narrative.get(field)) for label, field in NARRATIVE]
    pairs = [(indent + label, text) for label, text in texts if text]
    return pairs + ([(indent + "outcome", run.outcome)] if run.outcome else [])


async def _charts(client: Client, run: RunInfo, args: argparse.Namespace, out: Output) -> int:
    """``ml metrics JOB NAME...``: each series downsampled to the terminal's width."""
    wanted = []
    for name in args.names:
        summary = metric_of(run, name)
        if summary is None:
            raise NotFoundError(printable(f"job {run.job_id} has no metric {name!r}"))
        wanted.append(summary)
    size = shutil.get_terminal_size((100, 24))
    width = max(20, size.columns)
    height = min(20, max(8, size.lines // 2))
    drawn = []
    for summary in wanted:
        series = await client.series(
            run.job_id,
            summary.name,
            points=min(POINTS_MAX, width),
            start=args.start,
            end=args.end,
        )
        drawn.append((summary, series))
    if out.json:
        out.emit({"job_id": run.job_id, "metrics": wanted, "series": [s for _, s in drawn]})
        return 0
    for index, (summary, series) in enumerate(drawn):
        if index:
            out.line()
        if series.step:
            out.line(chart(series, width=width, height=height, color=out.tty))
        else:
            out.line("no points in the steps asked for")
        out.line(printable(summary_line(summary, series)))
    return 0


async def experiments(client: Client, args: argparse.Namespace, out: Output) -> int:
    """The experiments with runs the key may see, with their run counts."""
    reply = await client.experiments()
    if out.json:
        out.emit(reply)
        return 0
    if not reply.experiments:
        out.line("no experiments")
        return 0
    now = time.time()
    rows = [
        (
            e.name,
            str(e.runs),
            "-" if e.last_created is None else fmt_duration(now - e.last_created) + " ago",
        )
        for e in reply.experiments
    ]
    show_table(out, EXPERIMENT_HEADER, rows, right=(1,))
    return 0


async def collect_runs(
    client: Client,
    experiment: str,
    *,
    sort: str | None = None,
    order: str = "desc",
    limit: int | None = None,
) -> tuple[list[RunRow], str | None]:
    """At most ``limit`` runs of the experiment (None: all), page by page; and the cursor of
    the next page (None: there are no more)."""
    found: list[RunRow] = []
    before: str | None = None
    while limit is None or len(found) < limit:
        size = PAGE_MAX if limit is None else min(PAGE_MAX, limit - len(found))
        page = await client.runs(experiment, sort=sort, order=order, limit=size, before=before)
        found += page.runs
        before = page.next
        if before is None or not page.runs:
            break
    return found, before


async def runs(client: Client, args: argparse.Namespace, out: Output) -> int:
    """A table of the experiment's runs: the params that vary, and the ``--sort`` metric."""
    found, after = await collect_runs(
        client, args.experiment, sort=args.sort, order=args.order, limit=args.limit
    )
    if out.json:
        out.emit({"experiment": args.experiment, "runs": found, "next": after})
        return 0
    if not found:
        out.line(printable(f"no runs in experiment {args.experiment}"))
        return 0
    header, rows = run_rows(found, args.sort)
    show_table(out, header, rows, right=[0, *([len(header) - 1] if args.sort else [])])
    if after is not None:
        out.note(f"showing the first {len(found)} runs (--limit N shows more)")
    return 0


async def compare(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Runs side by side: the params that differ, every metric's last, min and max; then what
    each run set out to show and what it showed."""
    if len(args.jobs) < 2:
        raise UsageError("compare: give two jobs or more")
    found = [await client.metrics(job_id) for job_id in args.jobs]
    jobs = [await client.get(job_id) for job_id in args.jobs]
    if out.json:
        out.emit(compare_json(found, jobs))
        return 0
    header, rows = compare_rows(found, jobs)
    show_table(out, header, rows, right=range(1, len(header)))
    narratives = [(run, _narrative_pairs(run, indent="  ")) for run in found]
    if any(pairs for _, pairs in narratives):
        for run, pairs in narratives:
            out.line()
            out.line(f"job {run.job_id}" + ("" if pairs else ": no narrative"))
            if pairs:
                print_pairs(out, pairs)
    return 0


async def export(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Every run of the experiment (all pages) as CSV or JSON, on stdout or in ``-o FILE``.
    With ``--json`` and no file, the rows are JSON; with a file, stdout gets a JSON summary."""
    found, _ = await collect_runs(client, args.experiment)
    columns, rows = export_table(found)
    fmt = "json" if out.json and args.output is None else args.format
    if args.output is None:
        sys.stdout.write(export_text(columns, rows, fmt, safe=out.tty))
        sys.stdout.flush()
        return 0
    target = trio.Path(args.output)
    await target.write_text(export_text(columns, rows, fmt), encoding="utf-8", newline="")
    if out.json:
        summary = {"experiment": args.experiment, "format": fmt, "file": str(target)}
        out.emit({**summary, "runs": len(rows)})
    else:
        out.note(printable(f"{len(rows)} run(s) of {args.experiment} written to {target}"))
    return 0


async def outcome(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Record what the run showed."""
    reply = await client.set_outcome(args.job, args.text)
    if out.json:
        out.emit(reply)
    else:
        out.line(f"job {reply.job_id}: outcome recorded")
    return 0
