"""Shared parts of the OpenAPI document (``_openapi``): the ranges the routes enforce, the
responses many routes send, and the helpers that build path entries."""

from __future__ import annotations

from typing import Any

import msgspec

from .._models import JobState
from ..snapshots import SnapshotInfo

__all__ = [
    "ADDRESS_REFUSED",
    "BAD_JOB_ID",
    "BODY_TIMEOUT",
    "BYTES",
    "FLAG_PATTERN",
    "JOB_ID",
    "KEYED",
    "KEYED_CREATE",
    "KEYED_SCHEDULER",
    "MANIFEST_PATH_PATTERN",
    "MAX_LIST",
    "MAX_OFFSET",
    "MAX_QUERY_ID",
    "NO_SUCH_JOB",
    "OCTETS",
    "RATE_LIMITED",
    "SHA256_PATTERN",
    "STATE_LIST_PATTERN",
    "STOPPING",
    "UNAUTHORIZED",
    "BlobPart",
    "BlobsStored",
    "SnapshotBody",
    "as_sent",
    "error_response",
    "header",
    "job_link",
    "mib",
    "ok_response",
    "query_param",
    "schema_ref",
]

# The ranges the routes enforce (``_http.py`` uses these very constants).
MAX_LIST = 10_000  # jobs per page
MAX_QUERY_ID = 2**63 - 1  # SQLite's INTEGER range: the largest id a job can have
MAX_OFFSET = 2**63 - 1  # a file offset (off_t)

_STATE = "(?:" + "|".join(sorted((s.value for s in JobState), key=len, reverse=True)) + ")"
# One ``state`` value: job states separated by commas.  Empty items are ignored (``state=`` is
# no filter, like ``user=``), so the pattern allows them.
STATE_LIST_PATTERN = f"^{_STATE}?(?:,{_STATE}?)*$"
# What ``follow`` accepts (case-insensitive): 1/true/yes follow, 0/false/no or empty do not.
FLAG_PATTERN = "^(?:1|0|[Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Oo])?$"
SHA256_PATTERN = "^[0-9a-f]{64}$"  # what the ``sha256`` route converter (``_snapshots``) matches
# A path inside a snapshot, as ``snapshots.check_path`` takes it: relative, ``/`` separated, no
# empty, ``.`` or ``..`` part, no backslash or NUL.  (It also refuses a lone surrogate and more
# than MAX_PATH_BYTES bytes of UTF-8, which a JSON Schema pattern cannot say.)
_PATH_PART = r"(?:[^/\\\x00.][^/\\\x00]*|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)"
MANIFEST_PATH_PATTERN = f"^{_PATH_PART}(?:/{_PATH_PART})*$"


# The bodies ``_snapshots.py`` builds as dicts, as structs, so that their schemas are generated
# like every other's (the conformance test holds the routes to them).
class SnapshotBody(msgspec.Struct, frozen=True, kw_only=True):
    """The snapshot just registered (``POST /api/v1/snapshots``)."""

    snapshot: SnapshotInfo


class BlobsStored(msgspec.Struct, frozen=True, kw_only=True):
    """What a pack added: the blobs newly stored and their bytes (those already there, none)."""

    stored: int
    bytes: int


class BlobPart(msgspec.Struct, frozen=True, kw_only=True):
    """How many bytes of the blob the server now has (its size once stored and verified)."""

    have: int


def schema_ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema_ref("ErrorEnvelope")}},
    }
    if headers:
        response["headers"] = headers
    return response


def ok_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Sent on every route (the allow-list runs before routing): ``ip_whitelist`` leaves the
# client's address out.
ADDRESS_REFUSED = error_response("the client's address is not in the allow-list (`ip_whitelist`)")
RATE_LIMITED = error_response(
    "rate limited: the key is over its rate, or the address is banned after too many wrong keys",
    {
        "Retry-After": {
            "description": "whole seconds to wait before the next attempt can pass",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
)
UNAUTHORIZED = error_response(
    "missing, invalid or expired API key",
    {
        "WWW-Authenticate": {
            "description": 'always `Bearer realm="fetchml"`',
            "required": True,
            "schema": {"type": "string"},
        }
    },
)
STOPPING = error_response("the server is shutting down (`unavailable`)")
KEYED = {
    "401": UNAUTHORIZED,
    "403": error_response("missing permission (named in `permission`), or address not allowed"),
    "429": RATE_LIMITED,
}
# The routes that reach the scheduler may also be told it is stopping.
KEYED_SCHEDULER = {**KEYED, "503": STOPPING}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": (
        "a job id (decimal); 0 is refused with 400, a path that is not a decimal number names "
        "no route (404)"
    ),
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_ID},
}
BAD_JOB_ID = error_response("`job_id` is 0, not a job id (`invalid_request`, field `job_id`)")
NO_SUCH_JOB = error_response(
    "no such job, or one the key may not see (`not_found`); also for a path that is not a job id"
)


def query_param(
    name: str, schema: dict[str, Any], description: str, **extra: Any
) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


def job_link(operation_id: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": {"job_id": "$response.body#/job/id"}}


def header(description: str, schema: dict[str, Any], *, required: bool) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


BYTES = {"type": "string", "format": "binary"}
OCTETS = "application/octet-stream"
BODY_TIMEOUT = error_response("the body did not arrive in time")
# The snapshot routes reach no scheduler (no 503); each needs ``jobs:create`` but the manifest,
# which needs only a key (403: the address).
KEYED_CREATE = {
    **KEYED,
    "403": error_response(
        "missing permission `jobs:create` (named in `permission`), or address not allowed"
    ),
}


def mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def as_sent(schema: dict[str, Any], struct: type[msgspec.Struct]) -> None:
    """Make the generated schema of a response struct say exactly what the server sends.

    No other fields; every field, unless the struct omits defaults; then a field left at its
    default None is left out, never sent as null.
    """
    schema["additionalProperties"] = False
    fields = msgspec.structs.fields(struct)
    if not struct.__struct_config__.omit_defaults:
        schema["required"] = [f.encode_name for f in fields]
        return
    for f in fields:
        prop = schema["properties"][f.encode_name]
        if f.default is None and "anyOf" in prop:
            branches = [b for b in prop.pop("anyOf") if b != {"type": "null"}]
            prop.pop("default", None)
            if len(branches) == 1:
                prop.update(branches[0])
            else:
                prop["anyOf"] = branches
