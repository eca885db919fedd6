"""The HTTP routes of what a job leaves: its manifest, its files, a check of both, and pruning.

``GET /api/v1/jobs/{id}/manifest`` (``run_manifest.json``), ``GET /api/v1/jobs/{id}/files``
(path, size, mtime, and the SHA-256 once the job has ended), ``GET
/api/v1/jobs/{id}/files/{path}`` (one file, with ``Range``; a folder as one tar stream), ``POST
/api/v1/jobs/{id}/validate`` (``ml validate``), ``POST /api/v1/prune`` (``ml prune``, with
``jobs:update:all``).  A job's files have the job's visibility: a job the caller may not see is
"not found", and so is any path that is not inside the job's output folder (``..``, absolute,
a symlink anywhere on the way).

A run elsewhere (a Ray node) writes with its run token instead of an API key: ``PUT
/api/v1/jobs/{id}/results`` (its outputs, once it ends) and ``PUT /api/v1/jobs/{id}/track``
(its metrics' lines, while it runs).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import trio
from quart import Quart, Response, request
from werkzeug.http import parse_range_header

from .._models import JobState, describe_validation_error
from ..actors.backends import job_dir, track_path
from ..artifacts import (
    OutsideError,
    RunManifest,
    check_run_token,
    list_outputs,
    open_inside,
    read_run_manifest,
    receive_results,
    tar_outputs,
    validate_run,
)
from ..auth import JOBS_UPDATE_ALL
from ..errors import (
    AuthError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TooLargeError,
)
from ..protocol import ErrorBody, ErrorEnvelope, FilesBody, PruneRequest
from ..tracking import TRACK_SIZE_HEADER, append_track
from ._http import caller, int_arg, json_response, request_struct
from ._service import Service

__all__ = ["register_files"]

_CHUNK = 256 * 1024
RUN_TOKEN_HEADER = "X-Fetchml-Run-Token"


def _integral(value: object) -> object:
    """A float with no fraction as the int it equals; anything else as it is."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def register_files(app: Quart, service: Service) -> None:
    """Add the routes of job files, manifests, validation and pruning to ``app``."""
    scheduler = service.scheduler
    data_dir = scheduler.config.data_path.absolute()

    def output_dir(job_id: int) -> Path:
        return job_dir(data_dir, job_id) / "output"

    async def manifest_of(job_id: int) -> RunManifest:
        found = await trio.to_thread.run_sync(read_run_manifest, output_dir(job_id))
        if found is None:
            raise NotFoundError(f"job {job_id} has no run manifest (it has not started)")
        return found

    @app.get("/api/v1/jobs/<int:job_id>/manifest")
    async def job_manifest(job_id: int) -> Response:
        await service.get(await caller(service), job_id)
        return json_response(await manifest_of(job_id))

    @app.get("/api/v1/jobs/<int:job_id>/files")
    async def job_files(job_id: int) -> Response:
        job = await service.get(await caller(service), job_id)
        recorded = await trio.to_thread.run_sync(read_run_manifest, output_dir(job_id))
        if job.terminal and recorded is not None and recorded.outputs is not None:
            return json_response(FilesBody(files=recorded.outputs, final=True))
        listing = functools.partial(list_outputs, output_dir(job_id), hashed=False)
        return json_response(FilesBody(files=await trio.to_thread.run_sync(listing), final=False))

    @app.get("/api/v1/jobs/<int:job_id>/files/<path:path>")
    async def job_file(job_id: int, path: str) -> Response:
        await service.get(await caller(service), job_id)
        try:
            fd, info = await trio.to_thread.run_sync(open_inside, output_dir(job_id), path)
        except OutsideError:
            raise NotFoundError(f"job {job_id} has no file {path}") from None
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            return _tar_response(output_dir(job_id), path)
        return _file_response(fd, info.st_size)

    @app.post("/api/v1/jobs/<int:job_id>/validate")
    async def job_validate(job_id: int) -> Response:
        job = await service.get(await caller(service), job_id)
        recorded = await manifest_of(job_id)
        blobs = None
        if job.spec.snapshot is not None:
            snapshot = await scheduler.snapshots.manifest(job.spec.snapshot)
            blobs = {} if snapshot is None else {f.path: f.sha256 for f in snapshot.files}
        check = functools.partial(
            validate_run,
            recorded,
            output_dir(job_id),
            snapshot_blobs=blobs,
            blob_path=scheduler.snapshots.blobs.path,
        )
        return json_response(await trio.to_thread.run_sync(check))

    @app.put("/api/v1/jobs/<int:job_id>/results")
    async def job_results(job_id: int) -> Response:
        # A run elsewhere (a Ray node) sending its outputs: authenticated by its run token,
        # which lets it write this one run's outputs and nothing else.
        # The token first: who has none learns nothing of the parameters.
        attempt = int_arg("attempt", None, low=1, high=2**31) or 0
        folder = job_dir(data_dir, job_id)
        token = request.headers.get(RUN_TOKEN_HEADER, "")
        if not await trio.to_thread.run_sync(check_run_token, folder, attempt, token):
            raise AuthError("invalid run token")
        total = int_arg("total", None, low=0, high=2**62)
        if total is None:
            raise InvalidRequestError("total: required (the results' size)", field="total")
        offset = int_arg("offset", 0, low=0, high=total) or 0
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        receive = functools.partial(receive_results, folder, attempt, offset, total, body)
        return json_response({"have": await trio.to_thread.run_sync(receive)})

    _register_track(app, service, data_dir)

    @app.post("/api/v1/prune")
    async def prune() -> Response:
        who = await caller(service)
        who.require(JOBS_UPDATE_ALL)
        raw = await request_struct(object, empty=b"{}")
        # JSON Schema's integer takes 40.0 (and so do clients that send it): as 40.
        if isinstance(raw, dict):
            raw = {k: _integral(v) for k, v in raw.items()}
        try:
            asked = msgspec.convert(raw, PruneRequest)
        except msgspec.ValidationError as exc:
            field, message = describe_validation_error(exc)
            raise InvalidRequestError(message, field=field) from None
        report = await scheduler.prune(
            older_than_s=asked.older_than_s, keep_last=asked.keep_last, dry_run=asked.dry_run
        )
        if not asked.dry_run:
            await service.record("prune", user=who.user)
        return json_response(report)


