"""The OpenAPI 3.1 document of the HTTP API, with schemas generated from the msgspec structs.

The document is checked against the running server by schemathesis
(``tests/test_openapi_conformance.py``): every status code a route can send is listed, every
parameter range is the one the route enforces (``_http.py``, ``_snapshots.py``, ``_files.py``),
and every response body matches its schema.  Change both together.  The paths of snapshots and
job files are in ``_openapi_files``, the parts every path uses in ``_openapi_common``.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import msgspec

from .._models import Job, JobSpec, StatusReport
from ..artifacts import Gpu, OutputFile, RunManifest, SnapshotRef, Validation
from ..protocol import (
    Buckets,
    DatasetBody,
    DatasetInfo,
    DatasetsBody,
    DatasetVersion,
    ErrorBody,
    ErrorEnvelope,
    ExperimentInfo,
    ExperimentsBody,
    FilesBody,
    Health,
    Identity,
    JobBody,
    JobsBody,
    MetricSummary,
    OutcomeBody,
    OutcomeRequest,
    PruneReport,
    PruneRequest,
    RawPage,
    RegisterDataset,
    RunInfo,
    RunRow,
    RunsBody,
    StatusBody,
)
from ..snapshots import Manifest, Plan, SnapshotInfo
from ._openapi_common import (
    ADDRESS_REFUSED,
    BAD_JOB_ID,
    FLAG_PATTERN,
    JOB_ID,
    KEYED,
    KEYED_SCHEDULER,
    MANIFEST_PATH_PATTERN,
    MAX_LIST,
    MAX_OFFSET,
    MAX_QUERY_ID,
    NO_SUCH_JOB,
    STATE_LIST_PATTERN,
    STOPPING,
    BlobPart,
    BlobsStored,
    SnapshotBody,
    as_sent,
    error_response,
    job_link,
    ok_response,
    query_param,
    schema_ref,
)
from ._openapi_datasets import dataset_paths
from ._openapi_files import file_paths, manifest_rules, snapshot_paths
from ._openapi_tracking import tracking_paths

__all__ = [
    "MANIFEST_PATH_PATTERN",
    "MAX_LIST",
    "MAX_OFFSET",
    "MAX_QUERY_ID",
    "STATE_LIST_PATTERN",
    "BlobPart",
    "BlobsStored",
    "SnapshotBody",
    "openapi_document",
]


def _paths() -> dict[str, Any]:
    job = ok_response("the job", schema_ref("JobBody"))
    created = {
        **ok_response("the stored job, queued", schema_ref("JobBody")),
        "links": {
            "GetJob": job_link("getJob"),
            "CancelJob": job_link("cancelJob"),
            "GetJobLogs": job_link("getJobLogs"),
            "GetJobManifest": job_link("getJobManifest"),
            "ListJobFiles": job_link("listJobFiles"),
            "ValidateJob": job_link("validateJob"),
        },
    }
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness (no key)",
                "security": [],
                "responses": {
                    "200": ok_response("the server is up", schema_ref("Health")),
                    "403": ADDRESS_REFUSED,
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
                    "403": ADDRESS_REFUSED,
                    "503": STOPPING,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (no key)",
                "security": [],
                "responses": {
                    "200": ok_response("the OpenAPI document", {"type": "object"}),
                    "403": ADDRESS_REFUSED,
                },
            }
        },
        "/api/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Queue a job",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema_ref("JobSpec")}},
                },
                "responses": {
                    "201": created,
                    "400": error_response(
                        "the body is not JSON (`invalid_request`) or not a valid spec "
                        "(`invalid_spec`, the field named in `field`): also a spec the schema "
                        "allows but this server cannot run (more cpus, memory or GPUs than it "
                        "has) or an unknown `depends_on` job"
                    ),
                    "408": error_response("the body did not arrive in time"),
                    "413": error_response("the body is larger than `server.max_body_bytes`"),
                    **KEYED_SCHEDULER,
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs the key may see, newest first (researchers: their own)",
                "parameters": [
                    query_param(
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
                    query_param(
                        "user",
                        {"type": "string"},
                        "only this user's jobs (empty: everyone's); another user's needs "
                        "`jobs:read:all` (else 403)",
                    ),
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": 100},
                        "at most this many jobs",
                    ),
                    query_param(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_ID},
                        "only jobs with a smaller id (the next page: the last id seen)",
                    ),
                    query_param(
                        "experiment",
                        {"type": "string", "maxLength": 250},
                        "only the jobs of this experiment",
                    ),
                    query_param(
                        "tag", {"type": "string", "maxLength": 250}, "only jobs with this tag"
                    ),
                    query_param(
                        "name",
                        {"type": "string", "maxLength": 250},
                        "only jobs whose name contains this (any case)",
                    ),
                ],
                "responses": {
                    "200": ok_response("the jobs, newest first", schema_ref("JobsBody")),
                    "400": error_response(
                        "a parameter out of range (`invalid_request`, named in `field`)"
                    ),
                    **KEYED_SCHEDULER,
                },
            },
        },
        "/api/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "One job",
                "parameters": [JOB_ID],
                "responses": {
                    "200": job,
                    "400": BAD_JOB_ID,
                    "404": NO_SUCH_JOB,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a job; answers once it has ended",
                "parameters": [JOB_ID],
                "responses": {
                    "200": ok_response("the job, cancelled", schema_ref("JobBody")),
                    "400": BAD_JOB_ID,
                    "404": NO_SUCH_JOB,
                    "409": error_response("the job had already ended (`conflict`)"),
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/logs": {
            "get": {
                "operationId": "getJobLogs",
                "summary": "The job's stdout and stderr (follow streams until the job ends)",
                "parameters": [
                    JOB_ID,
                    query_param(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
                        "start at this byte",
                    ),
                    query_param(
                        "follow",
                        {"type": "string", "pattern": FLAG_PATTERN},
                        "`1`, `true` or `yes` (any case): stream the log until the job has "
                        "ended; `0`, `false`, `no` or empty: what is there now",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the log bytes from `offset` (empty if none yet)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "206": {
                        "description": "with a `Range` header (and no `follow`): those bytes "
                        "(at most 8 MiB), `Content-Range: bytes a-b/<log length>`",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "416": {
                        "description": "a `Range` past the end: `Content-Range: bytes */<length>`"
                    },
                    "400": error_response(
                        "`job_id` 0, or `offset` / `follow` out of range "
                        "(`invalid_request`, named in `field`)"
                    ),
                    "404": NO_SUCH_JOB,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/status": {
            "get": {
                "operationId": "status",
                "summary": "Queue and resource summary",
                "responses": {
                    "200": ok_response("the summary", schema_ref("StatusBody")),
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/whoami": {
            "get": {
                "operationId": "whoami",
                "summary": "The key's user, roles and permissions (any key)",
                "responses": {
                    "200": ok_response("the identity", schema_ref("Identity")),
                    **KEYED,
                },
            }
        },
        **snapshot_paths(),
        **file_paths(),
        **tracking_paths(),
        **dataset_paths(),
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


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    # Every body the routes send, as the structs the gateway encodes (fetchml.protocol).
    responses: list[type[msgspec.Struct]] = [
        Job,
        StatusReport,
        ErrorBody,
        ErrorEnvelope,
        Identity,
        JobBody,
        JobsBody,
        StatusBody,
        Health,
        # Snapshots (``_snapshots.py``).
        Plan,
        SnapshotInfo,
        SnapshotBody,
        BlobsStored,
        BlobPart,
        # What jobs leave (``_files.py``).
        RunManifest,
        SnapshotRef,
        Gpu,
        OutputFile,
        FilesBody,
        Validation,
        PruneReport,
        # Experiment tracking (``_tracking.py``).
        RunInfo,
        MetricSummary,
        Buckets,
        RawPage,
        ExperimentInfo,
        ExperimentsBody,
        RunRow,
        RunsBody,
        OutcomeBody,
        # Datasets (``_datasets.py``).
        DatasetBody,
        DatasetsBody,
        DatasetInfo,
        DatasetVersion,
    ]
    # Request bodies (``Manifest`` is also what ``GET /api/v1/snapshots/{id}`` sends, every
    # field: ``StoredManifest``; its entries have no defaults).
    requests: list[type[msgspec.Struct]] = [
        JobSpec,
        Manifest,
        PruneRequest,
        OutcomeRequest,
        RegisterDataset,
    ]
    (_, components) = msgspec.json.schema_components(
        [*requests, *responses], ref_template="#/components/schemas/{name}"
    )
    _spec_rules(components["JobSpec"])
    for struct in responses:
        as_sent(components[struct.__name__], struct)
    manifest_rules(components)
    components["Job"]["properties"]["id"].update(minimum=1, maximum=MAX_QUERY_ID)
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
