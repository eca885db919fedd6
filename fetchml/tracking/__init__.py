"""Experiment tracking on the server: the track files jobs write (``fetchml.track`` or any
program speaking the line protocol, ``_lines``), read by the :class:`Tracker` actor into the
:class:`TrackingStore` (``tracking.db``: per-run summaries, series in chunks, ``_series``), the
queries the gateway serves, the :class:`MetricFeed` of live points, and the transport of runs
elsewhere (``_upload``: a Ray node's lines sent to the server, :data:`TRACK_SENDER`)."""

from ._cursor import RunsCursor, decode_cursor, encode_cursor
from ._feed import METRIC_WATCH_BUFFER, MetricFeed, MetricWatch, Point
from ._lines import MAX_NAME, Batch, name_problem, parse_lines
from ._store import TrackingStore
from ._system import SystemSampler
from ._tracker import TRACKER_INBOX_SIZE, RunEnded, RunStarted, Sampler, Tracker
from ._upload import TRACK_FINAL_S, TRACK_SEND_S, TRACK_SENDER, TRACK_SIZE_HEADER, append_track

__all__ = [
    "MAX_NAME",
    "METRIC_WATCH_BUFFER",
    "TRACKER_INBOX_SIZE",
    "TRACK_FINAL_S",
    "TRACK_SENDER",
    "TRACK_SEND_S",
    "TRACK_SIZE_HEADER",
    "Batch",
    "MetricFeed",
    "MetricWatch",
    "Point",
    "RunEnded",
    "RunStarted",
    "RunsCursor",
    "Sampler",
    "SystemSampler",
    "Tracker",
    "TrackingStore",
    "append_track",
    "decode_cursor",
    "encode_cursor",
    "name_problem",
    "parse_lines",
]
