"""The HTTP routes of the dataset registry: register a dataset (or a new version of one), list
them, show one.  Registering what the latest version already says adds nothing (200, not
201).  Registering needs ``datasets:write`` (researchers, admins); reading needs a
jobs read permission (every built-in role)."""

from __future__ import annotations

from quart import Quart, Response

from ..protocol import DatasetsBody, RegisterDataset
from ._http import caller, json_response, request_struct
from ._service import Service

__all__ = ["register_datasets"]


def register_datasets(app: Quart, service: Service) -> None:
    """Add the dataset routes to ``app``."""

    @app.post("/api/v1/datasets")
    async def register_dataset() -> Response:
        who = await caller(service)
        asked = await request_struct(RegisterDataset)
        body, added = await service.register_dataset(who, asked)
        # 200: the latest version already said this (registering is idempotent).
        return json_response(body, status=201 if added else 200)

    @app.get("/api/v1/datasets")
    async def datasets() -> Response:
        who = await caller(service)
        return json_response(DatasetsBody(datasets=await service.datasets(who)))

    @app.get("/api/v1/datasets/<name>")
    async def dataset(name: str) -> Response:
        who = await caller(service)
        return json_response(await service.dataset(who, name))
