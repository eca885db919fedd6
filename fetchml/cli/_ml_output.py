"""How ``ml`` prints: JSON, plain text when stdout is not a terminal, rich on a terminal.

rich is imported only when a terminal view is actually drawn, so scripted use never pays for it.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec

from fetchml._models import Job, JobSpec, JobState, Resources

__all__ = [
    "Output",
    "age",
    "command_text",
    "detail_lines",
    "fmt_duration",
    "fmt_memory",
    "fmt_resources",
    "job_row",
    "run_time",
    "state_label",
]

TABLE_HEADER = ("ID", "NAME", "USER", "STATE", "PRIO", "RESOURCES", "AGE", "TIME")
_STATE_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "cancelling": "magenta",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "lost": "red",
    "cancelled": "dim",
}
_json = msgspec.json.Encoder()


class Output:
    """Where and how a command prints.  ``json``: only JSON on stdout."""

    def __init__(self, *, json: bool) -> None:
        self.json = json
        self.tty = sys.stdout.isatty()
        self.err_tty = sys.stderr.isatty()
        self._console: Any = None

    @property
    def fancy(self) -> bool:
        """Whether to draw with rich (stdout is a terminal and JSON was not asked for)."""
        return self.tty and not self.json

    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def emit(self, payload: Any) -> None:
        """One JSON document (or one line of a JSON stream) on stdout."""
        sys.stdout.write(_json.encode(payload).decode() + "\n")
        sys.stdout.flush()

    def line(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def raw(self, data: bytes) -> None:
        """Bytes of a job's log, as they came."""
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def note(self, text: str) -> None:
        """A progress line on stderr (never on stdout, which may carry data)."""
        sys.stderr.write(f"ml: {text}\n")
        sys.stderr.flush()

    @contextmanager
    def spinner(self, text: str) -> Iterator[None]:
        """A spinner on stderr while something slow happens (only on a terminal)."""
        if not self.err_tty:
            yield
            return
        from rich.console import Console

        with Console(stderr=True).status(text):
            yield

    def table(self, jobs: Sequence[Job], now: float | None = None) -> None:
        now = time.time() if now is None else now
        rows = [job_row(job, now) for job in jobs]
        if self.fancy:
            console = self.console()
            console.print(rich_table(rows, console.width))
        else:
            for line in plain_table(TABLE_HEADER, rows):
                self.line(line)


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (escape sequences,
    bidi overrides, which another user's job name could carry) shown as ``\\x1b``-style
    escapes instead of acting on the terminal."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text
    )


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(w) for w, cell in zip(widths, row, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def rich_table(rows: Sequence[Sequence[str]], width: int = 80) -> Any:
    """A rich table of job rows for a terminal ``width`` wide; only NAME gives way."""
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 1)
    )
    widest = [max([len(t), *(len(row[i]) for row in rows)]) for i, t in enumerate(TABLE_HEADER)]
    name = TABLE_HEADER.index("NAME")
    others = sum(w for i, w in enumerate(widest) if i != name) + 3 * len(TABLE_HEADER)
    name_width = max(8, min(30, widest[name], width - others))
    for index, title in enumerate(TABLE_HEADER):
        size = name_width if index == name else widest[index]
        table.add_column(
            title,
            justify="right" if title in ("ID", "PRIO") else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=size,
            max_width=size,
        )
    from rich.markup import escape

    for row in rows:
        cells = [escape(cell) for cell in row]  # server strings are text, never markup
        style = _STATE_STYLE.get(cells[3], "")
        cells[3] = f"[{style}]{cells[3]}[/]" if style else cells[3]
        table.add_row(*cells)
    return table


def state_label(job: Job) -> str:
    if job.state is JobState.RUNNING and job.cancel_requested:
        return "cancelling"
    return job.state.value


def job_row(job: Job, now: float) -> tuple[str, ...]:
    return (
        str(job.id),
        job_name(job, 30),
        printable(job.user),
        state_label(job),
        str(job.spec.priority),
        fmt_resources(job.spec.resources),
        fmt_duration(now - job.created_at),
        run_time(job, now),
    )


def job_name(job: Job, width: int) -> str:
    text = printable(job.spec.name or command_text(job.spec))
    return text if len(text) <= width else text[: width - 1] + "…"


