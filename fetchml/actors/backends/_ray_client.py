"""A typed face on Ray's Job Submission client: blocking calls, with Ray's errors sorted into ours.

Ray ships no type stubs that help here, so everything untyped stays in this module.  Ray is
imported only by :func:`load_ray` and by the methods of :class:`RayClient` (the ``ray`` backend
is configured), never when this module is imported.  Every method but :meth:`RayClient.tail`
blocks on HTTP (bounded by the request timeout): call them from worker threads.

Errors: :class:`RayUnavailable` (the cluster cannot be reached or does not answer; try again
later), :class:`RayNotFound` (no such job), :class:`RayDuplicate` (the submission id is taken: the
job is there already) and :class:`RayRejected` (the cluster refused the request for good).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RayClient",
    "RayDuplicate",
    "RayError",
    "RayJobInfo",
    "RayNotFound",
    "RayRejected",
    "RayUnavailable",
    "Submission",
    "load_ray",
]

_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_STATUS_CODE = re.compile(r"status code (\d+)")
# HTTP answers that mean "not now" rather than "never".
_TRANSIENT_CODES = frozenset({502, 503, 504})
_TRANSIENT_TEXT = ("No available agent", "try again")
# Ray's own exceptions that mean the cluster cannot be reached (matched by name: they live in
# modules whose import is slow or version-dependent).
_UNREACHABLE_TYPES = frozenset({"AuthenticationError", "RayStateApiException", "ServerUnavailable"})
_MAX_MESSAGE = 300
_HEARTBEAT_S = 30.0
_MAX_NODES = 10_000  # the most the state API returns by default


class RayError(Exception):
    """Base of the errors below; the message is short and fit for a log or a job's reason."""


class RayUnavailable(RayError):
    """The cluster could not be reached, or it did not answer in time (or answered 5xx)."""


class RayNotFound(RayError):
    """The cluster knows no job with that submission id."""


class RayDuplicate(RayError):
    """A job with that submission id exists already."""


class RayRejected(RayError):
    """The cluster refused the request (a bad runtime environment, an internal error)."""


@dataclass(frozen=True, slots=True)
class RayJobInfo:
    """What Fetch ML needs of Ray's ``JobDetails``."""

    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED
    exit_code: int | None
    message: str | None

    @property
    def terminal(self) -> bool:
        return self.status in _TERMINAL


@dataclass(frozen=True, slots=True)
class Submission:
    """One Ray job to submit.  Zero resources are not sent (Ray's default: none reserved)."""

    submission_id: str
    entrypoint: str
    env: dict[str, str]
    cpus: float = 0.0
    gpus: int = 0
    memory_bytes: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None  # a local folder Ray sends to the node and runs in


