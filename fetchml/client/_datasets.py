"""The dataset registry from the client: register, list, show.  Blocking, over HTTP (run in a
worker thread by :class:`~fetchml.client.Client`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fetchml.protocol import DatasetBody, DatasetsBody, RegisterDataset

from ._tracking import segment

if TYPE_CHECKING:
    from ._http import HttpSession
    from ._jobs import Requests

__all__ = ["dataset", "datasets", "register"]


def register(session: HttpSession, asked: RegisterDataset) -> DatasetBody:
    return session.call("POST", "/api/v1/datasets", DatasetBody, json=asked)


def datasets(session: HttpSession) -> DatasetsBody:
    return session.call("GET", "/api/v1/datasets", DatasetsBody)


def dataset(session: Requests, name: str) -> DatasetBody:
    return session.call("GET", f"/api/v1/datasets/{segment(name)}", DatasetBody)
