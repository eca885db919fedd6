"""Series stored in chunks, and downsampling by min/max per bucket.

A metric's points are kept in chunks of up to :data:`CHUNK_POINTS`, each one row: the steps
(``int64``), the values and the times (``float64``) as packed arrays, with the chunk's first and
last step, count, min, max and last value beside them.  So a series of a million points is a
thousand rows, not a million, and a downsampled read decodes arrays in C rather than rows in
Python.  Within a chunk points are in step order.

Downsampling splits the step range into buckets and keeps, per bucket, the smallest and largest
value and the last one: a spike survives, however many points share its bucket (an average or
LTTB would hide it).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from ..protocol import Buckets

__all__ = ["CHUNK_POINTS", "Chunk", "downsample"]

CHUNK_POINTS = 1024


@dataclass
class Chunk:
    """Points of one metric, in step order."""

    steps: array[int]
    values: array[float]
    times: array[float]

    @classmethod
    def empty(cls) -> Chunk:
        return cls(array("q"), array("d"), array("d"))

    @classmethod
    def decode(cls, steps: bytes, values: bytes, times: bytes | None = None) -> Chunk:
        chunk = cls.empty()
        chunk.steps.frombytes(steps)
        chunk.values.frombytes(values)
        if times is not None:
            chunk.times.frombytes(times)
        return chunk

    def __len__(self) -> int:
        return len(self.steps)

    def extend(self, points: Iterable[tuple[int, float, float]]) -> None:
        """Add points, keeping step order (a point at an earlier step is put in its place)."""
        for step, value, when in points:
            if not self.steps or step >= self.steps[-1]:
                self.steps.append(step)
                self.values.append(value)
                self.times.append(when)
                continue
            at = bisect.bisect_right(self.steps, step)
            self.steps.insert(at, step)
            self.values.insert(at, value)
            self.times.insert(at, when)

    def row(self) -> tuple[int, int, int, float, float, float, bytes, bytes, bytes]:
        """(first step, last step, count, min, max, last, steps, values, times) to store."""
        values = self.values
        return (
            self.steps[0],
            self.steps[-1],
            len(self.steps),
            min(values),
            max(values),
            values[-1],
            self.steps.tobytes(),
            values.tobytes(),
            self.times.tobytes(),
        )


class _Acc:
    __slots__ = ("last", "last_step", "max", "min", "step")

    def __init__(self, step: int, low: float, high: float, last: float, last_step: int) -> None:
        self.step, self.min, self.max, self.last, self.last_step = step, low, high, last, last_step

    def merge(self, step: int, low: float, high: float, last: float, last_step: int) -> None:
        self.step = min(self.step, step)
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        if last_step >= self.last_step:
            self.last, self.last_step = last, last_step


def downsample(
    name: str, chunks: Iterable[Chunk], count: int, start: int, end: int, buckets: int
) -> Buckets:
    """The points of ``chunks`` with ``start <= step <= end`` in ``buckets`` equal step ranges.
    ``count`` is the series' size (reported, and whether it needs downsampling at all)."""
    width = max(1.0, (end - start + 1) / buckets)
    found: dict[int, _Acc] = {}
    for chunk in chunks:
        steps, values = chunk.steps, chunk.values
        i = bisect.bisect_left(steps, start)
        stop = bisect.bisect_right(steps, end)
        while i < stop:
            index = int((steps[i] - start) / width)
            upper = start + (index + 1) * width
            j = min(stop, bisect.bisect_left(steps, upper, i))
            j = max(j, i + 1)
            piece = values[i:j]
            args = (steps[i], min(piece), max(piece), piece[-1], steps[j - 1])
            acc = found.get(index)
            if acc is None:
                found[index] = _Acc(*args)
            else:
                acc.merge(*args)
            i = j
    ordered = [found[index] for index in sorted(found)]
    return Buckets(
        name=name,
        count=count,
        downsampled=count > buckets,
        step=[a.step for a in ordered],
        min=[a.min for a in ordered],
        max=[a.max for a in ordered],
        last=[a.last for a in ordered],
    )
