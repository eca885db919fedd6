"""The tracking store's ingest of system samples from a track file: each at the next step of its
own metric, across reads, counted against the run's cap like any point."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fetchml.tracking import TrackingStore, parse_lines

NO_NARRATIVE: dict[str, str | None] = {"hypothesis": None, "intent": None, "expected_outcome": None}


def test_system_samples_go_at_their_metrics_next_step_and_count_against_the_cap(
    tmp_path: Path,
) -> None:
    store = TrackingStore(tmp_path, synchronous="off")
    try:
        store.register(1, "bob", experiment=None, name=None, narrative=NO_NARRATIVE, track_file="t")
        first, step = parse_lines(
            b'{"system": {"sys/rss_mb": 10}}\n{"metrics": {"loss": 1}}\n'
            b'{"system": {"sys/rss_mb": 11}}\n',
            0,
            1.0,
        )
        assert store.ingest(1, first, offset=90, next_step=step, max_points=4) == (
            1,
            [("sys/rss_mb", 0, 10.0, 1.0), ("sys/rss_mb", 1, 11.0, 1.0)],
        )
        second, step = parse_lines(
            b'{"system": {"sys/rss_mb": 12}}\n{"system": {"sys/rss_mb": 13}}\n', step, 2.0
        )
        stored = store.ingest(1, second, offset=150, next_step=step, max_points=4)
        assert stored == (0, [("sys/rss_mb", 2, 12.0, 2.0)])  # the cap: 4 points in all
        run = store.run(1)
        page = store.raw(1, "sys/rss_mb", after=None, limit=10)
    finally:
        store.close()
    assert run is not None
    assert (run.points, run.dropped) == (4, 1)
    assert page is not None
    assert (page.step, page.value) == ([0, 1, 2], [10.0, 11.0, 12.0])


def test_a_write_that_rolls_back_leaves_no_stale_metric_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample whose transaction fails (a full disk, say) is not half-kept in the cache: the
    next samples of other names and of the same one go to their own series."""
    store = TrackingStore(tmp_path, synchronous="off")
    try:
        store.register(1, "bob", experiment=None, name=None, narrative=NO_NARRATIVE, track_file="t")
        append = store._append

        def failing(*args: Any) -> None:
            append(*args)
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(store, "_append", failing)
        with pytest.raises(sqlite3.OperationalError):
            store.add_points(1, {"sys/cpu": 5.0}, 1.0)
        monkeypatch.setattr(store, "_append", append)
        store.add_points(1, {"sys/rss": 7.0}, 2.0)
        store.add_points(1, {"sys/cpu": 6.0}, 3.0)
        cpu = store.raw(1, "sys/cpu", after=None, limit=10)
        rss = store.raw(1, "sys/rss", after=None, limit=10)
    finally:
        store.close()
    assert cpu is not None
    assert rss is not None
    assert (cpu.step, cpu.value) == ([0], [6.0])
    assert (rss.step, rss.value) == ([0], [7.0])
