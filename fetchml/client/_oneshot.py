"""A client for one command's few requests over plain HTTP: no event loop, no WebSocket.

``ml status``, ``ml whoami``, ``ml queue`` and the like make one to a few requests and exit.
Over the WebSocket each paid for importing trio and trio-websocket and for the upgrade handshake,
several times the request itself.  :class:`HttpClient` makes the same requests on the HTTP API,
decoded with the same structs, raising the same error classes as :class:`Client`.

Its methods are coroutines that never suspend: they block on the socket and return.  So a
command handler is written once, ``async``, and runs against :class:`Client` inside ``trio.run``
when it streams (``--watch``, ``--wait``, ``logs -f``), or against :class:`HttpClient` through
:func:`run_blocking` without any event loop.  Do not use :class:`HttpClient` inside an event
loop: each call blocks it.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from fetchml._models import Job, JobSpec, JobState, StatusReport, validate_spec
from fetchml.errors import AuthError, RateLimitedError
from fetchml.protocol import Identity

from . import _jobs
from ._errors import rate_limit_wait
from ._http_once import OneShotSession
from ._settings import Settings, check_key

if TYPE_CHECKING:
    from fetchml.protocol import DatasetBody

    from ._http import HttpSession
    from ._snapshots import Snapshot

__all__ = ["HttpClient", "run_blocking"]

T = TypeVar("T")

# Longest the requests of one call wait out rate limiting in all (as ``connect``'s default).
DEFAULT_RATE_LIMIT_WAIT_S: Final = 30.0
# Seconds to wait for the connection and for each read; an answer may take long (a cancel waits
# for the job to end, at most the server's kill grace), so this is generous.
_TIMEOUT_S: Final = 600.0


class HttpClient:
    """The requests of :class:`~fetchml.client.Client` that one-shot commands use, over HTTP.

    Each method raises what the ``Client`` method of the same name raises: the
    :mod:`fetchml.errors` class the server reported, :class:`ServerUnreachableError` naming the
    URL, :class:`AuthError` with a hint when no key was given.  A request refused as
    ``rate_limited`` is sent again after the wait it names while the waits of that call add up
    to at most ``rate_limit_wait_s``.  Each request has a connection of its own.
    """

    def __init__(
        self, settings: Settings, *, rate_limit_wait_s: float = DEFAULT_RATE_LIMIT_WAIT_S
    ) -> None:
        check_key(settings.key)
        self.url = settings.url
        self._key = settings.key
        self._ca_file = settings.ca_file
        self._rate_limit_wait_s = rate_limit_wait_s
        self._session = OneShotSession(
            self.url, self._key, timeout=_TIMEOUT_S, ca_file=self._ca_file
        )

    def http_session(self) -> HttpSession:
        """A keep-alive HTTP connection with this client's key, for uploads (close it)."""
        from ._http import HttpSession

        return HttpSession(self.url, self._key, timeout=_TIMEOUT_S, ca_file=self._ca_file)

    def _call(self, request: Callable[[OneShotSession], T]) -> T:
        """Run ``request`` on the connection, waiting out rate limits (blocking)."""
        waited = 0.0
        while True:
            try:
                return request(self._session)
            except RateLimitedError as exc:
                wait = rate_limit_wait(exc, waited, self._rate_limit_wait_s)
                if wait is None:
                    raise
                waited += wait
                time.sleep(wait)
            except AuthError:
                if self._key is None:
                    raise AuthError(_jobs.NO_KEY_HINT) from None
                raise

    async def whoami(self) -> Identity:
        return self._call(_jobs.whoami)

    async def submit(self, spec: JobSpec | Mapping[str, Any]) -> Job:
        """Queue a job (validated here first, as ``Client.submit`` does); the job as stored."""
        checked = validate_spec(spec)
        return self._call(lambda http: _jobs.submit(http, checked))

    async def get(self, job_id: int) -> Job:
        return self._call(lambda http: _jobs.get(http, job_id))

    async def cancel(self, job_id: int) -> Job:
        return self._call(lambda http: _jobs.cancel(http, job_id))

    async def status(self) -> StatusReport:
        return self._call(_jobs.status)

    async def list(
        self,
        *,
        user: str | None = None,
        state: JobState | str | Iterable[JobState | str] | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> builtins.list[Job]:
        states = _jobs.state_names(state)
        return self._call(
            lambda http: _jobs.jobs(http, user=user, states=states, limit=limit, before=before)
        )

    async def logs(self, job_id: int, *, offset: int = 0) -> bytes:
        """The job's log so far, however long: over a keep-alive ``HttpSession``, as
        ``Client.logs`` reads it (one-shot answers are capped at ``_MAX_BODY``)."""
        path = f"/api/v1/jobs/{int(job_id)}/logs?offset={int(offset)}"
        with self.http_session() as http:
            return self._call(lambda _: http.read(path, job_id=job_id))

    async def dataset(self, name: str) -> DatasetBody:
        from . import _datasets

        return self._call(lambda http: _datasets.dataset(http, name))

    async def snapshot(
        self, path: str | os.PathLike[str] = ".", *, root: str | os.PathLike[str] | None = None
    ) -> Snapshot:
        """As ``Client.snapshot``: only the blobs the server lacks are sent (blocking)."""
        from ._snapshots import make_snapshot

        top = None if root is None else Path(root)
        return make_snapshot(self.http_session, Path(path), root=top)


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (it awaits only :class:`HttpClient` methods) to its
    end, without an event loop; returns its value.

    Raises RuntimeError, after closing the coroutine, if it does suspend: it awaited something
    that needs an event loop, so it belongs in ``trio.run`` with :class:`Client`.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        value: T = done.value
        return value
    coroutine.close()
    name = getattr(coroutine, "__qualname__", "the coroutine")
    raise RuntimeError(f"{name} waited on an event loop: run it in trio.run with a Client")
