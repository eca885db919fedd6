"""Series stored in chunks, and downsampling by min/max per bucket.

A metric's points are kept in chunks of up to :data:`CHUNK_POINTS`, each one row: the steps
(``int64``), the values and the times (``float64``) as packed arrays, with the chunk's first and
last step, count, min, max and last value beside them, and the min and max of each block of
:data:`BLOCK_POINTS` points (``blocks``).  So a series of a million points is a thousand rows,
not a million, and a downsampled read decodes arrays in C rather than rows in Python.  Within a
chunk points are in step order.

Downsampling splits the step range into buckets and keeps, per bucket, the smallest and largest
value and the last one: a spike survives, however many points share its bucket (an average or
LTTB would hide it).  Where a bucket covers whole blocks, their stored min and max stand for
their points (a bucket of a thousand points reads about 30 blocks and the points at its two
edges, not a thousand values); a chunk wholly inside one bucket is not decoded at all; and a
chunk whose steps have no gap (the usual case) needs no steps array to find its buckets.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from ..protocol import Buckets

__all__ = ["BLOCK_POINTS", "CHUNK_POINTS", "Chunk", "Stored", "downsample"]

CHUNK_POINTS = 1024
BLOCK_POINTS = 32


def _ascending(steps: list[int]) -> bool:
    return all(map(operator.le, steps, itertools.islice(steps, 1, None)))


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

    def extend_columns(self, steps: list[int], values: list[float], times: list[float]) -> None:
        """:meth:`extend` with the points as columns: in C when they come in step order (the
        usual case), one by one otherwise."""
        if not steps:
            return
        if (not self.steps or steps[0] >= self.steps[-1]) and _ascending(steps):
            self.steps.fromlist(steps)
            self.values.fromlist(values)
            self.times.fromlist(times)
        else:
            self.extend(zip(steps, values, times, strict=True))

    def row(self) -> tuple[int, int, int, float, float, float, bytes, bytes, bytes, bytes]:
        """(first step, last step, count, min, max, last, steps, values, times, blocks) to
        store; ``blocks`` is the min of each block of BLOCK_POINTS points, then the max of
        each."""
        values = self.values
        lows = array("d")
        highs = array("d")
        for start in range(0, len(values), BLOCK_POINTS):
            piece = values[start : start + BLOCK_POINTS]
            lows.append(min(piece))
            highs.append(max(piece))
        return (
            self.steps[0],
            self.steps[-1],
            len(self.steps),
            min(lows),
            max(highs),
            values[-1],
            self.steps.tobytes(),
            values.tobytes(),
            self.times.tobytes(),
            lows.tobytes() + highs.tobytes(),
        )


@dataclass
class Stored:
    """A chunk as a downsampled read fetches it: its summary columns, its values, its steps
    (None: they have no gap, ``first..last``) and its blocks (None: a chunk stored before
    there were blocks)."""

    first: int
    last_step: int
    count: int
    min: float
    max: float
    last: float
    steps: bytes | None
    values: bytes
    blocks: bytes | None


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


def _extremes(
    values: array[float], lows: array[float] | None, highs: array[float] | None, i: int, j: int
) -> tuple[float, float]:
    """Min and max of ``values[i:j]``, from the blocks it covers whole and the points at its
    edges."""
    first = -(-i // BLOCK_POINTS)
    stop = j // BLOCK_POINTS
    if lows is None or highs is None or first >= stop:
        piece = values[i:j]
        return min(piece), max(piece)
    low = min(lows[first:stop])
    high = max(highs[first:stop])
    for a, b in ((i, first * BLOCK_POINTS), (stop * BLOCK_POINTS, j)):
        if a < b:
            piece = values[a:b]
            low = min(low, min(piece))
            high = max(high, max(piece))
    return low, high


def downsample(
    name: str, chunks: Iterable[Stored], count: int, start: int, end: int, buckets: int
) -> Buckets:
    """The points of ``chunks`` with ``start <= step <= end`` in ``buckets`` equal step ranges.
    ``count`` is the series' size (reported, and whether it needs downsampling at all)."""
    width = max(1.0, (end - start + 1) / buckets)
    found: dict[int, _Acc] = {}

    def take(index: int, args: tuple[int, float, float, float, int]) -> None:
        acc = found.get(index)
        if acc is None:
            found[index] = _Acc(*args)
        else:
            acc.merge(*args)

    for chunk in chunks:
        first, last_step = chunk.first, chunk.last_step
        if last_step < start or first > end:
            continue
        index = int((first - start) / width)
        if first >= start and last_step <= end and int((last_step - start) / width) == index:
            take(index, (first, chunk.min, chunk.max, chunk.last, last_step))
            continue
        values: array[float] = array("d")
        values.frombytes(chunk.values)
        lows = highs = None
        if chunk.blocks is not None:
            blocks: array[float] = array("d")
            blocks.frombytes(chunk.blocks)
            half = len(blocks) // 2
            lows, highs = blocks[:half], blocks[half:]
        size = len(values)
        if chunk.steps is None:  # first, first + 1, ... last_step
            i = min(size, max(0, start - first))
            stop = min(size, max(0, end - first + 1))
            while i < stop:
                step = first + i
                index = int((step - start) / width)
                upper = start + (index + 1) * width
                j = max(i + 1, min(stop, math.ceil(upper) - first))
                low, high = _extremes(values, lows, highs, i, j)
                take(index, (step, low, high, values[j - 1], first + j - 1))
                i = j
            continue
        steps: array[int] = array("q")
        steps.frombytes(chunk.steps)
        i = bisect.bisect_left(steps, start)
        stop = bisect.bisect_right(steps, end)
        while i < stop:
            index = int((steps[i] - start) / width)
            upper = start + (index + 1) * width
            j = max(i + 1, min(stop, bisect.bisect_left(steps, upper, i)))
            low, high = _extremes(values, lows, highs, i, j)
            take(index, (steps[i], low, high, values[j - 1], steps[j - 1]))
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
