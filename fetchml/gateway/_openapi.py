"""The OpenAPI 3.1 document of the HTTP API, with schemas generated from the msgspec structs."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from .._models import Job, JobSpec
from ..actors import StatusReport

__all__ = ["openapi_document"]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _wrapped(key: str, ref: str, *, many: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = {"$ref": f"#/components/schemas/{ref}"}
    return {
        "type": "object",
        "properties": {key: {"type": "array", "items": item} if many else item},
        "required": [key],
    }


_RATE_LIMITED = {
    **_error("rate limited: the key is over its rate, or the address is banned for failed keys"),
    "headers": {
        "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    },
}
_AUTH_ERRORS = {
    "401": _error("missing or invalid API key"),
    "403": _error("missing permission"),
    "429": _RATE_LIMITED,
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}


def _paths() -> dict[str, Any]:
    job = _ok("the job", _wrapped("job", "Job"))
    return {
        "/health": {
            "get": {
                "summary": "Liveness (no key)",
                "security": [],
                "responses": {"200": _ok("ok", {"type": "object"})},
            }
        },
        "/api/v1/jobs": {
            "post": {
                "summary": "Queue a job",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}
                    },
                },
                "responses": {
                    "201": job,
                    "400": _error("invalid spec"),
                    "413": _error("body too large"),
                    **_AUTH_ERRORS,
                },
            },
            "get": {
                "summary": "List jobs the key may see, newest first",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string"}},
                    {"name": "user", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "before", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": _ok("jobs", _wrapped("jobs", "Job", many=True)),
                    "400": _error("bad parameter"),
                    **_AUTH_ERRORS,
                },
            },
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "summary": "One job",
                "parameters": [_JOB_ID],
                "responses": {"200": job, "404": _error("no such job"), **_AUTH_ERRORS},
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job; answers once it has ended",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": job,
                    "404": _error("no such job"),
                    "409": _error("already ended"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/v1/jobs/{job_id}/logs": {
            "get": {
                "summary": "The job's stdout and stderr (follow=1 streams until it ends)",
                "parameters": [
                    _JOB_ID,
                    {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": {
                        "description": "log bytes",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _error("no such job"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/v1/status": {
            "get": {
                "summary": "Queue and resource summary",
                "responses": {
                    "200": _ok("status", _wrapped("status", "StatusReport")),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/api/v1/whoami": {
            "get": {
                "summary": "The key's user, roles and permissions",
                "responses": {"200": _ok("identity", {"type": "object"}), **_AUTH_ERRORS},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no key)",
                "security": [],
                "responses": {"200": {"description": "exposition text"}},
            }
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    (_, components) = msgspec.json.schema_components(
        [JobSpec, Job, StatusReport], ref_template="#/components/schemas/{name}"
    )
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                    "permission": {"type": "string"},
                    "retry_after": {"type": "number", "description": "seconds (rate_limited)"},
                },
                "required": ["code", "message"],
            }
        },
        "required": ["error"],
    }
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
