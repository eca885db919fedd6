"""Experiment tracking from the client: a run's metrics, its series, experiments and their runs.

The replies are the bodies of :mod:`fetchml.protocol` the server sends
(``docs/tracking-contract.md``); fields a newer server adds are ignored.  Blocking, over HTTP
(run in a worker thread by :class:`~fetchml.client.Client`).  Names in paths are
percent-encoded whole (a metric named ``val/acc`` is one path segment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from fetchml.protocol import Buckets, ExperimentsBody, OutcomeBody, RawPage, RunInfo, RunsBody

if TYPE_CHECKING:
    from ._http import HttpSession

__all__ = ["experiments", "metrics", "points", "runs", "segment", "series", "set_outcome"]


def segment(name: str) -> str:
    """A name as one URL path segment (``/`` encoded too)."""
    return quote(name, safe="")


def _query(**params: object) -> str:
    """``?k=v&…`` of the params that are not None (booleans as ``true``/``false``)."""
    given = {
        key: ("true" if value else "false") if isinstance(value, bool) else value
        for key, value in params.items()
        if value is not None
    }
    return "?" + urlencode(given) if given else ""


def metrics(session: HttpSession, job_id: int) -> RunInfo:
    return session.call("GET", f"/api/v1/jobs/{job_id}/metrics", RunInfo, job_id=job_id)


def series(
    session: HttpSession, job_id: int, name: str, *, points: int, start: int | None, end: int | None
) -> Buckets:
    path = f"/api/v1/jobs/{job_id}/metrics/{segment(name)}" + _query(
        points=points, start=start, end=end
    )
    return session.call("GET", path, Buckets, job_id=job_id)


def points(
    session: HttpSession, job_id: int, name: str, *, after: int | None, limit: int
) -> RawPage:
    path = f"/api/v1/jobs/{job_id}/metrics/{segment(name)}" + _query(
        raw=True, after=after, limit=limit
    )
    return session.call("GET", path, RawPage, job_id=job_id)


def experiments(session: HttpSession) -> ExperimentsBody:
    return session.call("GET", "/api/v1/experiments", ExperimentsBody)


def runs(
    session: HttpSession,
    experiment: str,
    *,
    sort: str | None,
    order: str,
    limit: int,
    before: str | None,
) -> RunsBody:
    path = f"/api/v1/experiments/{segment(experiment)}/runs" + _query(
        sort=sort, order=order, limit=limit, before=before
    )
    return session.call("GET", path, RunsBody)


def set_outcome(session: HttpSession, job_id: int, text: str) -> OutcomeBody:
    return session.call(
        "POST", f"/api/v1/jobs/{job_id}/outcome", OutcomeBody, json={"outcome": text}, job_id=job_id
    )
