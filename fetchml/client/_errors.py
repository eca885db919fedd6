"""Errors of the protocol client itself, and the errors of HTTP error bodies.

Every error the server reports arrives as ``{"code", "message"}`` (plus ``field``,
``permission`` or ``retry_after`` where it has one), decoded into
:class:`fetchml.protocol.ErrorBody`, whose ``error()`` rebuilds the class the server raised
(the registry in :mod:`fetchml.errors`): client code catches the same classes as embedding code.
"""

from __future__ import annotations

import msgspec

from fetchml.errors import FetchMLError
from fetchml.protocol import ErrorEnvelope

__all__ = ["ConnectionLostError", "ServerUnreachableError", "http_error"]


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


_envelope = msgspec.json.Decoder(ErrorEnvelope)


def http_error(body: bytes | None, *, job_id: int | None = None) -> FetchMLError | None:
    """The error an HTTP error body (``{"error": {"code", "message", ...}}``) stands for, or
    None if the body is not one (not a Fetch ML server, or a proxy's page)."""
    try:
        envelope = _envelope.decode(body or b"")
    except msgspec.DecodeError:
        return None
    return envelope.error.error(job_id=job_id)
