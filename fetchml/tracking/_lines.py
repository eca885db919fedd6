"""The line protocol of track files: one JSON object per line, as ``fetchml.track`` writes it.

``{"step": 3, "time": 1764700000.5, "metrics": {"loss": 0.31}}``, ``{"params": {...}}``,
``{"tags": {...}}``, ``{"summary": {...}}``; ``step`` and ``time`` are optional.
``{"system": {"sys/cpu_percent": 12.5}, "time": ...}`` is a system sample (what a Ray run's
sender measures beside the job): names under ``sys/``, no ``step`` (each point goes at the next
step of its own metric, as the server's own samples do) and nothing else on the line.  A line
that is not one of these (bad JSON, a name that is empty, longer than :data:`MAX_NAME` or has
control characters, a value that is not a finite number, an unknown key) is counted and
skipped: a job that writes a bad line is never stopped for it.  A last line without its
newline is left for the next read (the job may be writing it).  Lines end at ``\\n`` only.

Reading is the server's hot path (a job may log a million points a second), so it is done in
C where it can be: the lines are decoded by msgspec into a typed record many lines per call
(``decode_lines``; a piece with a bad line is decoded again line by line, so one bad line costs
only itself), and consecutive lines that log the same metric names are kept as one segment of
values, turned into per-metric columns by slicing (:meth:`Batch.columns`), never point by
point.  The parser runs in a worker thread of the server, beside the event loop's: it works
in pieces of :data:`PIECE_BYTES` and hands the GIL over after each (``time.sleep(0)``), so the
event loop waits for it about a millisecond at most, not the interpreter's 5 ms switch interval
(measured: a 1 ms sleep of the loop's thread overshoots by 0.5 ms at the median instead of 5.4 ms
while a thread parses flat out).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

__all__ = ["MAX_NAME", "MAX_TEXT", "PIECE_BYTES", "Batch", "Columns", "name_problem", "parse_lines"]

MAX_NAME = 250
MAX_TEXT = 1000
_MAX_STEP = 2**62
# Bytes of lines decoded by one call and handled before the GIL is handed over (about 350 lines
# of ten metrics: well under a millisecond).
PIECE_BYTES = 64 << 10
_UNSET = msgspec.UNSET

# A point as it was logged: (name, step, value, unix time).
Point = tuple[str, int, float, float]
Columns = tuple[list[int], list[float], list[float]]  # steps, values, times


class _Line(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One line.  msgspec checks the types: a step is an int in range (not a bool, not a
    float), a time or a metric value a JSON number that fits a float (not a bool; JSON has no
    NaN or infinity, and a number out of range is refused), so every value taken is finite.
    Not tracked by the garbage collector (``gc=False``: decoded JSON holds no cycle), so that
    decoding a large read does not set off collections that hold the GIL."""

    step: Annotated[int, msgspec.Meta(ge=0, le=_MAX_STEP)] | msgspec.UnsetType = _UNSET
    time: float | msgspec.UnsetType = _UNSET
    metrics: dict[str, float] | msgspec.UnsetType = _UNSET
    params: dict[str, Any] | msgspec.UnsetType = _UNSET
    tags: dict[str, Any] | msgspec.UnsetType = _UNSET
    summary: dict[str, Any] | msgspec.UnsetType = _UNSET
    system: dict[str, float] | msgspec.UnsetType = _UNSET


