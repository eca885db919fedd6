"""The ``next`` cursor of an experiment's runs listing: where a page ended, as the sort saw it.

A cursor holds the sort it belongs to (metric name or none, order) and the sort key of the
last run of its page (whether that run lacks the metric, its last value, its job id), so the
next page starts after that key (``WHERE key > cursor``), not after a count of rows: runs that
start while someone pages through an experiment neither shift a run onto two pages nor hide
one.  (A run's last value of the sort metric changes while it runs; a running run can move
across a page boundary, as in any listing sorted by a live value.)

On the wire it is opaque: URL-safe base64 of a JSON array, version first.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import msgspec

from ..errors import InvalidRequestError

__all__ = ["RunsCursor", "cursor_after", "decode_cursor", "encode_cursor"]

_VERSION = 1
_MAX_TEXT = 2048


class RunsCursor(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The sort key of the last run of a page, and the sort it is a key of."""

    version: int
    sort: str | None
    descending: bool
    missing: bool  # the run has no value of the sort metric (such runs come last)
    last: float  # its last value of the sort metric (0.0 when missing or unsorted)
    job_id: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # SQLite's integers


_decoder = msgspec.json.Decoder(RunsCursor)


def encode_cursor(cursor: RunsCursor) -> str:
    """The opaque text of ``cursor`` (URL-safe, no padding)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).rstrip(b"=").decode()


def decode_cursor(text: str, *, sort: str | None, descending: bool) -> RunsCursor:
    """The cursor ``text`` stands for.  Raises InvalidRequestError (field ``before``) if it is
    not a cursor of this server's listing, or one of another sort or order."""
    if len(text) > _MAX_TEXT:
        raise InvalidRequestError("before: not a cursor (too long)", field="before")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidRequestError(
            "before: not a cursor (pass the next of a previous page)", field="before"
        ) from None
    if cursor.version != _VERSION:
        raise InvalidRequestError("before: a cursor of another version", field="before")
    if (cursor.sort, cursor.descending) != (sort, descending):
        raise InvalidRequestError(
            "before: a cursor of another sort or order (keep sort and order while paging)",
            field="before",
        )
    return cursor


def cursor_after(
    sort: str | None, descending: bool, missing: bool, last: float | None, job_id: int
) -> RunsCursor:
    """The cursor of a page whose last run has this sort key."""
    return RunsCursor(
        version=_VERSION,
        sort=sort,
        descending=descending,
        missing=missing,
        last=0.0 if last is None else float(last),
        job_id=job_id,
    )
