"""The dataset registry from the client: register, list, show.  Blocking, over HTTP (run in a
worker thread by :class:`~fetchml.client.Client`)."""

from __future__ import annotations

from fetchml.protocol import DatasetBody, DatasetsBody, RegisterDataset

from ._http import HttpSession
from ._tracking import segment

__all__ = ["dataset", "datasets", "register"]


def register(session: HttpSession, asked: RegisterDataset) -> DatasetBody:
    return session.call("POST", "/api/v1/datasets", DatasetBody, json=asked)


def datasets(session: HttpSession) -> DatasetsBody:
    return session.call("GET", "/api/v1/datasets", DatasetsBody)


def dataset(session: HttpSession, name: str) -> DatasetBody:
    return session.call("GET", f"/api/v1/datasets/{segment(name)}", DatasetBody)
