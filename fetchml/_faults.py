"""Internal errors: faults of the server's own code, kept to the request or job they hit.

A fault while one request is handled or one job is run (an unexpected exception, a programming
error) must not take the server down: the request gets an ``internal_error`` reply, the job ends
``failed`` with a reason, the actor goes on serving everyone else.  It must not go unseen either:
:func:`report_internal_error` logs it at error level with the traceback and what it was about
(the job id, the user), and counts it by where it happened, for ``/metrics``
(``fetchml_internal_errors_total{where=...}``) and for the test suite, which fails a test that
produced one it did not expect.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

__all__ = ["INTERNAL_ERROR_ATTR", "internal_error_counts", "report_internal_error"]

# Set on the log record of every internal error: the place it happened (``scheduler``, …).
INTERNAL_ERROR_ATTR = "fetchml_internal_error"

_counts: Counter[str] = Counter()
# Faults are reported from the event loop and from worker threads (a server in a thread).
_lock = threading.Lock()


def report_internal_error(
    where: str, exc: BaseException, what: str, *, logger: logging.Logger | None = None
) -> None:
    """Log ``exc`` (with its traceback) as an internal error at ``where`` while doing ``what``.

    ``what`` says what the fault was about, for the operator reading the log (``submit by alice``,
    ``job 12``).  Counts it for ``/metrics``.  Never raises, never waits.
    """
    with _lock:
        _counts[where] += 1
    (logger or logging.getLogger(f"fetchml.{where}")).error(
        "internal error in %s (%s): %s: %s",
        where,
        what,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={INTERNAL_ERROR_ATTR: where},
    )


def internal_error_counts() -> dict[str, int]:
    """Internal errors reported in this process so far, by where they happened."""
    with _lock:
        return dict(_counts)
