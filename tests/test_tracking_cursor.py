"""The runs listing's cursor: paging through an experiment that grows meanwhile shows every run
that was there exactly once, in the sort's order; foreign or forged cursors are refused."""

from __future__ import annotations

import base64
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetchml.errors import InvalidRequestError
from fetchml.tracking import Batch, RunsCursor, TrackingStore, decode_cursor, encode_cursor

NO_NARRATIVE: dict[str, str | None] = {"hypothesis": None, "intent": None, "expected_outcome": None}
# A run's last loss, or None (the run never logged it); few values, so that ties are common.
LOSSES = st.one_of(st.none(), st.sampled_from([-1.5, 0.0, 0.25, 0.25, 1e300, 3.0]))


def add_run(store: TrackingStore, job_id: int, loss: float | None) -> None:
    store.register(
        job_id, "alice", experiment="sweep", name=None, narrative=NO_NARRATIVE, track_file=None
    )
    points = [] if loss is None else [("loss", 0, loss, 1.0)]
    batch = Batch([*points, ("acc", 0, 0.5, 1.0)])
    store.ingest(job_id, batch, offset=0, next_step=1, max_points=1000)


def expected(losses: dict[int, float | None], descending: bool) -> list[int]:
    """The listing's order: by loss (missing last), ties newest first."""
    with_loss = [j for j, v in losses.items() if v is not None]
    with_loss.sort(key=lambda j: -j)
    with_loss.sort(key=lambda j: losses[j] or 0.0, reverse=descending)
    return with_loss + sorted((j for j, v in losses.items() if v is None), reverse=True)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.lists(LOSSES, min_size=0, max_size=12),
    later=st.lists(LOSSES, min_size=0, max_size=6),
    limit=st.integers(1, 5),
    descending=st.booleans(),
    sort=st.sampled_from(["loss", None]),
)
def test_paging_while_runs_are_added_shows_each_run_once(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[float | None],
    later: list[float | None],
    limit: int,
    descending: bool,
    sort: str | None,
) -> None:
    store = TrackingStore(tmp_path_factory.mktemp("tracking"), synchronous="off")
    try:
        losses = dict(enumerate(first, start=1))
        for job_id, loss in losses.items():
            add_run(store, job_id, loss)
        pages: list[int] = []
        after: RunsCursor | None = None
        fresh = iter(enumerate(later, start=len(first) + 1))
        while True:
            page, after = store.experiment_runs(
                "sweep", "alice", sort=sort, descending=descending, limit=limit, after=after
            )
            assert len(page) <= limit
            pages += [row.job_id for row in page]
            if after is None:
                break
            # The cursor survives its trip as text.
            after = decode_cursor(encode_cursor(after), sort=sort, descending=descending)
            for job_id, loss in fresh:  # a run starts between two pages
                add_run(store, job_id, loss)
                break
    finally:
        store.close()
    assert len(pages) == len(set(pages))
    assert set(losses) <= set(pages)
    order = expected(losses, descending) if sort else sorted(losses, reverse=True)
    assert [j for j in pages if j in losses] == order


def test_a_cursor_of_another_sort_or_a_forged_one_is_refused() -> None:
    cursor = RunsCursor(version=1, sort="loss", descending=True, missing=False, last=0.5, job_id=3)
    text = encode_cursor(cursor)
    assert decode_cursor(text, sort="loss", descending=True) == cursor
    other = encode_cursor(msgspec.structs.replace(cursor, version=9))
    for bad, sort, descending in [
        (text, "loss", False),
        (text, "acc", True),
        (text, None, True),
        ("100", "loss", True),  # an old offset
        ("not base64 !", "loss", True),
        (base64.urlsafe_b64encode(b'[1,"loss",true,false,"x",3]').decode(), "loss", True),
        (other, "loss", True),
        (encode_cursor(msgspec.structs.replace(cursor, job_id=2**64 - 1)), "loss", True),
        ("A" * 5000, "loss", True),
    ]:
        with pytest.raises(InvalidRequestError) as caught:
            decode_cursor(bad, sort=sort, descending=descending)
        assert caught.value.field == "before"


def test_an_unsorted_listing_pages_newest_first(tmp_path: Path) -> None:
    store = TrackingStore(tmp_path, synchronous="off")
    try:
        for job_id in range(1, 8):
            add_run(store, job_id, None)
        first, after = store.experiment_runs(
            "sweep", None, sort=None, descending=True, limit=4, after=None
        )
        add_run(store, 8, None)
        second, end = store.experiment_runs(
            "sweep", None, sort=None, descending=True, limit=4, after=after
        )
    finally:
        store.close()
    assert [r.job_id for r in first] == [7, 6, 5, 4]
    assert [r.job_id for r in second] == [3, 2, 1]
    assert end is None
