"""The error object of the wire protocol: ``{"code", "message"}`` plus what the error names."""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import FetchMLError, error_from_wire

__all__ = ["ErrorBody"]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A failed request's error, on the WebSocket (``{"re", "ok": false, "error"}``), over HTTP
    (``{"error"}``) and between actors (:class:`~fetchml.actors.Failure`).

    ``code`` picks the error class (the registry in :mod:`fetchml.errors`); ``field`` names the
    offending field as a path, ``permission`` the missing permission, ``retry_after`` the seconds
    a rate limit asks to wait.  Fields an error does not have are left out.
    """

    code: str
    message: str
    field: str | None = None
    permission: str | None = None
    retry_after: float | None = None

    @classmethod
    def of(cls, exc: FetchMLError) -> ErrorBody:
        """The body that stands for ``exc``; text that UTF-8 cannot carry is escaped."""
        details = exc.details()
        return cls(
            code=exc.code,
            message=_encodable(exc.message),
            field=_encodable_or_none(details.get("field")),
            permission=_encodable_or_none(details.get("permission")),
            retry_after=details.get("retry_after"),
        )

    def error(self, *, job_id: int | None = None) -> FetchMLError:
        """The error this body stands for, of the class registered for its code; ``job_id`` is
        the job the request was about (a ``not_found`` error names it)."""
        details: dict[str, Any] = {
            "field": self.field,
            "permission": self.permission,
            "retry_after": self.retry_after,
            "job_id": job_id,
        }
        return error_from_wire(self.code, self.message, details)


def _encodable(text: str) -> str:
    """``text``, with what UTF-8 cannot encode (lone surrogates a client sent, quoted back in a
    message) escaped, so that the error itself can always be sent and stored."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def _encodable_or_none(text: object) -> str | None:
    return _encodable(text) if isinstance(text, str) else None
