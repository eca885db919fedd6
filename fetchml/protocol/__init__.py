"""The wire protocol, one definition shared by the server, the client and the actors.

Requests (one struct per op), replies and HTTP bodies, events, the error body and the
WebSocket close codes.  The gateway encodes replies and events with these structs and decodes
requests into them; :mod:`fetchml.client` encodes requests and decodes replies and events with
the same structs.
"""

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._datasets import DatasetBody, DatasetInfo, DatasetsBody, DatasetVersion, RegisterDataset
    from ._errors import ErrorBody
    from ._files import FilesBody
    from ._replies import (
        MAX_BATCH_EVENTS,
        MAX_EVENT_POINTS,
        ErrorEnvelope,
        ErrorReply,
        Event,
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

# Each name of a submodule: the submodule.  Imported on first use, so that a client that needs
# only a few bodies (``ml status``) does not load every op and event.
_LAZY: dict[str, str] = {
    "DatasetBody": "._datasets",
    "DatasetInfo": "._datasets",
    "DatasetsBody": "._datasets",
    "DatasetVersion": "._datasets",
    "RegisterDataset": "._datasets",
    "ErrorBody": "._errors",
    "MAX_BATCH_EVENTS": "._replies",
    "MAX_EVENT_POINTS": "._replies",
    "ErrorEnvelope": "._replies",
    "ErrorReply": "._replies",
    "Event": "._replies",
    "FilesBody": "._files",
    "Health": "._replies",
    "Identity": "._replies",
    "IdentityReply": "._replies",
    "JobBody": "._replies",
    "JobEntry": "._replies",
    "JobReply": "._replies",
    "JobsBody": "._replies",
    "JobsReply": "._replies",
    "JobUpdate": "._replies",
    "JobUpdates": "._replies",
    "LogChunk": "._replies",
    "LogEnd": "._replies",
    "LogText": "._replies",
    "MetricPoint": "._replies",
    "MetricPoints": "._replies",
    "PruneReport": "._replies",
    "PruneRequest": "._replies",
    "Reply": "._replies",
    "StatusBody": "._replies",
    "StatusReply": "._replies",
    "Subscribed": "._replies",
    "Unsubscribed": "._replies",
    "JSON": "._requests",
    "MSGPACK": "._requests",
    "OPS": "._requests",
    "AuthOp": "._requests",
    "CancelOp": "._requests",
    "Codec": "._requests",
    "GetOp": "._requests",
    "ListOp": "._requests",
    "Request": "._requests",
    "StatusOp": "._requests",
    "SubmitOp": "._requests",
    "SubscribeOp": "._requests",
    "UnsubscribeOp": "._requests",
    "WhoamiOp": "._requests",
    "decode_request": "._requests",
    "Buckets": "._tracking",
    "ExperimentInfo": "._tracking",
    "ExperimentsBody": "._tracking",
    "MetricSummary": "._tracking",
    "OutcomeBody": "._tracking",
    "OutcomeRequest": "._tracking",
    "RawPage": "._tracking",
    "RunInfo": "._tracking",
    "RunRow": "._tracking",
    "RunsBody": "._tracking",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fetchml.protocol' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