def _register_track(app: Quart, service: Service, data_dir: Path) -> None:
    """Add ``PUT /api/v1/jobs/{id}/track``: the metrics' lines of a run elsewhere (a Ray node,
    :data:`~fetchml.tracking.TRACK_SENDER`), appended to the job's track file."""
    scheduler = service.scheduler

    @app.put("/api/v1/jobs/<int:job_id>/track")
    async def job_track(job_id: int) -> Response:
        # As for results: the run's token first, so who has none learns nothing of the job.
        attempt = int_arg("attempt", None, low=1, high=2**31) or 0
        token = request.headers.get(RUN_TOKEN_HEADER, "")
        folder = job_dir(data_dir, job_id)
        if not await trio.to_thread.run_sync(check_run_token, folder, attempt, token):
            raise AuthError("invalid run token")
        job = await scheduler.get(job_id)
        if job.state is not JobState.RUNNING:
            raise ConflictError(f"job {job_id} is {job.state.value}: it takes no more metrics")
        if attempt != job.attempts:
            raise ConflictError(
                f"attempt {attempt} is not job {job_id}'s current one ({job.attempts})"
            )
        offset = int_arg("offset", None, low=0, high=2**62)
        if offset is None:
            raise InvalidRequestError("offset: required (the size the server has)", field="offset")
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        limit = scheduler.config.snapshots.part_bytes
        if len(body) > limit:
            raise TooLargeError(f"body: more than the upload part size ({limit} bytes)")
        append = functools.partial(append_track, track_path(data_dir, job_id), offset, body)
        appended, size = await trio.to_thread.run_sync(append)
        if appended:
            response = json_response({"have": size})
        else:
            refusal = ConflictError(
                f"offset: the server has {size} bytes of this job's metrics: send from there"
            )
            response = json_response(ErrorEnvelope(error=ErrorBody.of(refusal)), status=409)
        response.headers[TRACK_SIZE_HEADER] = str(size)
        return response


def _file_response(fd: int, size: int) -> Response:
    """The file open as ``fd`` (closed when sent), whole or the one byte range asked for."""
    start, end, status = 0, size, 200
    ranges = parse_range_header(request.headers.get("Range"))
    if ranges is not None and len(ranges.ranges) == 1:
        bounds = ranges.range_for_length(size)
        if bounds is None:
            os.close(fd)
            response = Response(b"", status=416)
            response.headers["Content-Range"] = f"bytes */{size}"
            return response
        start, end, status = bounds[0], bounds[1], 206

    async def body() -> AsyncIterator[bytes]:
        position = start
        try:
            while position < end:
                length = min(_CHUNK, end - position)
                chunk = await trio.to_thread.run_sync(os.pread, fd, length, position)
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    response = Response(body(), status=status, content_type="application/octet-stream")
    response.headers["Content-Length"] = str(end - start)
    response.headers["Accept-Ranges"] = "bytes"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.timeout = None  # a large file takes as long as it takes
    return response


def _tar_response(output: Path, folder: str) -> Response:
    """The folder as a tar stream, each chunk made in a worker thread as the client reads."""
    chunks = tar_outputs(output, folder)

    async def body() -> AsyncIterator[bytes]:
        try:
            while (chunk := await trio.to_thread.run_sync(next, chunks, None)) is not None:
                yield chunk
        finally:
            chunks.close()

    response = Response(body(), content_type="application/x-tar")
    name = (folder.strip("/").rsplit("/", 1)[-1] or "output") + ".tar"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.timeout = None
    return response
