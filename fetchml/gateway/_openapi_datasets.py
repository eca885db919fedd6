"""The OpenAPI paths of the dataset registry (``_datasets.py``)."""

from __future__ import annotations

from typing import Any

from ._openapi_common import KEYED, error_response, ok_response, schema_ref

__all__ = ["dataset_paths"]

_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the dataset's name",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
}


def dataset_paths() -> dict[str, Any]:
    """The dataset routes' entries of the document's ``paths``."""
    return {
        "/api/v1/datasets": {
            "post": {
                "operationId": "registerDataset",
                "summary": "Register a dataset, or a new version of one (datasets:write)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema_ref("RegisterDataset")}},
                },
                "responses": {
                    "200": ok_response(
                        "the latest version already said this: nothing added; every version, "
                        "newest first",
                        schema_ref("DatasetBody"),
                    ),
                    "201": ok_response(
                        "a version added; every version, newest first", schema_ref("DatasetBody")
                    ),
                    "400": error_response("not a dataset (`invalid_request`, named in `field`)"),
                    "409": error_response(
                        "another dataset's name gives the job the same variable (`conflict`)"
                    ),
                    **KEYED,
                },
            },
            "get": {
                "operationId": "listDatasets",
                "summary": "Every dataset with its latest version",
                "responses": {
                    "200": ok_response("the datasets", schema_ref("DatasetsBody")),
                    **KEYED,
                },
            },
        },
        "/api/v1/datasets/{name}": {
            "get": {
                "operationId": "getDataset",
                "summary": "Every version of one dataset, newest first",
                "parameters": [_NAME],
                "responses": {
                    "200": ok_response("the dataset", schema_ref("DatasetBody")),
                    "404": error_response("no such dataset (`not_found`)"),
                    **KEYED,
                },
            }
        },
    }
