"""Prometheus metrics at ``/metrics``, rendered by prometheus-client.

Queue gauges are read from the scheduler at scrape time (one status request), so they are exact
and cost nothing between scrapes.  No per-user labels: the endpoint needs no key.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .._faults import internal_error_counts
from .._models import JobState
from ..actors import Scheduler, StatusReport
from ._limits import Limits

__all__ = ["Metrics"]


class _QueueCollector(Collector):
    def __init__(self) -> None:
        self.report: StatusReport | None = None

    def collect(self) -> Iterator[Metric]:
        report = self.report
        if report is None:
            return
        jobs = GaugeMetricFamily("fetchml_jobs", "Active jobs by state", labels=["state"])
        for state in (JobState.QUEUED, JobState.RUNNING):
            jobs.add_metric([state.value], report.counts.get(state.value, 0))
        yield jobs
        for name, doc, value in (
            ("fetchml_cpus_total", "CPUs the scheduler hands out", report.cpus_total),
            ("fetchml_cpus_free", "CPUs not held by running jobs", report.cpus_free),
            (
                "fetchml_memory_mb_total",
                "Memory (MiB) the scheduler hands out",
                report.memory_mb_total,
            ),
            (
                "fetchml_memory_mb_free",
                "Memory (MiB) not held by running jobs",
                report.memory_mb_free,
            ),
            ("fetchml_gpus_total", "GPUs the scheduler hands out", len(report.gpus_total)),
            ("fetchml_gpus_free", "GPUs not held by running jobs", len(report.gpus_free)),
            ("fetchml_event_seq", "Newest event sequence number", report.last_seq),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


class _LimitsCollector(Collector):
    """``fetchml_rate_limited_total`` by kind, read from the gateway's :class:`Limits`."""

    def __init__(self) -> None:
        self.limits: Limits | None = None

    def collect(self) -> Iterator[Metric]:
        if self.limits is None:
            return
        refused = CounterMetricFamily(
            "fetchml_rate_limited",
            "Requests refused by the rate limits: key over its rate, or banned address",
            labels=["kind"],
        )
        for kind, count in self.limits.refused.items():
            refused.add_metric([kind], count)
        yield refused


# Where internal errors are counted (each shown, 0 until one happens).
_FAULT_PLACES = ("scheduler", "executor", "notifier", "store", "gateway", "auth")


class _FaultCollector(Collector):
    """``fetchml_internal_errors_total`` by where the fault happened (see ``fetchml._faults``)."""

    def collect(self) -> Iterator[Metric]:
        counts = internal_error_counts()
        faults = CounterMetricFamily(
            "fetchml_internal_errors",
            "Faults of the server's own code, each kept to one request or job (see the log)",
            labels=["where"],
        )
        for where in sorted({*_FAULT_PLACES, *counts}):
            faults.add_metric([where], counts.get(where, 0))
        yield faults


class Metrics:
    """The gateway's own counters, the queue gauges and the rate-limit refusals, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._queue = _QueueCollector()
        self.registry.register(self._queue)
        self._limits = _LimitsCollector()
        self.registry.register(self._limits)
        self.registry.register(_FaultCollector())
        self.websockets = Gauge(
            "fetchml_websocket_connections", "Open WebSocket connections", registry=self.registry
        )
        self.requests = Counter(
            "fetchml_http_requests", "HTTP requests answered", ["status"], registry=self.registry
        )

    async def render(self, scheduler: Scheduler, limits: Limits | None = None) -> tuple[bytes, str]:
        """The exposition text (refusal counts from ``limits``, if given).  Waits on one
        scheduler status request."""
        self._queue.report = await scheduler.status()
        self._limits.limits = limits
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
