"""Fixtures of the core tests: a data dir per test, and no job process left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.core import kill_everything_under


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The scheduler's data dir; every job process started under it is killed afterwards.

    Leaving ``open_scheduler`` never stops running jobs (by design: a restart re-adopts them), so
    a test that leaves one running relies on this clean-up.
    """
    path = tmp_path / "data"
    yield path
    kill_everything_under(tmp_path)
