"""The OpenAPI paths of snapshots (``_snapshots.py``) and of what jobs leave (``_files.py``)."""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from .._config import SnapshotSettings
from ..snapshots import FileEntry, Manifest
from ..tracking import TRACK_SIZE_HEADER
from ._openapi_common import (
    ADDRESS_REFUSED,
    BAD_JOB_ID,
    BODY_TIMEOUT,
    BYTES,
    JOB_ID,
    KEYED,
    KEYED_CREATE,
    KEYED_SCHEDULER,
    MANIFEST_PATH_PATTERN,
    NO_SUCH_JOB,
    OCTETS,
    SHA256_PATTERN,
    STOPPING,
    as_sent,
    error_response,
    header,
    mib,
    ok_response,
    query_param,
    schema_ref,
)

__all__ = ["file_paths", "manifest_rules", "snapshot_paths"]


def snapshot_paths() -> dict[str, Any]:
    # Imported here: ``_snapshots`` imports ``_http``, which imports this module.
    from ._snapshots import MANIFEST_LIMIT, body_limit

    defaults = SnapshotSettings()
    pack_overhead = body_limit("/api/v1/blobs", defaults, 0) - defaults.part_bytes
    max_blob = msgspec.json.schema(FileEntry)["$defs"]["FileEntry"]["properties"]["size"]["maximum"]
    manifest_body = {
        "required": True,
        "description": (
            f"the manifest (JSON, at most {mib(MANIFEST_LIMIT)}, or `server.max_body_bytes` if "
            "larger); paths are relative, `/` separated, normalised and unique; a link's target "
            "stays inside the tree"
        ),
        "content": {"application/json": {"schema": schema_ref("Manifest")}},
    }
    manifest_refused = (
        "the body is not JSON, or not a manifest the server takes (`invalid_request`, the entry "
        "named in `field`): an unknown field or version, a path that is not normalised, has a "
        "lone surrogate or more than 4096 bytes, a path listed twice, a file that is also a "
        "folder, a link whose target leaves the tree, an attachment name that is not an "
        "identifier"
    )
    manifest_too_large = error_response(
        f"the body is larger than {mib(MANIFEST_LIMIT)} (and `server.max_body_bytes`), or the "
        "snapshot has more files or bytes than `snapshots.max_files` / `snapshots.max_bytes` "
        "(`too_large`), or it would take the caller's snapshots over `snapshots.max_user_bytes` "
        "(`quota_exceeded`)"
    )
    blob_too_large = error_response(
        "the body is larger than `snapshots.part_bytes` (the plan's `part_bytes`, "
        f"{mib(defaults.part_bytes)} by default) plus {mib(pack_overhead)}, or the blob is "
        "larger than the server's file system takes (`too_large`)"
    )
    storage_full = error_response(
        "the server's disk is full, or it could not write (`storage_full`)"
    )
    sha256 = {
        "name": "sha256",
        "in": "path",
        "required": True,
        "description": "the blob's SHA-256 (64 lowercase hex digits)",
        "schema": {"type": "string", "pattern": SHA256_PATTERN},
    }
    size_range = {"type": "integer", "minimum": 0, "maximum": max_blob}
    return {
        "/api/v1/snapshots/plan": {
            "post": {
                "operationId": "planSnapshot",
                "summary": "Check a manifest and say which of its blobs to send",
                "description": (
                    "Every blob the answer lists (`missing`) may then be sent by this user, for "
                    "24 hours: small ones in a pack (`POST /api/v1/blobs`), large ones in parts "
                    "(`PUT /api/v1/blobs/{sha256}`); then the manifest is committed."
                ),
                "requestBody": manifest_body,
                "responses": {
                    "200": {
                        **ok_response(
                            "the snapshot's id and size, and what the server lacks",
                            schema_ref("Plan"),
                        ),
                        "links": {
                            "CommitSnapshot": {
                                "operationId": "commitSnapshot",
                                "requestBody": "$request.body",
                            }
                        },
                    },
                    "400": error_response(manifest_refused),
                    "408": BODY_TIMEOUT,
                    "413": manifest_too_large,
                    **KEYED_CREATE,
                },
            }
        },
        "/api/v1/blobs": {
            "post": {
                "operationId": "uploadBlobPack",
                "summary": "Send small blobs, several in one body",
                "requestBody": {
                    "required": False,
                    "description": (
                        "for each blob, `<sha256 hex> <size in decimal>\\n` then its bytes; "
                        "only blobs a plan of the caller listed (empty: nothing)"
                    ),
                    "content": {OCTETS: {"schema": BYTES}},
                },
                "responses": {
                    "200": ok_response(
                        "stored (a blob the server already had is not counted)",
                        schema_ref("BlobsStored"),
                    ),
                    "400": error_response(
                        "not a pack, a blob cut short, a blob no plan of the caller announced, "
                        "or content that does not match its hash (`invalid_request`, field "
                        "`body`); nothing of the pack is stored"
                    ),
                    "408": BODY_TIMEOUT,
                    "413": blob_too_large,
                    "507": storage_full,
                    **KEYED_CREATE,
                },
            }
        },
        "/api/v1/blobs/{sha256}": {
            "put": {
                "operationId": "uploadBlobPart",
                "summary": "Send one part of a large blob (resumable)",
                "parameters": [
                    sha256,
                    query_param(
                        "offset",
                        {**size_range, "default": 0},
                        "where the part starts: what the server has of the blob (the plan's "
                        "`missing` value, or the last `have`); at most `total`",
                    ),
                    query_param("total", size_range, "the blob's size in bytes", required=True),
                ],
                "requestBody": {
                    "required": False,
                    "description": "the part's bytes (empty: none)",
                    "content": {OCTETS: {"schema": BYTES}},
                },
                "responses": {
                    "200": ok_response(
                        "the bytes of the blob the server now has (`total` once it is stored)",
                        schema_ref("BlobPart"),
                    ),
                    "400": error_response(
                        "`total` missing or out of range, `offset` out of range or past what "
                        "the server has of the blob (the message says where to resume), a part "
                        "past `total`, a `total` other than the size the plan announced, a "
                        "`sha256` that no plan of the caller announced, or a whole blob that "
                        "does not match its hash "
                        "(`invalid_request`, named in `field`)"
                    ),
                    "404": error_response(
                        "a `sha256` that is not 64 lowercase hex digits names no route "
                        "(`not_found`)"
                    ),
                    "408": BODY_TIMEOUT,
                    "413": blob_too_large,
                    "507": storage_full,
                    **KEYED_CREATE,
                },
            }
        },
        "/api/v1/snapshots": {
            "post": {
                "operationId": "commitSnapshot",
                "summary": "Register a snapshot whose blobs have all been sent",
                "requestBody": manifest_body,
                "responses": {
                    "201": {
                        **ok_response(
                            "the snapshot, registered for the caller", schema_ref("SnapshotBody")
                        ),
                        "links": {
                            "GetSnapshot": {
                                "operationId": "getSnapshot",
                                "parameters": {"snapshot_id": "$response.body#/snapshot/id"},
                            }
                        },
                    },
                    "400": error_response(
                        f"{manifest_refused}; or the server lacks some of its blobs (field "
                        "`blobs`, the message names them)"
                    ),
                    "408": BODY_TIMEOUT,
                    "413": manifest_too_large,
                    **KEYED_CREATE,
                },
            }
        },
        "/api/v1/snapshots/{snapshot_id}": {
            "get": {
                "operationId": "getSnapshot",
                "summary": "A snapshot's manifest (its makers, or with `jobs:read:all`)",
                "description": (
                    "`GET /api/v1/snapshots/plan` is this route too: `plan` is not an id (400)."
                ),
                "parameters": [
                    {
                        "name": "snapshot_id",
                        "in": "path",
                        "required": True,
                        "description": "the snapshot's id (64 lowercase hex digits)",
                        "schema": {"type": "string", "pattern": SHA256_PATTERN},
                    }
                ],
                "responses": {
                    "200": ok_response(
                        "the manifest, canonical (entries sorted by path)",
                        schema_ref("StoredManifest"),
                    ),
                    "404": error_response(
                        "no such snapshot, or one the caller did not make and may not see "
                        "(`not_found`); also a `snapshot_id` that is not 64 lowercase hex digits "
                        "(no route)"
                    ),
                    **KEYED,
                    "403": ADDRESS_REFUSED,
                },
            }
        },
    }


