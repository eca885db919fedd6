"""Experiment tracking on the server: the track files jobs write (``fetchml.track`` or any
program speaking the line protocol, ``_lines``), read by the :class:`Tracker` actor into the
:class:`TrackingStore` (``tracking.db``: per-run summaries, series in chunks, ``_series``), and
the queries the gateway serves."""

from ._lines import MAX_NAME, Batch, name_problem, parse_lines
from ._store import TrackingStore
from ._system import SystemSampler
from ._tracker import TRACKER_INBOX_SIZE, RunEnded, RunStarted, Sampler, Tracker

__all__ = [
    "MAX_NAME",
    "TRACKER_INBOX_SIZE",
    "Batch",
    "RunEnded",
    "RunStarted",
    "Sampler",
    "SystemSampler",
    "Tracker",
    "TrackingStore",
    "name_problem",
    "parse_lines",
]
