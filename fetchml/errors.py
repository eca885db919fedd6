"""The error classes of Fetch ML: one base, one class per situation a caller can act on.

Every error the project raises on purpose derives from :class:`FetchMLError`.  Library errors
(msgspec, sqlite3, yaml, OS errors) are translated into these at the boundary where they happen, so
callers never need to catch a third-party exception.  Each class carries a short machine-readable
``code`` that the gateway puts on the wire (``{"error": {"code", "message"}}``) and the HTTP
``status`` it maps to.

This module is also the one registry of wire errors: :meth:`FetchMLError.details` gives what an
error carries besides its code and message (``field``, ``permission``, ``retry_after``,
``job_id``), and :func:`error_from_wire` rebuilds the error of the class that has the code, on
whichever side of a channel, a socket or a process boundary it arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AuthError",
    "BackendUnavailableError",
    "ConfigError",
    "ConflictError",
    "FetchMLError",
    "InternalError",
    "InvalidRequestError",
    "InvalidSpecError",
    "JobNotFoundError",
    "JobStartError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitedError",
    "SchedulerClosedError",
    "StorageFullError",
    "StoreError",
    "SubscriberDroppedError",
    "TooLargeError",
    "error_from_wire",
]


class FetchMLError(Exception):
    """Base of every error Fetch ML raises on purpose."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """What the error carries besides code and message, by wire name (None left out)."""
        return {}

    @classmethod
    def from_wire(cls, message: str, details: Mapping[str, Any]) -> FetchMLError:
        """The error as it left the other side, from its message and :meth:`details`."""
        return cls(message)


class InternalError(FetchMLError):
    """Raised (as the reply of one request) when the server hit a fault of its own while
    handling that request.

    The details (traceback, job, user) are in the server's log, never in the reply; the server
    goes on serving everyone else.
    """

    code = "internal_error"
    status = 500


class InvalidRequestError(FetchMLError):
    """Raised when a request is malformed: wrong type, missing or unknown field, bad value.

    ``field`` names the offending field as a path (``resources.cpus``, ``depends_on[1]``) when one
    can be named, else ``None``.
    """

    code = "invalid_request"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> dict[str, Any]:
        return {} if self.field is None else {"field": self.field}

    @classmethod
    def from_wire(cls, message: str, details: Mapping[str, Any]) -> FetchMLError:
        return cls(message, field=_text(details.get("field")))


class InvalidSpecError(InvalidRequestError):
    """Raised by ``submit`` when a job spec is invalid; nothing was stored."""

    code = "invalid_spec"


class TooLargeError(InvalidRequestError):
    """Raised when a request is over a size cap (``snapshots.max_bytes``, ``max_files``, a
    body); the message names the cap."""

    code = "too_large"
    status = 413


class QuotaExceededError(TooLargeError):
    """Raised when a request would take a user over their share (``snapshots.max_user_bytes``);
    the message names the quota and what is in use."""

    code = "quota_exceeded"


class StorageFullError(FetchMLError):
    """Raised when the server's disk is full while it stores what a request sent; what was
    written of it is removed, and the server goes on."""

    code = "storage_full"
    status = 507


class ConfigError(FetchMLError):
    """Raised when a configuration file or setting is invalid (bad YAML, unknown key, bad value)."""

    code = "invalid_config"
    status = 500


class NotFoundError(FetchMLError):
    """Raised when a request names something that does not exist (or that the caller may not
    see: the answer is the same, so that existence does not leak)."""

    code = "not_found"
    status = 404

    @classmethod
    def from_wire(cls, message: str, details: Mapping[str, Any]) -> FetchMLError:
        # A client that asked about a job knows its id: it gets the job's error class.
        job_id = details.get("job_id")
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            return JobNotFoundError(job_id, message)
        return cls(message)


class JobNotFoundError(NotFoundError):
    """Raised when a job id names no job (or none the caller may see)."""

    def __init__(self, job_id: int, message: str | None = None) -> None:
        super().__init__(message or f"no job with id {job_id}")
        self.job_id = job_id


class ConflictError(FetchMLError):
    """Raised when an operation does not fit the job's state, e.g. cancelling a finished job."""

    code = "conflict"
    status = 409