def file_paths() -> dict[str, Any]:
    not_started = error_response(
        "no such job, or one the key may not see, or one that has not started yet (no run "
        "manifest) (`not_found`); also for a path that is not a job id"
    )
    file_path = {
        "name": "path",
        "in": "path",
        "required": True,
        "description": (
            "a file or folder inside the job's output folder (its `/` may be sent as they are, "
            "or as `%2F`); `..`, an absolute path, a symlink on the way or anything but a file "
            "or folder is not found"
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "examples": ["metrics.json", "checkpoints/epoch-1.pt"],
        },
    }
    byte_range = {
        "name": "Range",
        "in": "header",
        "description": (
            "one byte range (`bytes=first-last`, `bytes=first-`, `bytes=-suffix`) of a file; a "
            "header that does not parse, or several ranges, is ignored (the whole file); a "
            "range that starts past the end, a suffix longer than the file (sic) or another "
            "unit than `bytes` (sic) is refused with 416; folders ignore it"
        ),
        "schema": {"type": "string", "examples": ["bytes=0-1023", "bytes=1024-", "bytes=-1024"]},
    }
    accept_ranges = header(
        "`bytes`: a file (not a folder) can be fetched in ranges",
        {"type": "string", "const": "bytes"},
        required=False,
    )
    return {
        "/api/v1/jobs/{job_id}/manifest": {
            "get": {
                "operationId": "getJobManifest",
                "summary": "The run manifest of the job's latest run (`run_manifest.json`)",
                "parameters": [JOB_ID],
                "responses": {
                    "200": ok_response(
                        "what the run was: spec, user, snapshot, host, GPUs, start; once it "
                        "ended, its end, exit code and outputs",
                        schema_ref("RunManifest"),
                    ),
                    "400": BAD_JOB_ID,
                    "404": not_started,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/files": {
            "get": {
                "operationId": "listJobFiles",
                "summary": "The job's output files",
                "parameters": [JOB_ID],
                "responses": {
                    "200": {
                        **ok_response(
                            "the files, sorted by path: once the job has ended, as its run "
                            "manifest recorded them (with their SHA-256, `final`); before, as "
                            "they are now",
                            schema_ref("FilesBody"),
                        ),
                        "links": {
                            "GetJobFile": {
                                "operationId": "getJobFile",
                                "parameters": {
                                    "job_id": "$request.path.job_id",
                                    "path": "$response.body#/files/0/path",
                                },
                            }
                        },
                    },
                    "400": BAD_JOB_ID,
                    "404": NO_SUCH_JOB,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/files/{path}": {
            "get": {
                "operationId": "getJobFile",
                "summary": "One output file (byte ranges), or a folder as a tar stream",
                "parameters": [JOB_ID, file_path, byte_range],
                "responses": {
                    "200": {
                        "description": (
                            "a file: its bytes (`application/octet-stream`); a folder: a POSIX "
                            "tar of the files under it (`application/x-tar`), named by "
                            "`Content-Disposition`"
                        ),
                        "headers": {
                            "Accept-Ranges": accept_ranges,
                            "Content-Disposition": header(
                                'a folder: `attachment; filename="<folder>.tar"`',
                                {"type": "string"},
                                required=False,
                            ),
                        },
                        "content": {
                            OCTETS: {"schema": BYTES},
                            "application/x-tar": {"schema": BYTES},
                        },
                    },
                    "206": {
                        "description": "the byte range asked for",
                        "headers": {
                            "Accept-Ranges": accept_ranges,
                            "Content-Range": header(
                                "`bytes first-last/size`",
                                {"type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"},
                                required=True,
                            ),
                        },
                        "content": {OCTETS: {"schema": BYTES}},
                    },
                    "400": BAD_JOB_ID,
                    "404": error_response(
                        "no such job or file, or one the key may not see (`not_found`); also "
                        "for a path that is not a job id"
                    ),
                    "416": {
                        "description": (
                            "the range cannot be served (see `Range`); the body is empty (and "
                            "labelled `text/html`)"
                        ),
                        "headers": {
                            "Content-Range": header(
                                "`bytes */size`",
                                {"type": "string", "pattern": "^bytes \\*/[0-9]+$"},
                                required=True,
                            )
                        },
                        "content": {"text/html": {"schema": {"type": "string", "maxLength": 0}}},
                    },
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/validate": {
            "post": {
                "operationId": "validateJob",
                "summary": "Re-hash the job's snapshot blobs and outputs against its run manifest",
                "parameters": [JOB_ID],
                "responses": {
                    "200": ok_response(
                        "what was checked and what did not match (`ok` false also while the "
                        "run goes on: its outputs are not recorded yet)",
                        schema_ref("Validation"),
                    ),
                    "400": BAD_JOB_ID,
                    "404": not_started,
                    **KEYED_SCHEDULER,
                },
            }
        },
        "/api/v1/jobs/{job_id}/results": {
            "put": {
                "operationId": "sendJobResults",
                "summary": "A run elsewhere (a Ray node) sends its output folder, as a tar",
                "description": (
                    "Authenticated by the run's token (`X-Fetchml-Run-Token`, given to the run "
                    "in its environment), not by an API key: it writes this one run's outputs and "
                    "nothing else.  The tar arrives in parts (`offset`, `total`); once whole it "
                    "is unpacked into the job's output folder (nothing outside it, no links out)."
                ),
                "security": [],
                "parameters": [
                    JOB_ID,
                    header("the run's token", {"type": "string"}, required=True)
                    | {"name": "X-Fetchml-Run-Token", "in": "header"},
                    query_param(
                        "attempt",
                        {"type": "integer", "minimum": 1, "maximum": 2**31},
                        "the run's attempt",
                        required=True,
                    ),
                    query_param(
                        "total",
                        {"type": "integer", "minimum": 0, "maximum": 2**62},
                        "the tar's size in bytes",
                        required=True,
                    ),
                    query_param(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": 2**62},
                        "where in the tar this part starts (default 0); at most `total`",
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "description": "one part of the tar",
                    "content": {OCTETS: {"schema": BYTES}},
                },
                "responses": {
                    "200": ok_response(
                        "the bytes of the tar the server now has", schema_ref("BlobPart")
                    ),
                    "400": error_response(
                        "a parameter missing or out of range, a part out of order or past "
                        "`total`, or a tar that cannot be unpacked (`invalid_request`, named in "
                        "`field`)"
                    ),
                    "401": error_response("no run token, or not this run's (`unauthorized`)"),
                    "403": ADDRESS_REFUSED,
                    "404": NO_SUCH_JOB,
                    "408": BODY_TIMEOUT,
                    "413": error_response("a part larger than the upload part size"),
                    "507": error_response("the server's disk is full (`storage_full`)"),
                },
            }
        },
        "/api/v1/jobs/{job_id}/track": _track_path(),
        "/api/v1/prune": {
            "post": {
                "operationId": "prune",
                "summary": "Remove old ended jobs' working copies and outputs (`jobs:update:all`)",
                "description": (
                    "Jobs stay (their records, logs and run manifests): what goes is the working "
                    "copies and outputs of jobs that ended more than `older_than_s` ago, but the "
                    "`keep_last` most recently ended, and the snapshots and blobs that nothing "
                    "left needs."
                ),
                "requestBody": {
                    "required": False,
                    "description": "what to prune (no body: the defaults)",
                    "content": {"application/json": {"schema": schema_ref("PruneRequest")}},
                },
                "responses": {
                    "200": ok_response(
                        "what was removed (with `dry_run`: what would be)",
                        schema_ref("PruneReport"),
                    ),
                    "400": error_response(
                        "the body is not JSON or not a prune request (`invalid_request`, the "
                        "field named in `field`)"
                    ),
                    "403": error_response(
                        "missing permission `jobs:update:all` (named in `permission`), or "
                        "address not allowed"
                    ),
                    "408": BODY_TIMEOUT,
                    "413": error_response("the body is larger than `server.max_body_bytes`"),
                    **{k: v for k, v in KEYED_SCHEDULER.items() if k != "403"},
                },
            }
        },
    }


def _track_path() -> dict[str, Any]:
    """``PUT /api/v1/jobs/{job_id}/track``: a run elsewhere sends its metrics' lines."""
    return {
        "put": {
            "operationId": "sendJobMetrics",
            "summary": "A run elsewhere (a Ray node) sends the lines of its track file",
            "description": (
                "Authenticated by the run's token (`X-Fetchml-Run-Token`), not by an API key: it "
                "writes this one run's metrics and nothing else, while the job runs, for its "
                "current attempt only.  The body (whole lines of the line protocol, at most the "
                "upload part size) is appended to the job's track file only if `offset` is that "
                "file's size; else nothing is stored and the answer (409) says the size to send "
                "from, so a retried part is never stored twice.  An empty body asks for the size."
            ),
            "security": [],
            "parameters": [
                JOB_ID,
                header("the run's token", {"type": "string"}, required=True)
                | {"name": "X-Fetchml-Run-Token", "in": "header"},
                query_param(
                    "attempt",
                    {"type": "integer", "minimum": 1, "maximum": 2**31},
                    "the run's attempt",
                    required=True,
                ),
                query_param(
                    "offset",
                    {"type": "integer", "minimum": 0, "maximum": 2**62},
                    "the size of the job's track file the run knows: where these lines go",
                    required=True,
                ),
            ],
            "requestBody": {
                "required": False,
                "description": "lines of the line protocol, the last one ending with a newline",
                "content": {OCTETS: {"schema": BYTES}},
            },
            "responses": _track_responses(),
        }
    }


def _track_responses() -> dict[str, Any]:
    """The answers of ``PUT /api/v1/jobs/{job_id}/track``: the size header where it helps."""
    size = header(
        "the bytes of the job's track file the server has: where the next part starts",
        {"type": "integer", "minimum": 0},
        required=True,
    )
    return {
        "200": {
            **ok_response(
                "appended: the bytes of the track file the server now has",
                schema_ref("BlobPart"),
            ),
            "headers": {TRACK_SIZE_HEADER: size},
        },
        "400": error_response(
            "a parameter missing or out of range, or a body that does not end a line "
            "(`invalid_request`, named in `field`)"
        ),
        "401": error_response("no run token, or not this run's (`unauthorized`)"),
        "403": ADDRESS_REFUSED,
        "404": NO_SUCH_JOB,
        "408": BODY_TIMEOUT,
        "409": error_response(
            "`offset` is not the track file's size (nothing stored; the size is in "
            f"`{TRACK_SIZE_HEADER}`), or the job is not running, or runs another attempt "
            f"(`conflict`, without `{TRACK_SIZE_HEADER}`)",
            {TRACK_SIZE_HEADER: {**size, "required": False}},
        ),
        "413": error_response("a body larger than the upload part size"),
        "503": STOPPING,
        "507": error_response("the server's disk is full (`storage_full`)"),
    }


def manifest_rules(components: dict[str, Any]) -> None:
    """Add to the generated manifest schemas what ``check_manifest`` checks exactly beyond the
    types: version 1, normalised relative paths; and make the stored manifest (every field
    sent) and a plan's ``missing`` (blob hashes) say what the server sends."""
    components["Manifest"]["properties"]["version"]["const"] = 1
    for entry in ("FileEntry", "LinkEntry"):
        components[entry]["properties"]["path"]["pattern"] = MANIFEST_PATH_PATTERN
    stored = copy.deepcopy(components["Manifest"])
    stored["title"] = "StoredManifest"
    as_sent(stored, Manifest)
    components["StoredManifest"] = stored
    components["Plan"]["properties"]["missing"]["propertyNames"] = {"pattern": SHA256_PATTERN}