def load_ray() -> None:
    """Import the parts of Ray the backend uses.  Blocks about a second; raises ImportError.

    A snapshot's working copy holds exactly the files that travel (the client applied the
    project's ignore rules): Ray must not drop the ones its own reading of ``.gitignore``
    would (a file the project's ``.fetchmlignore`` brings back, the ``.gitignore`` itself).
    """
    os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"
    import ray.job_submission
    import ray.util.state  # noqa: F401


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _from_runtime_error(exc: RuntimeError) -> RayError:
    """Sort the RuntimeError Ray's client raises for an HTTP error answer."""
    text = str(exc)
    if "already exists" in text:
        return RayDuplicate("a job with this submission id exists already")
    match = _STATUS_CODE.search(text)
    code = int(match.group(1)) if match else None
    if code == 404:
        return RayNotFound(_short(text))
    if code is None or code in _TRANSIENT_CODES or any(t in text for t in _TRANSIENT_TEXT):
        return RayUnavailable(_short(text))
    return RayRejected(_short(text))


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn the exceptions of a Ray client call into :class:`RayError` subclasses."""
    try:
        yield
    except RayError:
        raise
    except RuntimeError as exc:
        raise _from_runtime_error(exc) from None
    except OSError as exc:  # requests' errors (timeouts included) and ConnectionError
        raise RayUnavailable(f"{what}: {_short(str(exc)) or type(exc).__name__}") from None
    except Exception as exc:
        if type(exc).__name__ in _UNREACHABLE_TYPES:
            raise RayUnavailable(f"{what}: {_short(str(exc))}") from None
        raise


def _client_class() -> Any:
    """Ray's JobSubmissionClient, with a timeout on every request and one version check.

    Ray's client sends its requests without a timeout (a hung dashboard would hold a thread
    forever) and re-checks the cluster's version before every submit that reserves resources
    (one more request each); it is checked once, when the client is made.
    """
    from ray.job_submission import JobSubmissionClient

    class _Client(JobSubmissionClient):  # type: ignore[misc]
        fetchml_timeout: float = 10.0

        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.fetchml_timeout)
            return super()._do_request(method, endpoint, **kwargs)

        def _check_connection_and_version(self, *args: Any, **kwargs: Any) -> None:
            if getattr(self, "_server_ray_version", None) is None:
                super()._check_connection_and_version(*args, **kwargs)

    return _Client


class RayClient:
    """Talks to one cluster's Job API at ``address`` (``http://host:8265``).  Thread-safe.

    The underlying client is made on first use (that needs the cluster) and kept: it holds no
    connection, so it serves again once a cluster that went away is back.
    """

    def __init__(self, address: str, *, timeout: float) -> None:
        self.address = address
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: Any = None

    def _jobs(self) -> Any:
        """The JobSubmissionClient, made now if need be.  Blocks; raises RayUnavailable."""
        with self._lock:
            if self._client is None:
                with _translated(f"cannot reach {self.address}"):
                    cls = _client_class()
                    cls.fetchml_timeout = self._timeout
                    self._client = cls(self.address)
            return self._client

    def submit(self, submission: Submission) -> None:
        """Submit a job.  Blocks; raises any :class:`RayError` (RayDuplicate: it exists)."""
        client = self._jobs()
        with _translated(f"submitting to {self.address}"):
            client.submit_job(
                entrypoint=submission.entrypoint,
                submission_id=submission.submission_id,
                runtime_env=_runtime_env(submission),
                metadata=dict(submission.metadata),
                entrypoint_num_cpus=submission.cpus or None,
                entrypoint_num_gpus=submission.gpus or None,
                entrypoint_memory=submission.memory_bytes or None,
            )

    def info(self, submission_id: str) -> RayJobInfo:
        """The job's status, driver exit code and message.  Blocks; raises RayError."""
        client = self._jobs()
        with _translated(f"asking {self.address}"):
            details = client.get_job_info(submission_id)
            status = details.status
            code = details.driver_exit_code
            message = details.message
        return RayJobInfo(
            status=str(getattr(status, "value", status)),
            exit_code=code if isinstance(code, int) else None,
            message=message if isinstance(message, str) else None,
        )

    def stop(self, submission_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after the cluster's grace).

        Blocks; returns whether it was still running; raises RayError.
        """
        client = self._jobs()
        with _translated(f"stopping on {self.address}"):
            return bool(client.stop_job(submission_id))

    def logs(self, submission_id: str) -> str:
        """The job's whole log so far (one response: for small logs).  Blocks; raises RayError."""
        client = self._jobs()
        with _translated(f"asking {self.address}"):
            return str(client.get_job_logs(submission_id))

    def resources(self) -> tuple[float, int, int]:
        """(cpus, memory bytes, gpus) of the cluster's alive nodes.  Blocks; raises RayError."""
        from ray.util.state import list_nodes

        with _translated(f"cannot reach {self.address}"):
            nodes = list_nodes(
                address=self.address,
                filters=[("state", "=", "ALIVE")],
                limit=_MAX_NODES,
                timeout=max(1, round(self._timeout)),
            )
            cpus = 0.0
            memory = 0.0
            gpus = 0.0
            for node in nodes:
                total = node.resources_total or {}
                cpus += float(total.get("CPU", 0.0))
                memory += float(total.get("memory", 0.0))
                gpus += float(total.get("GPU", 0.0))
        return cpus, int(memory), int(gpus)

    async def tail(self, submission_id: str) -> AsyncGenerator[str, None]:
        """The job's log from its start, chunk by chunk as written, until the job ends.

        For an asyncio loop: the Job API streams it over a WebSocket (as Ray's own
        ``tail_job_logs``, but closing the socket however the stream stops, and with heartbeats
        so that a silently dead connection is noticed).  Only once the client exists (after any
        successful call): raises RayUnavailable before.  Ends quietly when the job has ended;
        raises RuntimeError if the stream breaks, or whatever aiohttp raises.
        """
        import aiohttp

        client = self._client
        if client is None:
            raise RayUnavailable(f"not connected to {self.address} yet")
        url = f"{client._address}/api/jobs/{submission_id}/logs/tail"
        headers = getattr(client, "_headers", None)
        async with (
            aiohttp.ClientSession(cookies=getattr(client, "_cookies", None), headers=headers) as s,
            s.ws_connect(
                url,
                headers=headers,
                ssl=getattr(client, "_ssl_context", True) or True,
                heartbeat=_HEARTBEAT_S,
            ) as ws,
        ):
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    yield str(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    raise RuntimeError(f"log stream error: {ws.exception()}")
            if ws.close_code != aiohttp.WSCloseCode.OK:
                raise RuntimeError(f"log stream closed with code {ws.close_code}")


def _runtime_env(submission: Submission) -> dict[str, object]:
    env: dict[str, object] = {"env_vars": dict(submission.env)}
    if submission.working_dir is not None:
        env["working_dir"] = submission.working_dir
    return env
