"""Bodies of the dataset registry's HTTP API, shared by the server and the client."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .._models import DATASET_NAME, Text

__all__ = [
    "DatasetBody",
    "DatasetInfo",
    "DatasetVersion",
    "DatasetsBody",
    "RegisterDataset",
]

Description = Annotated[str, msgspec.Meta(max_length=1000)]
# What ``datasets.uri_problem`` accepts, for the API's schema (the server says why in words).
_CONTROL = "\\u0000-\\u001f\\u007f-\\u009f"
NAME_PATTERN = f"^{DATASET_NAME}$"
SHA256_PATTERN = "^[0-9a-fA-F]{64}$"
URI_PATTERN = f"^(?:[A-Za-z][A-Za-z0-9+.-]*://[^\\s{_CONTROL}]+|/[^{_CONTROL}]+)$"


class RegisterDataset(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/datasets``: a dataset, or a new version of one already registered.
    ``uri`` is ``scheme://...`` or an absolute path; ``sha256`` is 64 hex digits."""

    # The patterns are for the API's schema; ``datasets.check_registration`` checks them (a
    # schema's ``$`` would let a final newline through) and says what is wrong in words.
    name: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": NAME_PATTERN})]
    uri: Annotated[Text, msgspec.Meta(extra_json_schema={"pattern": URI_PATTERN})]
    sha256: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": SHA256_PATTERN})] | None = (
        None
    )
    description: Description | None = None


class DatasetVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One registered version of a dataset: who registered it and when (Unix seconds)."""

    version: int
    uri: str
    sha256: str | None
    description: str | None
    user: str
    created: float


class DatasetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A dataset in the listing: its latest version and how many there are."""

    name: str
    latest: DatasetVersion
    versions: int


class DatasetsBody(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/v1/datasets``: every dataset, by name."""

    datasets: list[DatasetInfo]


class DatasetBody(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/v1/datasets/{name}`` and the answer to a registration: every version, newest
    first."""

    name: str
    versions: list[DatasetVersion]