_decoder = msgspec.json.Decoder(_Line)
_EMPTY = _Line()
# Metric names already checked (a job logs the same few names again and again).
_good_names: set[str] = set()
_GOOD_NAMES_MAX = 1 << 16


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a metric, param or tag, or None."""
    if not isinstance(name, str) or not name:
        return "a name must be a non-empty string"
    if len(name) > MAX_NAME:
        return f"a name is at most {MAX_NAME} characters"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return "a name has no control characters"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return "a name is valid text (no lone surrogate)"
    return None


def _names_ok(names: Iterable[str]) -> bool:
    for name in names:
        if name not in _good_names:
            if name_problem(name) is not None:
                return False
            if len(_good_names) >= _GOOD_NAMES_MAX:
                _good_names.clear()
            _good_names.add(name)
    return True


class _Segment:
    """Consecutive lines logging the same metric names, in this order: the values of line
    ``i`` are ``values[i * width : (i + 1) * width]`` (one flat list: a metric's column is a
    slice, ``values[j::width]``, and no object per line is kept)."""

    __slots__ = ("names", "steps", "times", "values")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.steps: list[int] = []
        self.times: list[float] = []
        self.values: list[float] = []


class Batch:
    """What a read of a track file holds: points ``(name, step, value, time)`` in order, and
    the latest params, tags and summary values; ``invalid`` lines skipped; ``consumed`` bytes.

    ``points`` may also be given as a list (the server's own samples, tests); the parser keeps
    them as segments of rows, listed as points only when asked (:attr:`points`)."""

    def __init__(
        self,
        points: Iterable[Point] | None = None,
        *,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        invalid: int = 0,
        consumed: int = 0,
    ) -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.tags: dict[str, Any] = dict(tags or {})
        self.summary: dict[str, Any] = dict(summary or {})
        self.invalid = invalid
        self.consumed = consumed
        # System samples, (name, value, time) in order: their steps are the store's to give.
        self.system: list[tuple[str, float, float]] = []
        self._listed: list[Point] | None = None if points is None else list(points)
        self._segments: list[_Segment] = []
        self._size = 0

    def __repr__(self) -> str:
        return (
            f"Batch(points={self.size}, params={self.params!r}, tags={self.tags!r}, "
            f"summary={self.summary!r}, invalid={self.invalid}, consumed={self.consumed})"
        )

    @property
    def size(self) -> int:
        """How many points."""
        return self._size if self._listed is None else len(self._listed)

    @property
    def points(self) -> list[Point]:
        """Every point, in the order logged."""
        if self._listed is None:
            listed: list[Point] = []
            for segment in self._segments:
                names, values, width = segment.names, segment.values, len(segment.names)
                for line, (step, when) in enumerate(zip(segment.steps, segment.times, strict=True)):
                    row = values[line * width : (line + 1) * width]
                    listed += zip(names, itertools.repeat(step), row, itertools.repeat(when))
            self._listed = listed
        return self._listed

    def columns(self, limit: int | None = None) -> dict[str, Columns]:
        """The first ``limit`` points (all by default) by metric, in the order first logged:
        name -> (steps, values, times), each in the order logged."""
        left = self.size if limit is None else max(0, min(limit, self.size))
        found: dict[str, Columns] = {}
        if self._listed is not None:
            for name, step, value, when in self._listed[:left]:
                column = found.get(name)
                if column is None:
                    found[name] = ([step], [value], [when])
                else:
                    column[0].append(step)
                    column[1].append(value)
                    column[2].append(when)
            return found
        for segment in self._segments:
            if left <= 0:
                break
            width = len(segment.names)
            lines = min(len(segment.steps), left // width)
            every = lines == len(segment.steps)
            steps = segment.steps if every else segment.steps[:lines]
            times = segment.times if every else segment.times[:lines]
            values = segment.values
            for j, name in enumerate(segment.names):
                if not lines:
                    break
                column = found.get(name)
                picked = values[j : lines * width : width]
                if column is None:
                    found[name] = (steps[:], picked, times[:])
                else:
                    column[0].extend(steps)
                    column[1].extend(picked)
                    column[2].extend(times)
            taken = width * lines
            if taken < left and not every:  # part of one more line
                step, when = segment.steps[lines], segment.times[lines]
                for j, name in enumerate(segment.names[: left - taken]):
                    column = found.setdefault(name, ([], [], []))
                    column[0].append(step)
                    column[1].append(values[taken + j])
                    column[2].append(when)
                taken = left
            left -= taken
        return found

    def _take(self, line: _Line, next_step: int, now: float) -> int | None:
        """Add one decoded line; the next default step, or None if it is invalid."""
        metrics = line.metrics
        if metrics is _UNSET and line == _EMPTY:
            return None
        if line.system is not _UNSET:
            return self._take_system(line, next_step, now)
        given = (("params", line.params), ("tags", line.tags), ("summary", line.summary))
        extras = [(key, value) for key, value in given if value is not _UNSET]
        if extras and any(_values(value) is None for _, value in extras):
            return None
        if metrics:  # neither UNSET nor empty
            step = next_step if line.step is _UNSET else line.step
            names = tuple(metrics)
            segments = self._segments
            if not segments or segments[-1].names != names:
                if not _names_ok(names):
                    return None
                segments.append(_Segment(names))
            segment = segments[-1]
            segment.steps.append(step)
            segment.times.append(now if line.time is _UNSET else line.time)
            segment.values += metrics.values()
            self._size += len(names)
            next_step = step + 1
        for key, value in extras:
            getattr(self, key).update(value)
        return next_step

    def _take_system(self, line: _Line, next_step: int, now: float) -> int | None:
        """Add a system sample line; None if it is invalid (a name not under ``sys/``, a step
        or anything but its time beside it)."""
        system = line.system
        if (
            isinstance(system, msgspec.UnsetType)
            or msgspec.structs.replace(line, system=_UNSET, time=_UNSET) != _EMPTY
        ):
            return None
        if not all(name.startswith("sys/") for name in system) or not _names_ok(system):
            return None
        when = now if isinstance(line.time, msgspec.UnsetType) else line.time
        self.system += [(name, value, when) for name, value in system.items()]
        return next_step


def _values(raw: object) -> dict[str, Any] | None:
    """Params, tags or summary values: names to strings, finite numbers, booleans or null."""
    if not isinstance(raw, dict):
        return None
    for key, value in raw.items():
        if name_problem(key) is not None:
            return None
        if isinstance(value, str):
            if len(value) > MAX_TEXT or "\0" in value:
                return None
        elif not _plain(value):
            return None
    return raw


def _plain(value: object) -> bool:
    """Null, a boolean, an int or a finite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int)


