"""The HTTP routes of snapshots: plan, send the missing blobs, commit; and read a manifest.

``POST /api/v1/snapshots/plan`` (a manifest: what is missing), ``POST /api/v1/blobs`` (a pack of
small blobs), ``PUT /api/v1/blobs/{sha256}?offset=&total=`` (one part of a large blob),
``POST /api/v1/snapshots`` (the manifest again: registered, 201), ``GET
/api/v1/snapshots/{id}`` (its manifest).  Uploading needs ``jobs:create``; reading a manifest
needs to be one of the snapshot's makers, or ``jobs:read:all``.  Request bodies are bounded per
route (:func:`body_limit`): a manifest up to ``MANIFEST_LIMIT``, a blob request up to
``snapshots.part_bytes`` plus the pack's headers.
"""

from __future__ import annotations

import msgspec
from quart import Quart, Response, request
from werkzeug.routing import BaseConverter

from .._config import SnapshotSettings
from .._models import describe_validation_error, json_error
from ..auth import JOBS_CREATE, JOBS_READ_ALL
from ..errors import InvalidRequestError, InvalidSpecError, NotFoundError
from ..snapshots import Manifest
from ._http import caller, int_arg, json_response
from ._service import Service

__all__ = ["MANIFEST_LIMIT", "body_limit", "register_snapshots"]

# The largest manifest body (100,000 files of about 150 bytes each fit well).
MANIFEST_LIMIT = 64 << 20
# What the headers of a pack may add to its blobs (a header is at most 100 bytes).
_PACK_OVERHEAD = 1 << 20
_manifest_decoder = msgspec.json.Decoder(Manifest)


def body_limit(path: str, settings: SnapshotSettings, default: int) -> int:
    """The largest request body the route at ``path`` takes."""
    if path.startswith("/api/v1/blobs") or (
        path.startswith("/api/v1/jobs/") and path.endswith(("/results", "/track"))
    ):
        return settings.part_bytes + _PACK_OVERHEAD
    if path in ("/api/v1/snapshots", "/api/v1/snapshots/plan"):
        return max(default, MANIFEST_LIMIT)
    return default


async def _manifest() -> Manifest:
    """The request's body as a manifest.  Raises InvalidRequestError naming the field."""
    body = await request.get_data(as_text=False)
    assert isinstance(body, bytes)
    try:
        return _manifest_decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, message = describe_validation_error(exc)
        raise InvalidRequestError(message, field=field) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise json_error(body, exc) from None


class Sha256Converter(BaseConverter):
    """A route part that is a SHA-256 in hex: any other part names no resource (404), and
    ``/api/v1/snapshots/plan`` is never read as a snapshot id (405 for GET)."""

    regex = "[0-9a-f]{64}"


def register_snapshots(app: Quart, service: Service) -> None:
    """Add the snapshot routes to ``app``."""
    app.url_map.converters["sha256"] = Sha256Converter
    snapshots = service.scheduler.snapshots

    @app.post("/api/v1/snapshots/plan")
    async def snapshot_plan() -> Response:
        who = await caller(service)
        who.require(JOBS_CREATE)
        return json_response(await snapshots.plan(await _manifest(), who.user))

    @app.post("/api/v1/blobs")
    async def blob_pack() -> Response:
        who = await caller(service)
        who.require(JOBS_CREATE)
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        stored, size = await snapshots.receive_pack(body, who.user)
        return json_response({"stored": stored, "bytes": size})

    @app.put("/api/v1/blobs/<sha256:sha256>")
    async def blob_part(sha256: str) -> Response:
        who = await caller(service)
        who.require(JOBS_CREATE)
        total = int_arg("total", None, low=0, high=2**62)
        if total is None:
            raise InvalidRequestError("total: required (the blob's size)", field="total")
        offset = int_arg("offset", 0, low=0, high=total) or 0
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        have = await snapshots.receive_part(sha256, offset, total, body, who.user)
        return json_response({"have": have})

    @app.post("/api/v1/snapshots")
    async def snapshot_commit() -> Response:
        who = await caller(service)
        who.require(JOBS_CREATE)
        info = await snapshots.commit(await _manifest(), who.user)
        await service.record("snapshot", user=who.user)
        return json_response({"snapshot": info}, status=201)

    @app.get("/api/v1/snapshots/<sha256:snapshot_id>")
    async def snapshot_manifest(snapshot_id: str) -> Response:
        sid = snapshot_id
        who = await caller(service)
        try:
            await snapshots.usable(sid, who.user, any_owner=who.can(JOBS_READ_ALL))
        except InvalidSpecError:
            raise NotFoundError(f"no snapshot {sid}") from None
        found = await snapshots.manifest(sid)
        if found is None:
            raise NotFoundError(f"no snapshot {sid}")
        return json_response(found)