class AuthError(FetchMLError):
    """Raised when a request carries no API key or one that matches no user."""

    code = "unauthorized"
    status = 401


class PermissionDeniedError(FetchMLError):
    """Raised when an authenticated user lacks the permission an operation needs.

    ``permission`` names the missing permission (``jobs:create``), when there is one to name.
    """

    code = "forbidden"
    status = 403

    def __init__(self, message: str, *, permission: str | None = None) -> None:
        super().__init__(message)
        self.permission = permission

    def details(self) -> dict[str, Any]:
        return {} if self.permission is None else {"permission": self.permission}

    @classmethod
    def from_wire(cls, message: str, details: Mapping[str, Any]) -> FetchMLError:
        return cls(message, permission=_text(details.get("permission")))


class RateLimitedError(FetchMLError):
    """Raised when a request is refused for going too fast (``limits`` in the server config).

    Raised for an API key that has used up its request budget (``limits.requests_per_s`` and
    ``burst``), and for every request from an address that is temporarily banned after too many
    failed API keys.  ``retry_after_s`` says how long to wait before the next attempt can pass
    (HTTP sends it rounded up as ``Retry-After``; the wire error body as ``retry_after``).
    """

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def details(self) -> dict[str, Any]:
        return {"retry_after": max(0.001, round(self.retry_after_s, 3))}  # seconds

    @classmethod
    def from_wire(cls, message: str, details: Mapping[str, Any]) -> FetchMLError:
        seconds = details.get("retry_after")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not seconds >= 0:
            seconds = 1.0  # a body without a usable wait: a short one
        return cls(message, retry_after_s=float(seconds))


class SchedulerClosedError(FetchMLError):
    """Raised when a request reaches a scheduler that has stopped or is stopping."""

    code = "unavailable"
    status = 503


class SubscriberDroppedError(FetchMLError):
    """Raised from an event subscription that could not keep up and was disconnected.

    The subscriber can resume without a gap by subscribing again with ``since=`` the last
    ``seq`` it saw.
    """

    code = "too_slow"
    status = 503


class StoreError(FetchMLError):
    """Raised when the job store cannot be opened, migrated or written (disk full, corrupt file)."""

    code = "store_error"
    status = 500


class JobStartError(FetchMLError):
    """Raised by an executor backend when it cannot start a job's process at all."""

    code = "start_failed"
    status = 500


class BackendUnavailableError(JobStartError):
    """Raised by an executor backend when what runs jobs (a Ray cluster) cannot be reached.

    The job did not start (or, if the request got through, it starts under the same attempt
    id, which the next start finds); it goes back to the queue without spending a retry.
    """

    code = "backend_unavailable"
    status = 503


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


# Every error class that crosses a boundary, by its code (one class per code).
_BY_CODE: dict[str, type[FetchMLError]] = {
    cls.code: cls
    for cls in (
        InternalError,
        InvalidRequestError,
        InvalidSpecError,
        TooLargeError,
        QuotaExceededError,
        StorageFullError,
        ConfigError,
        NotFoundError,
        ConflictError,
        AuthError,
        PermissionDeniedError,
        RateLimitedError,
        SchedulerClosedError,
        SubscriberDroppedError,
        StoreError,
        JobStartError,
        BackendUnavailableError,
    )
}


def error_from_wire(
    code: str, message: str, details: Mapping[str, Any] | None = None
) -> FetchMLError:
    """The error of the class registered for ``code``, with ``message`` and its ``details``
    (:meth:`FetchMLError.details`).  A code this version does not know (a newer server's)
    gives a :class:`FetchMLError` that keeps the code."""
    cls = _BY_CODE.get(code)
    if cls is None:
        error = FetchMLError(message)
        error.code = code
        return error
    return cls.from_wire(message, details or {})
