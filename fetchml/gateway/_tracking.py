"""The HTTP routes of experiment tracking: a run's metrics, a series, experiments and their runs.

``GET /api/v1/jobs/{id}/metrics`` (summaries, params, tags, narrative), ``GET
/api/v1/jobs/{id}/metrics/{name}`` (a series downsampled by min/max per bucket, or raw pages
with ``raw=true``), ``POST /api/v1/jobs/{id}/outcome``, ``GET /api/v1/experiments`` and ``GET
/api/v1/experiments/{name}/runs`` (sorted by a metric, paginated).  Visibility is the jobs':
researchers see their own runs, analysts and admins every run; a run the caller may not see is
"not found".  Every query reads ``tracking.db`` in a worker thread, never the points of a
listing (summaries are kept at ingest).
"""

from __future__ import annotations

import msgspec
import trio
from quart import Quart, Response, request

from .._models import Job
from ..auth import JOBS_READ_ALL, Principal
from ..errors import InvalidRequestError, NotFoundError
from ..protocol import (
    ExperimentInfo,
    ExperimentsBody,
    OutcomeBody,
    OutcomeRequest,
    RunInfo,
    RunsBody,
)
from ..tracking import decode_cursor, encode_cursor, name_problem
from ._http import caller, flag_arg, int_arg, json_response, request_struct
from ._service import Service

__all__ = ["MAX_BUCKETS", "MAX_PAGE", "MAX_RUNS", "register_tracking"]

MAX_BUCKETS = 10_000
MAX_PAGE = 10_000
MAX_RUNS = 1000
_MAX_STEP = 2**62


def _name(value: str, field: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise InvalidRequestError(f"{field}: {problem}", field=field)
    return value


def register_tracking(app: Quart, service: Service) -> None:
    """Add the tracking routes to ``app``."""
    tracking = service.scheduler.tracking

    async def visible_run(who: Principal, job_id: int) -> RunInfo:
        """The run of a job ``who`` may see (an empty one while tracking holds nothing of it:
        it has not started, or has not logged yet).  Raises JobNotFoundError (the job is not
        visible)."""
        job = await service.get(who, job_id)
        info = await trio.to_thread.run_sync(tracking.run, job_id)
        return info if info is not None else empty_run(job)

    @app.get("/api/v1/jobs/<int:job_id>/metrics")
    async def job_metrics(job_id: int) -> Response:
        return json_response(await visible_run(await caller(service), job_id))

    @app.get("/api/v1/jobs/<int:job_id>/metrics/<path:name>")
    async def job_series(job_id: int, name: str) -> Response:
        who = await caller(service)
        _name(name, "name")
        raw = flag_arg("raw")
        await visible_run(who, job_id)
        if raw:
            after = int_arg("after", None, low=-1, high=_MAX_STEP)
            limit = int_arg("limit", 1000, low=1, high=MAX_PAGE) or 1000
            found: object = await trio.to_thread.run_sync(
                lambda: tracking.raw(job_id, name, after=after, limit=limit)
            )
        else:
            points = int_arg("points", 1000, low=1, high=MAX_BUCKETS) or 1000
            start = int_arg("start", None, low=0, high=_MAX_STEP)
            end = int_arg("end", None, low=0, high=_MAX_STEP)
            found = await trio.to_thread.run_sync(
                lambda: tracking.series(job_id, name, buckets=points, start=start, end=end)
            )
        if found is None:
            raise NotFoundError(f"job {job_id} has no metric {name[:100]}")
        return json_response(found)

    @app.post("/api/v1/jobs/<int:job_id>/outcome")
    async def job_outcome(job_id: int) -> Response:
        who = await caller(service)
        job = await service.get(who, job_id)
        who.require_cancel_job(job.user)
        asked = await request_struct(OutcomeRequest)
        if "\0" in asked.outcome:
            raise InvalidRequestError("outcome: has a NUL character", field="outcome")
        if not await trio.to_thread.run_sync(tracking.set_outcome, job_id, asked.outcome):
            raise NotFoundError(f"job {job_id} has no run yet (it has not started)")
        await service.record("outcome", user=who.user, job_id=job_id)
        return json_response(OutcomeBody(job_id=job_id, outcome=asked.outcome))

    @app.get("/api/v1/experiments")
    async def experiments() -> Response:
        who = await caller(service)
        owner = _owner_filter(who)
        found = await trio.to_thread.run_sync(tracking.experiments, owner)
        body = ExperimentsBody(
            experiments=[ExperimentInfo(name=n, runs=r, last_created=t) for n, r, t in found]
        )
        return json_response(body)

    @app.get("/api/v1/experiments/<path:name>/runs")
    async def experiment_runs(name: str) -> Response:
        who = await caller(service)
        # An experiment's name is any the job spec takes: only a lookup key here.
        sort = request.args.get("sort")
        if sort is not None:
            _name(sort, "sort")
        order = request.args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order: asc or desc", field="order")
        limit = int_arg("limit", 100, low=1, high=MAX_RUNS) or 100
        descending = order == "desc"
        text = request.args.get("before")
        after = None if not text else decode_cursor(text, sort=sort, descending=descending)
        owner = _owner_filter(who)
        page, more = await trio.to_thread.run_sync(
            lambda: tracking.experiment_runs(
                name, owner, sort=sort, descending=descending, limit=limit, after=after
            )
        )
        states = await service.states(who, [row.job_id for row in page])
        runs = [msgspec.structs.replace(row, state=states.get(row.job_id)) for row in page]
        cursor = None if more is None else encode_cursor(more)
        return json_response(RunsBody(experiment=name, runs=runs, next=cursor))


def _owner_filter(who: Principal) -> str | None:
    """Whose runs ``who`` may list: everyone's (None) or their own.  Raises
    PermissionDeniedError for a key that may read no job."""
    if who.can(JOBS_READ_ALL):
        return None
    who.require_read_job(who.user)
    return who.user


def empty_run(job: Job) -> RunInfo:
    """The run of a job tracking holds nothing of yet: its spec's names and narrative."""
    spec = job.spec
    return RunInfo(
        job_id=job.id,
        user=job.user,
        experiment=spec.experiment,
        name=spec.name,
        params={},
        tags={},
        summary={},
        narrative=spec.narrative,
        outcome=None,
        points=0,
        invalid=0,
        dropped=0,
        metrics=[],
    )
