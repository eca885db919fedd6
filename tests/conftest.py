"""Fixtures of every test: a data dir per test, no job process left behind, and no internal error
of the server's code unless the test expects it; and the one Ray cluster of the Ray tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.core import kill_everything_under
from helpers.ray_cluster import RayCluster, start_cluster, stop_cluster

from fetchml._faults import INTERNAL_ERROR_ATTR


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The scheduler's data dir; every job process started under it is killed afterwards.

    Leaving ``open_scheduler`` never stops running jobs (by design: a restart re-adopts them), so
    a test that leaves one running relies on this clean-up.
    """
    path = tmp_path / "data"
    yield path
    kill_everything_under(tmp_path)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """The two-node loopback Ray cluster (helpers/ray_cluster.py) of every Ray test, started once
    (10-20 s) and stopped at the end of the session.  Its tests never stop or reconfigure it; each
    one has a data dir of its own, so its Ray jobs have submission ids of their own."""
    pytest.importorskip(
        "ray.job_submission",
        reason="Ray is not installed: pip install -e '.[ray]' to run the Ray backend tests",
    )
    running = start_cluster(tmp_path_factory.mktemp("ray"))
    try:
        yield running
    finally:
        stop_cluster(running)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the shared Ray cluster run last, one after another: the cluster is up only
    while they run (its daemons would take CPU from the other tests), and goes as they end."""
    on_ray = [item for item in items if "ray_cluster" in getattr(item, "fixturenames", ())]
    if on_ray:
        chosen = {id(item) for item in on_ray}
        items[:] = [item for item in items if id(item) not in chosen] + on_ray


class _InternalErrors(logging.Handler):
    """Collects the log records of internal errors (``fetchml._faults``) while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, INTERNAL_ERROR_ATTR):
            self.records.append(record)


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot client's hash cache goes to the test's folder, never ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _internal_error_guard(request: pytest.FixtureRequest) -> Iterator[_InternalErrors]:
    """Fail a test during which the server's code reported an internal error (a fault kept to
    one request or job, but a bug all the same), unless it asked for ``internal_errors``."""
    handler = _InternalErrors()
    logger = logging.getLogger("fetchml")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    if handler.records and "internal_errors" not in request.fixturenames:
        lines = "\n".join(record.getMessage() for record in handler.records)
        pytest.fail(f"unexpected internal error(s) of the server:\n{lines}", pytrace=False)


@pytest.fixture
def internal_errors(_internal_error_guard: _InternalErrors) -> list[logging.LogRecord]:
    """The internal errors reported during this test (which expects some), as log records."""
    return _internal_error_guard.records
