"""Errors of the protocol client, and the mapping of wire error bodies to Fetch ML error classes.

Every error the server reports arrives as ``{"code", "message"}`` (plus ``field``,
``permission`` or ``retry_after`` where it has one); :func:`error_from_wire` turns it back into
the class the server raised, so client code catches the same :mod:`fetchml.errors` classes as
embedding code does.
"""

from __future__ import annotations

from fetchml.errors import (
    AuthError,
    ConflictError,
    FetchMLError,
    InvalidRequestError,
    InvalidSpecError,
    JobNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SchedulerClosedError,
    SubscriberDroppedError,
)

__all__ = ["ConnectionLostError", "ServerUnreachableError", "error_from_wire"]


class ServerUnreachableError(FetchMLError):
    """Raised when no connection to the server could be made; the message names the URL."""

    code = "unreachable"
    status = 503

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ConnectionLostError(ServerUnreachableError):
    """Raised when an open connection ends while a request or subscription still needs it.

    ``close_code`` is the WebSocket close code (1001: the server shut down; 1006: dropped), or
    None when the connection ended without a close frame.
    """

    code = "connection_lost"

    def __init__(self, message: str, *, url: str, close_code: int | None = None) -> None:
        super().__init__(message, url=url)
        self.close_code = close_code


_SIMPLE: dict[str, type[FetchMLError]] = {
    AuthError.code: AuthError,
    ConflictError.code: ConflictError,
    SchedulerClosedError.code: SchedulerClosedError,
    SubscriberDroppedError.code: SubscriberDroppedError,
}


def error_from_wire(
    code: str,
    message: str,
    *,
    field: str | None = None,
    permission: str | None = None,
    job_id: int | None = None,
    retry_after: object = None,
) -> FetchMLError:
    """The Fetch ML error for a wire error body (``job_id``: the job the request was about;
    ``retry_after``: the seconds a rate limit asks to wait, 1 s if it is not a number)."""
    if code == RateLimitedError.code:
        seconds = 1.0
        if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
            seconds = float(retry_after)
        return RateLimitedError(message, retry_after_s=seconds)
    if code == PermissionDeniedError.code:
        return PermissionDeniedError(message, permission=permission)
    if code == JobNotFoundError.code:
        missing = JobNotFoundError(job_id if job_id is not None else 0)
        missing.message = message
        missing.args = (message,)
        return missing
    if code == InvalidSpecError.code:
        return InvalidSpecError(message, field=field)
    if code == InvalidRequestError.code:
        return InvalidRequestError(message, field=field)
    cls = _SIMPLE.get(code)
    if cls is not None:
        return cls(message)
    error = FetchMLError(message)
    error.code = code
    return error
