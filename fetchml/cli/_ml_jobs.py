"""``ml queue`` (with ``--wait`` and ``--dry-run``) and ``ml cancel``."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

import msgspec

from fetchml._models import Job, JobSpec, validate_spec
from fetchml.errors import FetchMLError, InvalidSpecError, JobNotFoundError, PermissionDeniedError

from ._ml import exit_code_for
from ._ml_output import Output, fmt_bytes, fmt_memory, print_pairs, spec_lines

if TYPE_CHECKING:
    from ._ml import AnyClient

__all__ = ["build_spec", "cancel", "queue", "requeue"]

JOBS_CREATE = "jobs:create"  # the permission name (contract); fetchml.auth is not imported


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec the ``queue`` options describe (unset options keep the server defaults)."""
    command: list[str] = list(args.command)
    spec: dict[str, Any] = {"command": command} if command else {}
    if args.shell:
        spec.update(command=" ".join(command), shell=True)
    resources = {
        name: value
        for name, value in (("cpus", args.cpu), ("memory_mb", args.memory), ("gpus", args.gpu))
        if value is not None
    }
    if resources:
        spec["resources"] = resources
    optional = {
        "name": args.name,
        "priority": args.priority,
        "timeout_s": args.timeout,
        "max_retries": args.retries,
        "depends_on": args.after,
        "tags": args.tag,
        "env": dict(args.env) if args.env else None,
        "cwd": os.path.abspath(args.cwd) if getattr(args, "cwd", None) else None,
        "experiment": args.experiment,
        "datasets": getattr(args, "dataset", None),
        "hypothesis": args.hypothesis,
        "intent": args.intent,
        "expected_outcome": args.expected_outcome,
    }
    spec.update({name: value for name, value in optional.items() if value is not None})
    return spec


