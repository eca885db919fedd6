"""The bodies of experiment tracking's HTTP routes, shared by the server and the client."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

__all__ = [
    "Buckets",
    "ExperimentInfo",
    "ExperimentsBody",
    "MetricSummary",
    "OutcomeBody",
    "OutcomeRequest",
    "RawPage",
    "RunInfo",
    "RunRow",
    "RunsBody",
]


class MetricSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One metric of a run, summed up: points, the last value (at the highest step seen last),
    the smallest and largest, and when the first and last points were logged."""

    name: str
    count: int
    last: float
    last_step: int
    min: float
    max: float
    first_time: float
    last_time: float


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What tracking holds of one run (a job)."""

    job_id: int
    user: str
    experiment: str | None
    name: str | None
    params: dict[str, Any]
    tags: dict[str, Any]
    summary: dict[str, Any]
    narrative: dict[str, str | None]
    outcome: str | None
    points: int
    invalid: int
    dropped: int
    metrics: list[MetricSummary]


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """A run in an experiment's listing: params and each metric's summary."""

    job_id: int
    name: str | None
    user: str
    params: dict[str, Any]
    metrics: dict[str, MetricSummary]
    outcome: str | None
    state: str | None = None  # the job's, filled in by the gateway


class Buckets(msgspec.Struct, frozen=True, kw_only=True):
    """A downsampled series: per non-empty bucket, its first step, min, max and last value."""

    name: str
    count: int
    downsampled: bool
    step: list[int]
    min: list[float]
    max: list[float]
    last: list[float]


class RawPage(msgspec.Struct, frozen=True, kw_only=True):
    """Raw points of a series from a step on; ``next`` is where the next page starts (None at
    the end)."""

    name: str
    step: list[int]
    value: list[float]
    time: list[float]
    next: int | None


class ExperimentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An experiment: its name, how many runs (visible to the caller) it has, the latest start."""

    name: str
    runs: int
    last_created: float


class ExperimentsBody(msgspec.Struct, frozen=True, kw_only=True):
    experiments: list[ExperimentInfo]


class RunsBody(msgspec.Struct, frozen=True, kw_only=True):
    """A page of an experiment's runs; ``next`` is the ``before`` of the next page (None: the
    last page)."""

    experiment: str
    runs: list[RunRow]
    next: str | None


class OutcomeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The outcome of a run, in words (the research narrative's last part)."""

    outcome: Annotated[str, msgspec.Meta(max_length=10_000)]


class OutcomeBody(msgspec.Struct, frozen=True, kw_only=True):
    job_id: int
    outcome: str
