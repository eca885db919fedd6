"""``ml pull``, ``ml validate`` and ``ml prune``: what jobs leave behind."""

from __future__ import annotations

import argparse
from pathlib import Path

from fetchml.client import Client, select

from ._ml_output import Output, fmt_bytes

__all__ = ["prune", "pull", "validate"]


async def pull(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Download the job's outputs (all, or the files and folders named) under ``-o DIR``,
    each checked against the SHA-256 its manifest records; a progress bar on a terminal."""
    listing = await client.files(args.job)
    chosen = select(listing.files, list(args.paths))
    dest = Path(args.output)
    total = sum(entry.size for entry in chosen)
    if out.fancy and chosen:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=out.console(), transient=True) as bar:
            task = bar.add_task("pull", total=total)
            written = await client.download(
                args.job, chosen, dest, progress=lambda n: bar.advance(task, n)
            )
    else:
        written = await client.download(args.job, chosen, dest)
    if out.json:
        out.emit(
            [
                {"path": entry.path, "size": entry.size, "sha256": entry.sha256, "file": str(path)}
                for entry, path in zip(chosen, written, strict=True)
            ]
        )
        return 0
    for path in written:
        out.line(str(path))
    checked = "checked against the manifest" if listing.final else "the job still runs: unchecked"
    out.note(f"{len(written)} file(s), {fmt_bytes(total)} ({checked})")
    return 0


async def validate(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Exit 0 when the snapshot and outputs still match the run manifest, else 1."""
    result = await client.validate(args.job)
    if out.json:
        out.emit(result)
    else:
        for error in result.errors:
            out.line(f"error: {error}")
        verdict = "ok" if result.ok else f"{len(result.errors)} problem(s)"
        out.line(f"job {args.job}: {verdict} ({result.checks} checks)")
    return 0 if result.ok else 1


async def prune(client: Client, args: argparse.Namespace, out: Output) -> int:
    report = await client.prune(
        older_than_s=args.older_than, keep_last=args.keep_last, dry_run=args.dry_run
    )
    if out.json:
        out.emit(report)
        return 0
    would = "would free" if report.dry_run else "freed"
    out.line(
        f"{would} {fmt_bytes(report.bytes_freed)}: {len(report.jobs)} job(s), "
        f"{report.snapshots} snapshot(s), {report.blobs} blob(s)"
    )
    return 0
