"""Errors of the protocol client itself, and the errors of HTTP error bodies.

Every error the server reports arrives as ``{"code", "message"}`` (plus ``field``,
``permission`` or ``retry_after`` where it has one), decoded into
:class:`fetchml.protocol.ErrorBody`, whose ``error()`` rebuilds the class the server raised
(the registry in :mod:`fetchml.errors`): client code catches the same classes as embedding code.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from fetchml.errors import FetchMLError, RateLimitedError
from fetchml.protocol import ErrorEnvelope

__all__ = [
    "ConnectionLostError",
    "ServerUnreachableError",
    "answer_error",
    "decode_answer",
    "http_error",
    "rate_limit_wait",
    "tls_hint",
    "unreachable",
]

T = TypeVar("T")


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


def rate_limit_wait(exc: RateLimitedError, waited: float, limit_s: float) -> float | None:
    """How long to wait before sending a request refused as ``rate_limited`` again, having
    waited ``waited`` seconds for it already; None when that would exceed ``limit_s`` in all
    (then the error is the caller's)."""
    wait = max(exc.retry_after_s, 0.001)
    return None if waited + wait > limit_s else wait


def answer_error(url: str, status: int, body: bytes, job_id: int | None) -> FetchMLError:
    """The error of an HTTP answer with ``status``: the server's own, or, for a body that is
    not a Fetch ML error (another server, a proxy's page), one that says so."""
    error = http_error(body, job_id=job_id)
    if error is not None:
        return error
    return ServerUnreachableError(
        f"the server at {url} answered HTTP {status}, not with a Fetch ML error; is this the "
        "URL of a Fetch ML server?",
        url=url,
    )


def decode_answer(data: bytes, type_: type[T], what: str) -> T:
    """An answer's JSON body as ``type_``.  Raises FetchMLError naming ``what`` (the request)
    when it is not one."""
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        raise FetchMLError(f"the server's answer to {what} is not valid: {exc}") from None


def tls_hint(tls: bool) -> str:
    """What to add when a plain-HTTP request got no answer: a TLS server drops a plain-text
    request, or answers it with a TLS alert."""
    return "" if tls else " (if the server uses TLS, use an https URL)"


def unreachable(
    url: str, exc: OSError, *, host: str, ca_file: str | None
) -> ServerUnreachableError:
    """The error for a connection to ``url`` that failed with ``exc``, saying why (for a TLS
    failure, how to fix it)."""
    from ._tls import describe_tls_failure

    reason = describe_tls_failure(exc, host=host, ca_file=ca_file)
    if reason is None and isinstance(exc, TimeoutError):
        reason = "no answer in time"
    if reason is None:
        reason = exc.strerror.lower() if exc.strerror else str(exc) or type(exc).__name__
    return ServerUnreachableError(f"cannot reach the Fetch ML server at {url}: {reason}", url=url)