def command_text(spec: JobSpec) -> str:
    return spec.command if isinstance(spec.command, str) else shlex.join(spec.command)


def run_time(job: Job, now: float) -> str:
    """How long the job has run (so far, or in all), ``-`` before it started."""
    if job.started_at is None:
        return "-"
    end = job.finished_at if job.finished_at is not None else now
    return fmt_duration(end - job.started_at)


def age(job: Job, now: float) -> str:
    return fmt_duration(now - job.created_at)


def fmt_duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_bytes(size: int) -> str:
    """``812 B``, ``4.2 KiB``, ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def fmt_memory(mb: int) -> str:
    """``8G``, ``512M``, ``23.5G``."""
    if mb and mb % 1024 == 0:
        return f"{mb // 1024}G"
    if mb > 1024:
        return f"{mb / 1024:.1f}G"
    return f"{mb}M"


def fmt_resources(resources: Resources) -> str:
    parts = [f"{resources.cpus:g}cpu"]
    if resources.memory_mb:
        parts.append(fmt_memory(resources.memory_mb))
    if resources.gpus:
        parts.append(f"{resources.gpus}gpu")
    return " ".join(parts)


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    stamp = datetime.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    return f"{stamp} ({fmt_duration(now - ts)} ago)"


def spec_lines(spec: JobSpec) -> list[tuple[str, str]]:
    """The fields of a spec worth showing, as (label, value)."""
    resources = spec.resources
    lines = [
        ("command", command_text(spec) + ("  (shell)" if spec.shell else "")),
        ("name", spec.name or "-"),
        ("priority", str(spec.priority)),
        (
            "resources",
            fmt_resources(resources)
            if resources.memory_mb
            else f"{fmt_resources(resources)} (memory not stated)",
        ),
        ("timeout", fmt_duration(spec.timeout_s) if spec.timeout_s else "none"),
        ("retries", str(spec.max_retries)),
    ]
    optional = [
        ("cwd", spec.cwd),
        ("after", ", ".join(str(j) for j in spec.depends_on)),
        ("tags", ", ".join(spec.tags)),
        ("experiment", spec.experiment),
        ("datasets", ", ".join(f"{r.name}@{r.version} {r.uri}" for r in spec.dataset_refs)),
        ("env", " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.env.items()))),
        ("snapshot", spec.snapshot),
        ("git", _git_line(spec)),
        ("requeue of", str(spec.requeued_from) if spec.requeued_from else None),
        ("hypothesis", spec.hypothesis),
        ("intent", spec.intent),
        ("expected", spec.expected_outcome),
    ]
    return lines + [(label, value) for label, value in optional if value]


def _git_line(spec: JobSpec) -> str | None:
    git = spec.provenance.git if spec.provenance is not None else None
    if git is None:
        return None
    where = " on ".join(
        part for part in (git.commit[:12] if git.commit else None, git.branch) if part
    )
    return f"{where or 'no commit yet'}{' (with uncommitted changes)' if git.dirty else ''}"


def detail_lines(job: Job, now: float | None = None) -> list[tuple[str, str]]:
    """Everything about one job, as (label, value)."""
    now = time.time() if now is None else now
    state = state_label(job)
    if job.exit_code is not None and job.terminal:
        state += f" (exit code {job.exit_code})"
    lines = [("job", str(job.id)), ("user", job.user), ("state", state)]
    if job.reason:
        lines.append(("reason", job.reason))
    lines += spec_lines(job.spec)
    lines += [
        ("created", _when(job.created_at, now)),
        ("started", _when(job.started_at, now)),
        ("finished", _when(job.finished_at, now)),
        ("run time", run_time(job, now)),
        ("attempts", str(job.attempts) + (f" ({job.requeues} requeued)" if job.requeues else "")),
    ]
    if job.gpus:
        lines.append(("gpus", ", ".join(str(g) for g in job.gpus)))
    return lines


def print_pairs(out: Output, pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs)
    if out.fancy:
        from rich.markup import escape

        for label, value in pairs:
            out.console().print(f"[bold]{label + ':':<{width + 1}}[/] {escape(printable(value))}")
        return
    for label, value in pairs:
        out.line(f"{label + ':':<{width + 1}} {printable(value)}")
