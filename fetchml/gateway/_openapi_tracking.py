"""The OpenAPI paths of experiment tracking (``_tracking.py``)."""

from __future__ import annotations

from typing import Any

from ._openapi_common import (
    BAD_JOB_ID,
    FLAG_PATTERN,
    JOB_ID,
    KEYED,
    KEYED_SCHEDULER,
    NO_SUCH_JOB,
    error_response,
    ok_response,
    query_param,
    schema_ref,
)

__all__ = ["tracking_paths"]

# What ``tracking.name_problem`` takes: 1 to 250 characters, no control characters.
_NAME_SCHEMA = {"type": "string", "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,250}$"}
_STEP = {"type": "integer", "minimum": 0, "maximum": 2**62}
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "a metric name (URL-encoded; 1 to 250 characters, no control characters)",
    "schema": _NAME_SCHEMA,
}
_BAD_QUERY = error_response(
    "a parameter out of range, or a name that is not one (`invalid_request`, named in `field`)"
)
_NO_RUN = error_response("no such job, one the key may not see, or no such metric (`not_found`)")


# What the route refuses besides the struct's types: a NUL in the outcome (it would end the text
# in C APIs); the struct itself (``OutcomeRequest``) cannot say it.
_OUTCOME_BODY = {
    "allOf": [
        schema_ref("OutcomeRequest"),
        {"properties": {"outcome": {"pattern": "^[^\\u0000]*$"}}},
    ]
}


def _job_routes() -> dict[str, Any]:
    return {
        "/api/v1/jobs/{job_id}/metrics": {
            "get": {
                "operationId": "getJobMetrics",
                "summary": "A run's metric summaries, params, tags, summary and narrative",
                "parameters": [JOB_ID],
                "responses": {
                    "200": ok_response(
                        "what tracking holds of the run (empty before it logs anything)",
                        schema_ref("RunInfo"),
                    ),
                    "400": BAD_JOB_ID,
                    "404": _NO_RUN,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/metrics/{name}": {
            "get": {
                "operationId": "getJobSeries",
                "summary": "A series, downsampled by min/max per bucket, or raw pages",
                "parameters": [
                    JOB_ID,
                    _NAME,
                    query_param(
                        "points",
                        {"type": "integer", "minimum": 1, "maximum": 10_000},
                        "buckets (default 1000)",
                    ),
                    query_param("start", _STEP, "the first step"),
                    query_param("end", _STEP, "the last step"),
                    query_param(
                        "raw",
                        {"type": "string", "pattern": FLAG_PATTERN},
                        "raw points instead",
                    ),
                    query_param(
                        "after",
                        {"type": "integer", "minimum": -1, "maximum": 2**62},
                        "raw: steps above this",
                    ),
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 10_000},
                        "raw: points per page",
                    ),
                ],
                "responses": {
                    "200": ok_response(
                        "the buckets, or (raw) a page of points",
                        {"anyOf": [schema_ref("Buckets"), schema_ref("RawPage")]},
                    ),
                    "400": _BAD_QUERY,
                    "404": _NO_RUN,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/outcome": {
            "post": {
                "operationId": "setJobOutcome",
                "summary": "Record the outcome of a run (the job's owner, or jobs:update:all)",
                "parameters": [JOB_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _OUTCOME_BODY}},
                },
                "responses": {
                    "200": ok_response("recorded", schema_ref("OutcomeBody")),
                    "400": error_response("not an outcome (`invalid_request`)"),
                    "404": NO_SUCH_JOB,
                    **KEYED_SCHEDULER,
                },
            }
        },
    }


def tracking_paths() -> dict[str, Any]:
    """The tracking routes' entries of the document's ``paths``."""
    return {
        **_job_routes(),
        "/api/v1/experiments": {
            "get": {
                "operationId": "listExperiments",
                "summary": "The experiments with a run the key may see",
                "responses": {
                    "200": ok_response("the experiments", schema_ref("ExperimentsBody")),
                    **KEYED,
                },
            }
        },
        "/api/v1/experiments/{name}/runs": {
            "get": {
                "operationId": "listExperimentRuns",
                "summary": "A page of an experiment's runs, sorted by a metric's last value",
                "parameters": [
                    {
                        **_NAME,
                        "description": "the experiment's name (URL-encoded)",
                        "schema": {"type": "string", "minLength": 1},
                    },
                    query_param("sort", _NAME_SCHEMA, "a metric name"),
                    query_param(
                        "order", {"type": "string", "enum": ["asc", "desc"]}, "default desc"
                    ),
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "runs per page (default 100)",
                    ),
                    query_param(
                        "before",
                        {"type": "string", "maxLength": 2048},
                        "the `next` of the previous page (an opaque cursor of the same sort "
                        "and order)",
                    ),
                ],
                "responses": {
                    "200": ok_response("a page of runs", schema_ref("RunsBody")),
                    "400": error_response(
                        "a parameter out of range, a name that is not one, or a `before` that "
                        "is not the `next` of a page of this sort and order (`invalid_request`, "
                        "named in `field`)"
                    ),
                    "404": error_response("an empty name names no route (`not_found`)"),
                    **KEYED_SCHEDULER,
                },
            }
        },
    }
