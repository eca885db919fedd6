"""Errors of the protocol client, and the mapping of wire error bodies to Fetch ML error classes.

Every error the server reports arrives as ``{"code", "message"}`` (plus ``field``,
``permission`` or ``retry_after`` where it has one); :func:`error_from_wire` turns it back into
the class the server raised, so client code catches the same :mod:`fetchml.errors` classes as
embedding code does.
"""

from __future__ import annotations

from fetchml import errors
from fetchml.errors import FetchMLError

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
    details = {
        "field": field,
        "permission": permission,
        "job_id": job_id,
        "retry_after": retry_after,
    }
    return errors.error_from_wire(code, message, details)
