"""The wire protocol, one definition shared by the server, the client and the actors.

Requests (one struct per op), replies and HTTP bodies, events, the error body and the
WebSocket close codes.  The gateway encodes replies and events with these structs and decodes
requests into them; :mod:`fetchml.client` encodes requests and decodes replies and events with
the same structs.
"""

from typing import Final

from ._datasets import DatasetBody, DatasetInfo, DatasetsBody, DatasetVersion, RegisterDataset
from ._errors import ErrorBody
from ._replies import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_POINTS,
    ErrorEnvelope,
    ErrorReply,
    Event,
    FilesBody,
    Health,
    Identity,
    IdentityReply,
    JobBody,
    JobEntry,
    JobReply,
    JobsBody,
    JobsReply,
    JobUpdate,
    JobUpdates,
    LogChunk,
    LogEnd,
    LogText,
    MetricPoint,
    MetricPoints,
    PruneReport,
    PruneRequest,
    Reply,
    StatusBody,
    StatusReply,
    Subscribed,
    Unsubscribed,
)
from ._requests import (
    JSON,
    MSGPACK,
    OPS,
    AuthOp,
    CancelOp,
    Codec,
    GetOp,
    ListOp,
    Request,
    StatusOp,
    SubmitOp,
    SubscribeOp,
    UnsubscribeOp,
    WhoamiOp,
    decode_request,
)
from ._tracking import (
    Buckets,
    ExperimentInfo,
    ExperimentsBody,
    MetricSummary,
    OutcomeBody,
    OutcomeRequest,
    RawPage,
    RunInfo,
    RunRow,
    RunsBody,
)

# WebSocket close codes.  The 4000-4999 range (RFC 6455: for applications) marks the closes a
# client must tell apart and act on; the others are the standard ones.
CLOSE_GOING_AWAY: Final = 1001  # the server is shutting down: reconnect later
CLOSE_POLICY: Final = 1008  # the connection's key or address no longer holds (reason says why)
CLOSE_TOO_BIG: Final = 1009  # a frame over server.max_frame_bytes
CLOSE_INTERNAL_ERROR: Final = 1011  # a fault of the server's in this connection
CLOSE_AUTH_FAILED: Final = 4001  # the first auth op failed (wrong key, banned address)
CLOSE_TOO_SLOW: Final = 4008  # a subscription fell too far behind: resume with since=

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_SLOW",
    "JSON",
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_POINTS",
    "MSGPACK",
    "OPS",
    "AuthOp",
    "Buckets",
    "CancelOp",
    "Codec",
    "DatasetBody",
    "DatasetInfo",
    "DatasetVersion",
    "DatasetsBody",
    "ErrorBody",
    "ErrorEnvelope",
    "ErrorReply",
    "Event",
    "ExperimentInfo",
    "ExperimentsBody",
    "FilesBody",
    "GetOp",
    "Health",
    "Identity",
    "IdentityReply",
    "JobBody",
    "JobEntry",
    "JobReply",
    "JobUpdate",
    "JobUpdates",
    "JobsBody",
    "JobsReply",
    "ListOp",
    "LogChunk",
    "LogEnd",
    "LogText",
    "MetricPoint",
    "MetricPoints",
    "MetricSummary",
    "OutcomeBody",
    "OutcomeRequest",
    "PruneReport",
    "PruneRequest",
    "RawPage",
    "RegisterDataset",
    "Reply",
    "Request",
    "RunInfo",
    "RunRow",
    "RunsBody",
    "StatusBody",
    "StatusOp",
    "StatusReply",
    "SubmitOp",
    "SubscribeOp",
    "Subscribed",
    "UnsubscribeOp",
    "Unsubscribed",
    "WhoamiOp",
    "decode_request",
]
