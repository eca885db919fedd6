"""The line protocol's parser on anything a job may write: it never raises, reads only whole
lines, and keeps only what the protocol allows (finite numbers, names without control
characters, at most 250 characters)."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fetchml.tracking import MAX_NAME, name_problem, parse_lines

_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
_records = st.dictionaries(
    st.sampled_from(["step", "time", "metrics", "params", "tags", "summary", "system", "other"]),
    st.one_of(_values, st.dictionaries(st.text(max_size=300), _values, max_size=3)),
    max_size=4,
)


def _line(record: dict[str, object]) -> bytes:
    return json.dumps(record, allow_nan=True).encode() + b"\n"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_any_bytes_never_raise_and_only_whole_lines_are_read(data: bytes) -> None:
    batch, _ = parse_lines(data, 0, 1.0)
    assert batch.consumed == data.rfind(b"\n") + 1
    assert batch.invalid <= data.count(b"\n")


@settings(max_examples=300, deadline=None)
@given(records=st.lists(_records, max_size=8), tail=st.binary(max_size=50))
def test_what_is_kept_is_what_the_protocol_allows(
    records: list[dict[str, object]], tail: bytes
) -> None:
    data = b"".join(_line(r) for r in records) + tail.replace(b"\n", b"")
    batch, next_step = parse_lines(data, 0, 1.0)
    assert next_step >= 0
    for name, step, value, when in batch.points:
        assert name_problem(name) is None
        assert len(name) <= MAX_NAME
        assert math.isfinite(value)
        assert math.isfinite(when)
        assert 0 <= step <= 2**62
    for values in (batch.params, batch.tags, batch.summary):
        assert all(name_problem(key) is None for key in values)
    for name, value, when in batch.system:
        assert name.startswith("sys/")
        assert name_problem(name) is None
        assert math.isfinite(value)
        assert math.isfinite(when)
    assert batch.invalid <= len(records)


def test_system_samples_keep_their_own_steps_and_leave_the_runs_alone() -> None:
    lines: list[dict[str, object]] = [
        {"metrics": {"loss": 1.0}},
        {"system": {"sys/cpu_percent": 50.0, "sys/gpu0/util_percent": 7}, "time": 5.0},
        {"metrics": {"loss": 0.5}},
        {"system": {"sys/rss_mb": 1.0}},
    ]
    bad: list[dict[str, object]] = [
        {"system": {"cpu": 1.0}},  # not under sys/
        {"system": {"sys/cpu": 1.0}, "step": 3},  # a sample has no step of the run's
        {"system": {"sys/cpu": 1.0}, "metrics": {"loss": 2.0}},
        {"system": {"sys/cpu": "high"}},
        {"system": {"sys/\u0007": 1.0}},
        {"system": [1.0]},
    ]
    batch, next_step = parse_lines(b"".join(_line(r) for r in lines + bad), 0, 9.0)
    assert [(n, s, v) for n, s, v, _ in batch.points] == [("loss", 0, 1.0), ("loss", 1, 0.5)]
    assert next_step == 2
    assert batch.system == [
        ("sys/cpu_percent", 50.0, 5.0),
        ("sys/gpu0/util_percent", 7.0, 5.0),
        ("sys/rss_mb", 1.0, 9.0),
    ]
    assert batch.invalid == len(bad)
