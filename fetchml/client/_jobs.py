"""The job requests over HTTP: whoami, submit, get, list, cancel, status.  Blocking.

The same operations as the WebSocket ops of :class:`~fetchml.client.Client`, on the HTTP API's
routes, decoded with the same structs (:mod:`fetchml.protocol`): what :class:`HttpClient` runs for
one-shot commands, which need no event loop and no WebSocket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlencode

from fetchml._models import Job, JobSpec, JobState, StatusReport
from fetchml.errors import InvalidRequestError, NotFoundError
from fetchml.protocol import Identity, JobBody, JobsBody, StatusBody

from ._errors import ServerUnreachableError

__all__ = [
    "NO_KEY_HINT",
    "Requests",
    "cancel",
    "get",
    "jobs",
    "state_names",
    "status",
    "submit",
    "whoami",
]

NO_KEY_HINT: Final = "no API key given (set FETCHML_API_KEY or run `ml config init`)"
T = TypeVar("T")


class Requests(Protocol):
    """What these functions send requests with: an ``HttpSession`` or a ``OneShotSession``."""

    url: str

    def call(
        self, method: str, path: str, type_: type[T], *, json: Any = None, job_id: int | None = None
    ) -> T: ...


def state_names(state: JobState | str | Iterable[JobState | str] | None) -> list[str] | None:
    """The state filter of a list as state names.  Raises InvalidRequestError naming an unknown
    state (both clients check it before asking the server)."""
    if state is None:
        return None
    states = [state] if isinstance(state, str) else list(state)
    names = []
    for one in states:
        try:
            names.append(JobState(one).value)
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise InvalidRequestError(
                f"state: unknown state {one!r}; one of {known}", field="state"
            ) from None
    return names


def _route(session: Requests, path: str, type_: type[T]) -> T:
    """GET a route that names no job: a Fetch ML server always has it, so "not found" means
    that the URL is not a Fetch ML server's.  Raises ServerUnreachableError saying so."""
    try:
        return session.call("GET", path, type_)
    except NotFoundError:
        raise ServerUnreachableError(
            f"the server at {session.url} answered HTTP 404 to GET {path}; is this the URL of a "
            "Fetch ML server?",
            url=session.url,
        ) from None


def whoami(session: Requests) -> Identity:
    return _route(session, "/api/v1/whoami", Identity)


def submit(session: Requests, spec: JobSpec) -> Job:
    """Queue ``spec`` (already validated by the caller); the job as stored."""
    return session.call("POST", "/api/v1/jobs", JobBody, json=spec).job


def get(session: Requests, job_id: int) -> Job:
    return session.call("GET", f"/api/v1/jobs/{int(job_id)}", JobBody, job_id=job_id).job


def cancel(session: Requests, job_id: int) -> Job:
    """Cancel the job; waits for the server's answer, which comes once the job has ended."""
    path = f"/api/v1/jobs/{int(job_id)}/cancel"
    return session.call("POST", path, JobBody, job_id=job_id).job


def jobs(
    session: Requests,
    *,
    user: str | None,
    states: list[str] | None,
    limit: int,
    before: int | None,
) -> list[Job]:
    query: Mapping[str, Any] = {
        name: value
        for name, value in (
            ("user", user),
            ("state", ",".join(states) if states is not None else None),
            ("limit", limit),
            ("before", before),
        )
        if value is not None
    }
    path = "/api/v1/jobs" + (f"?{urlencode(query)}" if query else "")
    return _route(session, path, JobsBody).jobs


def status(session: Requests) -> StatusReport:
    return _route(session, "/api/v1/status", StatusBody).status