def _take_all(batch: Batch, lines: list[_Line], next_step: int, now: float) -> int:
    """:meth:`Batch._take` of each line (the next default step after them), with the usual
    line (metrics only, the same names as the line before) handled here, inline."""
    segments = batch._segments
    segment = segments[-1] if segments else None
    names = segment.names if segment is not None else None
    size = 0
    for line in lines:
        metrics = line.metrics
        if (
            segment is not None
            and metrics
            and line.params is _UNSET
            and line.tags is _UNSET
            and line.summary is _UNSET
            and line.system is _UNSET
        ):
            keys = tuple(metrics)
            if keys == names:
                step = line.step
                at = next_step if isinstance(step, msgspec.UnsetType) else step
                when = line.time
                segment.steps.append(at)
                segment.times.append(now if isinstance(when, msgspec.UnsetType) else when)
                segment.values += metrics.values()
                size += len(keys)
                next_step = at + 1
                continue
        taken = batch._take(line, next_step, now)
        if taken is None:
            batch.invalid += 1
        else:
            next_step = taken
        segment = segments[-1] if segments else None
        names = segment.names if segment is not None else None
    batch._size += size
    return next_step


def parse_lines(data: bytes, next_step: int, now: float) -> tuple[Batch, int]:
    """The complete lines of ``data``; and the next default step (``next_step`` is the step of
    a metrics line without one)."""
    batch = Batch()
    end = data.rfind(b"\n") + 1
    batch.consumed = end
    start = 0
    while start < end:
        stop = end if end - start <= PIECE_BYTES else data.find(b"\n", start + PIECE_BYTES) + 1
        piece = data[start:stop]
        start = stop
        time.sleep(0)  # let a thread waiting for the GIL (the event loop's) have it now
        lines = None
        if b"\r" not in piece:  # decode_lines would end a line at a CR as well
            with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
                lines = _decoder.decode_lines(piece)
        if lines is not None:
            next_step = _take_all(batch, lines, next_step, now)
            continue
        for raw in piece.split(b"\n"):  # a bad line in the piece: one by one
            if not raw.strip():
                continue
            try:
                line = _decoder.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError):
                batch.invalid += 1
                continue
            step = batch._take(line, next_step, now)
            if step is None:
                batch.invalid += 1
            else:
                next_step = step
    return batch, next_step
