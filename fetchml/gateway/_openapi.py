"""The OpenAPI 3.1 document of the HTTP API, with schemas generated from the msgspec structs.

The document is checked against the running server by schemathesis
(``tests/test_openapi_conformance.py``): every status code a route can send is listed, every
parameter range is the one the route enforces (``_http.py``), and every response body matches
its schema.  Change both together.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import msgspec

from .._models import Job, JobSpec, JobState, StatusReport
from ..protocol import ErrorBody

__all__ = ["MAX_LIST", "MAX_OFFSET", "MAX_QUERY_ID", "STATE_LIST_PATTERN", "openapi_document"]

# The ranges the routes enforce (``_http.py`` uses these very constants).
MAX_LIST = 10_000  # jobs per page
MAX_QUERY_ID = 2**63 - 1  # SQLite's INTEGER range: the largest id a job can have
MAX_OFFSET = 2**63 - 1  # a file offset (off_t)

_STATE = "(?:" + "|".join(sorted((s.value for s in JobState), key=len, reverse=True)) + ")"
# One ``state`` value: job states separated by commas.  Empty items are ignored (``state=`` is
# no filter, like ``user=``), so the pattern allows them.
STATE_LIST_PATTERN = f"^{_STATE}?(?:,{_STATE}?)*$"
# What ``follow`` accepts (case-insensitive): 1/true/yes follow, 0/false/no or empty do not.
_FLAG_PATTERN = "^(?:1|0|[Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Oo])?$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _wrapped(key: str, ref: str, *, many: bool = False) -> dict[str, Any]:
    item = _ref(ref)
    return {
        "type": "object",
        "properties": {key: {"type": "array", "items": item} if many else item},
        "required": [key],
        "additionalProperties": False,
    }


# Sent on every route (the allow-list runs before routing): ``ip_whitelist`` leaves the
# client's address out.
_ADDRESS_REFUSED = _error("the client's address is not in the allow-list (`ip_whitelist`)")
_RATE_LIMITED = _error(
    "rate limited: the key is over its rate, or the address is banned after too many wrong keys",
    {
        "Retry-After": {
            "description": "whole seconds to wait before the next attempt can pass",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
)
_UNAUTHORIZED = _error(
    "missing, invalid or expired API key",
    {
        "WWW-Authenticate": {
            "description": 'always `Bearer realm="fetchml"`',
            "required": True,
            "schema": {"type": "string"},
        }
    },
)
_STOPPING = _error("the server is shutting down (`unavailable`)")
_KEYED = {
    "401": _UNAUTHORIZED,
    "403": _error("missing permission (named in `permission`), or address not allowed"),
    "429": _RATE_LIMITED,
}
# The routes that reach the scheduler may also be told it is stopping.
_KEYED_SCHEDULER = {**_KEYED, "503": _STOPPING}

_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": (
        "a job id (decimal); 0 is refused with 400, a path that is not a decimal number names "
        "no route (404)"
    ),
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_ID},
}
_BAD_JOB_ID = _error("`job_id` is 0, not a job id (`invalid_request`, field `job_id`)")
_NO_SUCH_JOB = _error(
    "no such job, or one the key may not see (`not_found`); also for a path that is not a job id"
)


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


def _link(operation_id: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": {"job_id": "$response.body#/job/id"}}


def _paths() -> dict[str, Any]:
    job = _ok("the job", _wrapped("job", "Job"))
    created = {
        **_ok("the stored job, queued", _wrapped("job", "Job")),
        "links": {
            "GetJob": _link("getJob"),
            "CancelJob": _link("cancelJob"),
            "GetJobLogs": _link("getJobLogs"),
        },
    }
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness (no key)",
                "security": [],
                "responses": {
                    "200": _ok(
                        "the server is up",
                        {
                            "type": "object",
                            "properties": {"status": {"const": "ok"}},
                            "required": ["status"],
                            "additionalProperties": False,
                        },
                    ),
                    "403": _ADDRESS_REFUSED,
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (no key)",
                "security": [],
                "responses": {
                    "200": {
                        "description": (
                            "Prometheus text exposition format "
                            "(`text/plain; version=...; charset=utf-8`)"
                        ),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "403": _ADDRESS_REFUSED,
                    "503": _STOPPING,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (no key)",
                "security": [],
                "responses": {
                    "200": _ok("the OpenAPI document", {"type": "object"}),
                    "403": _ADDRESS_REFUSED,
                },
            }
        },
        "/api/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Queue a job",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobSpec")}},
                },
                "responses": {
                    "201": created,
                    "400": _error(
                        "the body is not JSON (`invalid_request`) or not a valid spec "
                        "(`invalid_spec`, the field named in `field`): also a spec the schema "
                        "allows but this server cannot run (more cpus, memory or GPUs than it "
                        "has) or an unknown `depends_on` job"
                    ),
                    "408": _error("the body did not arrive in time"),
                    "413": _error("the body is larger than `server.max_body_bytes`"),
                    **_KEYED_SCHEDULER,
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs the key may see, newest first (researchers: their own)",
                "parameters": [
                    _query(
                        "state",
                        {
                            "type": "array",
                            "items": {"type": "string", "pattern": STATE_LIST_PATTERN},
                        },
                        "only jobs in these states: repeat the parameter, or separate states by "
                        "commas (`state=queued,running`); empty items are ignored",
                        style="form",
                        explode=True,
                    ),
                    _query(
                        "user",
                        {"type": "string"},
                        "only this user's jobs (empty: everyone's); another user's needs "
                        "`jobs:read:all` (else 403)",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 100},
                        "at most this many jobs",
                    ),
                    _query(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_ID},
                        "only jobs with a smaller id (the next page: the last id seen)",
                    ),
                ],
                "responses": {
                    "200": _ok("the jobs, newest first", _wrapped("jobs", "Job", many=True)),
                    "400": _error("a parameter out of range (`invalid_request`, named in `field`)"),
                    **_KEYED_SCHEDULER,
                },
            },
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "One job",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": job,
                    "400": _BAD_JOB_ID,
                    "404": _NO_SUCH_JOB,
                    **_KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job; answers once it has ended",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _ok("the job, cancelled", _wrapped("job", "Job")),
                    "400": _BAD_JOB_ID,
                    "404": _NO_SUCH_JOB,
                    "409": _error("the job had already ended (`conflict`)"),
                    **_KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/logs": {
            "get": {
                "operationId": "getJobLogs",
                "summary": "The job's stdout and stderr (follow streams until the job ends)",
                "parameters": [
                    _JOB_ID,
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                        "start at this byte",
                    ),
                    _query(
                        "follow",
                        {"type": "string", "pattern": _FLAG_PATTERN},
                        "`1`, `true` or `yes` (any case): stream the log until the job has "
                        "ended; `0`, `false`, `no` or empty: what is there now",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the log bytes from `offset` (empty if none yet)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "400": _error(
                        "`job_id` 0, or `offset` / `follow` out of range "
                        "(`invalid_request`, named in `field`)"
                    ),
                    "404": _NO_SUCH_JOB,
                    **_KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/status": {
            "get": {
                "operationId": "status",
                "summary": "Queue and resource summary",
                "responses": {
                    "200": _ok("the summary", _wrapped("status", "StatusReport")),
                    **_KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/whoami": {
            "get": {
                "operationId": "whoami",
                "summary": "The key's user, roles and permissions (any key)",
                "responses": {
                    "200": _ok(
                        "the identity",
                        {
                            "type": "object",
                            "properties": {
                                "user": {"type": "string"},
                                "roles": {"type": "array", "items": {"type": "string"}},
                                "permissions": {"type": "array", "items": {"type": "string"}},
                                "admin": {"type": "boolean"},
                            },
                            "required": ["user", "roles", "permissions", "admin"],
                            "additionalProperties": False,
                        },
                    ),
                    **_KEYED,
                },
            }
        },
    }


_ERROR = {
    "type": "object",
    "properties": {"error": _ref("ErrorBody")},
    "required": ["error"],
    "additionalProperties": False,
}


def _spec_rules(spec: dict[str, Any]) -> None:
    """Add to the generated JobSpec schema what ``validate_spec`` checks beyond the types.

    Only rules the server enforces exactly: a non-empty argv list whose program is not empty,
    or a non-empty string with ``shell: true``; environment names without ``=`` or NUL; no job
    listed twice in ``depends_on``.
    """
    properties = spec["properties"]
    for branch in properties["command"].get("anyOf", []):
        if branch.get("type") == "array":
            branch["minItems"] = 1
            first = copy.deepcopy(branch.get("items", {"type": "string"}))
            first["minLength"] = max(1, first.get("minLength", 0))
            branch["prefixItems"] = [first]
        elif branch.get("type") == "string":
            branch["minLength"] = max(1, branch.get("minLength", 0))
    spec["if"] = {"properties": {"command": {"type": "string"}}, "required": ["command"]}
    spec["then"] = {"properties": {"shell": {"const": True}}, "required": ["shell"]}
    properties["env"]["propertyNames"] = {"minLength": 1, "pattern": "^[^=\\u0000]*$"}
    properties["depends_on"]["uniqueItems"] = True


def _as_sent(schema: dict[str, Any], struct: type[msgspec.Struct]) -> None:
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


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    responses: list[type[msgspec.Struct]] = [Job, StatusReport, ErrorBody]
    (_, components) = msgspec.json.schema_components(
        [JobSpec, *responses], ref_template="#/components/schemas/{name}"
    )
    _spec_rules(components["JobSpec"])
    for struct in responses:
        _as_sent(components[struct.__name__], struct)
    components["Job"]["properties"]["id"].update(minimum=1, maximum=MAX_QUERY_ID)
    components["Error"] = _ERROR
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fetch ML", "version": "1"},
        "paths": _paths(),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