async def queue(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    spec = build_spec(args)
    if args.dry_run:
        return await _dry_run(client, spec, out)
    snapshot = None
    if not (args.no_snapshot or args.cwd):
        with out.spinner("snapshotting the project"):
            snapshot = await client.snapshot(".", root=args.root)
        spec.update(snapshot.spec_fields())
        if not out.json:
            info = snapshot.info
            out.note(
                f"snapshot {info.id[:12]}: {info.files} files, {fmt_bytes(info.bytes)} "
                f"(sent {fmt_bytes(info.uploaded_bytes or 0)}) from {snapshot.root}"
            )
    job = await client.submit(spec)
    return await _queued(client, job, args, out, snapshot.info if snapshot else None)


async def _queued(
    client: AnyClient, job: Job, args: argparse.Namespace, out: Output, snapshot: object = None
) -> int:
    """Say what was queued (the job id, or with ``--json`` the job and its snapshot); with
    ``--wait`` follow it to its end and exit with its status."""
    if not args.wait:
        if out.json:
            out.emit({**msgspec.to_builtins(job), "snapshot": snapshot})
        else:
            out.line(str(job.id))
        return 0
    from fetchml.client import Client

    from ._ml_follow import exit_status, follow_job

    assert isinstance(client, Client), "--wait follows the job over the WebSocket"
    try:
        final = await follow_job(client, job, out, states=True, since=job.seq)
    except KeyboardInterrupt:
        out.note(f"stopped waiting; job {job.id} goes on (ml cancel {job.id} stops it)")
        raise
    return exit_status(final)


async def requeue(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    """Queue job ``args.job`` again: the same snapshot and spec, the options given changed."""
    original = await client.get(args.job)
    spec: dict[str, Any] = msgspec.to_builtins(original.spec)
    changes = build_spec(args)
    if "resources" in changes:
        spec["resources"] = {**spec["resources"], **changes.pop("resources")}
    if not args.command:
        changes.pop("command", None)
        changes.pop("shell", None)
    elif not args.shell:
        spec["shell"] = False
    if "datasets" not in changes and original.spec.dataset_refs:
        # The same data as the original run, even if a dataset has a newer version now.
        spec["datasets"] = [f"{ref.name}@{ref.version}" for ref in original.spec.dataset_refs]
    spec.update(changes, requeued_from=original.id)
    job = await client.submit(spec)
    if not out.json:
        out.note(f"job {original.id} queued again as job {job.id}")
    return await _queued(client, job, args, out)


async def _dry_run(client: AnyClient, raw: dict[str, Any], out: Output) -> int:
    """Check the job as the server would, without queueing it.

    The server has no dry-run op, so this validates the spec with the server's own validator,
    checks the key may create jobs (``whoami``), that the resources fit the server's totals
    (``status``), that the jobs it waits for exist (``get``) and that its datasets are
    registered.
    """
    spec = validate_spec(raw)
    identity = await client.whoami()
    if JOBS_CREATE not in identity.permissions:
        raise PermissionDeniedError(f"missing permission {JOBS_CREATE}", permission=JOBS_CREATE)
    report = await client.status()
    _check_fits(spec, report.cpus_total, report.memory_mb_total, len(report.gpus_total))
    await _check_references(client, spec)
    fits_now = (
        spec.resources.cpus <= report.cpus_free
        and spec.resources.memory_mb <= report.memory_mb_free
        and spec.resources.gpus <= len(report.gpus_free)
    )
    if out.json:
        out.emit(
            {
                "dry_run": True,
                "valid": True,
                "user": identity.user,
                "spec": spec,
                "fits_now": fits_now,
            }
        )
        return 0
    out.line(f"dry run: the job is valid; it would be queued for {identity.user} as:")
    print_pairs(out, spec_lines(spec))
    free = (
        f"{report.cpus_free:g}/{report.cpus_total:g} cpus, "
        f"{fmt_memory(report.memory_mb_free)}/{fmt_memory(report.memory_mb_total)} memory, "
        f"{len(report.gpus_free)}/{len(report.gpus_total)} gpus free"
    )
    out.line(f"it {'would start now' if fits_now else 'would wait for resources'} ({free})")
    return 0


async def _check_references(client: AnyClient, spec: JobSpec) -> None:
    """Raise InvalidSpecError, as the server's submit does, for a job ``spec`` waits for that
    does not exist and a dataset that is not registered.  Waits on one request for each."""
    for index, dep in enumerate(spec.depends_on):
        try:
            await client.get(dep)
        except JobNotFoundError:
            raise InvalidSpecError(
                f"depends_on[{index}]: unknown job {dep}", field=f"depends_on[{index}]"
            ) from None
    if spec.datasets:
        from ._ml_datasets import check_datasets

        await check_datasets(client, spec)


def _check_fits(spec: JobSpec, cpus: float, memory_mb: int, gpus: int) -> None:
    """Raise InvalidSpecError (as the server's submit does) for a job that could never run."""
    need = spec.resources
    problem = None
    if need.cpus > cpus:
        problem = f"resources.cpus: {need.cpus:g} requested, this server has {cpus:g}"
    elif need.memory_mb > memory_mb:
        problem = f"resources.memory_mb: {need.memory_mb} requested, this server has {memory_mb}"
    elif need.gpus > gpus:
        problem = f"resources.gpus: {need.gpus} requested, this server has {gpus}"
    if problem is not None:
        raise InvalidSpecError(problem, field=problem.split(":", 1)[0])


async def cancel(client: AnyClient, args: argparse.Namespace, out: Output) -> int:
    """Cancel each job; report each; exit with the first error's status."""
    status = 0
    cancelled = []
    for job_id in args.jobs:
        try:
            with out.spinner(f"cancelling job {job_id}"):
                job = await client.cancel(job_id)
        except FetchMLError as exc:
            where = "" if f"job {job_id}" in exc.message else f"job {job_id}: "
            out.note(f"error: {where}{exc.message}")
            status = status or exit_code_for(exc)
            continue
        cancelled.append(job)
        if not out.json:
            out.line(f"job {job.id} {job.state.value}")
    if out.json:
        out.emit(cancelled)
    return status
