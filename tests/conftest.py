"""Fixtures of every test: a data dir per test, no job process left behind, and no internal error
of the server's code unless the test expects it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.core import kill_everything_under

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
