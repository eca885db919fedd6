"""The error classes of Fetch ML: one base, one class per situation a caller can act on.

Every error the project raises on purpose derives from :class:`FetchMLError`.  Library errors
(msgspec, sqlite3, yaml, OS errors) are translated into these at the boundary where they happen, so
callers never need to catch a third-party exception.  Each class carries a short machine-readable
``code`` that the gateway puts on the wire (``{"error": {"code", "message"}}``) and the HTTP
``status`` it maps to.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BackendUnavailableError",
    "ConfigError",
    "ConflictError",
    "FetchMLError",
    "InvalidRequestError",
    "InvalidSpecError",
    "JobNotFoundError",
    "JobStartError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SchedulerClosedError",
    "StoreError",
    "SubscriberDroppedError",
]


class FetchMLError(Exception):
    """Base of every error Fetch ML raises on purpose."""

    code: str = "internal"
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class InvalidSpecError(InvalidRequestError):
    """Raised by ``submit`` when a job spec is invalid; nothing was stored."""

    code = "invalid_spec"


class ConfigError(FetchMLError):
    """Raised when a configuration file or setting is invalid (bad YAML, unknown key, bad value)."""

    code = "invalid_config"
    status = 500


class JobNotFoundError(FetchMLError):
    """Raised when a job id names no job (or none the caller may see)."""

    code = "not_found"
    status = 404

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
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
